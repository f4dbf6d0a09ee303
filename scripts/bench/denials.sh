#!/usr/bin/env bash
# What a denial costs, machine-wide: the allowed request of scripts/bench/load.sh (c) and its denied
# one (d: a 403 after a durable audit row) in alternating runs against one gateway and its own
# PostgreSQL, with CPU per request from /proc of the gateway (and of its rbac-gateway-bg thread,
# where the audit writer ran until 2026-11-28: since, it runs on the data plane's first worker
# while it serves, and bg is about 0), of every PostgreSQL process, and the machine's idle time; then
# the audit writer's rows per batch at each wrk connection count of SWEEP.
#
# Usage: [ROUNDS=2] [DURATION=5] [CONNECTIONS=32] [SWEEP="8 16 32 64 128"] [BINARY=path] scripts/bench/denials.sh
#   BINARY   the gateway to measure (default target/release/rbac-gateway, built if missing):
#            compare two builds by running this once per binary, in turns
#   SWEEP    wrk connection counts for the batch-size runs of d ("" skips them)
#   KEEP=1   keep the temporary directory
# Prints one line per run: case, requests/s, and µs per request of gateway CPU (all threads),
# of its bg thread, of PostgreSQL (server and backends) and of idle CPU (both cores).
set -euo pipefail

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
SWEEP=${SWEEP-8 16 32 64 128}
KEEP=${KEEP:-0}
ALLOWED_PATH=/ops
DENIED_PATH=/console/flags/promotions

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[denials] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
for n in $CONNECTIONS $SWEEP; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "connection counts must be positive integers: $n"; done
. "$root/scripts/bench/bench-lib.sh"
need_tools wrk nginx cmake curl psql python3 initdb

BINARY=${BINARY:-$root/target/release/rbac-gateway}
if [ ! -x "$BINARY" ]; then
  log "cargo build --release --bin rbac-gateway"
  cargo build --release --quiet --bin rbac-gateway
fi
[ -x "$BINARY" ] || die "$BINARY is missing"

bench_tmp rbac-denials
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$BINARY" migrate --database-url "$DATABASE_URL" >/dev/null
run=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
tok_admin="load-admin-$run"
seed_admins load "$tok_admin" "load-norole-$run" "load-e-$run-" 10
start_upstream # up_port, up_pid
gw_port=$(free_port)
adm_port=$(free_port)
"$BINARY" serve --listen "127.0.0.1:$gw_port" --admin-listen "127.0.0.1:$adm_port" \
  --upstream "127.0.0.1:$up_port" --routes "$root/routes.toml" --database-url "$DATABASE_URL" \
  --audit-spool "$tmp/audit.spool" --cache-ttl 60 --log-format json >"$tmp/gateway.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
wait_http "http://127.0.0.1:$adm_port/readyz" 200 30 || die "gateway not ready: $(tail -5 "$tmp/gateway.log")"
pg_master=$(head -1 "$tmp/pg/data/postmaster.pid")
[[ $pg_master =~ ^[0-9]+$ ]] || die "no PostgreSQL pid in $tmp/pg/data/postmaster.pid"
cookie="Cookie: console_session=$tok_admin"
GW=http://127.0.0.1:$gw_port
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "$cookie" "$GW$ALLOWED_PATH")" = 200 ] || die "$ALLOWED_PATH is not allowed"
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "$cookie" "$GW$DENIED_PATH")" = 403 ] || die "$DENIED_PATH is not denied"

bg_ticks() { # the bg runtime's thread (admin listener, replay; the audit writer until 2026-11-28)
  local d t=0
  for d in /proc/"$gw_pid"/task/*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = rbac-gateway-bg ] || continue
    t=$(( t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$d/stat") ))
  done
  echo "$t"
}
idle_ticks() { awk '/^cpu / { print $5 + $6 }' /proc/stat; }

measure() { # label connections path
  local g0 b0 p0 i0 g1 b1 p1 i1 out
  g0=$(cpu_ticks "$gw_pid"); b0=$(bg_ticks); p0=$(cpu_ticks "$pg_master"); i0=$(idle_ticks)
  out=$(wrk -t1 -c"$2" -d"${DURATION}s" -H "$cookie" "$GW$3") || die "wrk failed: $out"
  g1=$(cpu_ticks "$gw_pid"); b1=$(bg_ticks); p1=$(cpu_ticks "$pg_master"); i1=$(idle_ticks)
  python3 - "$1" "$(getconf CLK_TCK)" "$out" $((g1 - g0)) $((b1 - b0)) $((p1 - p0)) $((i1 - i0)) <<'PY'
import re, sys
label, hz, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
g, b, p, i = (int(x) for x in sys.argv[4:8])
reqs = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
us = lambda t: t * 1e6 / hz / reqs
print(f"{label:<8} {rps:>9,.0f} req/s  gateway {us(g):5.1f} µs (bg {us(b):4.1f})  PostgreSQL {us(p):5.1f} µs  idle {us(i):5.1f} µs")
PY
}

log "$ROUNDS round(s) of c and d, ${DURATION} s each, wrk -t1 -c$CONNECTIONS, $BINARY"
for _ in $(seq "$ROUNDS"); do
  measure c "$CONNECTIONS" "$ALLOWED_PATH"
  measure d "$CONNECTIONS" "$DENIED_PATH"
done
for n in $SWEEP; do
  b0=$(metric rbac_gateway_audit_batches_total)
  r0=$(metric 'rbac_gateway_audit_rows_total{sink="database"}')
  line=$(measure "d -c$n" "$n" "$DENIED_PATH")
  b1=$(metric rbac_gateway_audit_batches_total)
  r1=$(metric 'rbac_gateway_audit_rows_total{sink="database"}')
  printf '%s  rows per batch %s\n' "$line" "$(python3 -c "print(round(($r1 - $r0) / max($b1 - $b0, 1), 1))")"
done
spooled=$(metric 'rbac_gateway_audit_rows_total{sink="spool"}')
[ "$spooled" = 0 ] || log "warning: $spooled rows went to the spool (the database did not answer in time)"
