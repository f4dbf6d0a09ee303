#!/usr/bin/env bash
# Loopback load test of the gateway against two baselines, all on 127.0.0.1:
#   (a) wrk -> nginx upstream (answers 200 "ok\n" to everything)
#   (b) wrk -> nginx proxy_pass (keepalive upstream pool) -> upstream
#   (h) b with the four headers the gateway adds for the platform admin (X-Rbac-Admin-Id,
#       X-Rbac-Roles, X-Request-Id, X-Forwarded-For) set by nginx, and c's session cookie: the
#       same bytes to the upstream as c, no authorization (c/h compares the gateway with nginx doing that part of its job)
#   (c) wrk -> gateway -> upstream: an allowed route, one cached session
#   (d) wrk -> gateway: a route that session is denied (403 + durable audit row each)
#   (e) wrk -> gateway -> upstream: 10,000 distinct sessions (10,000 admins) in rotation
#   (f) wrk -> examples/bare_proxy -> upstream: the gateway's own data plane (hyper workers, checks,
#       outcome function, upstream pool) with every path public: no authorization
#       (c/f is the price of authorization, f/b the data plane vs nginx)
#   (p) b and c at the same moments, half the connections each (CPU per request of both under the
#       same machine noise)
# Forward-auth is measured per edge against its own floor by `scripts/bench/load.sh forward-auth`
# (scripts/bench/forward-auth.sh; it replaced this script's former case g).
# Each round runs a, then b and c back to back (b first in odd rounds, c first in even ones),
# then h, f, p, d, e, one after another with the same wrk settings; the table shows medians
# over the rounds of requests/s, p50, p99 and the CPU time the proxy process under test (nginx
# proxy master + workers, bare_proxy, gateway) and the nginx upstream used per request, from
# /proc/PID/stat utime+stime around each wrk run. On a shared, noisy machine the ratios of one
# run are the figures that count.
# Also: c/b (of the medians, and per round from its back-to-back b and c), d/c, the gateway's
# peak RSS after (e), database queries per request in case (c), and audit rows written during
# (d) next to the 403s wrk saw. Written to target/load-report.md too.
#
# Usage: [ROUNDS=3] [DURATION=10] [CONNECTIONS=32] [THREADS=1] scripts/bench/load.sh  (the issue-12 setting: wrk -t1 -c32)
#   DURATION      seconds per wrk run (a bare number or "10s"); total is about 8 x ROUNDS x DURATION
#                 plus ~20 s of set-up once the release build exists
#   CONNECTIONS   wrk connections; THREADS: wrk threads
#   PROXY_WORKERS nginx proxy worker_processes (default: as many as the gateway's worker threads,
#                 read from its start-up log: half the cores, at least one, unless GATEWAY_THREADS
#                 is set)
#   ALLOWED_PATH  default /ops (console-manager); DENIED_PATH default /console/flags/promotions
#                 (console-flag_promotion_queue-read, which raxx-platform-admins does not hold)
#   PG_FSYNC=on   PostgreSQL flushes each commit to disk (default off, see scripts/pg.sh): case d's
#                 audit rows then wait for the disk too
#   BUILD=0       skip `cargo build --release` (use the existing target/release/rbac-gateway)
#   KEEP=1        keep the temporary directory (logs, nginx configs, raw wrk output)
set -euo pipefail
# `scripts/bench/load.sh forward-auth`: forward-auth against its floor, per edge (scripts/bench/forward-auth.sh).
if [ "${1:-}" = forward-auth ]; then exec "$(dirname "$0")/forward-auth.sh"; fi

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
NPROC=$(nproc)
ALLOWED_PATH=${ALLOWED_PATH:-/ops}
DENIED_PATH=${DENIED_PATH:-/console/flags/promotions}
SESSIONS=${SESSIONS:-10000}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[load] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
(( THREADS <= CONNECTIONS )) || die "THREADS must not exceed CONNECTIONS"
(( THREADS <= (CONNECTIONS + 1) / 2 )) || die "THREADS must not exceed half the CONNECTIONS (case p splits them)"

# --- what is missing ----------------------------------------------------------------------------
. "$root/scripts/bench/bench-lib.sh"

need_tools wrk nginx cmake curl psql python3 initdb

# --- build --------------------------------------------------------------------------------------
if [ "$BUILD" != 0 ]; then
  log "cargo build --release (a few minutes from cold)"
  # Two invocations: built together with an example, the gateway would get the features its
  # dev-dependencies switch on; the binary measured here is the one a plain
  # `cargo build --release` ships.
  cargo build --release --quiet --bin rbac-gateway
  cargo build --release --quiet --example bare_proxy
fi
GW_BIN=$root/target/release/rbac-gateway
BARE_BIN=$root/target/release/examples/bare_proxy
[ -x "$GW_BIN" ] || die "$GW_BIN is missing (run without BUILD=0)"
[ -x "$BARE_BIN" ] || die "$BARE_BIN is missing (run without BUILD=0)"

# --- throwaway directory and cleanup ------------------------------------------------------------
bench_tmp rbac-load

# --- PostgreSQL, migrations, seed -------------------------------------------------------------
log "starting PostgreSQL"
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$GW_BIN" migrate --database-url "$DATABASE_URL" >/dev/null
psql_q() { psql "$DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

run=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
tok_admin="load-admin-$run"
tok_norole="load-norole-$run"
seq -f "load-e-$run-%.0f" 1 "$SESSIONS" >"$tmp/cookies.txt"
log "seeding: 1 platform admin, 1 admin without roles, $SESSIONS admins with one session each"
seed_admins load "$tok_admin" "$tok_norole" "load-e-$run-" "$SESSIONS"

# --- nginx upstream and nginx proxy -------------------------------------------------------------
start_upstream # up_port, up_pid (its master)
px_port=$(free_port)

# --- the gateway ----------------------------------------------------------------------------------
gw_port=$(free_port)
adm_port=$(free_port)
log "starting the gateway"
"$GW_BIN" serve \
  --listen "127.0.0.1:$gw_port" \
  --admin-listen "127.0.0.1:$adm_port" \
  --upstream "127.0.0.1:$up_port" \
  --routes "$root/routes.toml" \
  --database-url "$DATABASE_URL" \
  --audit-spool "$tmp/audit.spool" \
  --cache-ttl 60 \
  --log-format json \
  >"$tmp/gateway.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
wait_http "http://127.0.0.1:$adm_port/readyz" 200 30 || die "gateway not ready: $(tail -5 "$tmp/gateway.log")"
# Its worker threads, as it reports them (the "listening" line), not a copy of its default.
gw_threads=$(grep -m1 '"listening"' "$tmp/gateway.log" | grep -oE '"threads":[0-9]+' | grep -oE '[0-9]+$' || true)
[[ $gw_threads =~ ^[1-9][0-9]*$ ]] || die "no thread count in the gateway's \"listening\" line: $(head -5 "$tmp/gateway.log")"
PROXY_WORKERS=${PROXY_WORKERS:-$gw_threads}
log "gateway worker threads: $gw_threads; nginx proxy worker_processes: $PROXY_WORKERS"

nginx_conf proxy "$PROXY_WORKERS" "  upstream app {
    server 127.0.0.1:$up_port;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$px_port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
start_nginx proxy "http://127.0.0.1:$px_port/" 200
px_pid=$started_pid # the nginx proxy's master (its workers are its children)

bare_port=$(free_port)
"$BARE_BIN" "127.0.0.1:$bare_port" "127.0.0.1:$up_port" >"$tmp/bare.log" 2>&1 &
pids+=($!)
bare_pid=$!
wait_http "http://127.0.0.1:$bare_port/" 200 10 || die "bare proxy did not start: $(tail -5 "$tmp/bare.log")"


# (h): nginx proxy_pass setting the headers the gateway adds for the platform admin. The roles
# are the gateway's own answer (explain's effective roles: sorted, as X-Rbac-Roles has them).
roles=$("$GW_BIN" explain --routes "$root/routes.toml" --database-url "$DATABASE_URL" --admin load-admin GET "$ALLOWED_PATH" |
  awk '/^effective roles:/ { on = 1; next } on && /^  [^ ]/ { sub(/^  /, ""); sub(/:.*/, ""); r = r (r == "" ? "" : ",") $0; next } on { exit } END { print r }')
[ -n "$roles" ] || die "explain listed no roles for load-admin"
hx_port=$(free_port)
nginx_conf headers "$PROXY_WORKERS" "  upstream app {
    server 127.0.0.1:$up_port;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$hx_port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Rbac-Admin-Id load-admin;
      proxy_set_header X-Rbac-Roles $roles;
      proxy_set_header X-Request-Id \$request_id;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }"
start_nginx headers "http://127.0.0.1:$hx_port/" 200
hx_pid=$started_pid

GW=http://127.0.0.1:$gw_port
cookie() { printf 'Cookie: console_session=%s' "$1"; }
status() { curl -s -o /dev/null -w '%{http_code}' "${@:2}" "$1"; }
check() { # what url expected [curl args]
  local got
  got=$(status "$2" "${@:4}")
  [ "$got" = "$3" ] || die "$1: expected $3, got $got"
}
check "upstream" "http://127.0.0.1:$up_port$ALLOWED_PATH" 200
check "nginx proxy" "http://127.0.0.1:$px_port$ALLOWED_PATH" 200
check "platform admin on $ALLOWED_PATH" "$GW$ALLOWED_PATH" 200 -H "$(cookie "$tok_admin")"
check "platform admin on $DENIED_PATH" "$GW$DENIED_PATH" 403 -H "$(cookie "$tok_admin")"
check "admin without roles on $ALLOWED_PATH" "$GW$ALLOWED_PATH" 403 -H "$(cookie "$tok_norole")"
check "a rotated session" "$GW$ALLOWED_PATH" 200 -H "$(cookie "$(sed -n 7p "$tmp/cookies.txt")")"
check "no session" "$GW$ALLOWED_PATH" 302

audit_rows() { psql_q -c "SELECT count(*) FROM access_audit_events WHERE event_type = 'access_denied'"; }

# --- rounds -------------------------------------------------------------------------------------
results=$tmp/results.tsv
: >"$results"
CLK_TCK=$(getconf CLK_TCK)
parse_wrk() { # case round wrk-output cpu-ticks: prints "round case rps p50_us p99_us requests non2xx socket_errors cpu_ticks"
  awk -v r="$2" -v c="$1" -v ticks="$4" '
    function us(v,  n) {
      n = v + 0
      if (v ~ /us$/) return n
      if (v ~ /ms$/) return n * 1000
      if (v ~ /m$/) return n * 60000000
      if (v ~ /s$/) return n * 1000000
      return n
    }
    /^ +50%/ { p50 = us($2) }
    /^ +99%/ { p99 = us($2) }
    / requests in / { reqs = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { non2xx = $5 }
    /Socket errors:/ { sock = $0; gsub(/[^0-9 ]/, "", sock); split(sock, a, " "); se = a[1] + a[2] + a[3] + a[4] }
    END { printf "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", r, c, rps, p50, p99, reqs, non2xx, se, ticks }
  ' "$3"
}
run_wrk() { # case round url [wrk args]: appends "round case rps p50_us p99_us requests errors_status socket_errors cpu_ticks upstream_ticks"
  # CPU_PID (optional): the proxy process whose CPU time is measured around the run.
  local c=$1 r=$2 url=$3 out t0=0 t1=0 u0 u1
  out=$tmp/wrk-$c-$r.txt
  [ -n "${CPU_PID:-}" ] && t0=$(cpu_ticks "$CPU_PID")
  u0=$(cpu_ticks "$up_pid")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${@:4}" "$url" >"$out" 2>&1 ||
    die "wrk ($c) failed: $(cat "$out")"
  [ -n "${CPU_PID:-}" ] && t1=$(cpu_ticks "$CPU_PID")
  u1=$(cpu_ticks "$up_pid")
  printf '%s\t%d\n' "$(parse_wrk "$c" "$r" "$out" $(( t1 - t0 )))" $(( u1 - u0 )) >>"$results"
  tail -1 "$results"
}
# (p): nginx proxy_pass (pb) and the gateway (pc) loaded at the same moments, half the
# connections each: the machine's noise (other tenants, frequency) hits both alike, so their
# CPU per request compares more steadily than b and c run one after the other.
paired=$tmp/paired.tsv
: >"$paired"
run_pair() { # round
  local r=$1 half=$(( (CONNECTIONS + 1) / 2 )) b0 c0 b1 c1
  b0=$(cpu_ticks "$px_pid"); c0=$(cpu_ticks "$gw_pid")
  wrk -t"$THREADS" -c"$half" -d"${DURATION}s" --latency "http://127.0.0.1:$px_port$ALLOWED_PATH" >"$tmp/wrk-pb-$r.txt" 2>&1 &
  local wb=$!
  wrk -t"$THREADS" -c"$half" -d"${DURATION}s" --latency -H "$(cookie "$tok_admin")" "$GW$ALLOWED_PATH" >"$tmp/wrk-pc-$r.txt" 2>&1 &
  local wc=$!
  pids+=("$wb" "$wc") # stopped by cleanup if one of them fails
  wait "$wb" || die "wrk (pb) failed: $(cat "$tmp/wrk-pb-$r.txt")"
  wait "$wc" || die "wrk (pc) failed: $(cat "$tmp/wrk-pc-$r.txt")"
  pids=("${pids[@]:0:${#pids[@]}-2}") # both ended: not ours to signal any more
  b1=$(cpu_ticks "$px_pid"); c1=$(cpu_ticks "$gw_pid")
  parse_wrk pb "$r" "$tmp/wrk-pb-$r.txt" $(( b1 - b0 )) >>"$paired"
  parse_wrk pc "$r" "$tmp/wrk-pc-$r.txt" $(( c1 - c0 )) >>"$paired"
}

run_b() { # round
  CPU_PID=$px_pid run_wrk b "$1" "http://127.0.0.1:$px_port$ALLOWED_PATH" >/dev/null
}
run_c() { # round; sets q0, q1 (database queries around it) and reqs_c
  # (c): the session is resolved once, then served from the cache (steady state).
  check "warm-up" "$GW$ALLOWED_PATH" 200 -H "$(cookie "$tok_admin")"
  q0=$(metric rbac_gateway_db_queries_total)
  local line
  line=$(CPU_PID=$gw_pid run_wrk c "$1" "$GW$ALLOWED_PATH" -H "$(cookie "$tok_admin")")
  q1=$(metric rbac_gateway_db_queries_total)
  reqs_c=$(cut -f6 <<<"$line")
}

est=$(( ROUNDS * 8 * DURATION ))
log "$ROUNDS round(s) x 8 cases x ${DURATION}s (~${est}s), wrk -t$THREADS -c$CONNECTIONS"
extra=$tmp/extra.tsv
: >"$extra"
for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS"
  run_wrk a "$r" "http://127.0.0.1:$up_port$ALLOWED_PATH" >/dev/null
  # b and c back to back, in turns b-c and c-b: the machine's drift between the two is the
  # smallest this run can make it, and neither always goes first.
  if (( r % 2 )); then run_b "$r"; run_c "$r"; else run_c "$r"; run_b "$r"; fi
  CPU_PID=$hx_pid run_wrk h "$r" "http://127.0.0.1:$hx_port$ALLOWED_PATH" -H "$(cookie "$tok_admin")" >/dev/null
  CPU_PID=$bare_pid run_wrk f "$r" "http://127.0.0.1:$bare_port$ALLOWED_PATH" >/dev/null
  check "warm-up" "$GW$ALLOWED_PATH" 200 -H "$(cookie "$tok_admin")"
  run_pair "$r"

  # (d): every request is a 403 with an audit row made durable first.
  a0=$(audit_rows)
  m0=$(metric 'rbac_gateway_requests_total{decision="denied"}')
  line=$(CPU_PID=$gw_pid run_wrk d "$r" "$GW$DENIED_PATH" -H "$(cookie "$tok_admin")")
  sleep 1 # requests in flight when wrk stopped finish (row first, then the 403)
  a1=$(audit_rows)
  m1=$(metric 'rbac_gateway_requests_total{decision="denied"}')
  wrk403=$(cut -f7 <<<"$line")

  # (e): 10,000 sessions in rotation.
  e0=$(metric rbac_gateway_db_queries_total)
  line=$(CPU_PID=$gw_pid COOKIES=$tmp/cookies.txt LOAD_PATH=$ALLOWED_PATH run_wrk e "$r" "$GW$ALLOWED_PATH" -s "$root/scripts/bench/load/rotate.lua")
  e1=$(metric rbac_gateway_db_queries_total)
  reqs_e=$(cut -f6 <<<"$line")
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$gw_pid/status")
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$gw_pid/status")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$((q1 - q0))" "$reqs_c" "$((a1 - a0))" "$wrk403" \
    "$((m1 - m0))" "$((e1 - e0))" "$reqs_e" "$hwm" "$rss" "$(cut -f2 <<<"$line")" >>"$extra"
done
kill -0 "$gw_pid" 2>/dev/null || die "the gateway died: $(tail -5 "$tmp/gateway.log")"

# --- report -------------------------------------------------------------------------------------
mkdir -p "$root/target"
report=$root/target/load-report.md
python3 - "$results" "$extra" "$report" "$paired" <<PY
import statistics, sys
res, extra, out, paired = sys.argv[1:5]
rows = [l.rstrip("\n").split("\t") for l in open(res) if l.strip()]
ex = [l.rstrip("\n").split("\t") for l in open(extra) if l.strip()]
med = statistics.median
names = {
    "a": "a  wrk -> upstream (nginx return 200)",
    "b": "b  wrk -> nginx proxy_pass keepalive -> upstream",
    "h": "h  b, nginx setting the gateway's four headers (c's bytes to the upstream)",
    "c": "c  wrk -> gateway -> upstream, allowed $ALLOWED_PATH, cached session",
    "d": "d  wrk -> gateway, denied $DENIED_PATH (403 + audit row)",
    "e": "e  wrk -> gateway -> upstream, $SESSIONS sessions rotating",
    "f": "f  wrk -> bare hyper data plane (the gateway's, every path public) -> upstream",
}
def ms(us):
    return f"{us / 1000:.3f} ms"
stat = {}
lines = []
lines.append(f"# rbac-gateway loopback load ({len(ex)} round(s), medians)")
lines.append("")
lines.append("wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency; $NPROC cores shared by wrk, nginx, the gateway "
             "(worker threads = $gw_threads) and PostgreSQL; nginx upstream worker_processes 1, "
             "nginx proxy worker_processes $PROXY_WORKERS; PostgreSQL fsync=${PG_FSYNC:-off}")
lines.append("")
lines.append("| case | requests/s | x nginx (b) | p50 | p99 | proxy CPU µs/request | upstream CPU µs/request |")
lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
cpu = {}
upcpu = {}
for c in "abhfcde":
    rs = [r for r in rows if r[1] == c]
    rps = med(float(r[2]) for r in rs)
    p50 = med(float(r[3]) for r in rs)
    p99 = med(float(r[4]) for r in rs)
    bad = sum(int(r[7]) for r in rs)
    non2xx = sum(int(r[6]) for r in rs)
    stat[c] = rps
    ticks = [int(r[8]) / $CLK_TCK * 1e6 / max(int(r[5]), 1) for r in rs]
    cpu[c] = med(ticks) if c != "a" else None
    upcpu[c] = med(int(r[9]) / $CLK_TCK * 1e6 / max(int(r[5]), 1) for r in rs)
    note = ""
    if c != "d" and non2xx:
        note += f" ({non2xx} non-2xx!)"
    if bad:
        note += f" ({bad} socket errors)"
    stat[c + "p99"] = p99
    rows_b = [r for r in rows if r[1] == "b"]
    xb = rps / med(float(r[2]) for r in rows_b)
    cpu_s = "-" if cpu[c] is None else f"{cpu[c]:.1f}"
    up_s = "-" if c == "d" else f"{upcpu[c]:.1f}"
    lines.append(f"| {names[c]}{note} | {rps:,.0f} | {xb:.2f} | {ms(p50)} | {ms(p99)} | {cpu_s} | {up_s} |")
lines.append("")
def per_round(c):
    return {r[0]: float(r[2]) for r in rows if r[1] == c}
b_by_round = per_round("b")
cb = [c / b_by_round[r] for r, c in sorted(per_round("c").items(), key=lambda x: int(x[0]))]
lines.append(f"- c/b (gateway vs nginx proxy_pass): {stat['c'] / stat['b']:.2f}; per round, b and c back to back "
             f"(order b-c, c-b, ...): {', '.join(f'{x:.2f}' for x in cb)}, median {med(cb):.2f}")
lines.append(f"- c/h (gateway vs nginx proxy_pass setting the same headers): {stat['c'] / stat['h']:.2f}; "
             f"h/b: {stat['h'] / stat['b']:.2f}")
lines.append(f"- d/c (denied with audit vs allowed): {stat['d'] / stat['c']:.2f}")
lines.append(f"- c/a (gateway vs upstream alone): {stat['c'] / stat['a']:.2f}")
lines.append(f"- c/f (gateway vs its own data plane without authorization): {stat['c'] / stat['f']:.2f}")
lines.append(f"- f/b (data plane without authorization vs nginx proxy_pass): {stat['f'] / stat['b']:.2f}")
lines.append(f"- p99 c - b: {(stat['cp99'] - stat['bp99']) / 1000:+.3f} ms")
lines.append(f"- CPU per request, c/b: {cpu['c'] / cpu['b']:.2f} (gateway {cpu['c']:.1f} µs, nginx {cpu['b']:.1f} µs); "
             f"f/b: {cpu['f'] / cpu['b']:.2f}; h/b: {cpu['h'] / cpu['b']:.2f}; d: {cpu['d']:.1f} µs")
lines.append(f"- upstream CPU per request: behind nginx (b) {upcpu['b']:.1f} µs, behind nginx with the headers (h) "
             f"{upcpu['h']:.1f} µs, behind the data plane (f) {upcpu['f']:.1f} µs, behind the gateway (c) {upcpu['c']:.1f} µs "
             f"(the three processes share the machine's cores)")
pr = [l.rstrip("\n").split("\t") for l in open(paired) if l.strip()]
def pcol(c, i):
    return [float(r[i]) for r in pr if r[1] == c]
def pcpu(c):
    return [int(r[8]) / $CLK_TCK * 1e6 / max(int(r[5]), 1) for r in pr if r[1] == c]
pb_rps, pc_rps, pb_cpu, pc_cpu = pcol("pb", 2), pcol("pc", 2), pcpu("pb"), pcpu("pc")
pb_p99, pc_p99 = pcol("pb", 4), pcol("pc", 4)
lines.append(f"- paired (p: b and c loaded at the same moments, wrk -t$THREADS -c{($CONNECTIONS + 1) // 2} each): "
             f"nginx {med(pb_rps):,.0f} req/s at {med(pb_cpu):.1f} µs CPU/request, p99 {ms(med(pb_p99))}; "
             f"gateway {med(pc_rps):,.0f} req/s at {med(pc_cpu):.1f} µs, p99 {ms(med(pc_p99))}; gateway/nginx per round: "
             f"requests {med(c / b for b, c in zip(pb_rps, pc_rps)):.2f}, "
             f"CPU per request {med(c / b for b, c in zip(pb_cpu, pc_cpu)):.2f} "
             f"({', '.join(f'{c / b:.2f}' for b, c in zip(pb_cpu, pc_cpu))})")
hwm = max(int(e[8]) for e in ex)
rss = int(ex[-1][9])
lines.append(f"- gateway peak RSS after (e): VmHWM {hwm / 1024:.1f} MiB (VmRSS now {rss / 1024:.1f} MiB)")
qc = [int(e[1]) / max(int(e[2]), 1) for e in ex]
qe = [int(e[6]) / max(int(e[7]), 1) for e in ex]
lines.append(f"- database queries per request, case c (steady state): {med(qc):.6f} "
             f"(per round: {', '.join(f'{int(e[1])}/{e[2]}' for e in ex)})")
lines.append(f"- database queries per request, case e: {med(qe):.4f} "
             f"(per round: {', '.join(f'{int(e[6])}/{e[7]}' for e in ex)})")
lines.append("- case d, per round: audit rows written / 403s wrk reported / gateway denials counted:")
ok = True
for e in ex:
    rows_d, wrk403, denied = int(e[3]), int(e[4]), int(e[5])
    inflight = rows_d - wrk403
    # A request whose client hung up while its row was being written has the row but was never
    # answered (the 403 cannot reach a closed connection): rows may exceed the counted 403s
    # by at most one request per connection, never fall short.
    match = 0 <= rows_d - denied <= $CONNECTIONS and 0 <= inflight <= $CONNECTIONS
    ok &= match
    lines.append(f"  - round {e[0]}: {rows_d} / {wrk403} / {denied}"
                 + ("" if rows_d == wrk403 else f" ({inflight} answered after wrk stopped reading)")
                 + ("" if match else "  MISMATCH"))
lines.append(f"- audit rows vs 403s: {'match' if ok else 'MISMATCH'} "
             "(every 403 has its row; wrk stops reading with up to one request per connection in flight, "
             "whose row is written even when its answer is not)")
text = "\n".join(lines) + "\n"
sys.stdout.write(text)
open(out, "w").write(text)
PY
log "report written to target/load-report.md"
