#!/usr/bin/env bash
# What tracing every request costs (issue 53): the allowed request of scripts/bench/load.sh (c: one
# cached session, forwarded to the nginx upstream) against two gateways of one binary started side
# by side, one with OpenTelemetry off (nothing set) and one exporting every request's spans
# (OTEL_TRACES_SAMPLER=always_on) and the metrics to a collector stand-in (nginx answering 200 to
# every OTLP/HTTP POST, so the collector's own work is not the gateway's). Paired: in each round
# both are loaded one after the other, the order swapped every round. Prints per run requests/s
# and gateway CPU µs per request (all threads, /proc), then per round on/off of both, and the
# spans the traced gateway exported and dropped.
#
# Usage: [ROUNDS=3] [DURATION=5] [CONNECTIONS=32] [BINARY=path] scripts/bench/otel.sh
#   BINARY   the gateway (default target/release/rbac-gateway, built if missing)
#   KEEP=1   keep the temporary directory
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
KEEP=${KEEP:-0}
ALLOWED_PATH=/ops

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[otel] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
. "$root/scripts/bench/bench-lib.sh"
need_tools wrk nginx curl psql python3 initdb

BINARY=${BINARY:-$root/target/release/rbac-gateway}
if [ ! -x "$BINARY" ]; then
  log "cargo build --release --bin rbac-gateway"
  cargo build --release --quiet --bin rbac-gateway
fi
[ -x "$BINARY" ] || die "$BINARY is missing"

bench_tmp rbac-otel
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$BINARY" migrate --database-url "$DATABASE_URL" >/dev/null
run=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
tok_admin="otel-admin-$run"
seed_admins otel "$tok_admin" "otel-norole-$run" "otel-e-$run-" 1
start_upstream # up_port, up_pid
col_port=$(free_port)
nginx_conf collector 1 "  server {
    listen 127.0.0.1:$col_port;
    client_max_body_size 64m;
    location / { return 200; }
  }"
start_nginx collector "http://127.0.0.1:$col_port/" 200
col_pid=$started_pid

start_gateway() { # name [env...]: sets gw_<name>_port, gw_<name>_adm, gw_<name>_pid
  local name=$1 port adm
  shift
  port=$(free_port)
  adm=$(free_port)
  env "$@" "$BINARY" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$adm" \
    --upstream "127.0.0.1:$up_port" --routes "$root/routes.toml" --database-url "$DATABASE_URL" \
    --audit-spool "$tmp/audit-$name.spool" --cache-ttl 60 --log-format json >"$tmp/gateway-$name.log" 2>&1 &
  pids+=("$!")
  printf -v "gw_${name}_pid" %s "$!"
  printf -v "gw_${name}_port" %s "$port"
  printf -v "gw_${name}_adm" %s "$adm"
  wait_http "http://127.0.0.1:$adm/readyz" 200 30 || die "gateway $name not ready: $(tail -5 "$tmp/gateway-$name.log")"
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: console_session=$tok_admin" "http://127.0.0.1:$port$ALLOWED_PATH")" = 200 ] ||
    die "$ALLOWED_PATH is not allowed on gateway $name"
}
start_gateway off
start_gateway on OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$col_port" OTEL_TRACES_SAMPLER=always_on \
  OTEL_SERVICE_NAME=rbac-gateway-bench
grep -q '"telemetry: exporting over OTLP/HTTP"' "$tmp/gateway-on.log" || die "the traced gateway is not exporting: $(tail -5 "$tmp/gateway-on.log")"
grep -q 'telemetry' "$tmp/gateway-off.log" && die "the untraced gateway says telemetry: $(grep telemetry "$tmp/gateway-off.log")"

results=$tmp/results.tsv
measure() { # name round
  local pid port g0 g1 c0 c1 out
  pid=gw_$1_pid; port=gw_$1_port
  g0=$(cpu_ticks "${!pid}"); c0=$(cpu_ticks "$col_pid")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "Cookie: console_session=$tok_admin" "http://127.0.0.1:${!port}$ALLOWED_PATH") ||
    die "wrk failed: $out"
  g1=$(cpu_ticks "${!pid}"); c1=$(cpu_ticks "$col_pid")
  python3 - "$1" "$2" "$(getconf CLK_TCK)" "$out" $((g1 - g0)) $((c1 - c0)) <<'PY' | tee -a "$results"
import re, sys
name, rnd, hz, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
g, c = int(sys.argv[5]), int(sys.argv[6])
reqs = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if bad:
    sys.exit(f"{bad.group(1)} answers were not 200")
print(f"{rnd}\t{name}\t{rps:.0f}\t{g * 1e6 / hz / reqs:.2f}\t{c * 1e6 / hz / reqs:.2f}")
PY
}

log "$ROUNDS round(s), ${DURATION} s each, wrk -t1 -c$CONNECTIONS $ALLOWED_PATH, $BINARY"
printf 'round\tgateway\treq/s\tgateway µs/req\tcollector µs/req\n'
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="off on"; else order="on off"; fi
  for g in $order; do measure "$g" "$r"; done
done
adm_port=$gw_on_adm
exported=$(curl -s "http://127.0.0.1:$gw_on_adm/metrics" | awk '$1 == "rbac_gateway_requests_total{decision=\"allowed\"}" { print $2 }')
dropped=$(metric 'rbac_gateway_telemetry_dropped_total{signal="spans"}')
python3 - "$results" "$exported" "$dropped" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for rnd, name, rps, us, _ in rows:
    by.setdefault(rnd, {})[name] = (float(rps), float(us))
tp = [v["on"][0] / v["off"][0] for v in by.values()]
cpu = [v["on"][1] / v["off"][1] for v in by.values()]
print("per round, traced / off: throughput " + " ".join(f"{x:.3f}" for x in tp)
      + f" (median {statistics.median(tp):.3f}); CPU per request " + " ".join(f"{x:.3f}" for x in cpu)
      + f" (median {statistics.median(cpu):.3f})")
print(f"traced gateway: {sys.argv[2]} allowed requests, {sys.argv[3]} spans dropped (queue full or not taken)")
PY
