#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: a figure other tenants of this
# shared machine do not move (wall-clock CPU varies by 10-30% between runs). Each process under
# test runs under `valgrind --tool=callgrind --instr-atstart=no`; after a warm-up, instrumentation
# is switched on for WINDOWS windows of `wrk -t1 -c32 -d${DURATION}s` (`-c1` for lone), each
# dumped on its own, and the process's instructions in a window (every thread: the data plane and
# the background tasks; timed background work is spread over however many requests the slowed
# process served) are divided by the requests wrk saw in it. A case's figure is the median of its
# windows.
#
# The cases (issue 67), all in one run:
#   allowed  the allowed path with one cached session (load.sh's case c: GET /ops)
#   denied   a route that session is denied: the 403 and its durable access_denied row (case d)
#   lone     the denied request over one connection (`wrk -c1`): each 403 waits for an INSERT of
#            its own row alone, so its figure does not move with the batch sizes the machine's
#            load makes (denied's does: a batch's fixed cost is shared by its rows) and its budget
#            can sit close to it: the ratchet of the denial's own path
#   authz    forward-auth: the gateway's /authz for the allowed request (X-Original-*, the cookie)
#   cold     the allowed request with 10,000 sessions rotating and --cache-ttl 0: every request
#            a session lookup in PostgreSQL (load.sh's case e, uncached); a gateway of its own
#   nginx    nginx `proxy_pass` in front of the same upstream (load.sh's case b), one process
#            (`master_process off`) under callgrind: the floor the others are read against
#   idle     not a request: the gateway's own instructions a second with no traffic at all (its
#            alert pass, change feed, reload watcher, audit outbox), each window DURATION s.
#            Every case above carries them, divided by its requests: a window that serves fewer
#            requests (a busier machine) reads higher by them. Only when CASES names it; never
#            checked against a budget
#
#   scripts/bench/instructions.sh [--check | --write] [BIN...]
#     BIN       default target/release/rbac-gateway, built first when not given; several (a
#               paired comparison of builds, report mode): each one's cases in turn, in one run,
#               named CASE-1, CASE-2... in the order given
#     --check   compare with scripts/bench/instructions-budget.toml: exit 1 when a case's figure
#               exceeds its budget by more than TOLERANCE percent (default 2). What CI runs.
#     --write   rewrite the budget file with this run's figures (today's date, HEAD's commit).
#               Lowering a budget is an ordinary commit; raising one needs a dated entry in
#               docs/performance-log.md saying why (scripts/bench/README.md).
#   CASES="allowed denied lone authz cold nginx"  WINDOWS=3  BATCHED_WINDOWS=5 (denied, lone, cold)
#   DURATION=3 (s a window)  WARMUP=2 (s)
#   TOP=0 (functions listed per case, by own instructions)  KEEP=1 (keep the profiles)
#   SYSCALLS=1   the allowed case only: instead of callgrind, the gateway runs as it is and
#                `perf stat` counts its system calls per request over one wrk run (all of them,
#                and write, epoll_wait, recvfrom, sendto, writev): the kernel's share
#   PGBOUNCER=1  the gateways reach PostgreSQL through PgBouncer in transaction mode (not with
#                --check or --write: the budgets are of the direct path)
#   TRACED=1     every request traced (OTEL_TRACES_SAMPLER=always_on), the spans exported to the
#                nginx upstream (it answers 200 to the OTLP POSTs): what a traced request costs
# The figures are written to target/instructions-report.tsv (case, median, min, max, windows).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
MODE=report
case ${1:-} in
  --check) MODE=check; shift ;;
  --write) MODE=write; shift ;;
esac
DURATION=${DURATION:-3}
WINDOWS=${WINDOWS:-3}
BATCHED_WINDOWS=${BATCHED_WINDOWS:-5}
WARMUP=${WARMUP:-2}
TOP=${TOP:-0}
KEEP=${KEEP:-0}
TOLERANCE=${TOLERANCE:-2}
# Every case, in the order they run and the budget file lists them (--check and --write run all).
ALL_CASES="allowed denied lone authz cold nginx"
CASES=${CASES:-$ALL_CASES}
SESSIONS=${SESSIONS:-10000}
BUDGET=$root/scripts/bench/instructions-budget.toml
log() { printf '[instructions] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
[[ $WINDOWS =~ ^[1-9][0-9]*$ ]] || die "WINDOWS must be a positive integer"
if [ "$MODE" != report ]; then
  CASES=$ALL_CASES
  [ "${SYSCALLS:-0}" = 0 ] && [ "${TRACED:-0}" = 0 ] && [ "${PGBOUNCER:-0}" = 0 ] ||
    die "--check and --write measure the plain build, direct (no SYSCALLS, TRACED, PGBOUNCER)"
fi

. "$root/scripts/bench/bench-lib.sh"

SYSCALLS=${SYSCALLS:-0}
TRACED=${TRACED:-0}
if [ "$SYSCALLS" = 1 ]; then need_tools perf wrk nginx psql python3; else need_tools valgrind wrk nginx psql python3; fi

if [ $# -ge 1 ]; then
  BINS=("$@")
else
  log "cargo build --release"
  cargo build --release --quiet --bin rbac-gateway
  BINS=("$root/target/release/rbac-gateway")
fi
for BIN in "${BINS[@]}"; do [ -x "$BIN" ] || die "$BIN is not an executable"; done
[ "$MODE" = report ] || [ ${#BINS[@]} = 1 ] || die "--check and --write take one binary"

bench_tmp rbac-instr
started=$SECONDS

eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$BIN" migrate --database-url "$DATABASE_URL" >/dev/null
run=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
token="instr-admin-$run"
seed_admins instr "$token" "instr-norole-$run" "instr-e-$run-" "$SESSIONS"
seq -f "instr-e-$run-%.0f" 1 "$SESSIONS" >"$tmp/cookies.txt"
cookie="Cookie: console_session=$token"
ALLOWED_PATH=/ops
DENIED_PATH=/console/flags/promotions

start_upstream
up=$up_port
db_url=$DATABASE_URL
if [ "${PGBOUNCER:-0}" = 1 ]; then
  start_pgbouncer
  db_url=$pgb_url
fi

under() { # name: the callgrind command line for the process NAME (its profiles in $tmp/NAME.out*)
  echo valgrind --tool=callgrind --callgrind-out-file="$tmp/$1.out" --instr-atstart=no --dump-instr=no
}

start_gateway() { # name cache-ttl: sets gw, adm, authz, vg (its pid)
  local cmd=()
  rm -f "$tmp/$1.out"*
  gw=$(free_port)
  adm=$(free_port)
  authz=$(free_port)
  [ "$SYSCALLS" = 1 ] || read -r -a cmd <<<"$(under "$1")"
  [ "$TRACED" = 1 ] && cmd=(env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:$up/v1/traces" OTEL_TRACES_SAMPLER=always_on "${cmd[@]}")
  "${cmd[@]}" "$BIN" serve --listen "127.0.0.1:$gw" --admin-listen "127.0.0.1:$adm" --upstream "127.0.0.1:$up" \
    --routes "$root/routes.toml" --database-url "$db_url" --audit-spool "$tmp/audit-$1.spool" \
    --authz-listen "127.0.0.1:$authz" --cache-ttl "$2" >"$tmp/gateway-$1.log" 2>&1 &
  vg=$!
  pids+=("$vg")
  for _ in $(seq 600); do
    curl -s -o /dev/null "http://127.0.0.1:$adm/readyz" && return 0
    kill -0 "$vg" 2>/dev/null || die "the gateway did not start: $(tail -5 "$tmp/gateway-$1.log")"
    sleep 0.2
  done
  die "the gateway $1 was not ready within 120 s"
}

stop() { # pid
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

expect() { # status url curl-args...: one request answered STATUS
  local want=$1 url=$2 got
  shift 2
  got=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url")
  [ "$got" = "$want" ] || die "$url answered $got, expected $want"
}

report=$tmp/report.tsv
: >"$report"
# The dump of profile NAME just written: sets dumps (the newest file) and total (its
# instructions; it has one `totals:` line, which its `summary:` line may repeat: the totals only).
dumped() { # name
  dumps=$(ls -t "$tmp/$1.out".* | head -1)
  total=$(awk '/^totals:/ { s += $2 } END { printf "%.0f\n", s }' "$dumps")
}

# The TOP functions of a dump by their own instructions, to stderr (none when TOP=0). Every
# stage reads its input to the end: `head` closed the pipe early, and under pipefail the
# SIGPIPE ended the run (exit 141) after the first case.
top_functions() { # dump-file
  [ "$TOP" -gt 0 ] || return 0
  callgrind_annotate --inclusive=no "$1" 2>/dev/null | awk '/^-+$/ { n++ } n >= 4' |
    grep -E '^ *[0-9,]+ \(' | awk -v n="$TOP" 'NR <= n' | sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/library/##' | cut -c1-160 >&2
}

# Measures one case against the callgrind process PID: a warm-up, then WINDOWS windows each
# counted and dumped on its own. wrk's arguments follow; STATUS is what every answer must be.
measure() { # case profile-name pid status wrk-args...
  local name=$1 prof=$2 pid=$3 status=$4 w out requests non2xx total per dumps figures=() windows=$WINDOWS
  local conns=32
  shift 4
  # The denial's rows and the cold lookups go to PostgreSQL in batches whose size follows the
  # timing: their windows vary more (about 3%), so they get more of them. lone's rows are not
  # batched, but its windows serve few requests and moved by up to 5% on a loaded machine.
  case $name in denied* | lone* | cold*) windows=$BATCHED_WINDOWS ;; esac
  case $name in lone*) conns=1 ;; esac
  log "$name: ${WARMUP}s warm-up, then $windows windows of ${DURATION}s (wrk -t1 -c$conns)"
  wrk -t1 -c"$conns" -d"${WARMUP}s" "$@" >/dev/null
  for w in $(seq "$windows"); do
    callgrind_control -i on "$pid" >/dev/null 2>&1
    out=$(wrk -t1 -c"$conns" -d"${DURATION}s" "$@")
    callgrind_control -i off "$pid" >/dev/null 2>&1
    callgrind_control -d "$pid" >/dev/null 2>&1
    requests=$(awk '/ requests in /{ print $1 }' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/{ print $5 }' <<<"$out")
    [ "${requests:-0}" -gt 0 ] || die "$name: wrk made no requests: $out"
    if [ "$status" = 200 ]; then
      [ -z "$non2xx" ] || die "$name: wrk saw $non2xx non-2xx answers"
    else
      [ "${non2xx:-0}" = "$requests" ] || die "$name: $requests requests, ${non2xx:-0} answered other than 2xx"
    fi
    dumped "$prof"
    per=$((total / requests))
    figures+=("$per")
    log "$name window $w: $per instructions per request ($total over $requests requests)"
  done
  printf '%s\t%s\n' "$name" "${figures[*]}" >>"$report"
  top_functions "$dumps"
}

wants() { [[ " $CASES " == *" $1 "* ]]; }

if [ "$SYSCALLS" = 1 ]; then
  start_gateway allowed 600
  url="http://127.0.0.1:$gw$ALLOWED_PATH"
  expect 200 "$url" -H "$cookie"
  calls="raw_syscalls:sys_enter"
  for c in write epoll_wait recvfrom sendto writev; do calls+=",syscalls:sys_enter_$c"; done
  log "warm-up, then ${DURATION}s of wrk -t1 -c32 under perf stat"
  wrk -t1 -c32 -d3s -H "$cookie" "$url" >/dev/null
  perf stat -x, -e "$calls" -p "$vg" -o "$tmp/perf.csv" -- sleep $((DURATION + 2)) &
  perf_pid=$!
  sleep 1 # perf attaches before wrk starts; its window is longer than wrk's run
  wrk_out=$(wrk -t1 -c32 -d"${DURATION}s" -H "$cookie" "$url")
  wait "$perf_pid" || die "perf stat failed: $(cat "$tmp/perf.csv")"
  requests=$(awk '/ requests in /{ print $1 }' <<<"$wrk_out")
  # perf's CSV: count,unit,event,...; "<not supported>" or "<not counted>" is a failure.
  awk -F, -v n="$requests" -v bin="$(basename "$BIN")" '
    /^#/ || NF < 3 { next }
    $1 !~ /^[0-9]+$/ { bad = bad " " $3; next }
    { printf "%-32s %8.3f per request (%s in all)\n", $3, $1 / n, $1 }
    END { printf "%s requests; %s\n", n, bin; if (bad != "") { print "not counted:" bad > "/dev/stderr"; exit 1 } }
  ' "$tmp/perf.csv"
  exit 0
fi

# Several binaries (report mode): each one's cases in turn, in the same run, named CASE-N for
# the Nth binary (a paired comparison of builds).
n=0
for BIN in "${BINS[@]}"; do
n=$((n + 1))
tag=""
[ ${#BINS[@]} = 1 ] || { tag="-$n"; log "binary $n: $BIN"; }
if wants allowed || wants denied || wants lone || wants authz; then
  start_gateway cached 600
  expect 200 "http://127.0.0.1:$gw$ALLOWED_PATH" -H "$cookie"
  expect 403 "http://127.0.0.1:$gw$DENIED_PATH" -H "$cookie"
  expect 200 "http://127.0.0.1:$authz/authz" -H "$cookie" -H "X-Original-Method: GET" -H "X-Original-URI: $ALLOWED_PATH"
  for c in allowed denied lone authz; do
    wants $c || continue
    case $c in
      allowed) args=(-H "$cookie" "http://127.0.0.1:$gw$ALLOWED_PATH"); st=200 ;;
      denied | lone) args=(-H "$cookie" "http://127.0.0.1:$gw$DENIED_PATH"); st=403 ;;
      authz) args=(-H "$cookie" -H "X-Original-Method: GET" -H "X-Original-URI: $ALLOWED_PATH" "http://127.0.0.1:$authz/authz"); st=200 ;;
    esac
    adm_port=$adm
    b0=$(metric rbac_gateway_audit_batches_total)
    r0=$(metric 'rbac_gateway_audit_rows_total{sink="database"}')
    measure "$c$tag" cached "$vg" "$st" "${args[@]}"
    # A batch's fixed cost is shared by its rows: the denial's figure moves with their number
    # (lone's are one each: it stops when they are not).
    if [ "$c" = denied ] || [ "$c" = lone ]; then
      rows=$(($(metric 'rbac_gateway_audit_rows_total{sink="database"}') - r0))
      inserts=$(($(metric rbac_gateway_audit_batches_total) - b0))
      log "$c$tag: $(awk -v r="$rows" -v b="$inserts" 'BEGIN { printf "%.2f", r / (b > 0 ? b : 1) }') rows per INSERT ($rows in $inserts)"
      [ "$c" != lone ] || { [ "$rows" -gt 0 ] && [ "$rows" -eq "$inserts" ]; } ||
        die "lone$tag: $rows rows written in $inserts INSERTs, not one each (or rows went to the spool)"
    fi
  done
  [ "$(metric 'rbac_gateway_audit_rows_total{sink="spool"}')" = 0 ] ||
    log "warning: denials went to the spool (the database did not answer in time)"
  stop "$vg"
fi

if wants idle; then
  start_gateway idle 600
  # Past start-up's own work (the first alert pass, the first reads of the mapping).
  sleep "$WARMUP"
  figures=()
  for w in $(seq "$WINDOWS"); do
    callgrind_control -i on "$vg" >/dev/null 2>&1
    sleep "$DURATION"
    callgrind_control -i off "$vg" >/dev/null 2>&1
    callgrind_control -d "$vg" >/dev/null 2>&1
    dumped idle
    figures+=("$((total / DURATION))")
    log "idle$tag window $w: $((total / DURATION)) instructions a second ($total in ${DURATION}s)"
  done
  printf '%s\t%s\n' "idle$tag" "${figures[*]}" >>"$report"
  top_functions "$dumps"
  stop "$vg"
fi

if wants cold; then
  start_gateway cold 0
  expect 200 "http://127.0.0.1:$gw$ALLOWED_PATH" -H "Cookie: console_session=$(sed -n 7p "$tmp/cookies.txt")"
  export COOKIES=$tmp/cookies.txt LOAD_PATH=$ALLOWED_PATH
  measure "cold$tag" cold "$vg" 200 \
    -s "$root/scripts/bench/load/rotate.lua" "http://127.0.0.1:$gw$ALLOWED_PATH"
  stop "$vg"
fi
done

if wants nginx; then
  px=$(free_port)
  nginx_conf proxy 1 "  upstream app {
    server 127.0.0.1:$up;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$px;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
  sed -i '1i master_process off;' "$tmp/proxy/nginx.conf"
  read -r -a cmd <<<"$(under nginx)"
  "${cmd[@]}" "$NGINX" -p "$tmp/proxy" -c "$tmp/proxy/nginx.conf" -e "$tmp/proxy/error.log" >"$tmp/proxy/stdout.log" 2>&1 &
  vg=$!
  pids+=("$vg")
  wait_http "http://127.0.0.1:$px/" 200 60 || die "nginx under callgrind did not start: $(cat "$tmp/proxy/error.log" "$tmp/proxy/stdout.log")"
  measure nginx nginx "$vg" 200 -H "$cookie" "http://127.0.0.1:$px$ALLOWED_PATH"
  stop "$vg"
fi

mkdir -p "$root/target"
head=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
python3 - "$MODE" "$report" "$root/target/instructions-report.tsv" "$BUDGET" "$TOLERANCE" "$head" \
  "$(basename "${BINS[0]}")" "$((SECONDS - started))" "$ALL_CASES" <<'PY'
import datetime, statistics, sys, tomllib
mode, report, out, budget_path, tolerance, head, binary, seconds, all_cases = sys.argv[1:10]
all_cases = all_cases.split()
tolerance = float(tolerance)
rows = {}
for line in open(report):
    name, figures = line.rstrip("\n").split("\t")
    rows[name] = [int(x) for x in figures.split()]
med = {k: int(statistics.median(v)) for k, v in rows.items()}
nginx = med.get("nginx")
with open(out, "w") as f:
    f.write("case\tmedian\tmin\tmax\twindows\n")
    for k, v in rows.items():
        f.write(f"{k}\t{med[k]}\t{min(v)}\t{max(v)}\t{' '.join(map(str, v))}\n")
budget = None
if mode == "check":
    with open(budget_path, "rb") as f:
        budget = tomllib.load(f)
print(f"{'case':<8} {'instr/request':>13} {'spread':>7} {'x nginx':>7}" + (f" {'budget':>8} {'vs budget':>9}" if budget else ""))
failed = []
for k, v in rows.items():
    spread = (max(v) - min(v)) / med[k] * 100
    idle = k.startswith("idle")
    ratio = f"{med[k] / nginx:.2f}" if nginx and not idle else "-"
    line = f"{k:<8} {med[k]:>13,} {spread:>6.1f}% {ratio:>7}" + (" (a second, no request)" if idle else "")
    if budget:
        b = budget["nginx"] if k == "nginx" else budget["budget"][k]
        over = (med[k] / b - 1) * 100
        line += f" {b:>8,} {over:>+8.1f}%"
        if over > tolerance and k != "nginx":
            failed.append(f"{k}: {med[k]:,} instructions per request, {over:+.1f}% over its budget of {b:,}")
    print(line)
print(f"({binary} at {head}; {sum(map(len, rows.values()))} windows; {seconds} s in all)")
if mode == "write":
    missing = set(all_cases) - med.keys()
    if missing:
        sys.exit(f"--write needs every case; missing {sorted(missing)}")
    today = datetime.date.today().isoformat()
    budgets = "".join(f"{k} = {med[k]}\n" for k in all_cases if k != "nginx")
    with open(budget_path, "w") as f:
        f.write(f"""# Instructions per request: the ratchet of issue 67, checked by
# `scripts/bench/instructions.sh --check` (in CI): a case whose figure exceeds its budget by more
# than 2% fails. Lowering a budget is an ordinary commit; raising one needs a dated entry in
# docs/performance-log.md that says why. Written by `scripts/bench/instructions.sh --write`.
date = "{today}"
commit = "{head}"
# nginx proxy_pass in the same run (not checked: the floor the cases are read against)
nginx = {med['nginx']}

[budget]
{budgets}""")
    print(f"wrote {budget_path}")
if budget:
    bn = budget.get("nginx")
    if bn and nginx and abs(nginx / bn - 1) * 100 > 5:
        print(f"note: nginx counts {nginx:,} against the budget's {bn:,}: the toolchain or nginx changed?", file=sys.stderr)
    if failed:
        print("over budget:\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(1)
    print(f"every case within {tolerance:g}% of its budget")
PY
