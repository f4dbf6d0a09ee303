#!/usr/bin/env bash
# Memory per connection (issue 51): the gateway and nginx `proxy_pass` in front of a real gunicorn
# (the Console stand-in of tests/console_standin/, Flask, gthread workers with keep-alive, so
# pooled upstream connections carry many requests), held at N concurrent keep-alive client
# connections (wrk -cN, one request in flight on each). Every target is started fresh for each
# run, loaded for DURATION seconds with the same wrk command (the allowed /ops with a cached
# platform admin's cookie), then read and stopped; per run:
#   - RSS: VmRSS and VmHWM from /proc/PID/status after the run (nginx: master + workers summed),
#     and the highest VmRSS sampled every 0.2 s during it;
#   - requests/s, p99 and socket errors as wrk reports them (--timeout 30s: a slow answer is a
#     latency, not an error);
#   - CPU per request: utime+stime of the process (and its children) from /proc/PID/stat over the
#     run, divided by the requests wrk counted.
# Each round runs every N, and for each N every target, the order rotated every round. With two
# gateway binaries (a before and an after) their ratios per round are paired: the machine's noise
# is the same minutes for both. Written to target/connections-report.md too.
#
# Usage: [ROUNDS=2] [DURATION=15] [CONNS="32 2000"] [THREADS=2] \
#          scripts/bench/connections.sh [[NAME=]BINARY ...]
#   BINARY        a gateway binary to measure, as NAME (default: its position, g1, g2...); the
#                 first is the "before" of the ratios. None: target/release/rbac-gateway, built
#                 first unless BUILD=0
#   CONNS         the connection counts, each one run per target per round
#   THREADS       wrk threads
#   UP_WORKERS    gunicorn workers (default 2), each gthread with UP_THREADS threads (default 8)
#   UPSTREAM=nginx  the benchmarks' nginx answering "ok" (bench-lib.sh) instead of gunicorn: the
#                 proxies, not Console, then set the pace (their throughput and p99 compare)
#   PROXY_WORKERS nginx worker_processes (default: the gateway's worker threads)
#   NGINX=0       leave nginx out
#   KEEP=1        keep the temporary directory (logs, configurations, wrk output)
set -euo pipefail

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-15}
DURATION=${DURATION%s}
CONNS=${CONNS:-32 2000}
THREADS=${THREADS:-2}
UP_WORKERS=${UP_WORKERS:-2}
UP_THREADS=${UP_THREADS:-8}
UPSTREAM=${UPSTREAM:-gunicorn}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}
WITH_NGINX=${NGINX:-1}
ALLOWED_PATH=/ops

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[connections] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
max_conns=0
for n in $CONNS; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "CONNS must be positive integers"
  (( THREADS <= n )) || die "THREADS must not exceed any of CONNS"
  (( n > max_conns )) && max_conns=$n
done
. "$root/scripts/bench/bench-lib.sh"
need_tools wrk nginx curl psql python3 initdb
PY=$root/.venv/bin/python3
[[ $UPSTREAM == gunicorn || $UPSTREAM == nginx ]] || die "UPSTREAM must be gunicorn or nginx"
[ "$UPSTREAM" = nginx ] || { [ -x "$PY" ] && "$PY" -c 'import flask, gunicorn' 2>/dev/null; } ||
  die "gunicorn and Flask are missing from .venv/ (scripts/setup.sh --tests installs them)"

# Each client connection is a descriptor of wrk's and of the proxy's, and each request in flight
# one more of the proxy's to gunicorn.
want=$(( 2 * max_conns + 1024 ))
ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= want )) || die "ulimit -n is $(ulimit -n), $want needed (raise the hard limit)"

# --- the binaries -------------------------------------------------------------------------------
names=()
bins=()
if [ $# = 0 ]; then
  if [ "$BUILD" != 0 ]; then
    log "cargo build --release --bin rbac-gateway"
    cargo build --release --quiet --bin rbac-gateway
  fi
  set -- "gateway=$root/target/release/rbac-gateway"
fi
i=0
for arg in "$@"; do
  i=$(( i + 1 ))
  if [[ $arg == *=* ]]; then names+=("${arg%%=*}"); bins+=("${arg#*=}"); else names+=("g$i"); bins+=("$arg"); fi
  [ -x "${bins[-1]}" ] || die "${bins[-1]} is not an executable"
  [[ ${names[-1]} =~ ^[A-Za-z0-9_.-]+$ && ${names[-1]} != nginx ]] || die "bad name: ${names[-1]}"
done

bench_tmp rbac-connections

# --- PostgreSQL, the upstream -------------------------------------------------------------------
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"${bins[0]}" migrate --database-url "$DATABASE_URL" >/dev/null
run=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
tok_admin="conn-admin-$run"
seed_admins conn "$tok_admin" "conn-norole-$run" "conn-e-$run-" 1

if [ "$UPSTREAM" = nginx ]; then
  start_upstream # up_port (its worker_connections, 4096, hold 2,000 connections of a proxy)
  upstream_said="the benchmarks' nginx upstream (1 worker, answering ok)"
else
  up_port=$(free_port)
  upstream_said="gunicorn $UP_WORKERS gthread worker(s) x $UP_THREADS threads (tests/console_standin)"
  log "starting gunicorn: $UP_WORKERS gthread worker(s) x $UP_THREADS threads, keep-alive"
  ROUTES_FILE=$root/routes.toml PYTHONDONTWRITEBYTECODE=1 "$PY" -m gunicorn -b "127.0.0.1:$up_port" \
    -w "$UP_WORKERS" -k gthread --threads "$UP_THREADS" --keep-alive 75 \
    --worker-connections $(( max_conns + 100 )) --backlog $(( max_conns + 100 )) \
    --chdir "$root/tests/console_standin" --log-level warning app:app >"$tmp/gunicorn.log" 2>&1 &
  pids+=("$!")
  wait_http "http://127.0.0.1:$up_port$ALLOWED_PATH" 200 30 || die "gunicorn did not start: $(tail -5 "$tmp/gunicorn.log")"
fi

# --- the targets, each started fresh for a run ---------------------------------------------------
# Sets tpid (the process to read) and turl.
start_target() { # name
  local port adm b i
  port=$(free_port)
  turl="http://127.0.0.1:$port$ALLOWED_PATH"
  if [ "$1" = nginx ]; then
    nginx_conf proxy "$PROXY_WORKERS" "  upstream app {
    server 127.0.0.1:$up_port;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
    sed -i "s/worker_connections [0-9]*;/worker_connections $(( 2 * max_conns + 1024 ));/" "$tmp/proxy/nginx.conf"
    start_nginx proxy "$turl" 200
    tpid=$started_pid
    return
  fi
  for i in "${!names[@]}"; do [ "${names[$i]}" = "$1" ] && b=${bins[$i]}; done
  adm=$(free_port)
  "$b" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$adm" \
    --upstream "127.0.0.1:$up_port" --routes "$root/routes.toml" --database-url "$DATABASE_URL" \
    --audit-spool "$tmp/audit-$1.spool" --cache-ttl 600 --log-format json >>"$tmp/gateway-$1.log" 2>&1 &
  tpid=$!
  pids+=("$tpid")
  wait_http "http://127.0.0.1:$adm/readyz" 200 30 || die "gateway $1 not ready: $(tail -5 "$tmp/gateway-$1.log")"
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: console_session=$tok_admin" "$turl")" = 200 ] ||
    die "$ALLOWED_PATH is not allowed on gateway $1"
}
stop_target() { # pid: TERM, wait, and no longer ours to clean up
  local p=$1 keep=() q
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  pids=("${keep[@]}")
}
status_kib() { # "pid" field: the /proc status field (VmRSS, VmHWM) of the process and its children, KiB
  local p t=0 v
  for p in $1 $(pgrep -P "$1" 2>/dev/null); do
    v=$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    t=$(( t + ${v:-0} ))
  done
  echo "$t"
}

# The gateway's worker threads, as it reports them, set nginx's worker_processes.
start_target "${names[0]}"
gw_threads=$(grep -m1 '"listening"' "$tmp/gateway-${names[0]}.log" | grep -oE '"threads":[0-9]+' | grep -oE '[0-9]+$' || true)
[[ $gw_threads =~ ^[1-9][0-9]*$ ]] || die "no thread count in the gateway's \"listening\" line"
stop_target "$tpid"
PROXY_WORKERS=${PROXY_WORKERS:-$gw_threads}

targets=("${names[@]}")
[ "$WITH_NGINX" != 0 ] && targets+=(nginx)

results=$tmp/results.tsv
: >"$results"
measure() { # target conns round
  local t=$1 n=$2 r=$3 out c0 c1 sampler peak
  start_target "$t"
  out=$tmp/wrk-$t-$n-$r.txt
  ( while :; do status_kib "$tpid" VmRSS; sleep 0.2; done ) >"$tmp/rss-$t-$n-$r.txt" 2>/dev/null &
  sampler=$!
  c0=$(cpu_ticks "$tpid")
  wrk -t"$THREADS" -c"$n" -d"${DURATION}s" --timeout 30s --latency \
    -H "Cookie: console_session=$tok_admin" "$turl" >"$out" 2>&1 || die "wrk ($t, $n) failed: $(cat "$out")"
  c1=$(cpu_ticks "$tpid")
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  peak=$(sort -n "$tmp/rss-$t-$n-$r.txt" | tail -1)
  kill -0 "$tpid" 2>/dev/null || die "$t died: $(tail -5 "$tmp/gateway-$t.log" 2>/dev/null)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$n" "$t" "$(status_kib "$tpid" VmRSS)" \
    "$(status_kib "$tpid" VmHWM)" "${peak:-0}" $(( c1 - c0 )) \
    "$(awk '
      function us(v,  x) { x = v + 0; if (v ~ /us$/) return x; if (v ~ /ms$/) return x * 1000; if (v ~ /s$/) return x * 1000000; return x }
      /^ +99%/ { p99 = us($2) }
      / requests in / { reqs = $1 }
      /^Requests\/sec:/ { rps = $2 }
      /Non-2xx or 3xx responses:/ { bad = $5 }
      /Socket errors:/ { s = $0; gsub(/[^0-9 ]/, "", s); split(s, a, " "); se = a[1] + a[2] + a[3] + a[4] }
      END { printf "%s\t%s\t%s\t%d\t%d", rps, p99, reqs, bad, se }' "$out")" >>"$results"
  stop_target "$tpid"
  tail -1 "$results" >&2
}

nt=${#targets[@]}
log "$ROUNDS round(s) x N in ($CONNS) x ${targets[*]}, ${DURATION}s each, wrk -t$THREADS --timeout 30s"
for r in $(seq "$ROUNDS"); do
  for n in $CONNS; do
    for k in $(seq 0 $(( nt - 1 ))); do
      measure "${targets[$(( (k + r - 1) % nt ))]}" "$n" "$r"
    done
  done
done

# --- report ---------------------------------------------------------------------------------------
mkdir -p "$root/target"
report=$root/target/connections-report.md
CLK_TCK=$(getconf CLK_TCK)
python3 - "$results" "$report" "$CLK_TCK" "${targets[@]}" <<PY
import statistics, sys
res, out, tck, targets = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
med = statistics.median
rows = [l.rstrip("\n").split("\t") for l in open(res) if l.strip()]
# round conns target rss hwm peak ticks rps p99_us reqs non2xx sockerr
def cpu(r):
    return int(r[6]) / tck * 1e6 / max(int(r[9]), 1)
def mib(k):
    return f"{int(k) / 1024:.1f}"
lines = [f"# Memory per connection ({len(set(r[0] for r in rows))} round(s), medians)", "",
         "wrk -t$THREADS -cN -d${DURATION}s --timeout 30s on $ALLOWED_PATH (a cached platform admin); "
         "$upstream_said; gateway worker threads "
         "$gw_threads, nginx worker_processes $PROXY_WORKERS; $(nproc) cores shared by all", "",
         "| N | target | VmRSS after MiB | VmHWM MiB | peak sampled MiB | requests/s | p99 | CPU µs/request | errors |",
         "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
conns = sorted(set(int(r[1]) for r in rows))
for n in conns:
    for t in targets:
        rs = [r for r in rows if int(r[1]) == n and r[2] == t]
        if not rs:
            continue
        errs = sum(int(r[10]) + int(r[11]) for r in rs)
        lines.append(f"| {n} | {t} | {mib(med(int(r[3]) for r in rs))} | {mib(med(int(r[4]) for r in rs))} | "
                     f"{mib(med(int(r[5]) for r in rs))} | {med(float(r[7]) for r in rs):,.0f} | "
                     f"{med(float(r[8]) for r in rs) / 1000:.1f} ms | {med(cpu(r) for r in rs):.1f} | {errs} |")
lines.append("")
def by_round(t, n):
    return {r[0]: r for r in rows if r[2] == t and int(r[1]) == n}
gateways = [t for t in targets if t != "nginx"]
pairs = [(gateways[0], t) for t in gateways[1:]] + [("nginx", t) for t in gateways if "nginx" in targets]
for a, b in pairs:
    for n in conns:
        ra, rb = by_round(a, n), by_round(b, n)
        common = sorted(set(ra) & set(rb), key=int)
        if not common:
            continue
        def ratios(f):
            xs = [f(rb[k]) / max(f(ra[k]), 1e-9) for k in common]
            return f"{med(xs):.2f} ({', '.join(f'{x:.2f}' for x in xs)})"
        lines.append(f"- N={n}, {b}/{a} per round (median, then each round): VmRSS after {ratios(lambda r: int(r[3]))}; "
                     f"peak {ratios(lambda r: int(r[5]))}; requests/s {ratios(lambda r: float(r[7]))}; "
                     f"p99 {ratios(lambda r: float(r[8]))}; CPU per request {ratios(cpu)}")
text = "\n".join(lines) + "\n"
sys.stdout.write(text)
open(out, "w").write(text)
PY
log "report written to target/connections-report.md"
