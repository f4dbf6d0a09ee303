#!/usr/bin/env bash
# How long each page of `rbac-gateway cockpit` takes for Console's mapping: routes.toml pushed
# in two versions (the second with cluster S6 back in shadow), 12 admins, DENIALS real 403s
# from a gateway serving routes.toml (each row explained on the denials page). Every page and its
# JSON is asked ROUNDS times, one request at a time, after one warm-up request; prints the median,
# the 90th percentile and the worst, in ms as curl saw them (the whole answer, on loopback).
#
# Usage: [ROUNDS=20] [DENIALS=20] [BINARY=path] [KEEP=1] scripts/bench/cockpit.sh
#   BINARY   default target/release/rbac-gateway, built if missing
# The bar (issue 54): every page under 200 ms.
set -euo pipefail

ROUNDS=${ROUNDS:-20}
DENIALS=${DENIALS:-20}
KEEP=${KEEP:-0}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[cockpit] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $DENIALS =~ ^[0-9]+$ ]] || die "DENIALS must be a whole number"
. "$root/scripts/bench/bench-lib.sh"
need_tools nginx curl psql python3 initdb

BINARY=${BINARY:-$root/target/release/rbac-gateway}
if [ ! -x "$BINARY" ]; then
  log "cargo build --release --bin rbac-gateway"
  cargo build --release --quiet --bin rbac-gateway
fi
[ -x "$BINARY" ] || die "$BINARY is missing"

bench_tmp rbac-cockpit
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$BINARY" migrate --database-url "$DATABASE_URL" >/dev/null
run=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
seed_admins cockpit "cockpit-admin-$run" "cockpit-norole-$run" "cockpit-e-$run-" 10
"$BINARY" mapping push routes.toml --database-url "$DATABASE_URL" --actor bench -m "Console's mapping" >/dev/null 2>&1
sed 's/^title = "Flags"$/title = "Flags"\nmode = "shadow"/' routes.toml >"$tmp/routes-v2.toml"
"$BINARY" mapping push "$tmp/routes-v2.toml" --database-url "$DATABASE_URL" --actor bench -m "S6 back to shadow" >/dev/null 2>&1

# Real denials: the admin without a role asks a gateway serving routes.toml for protected pages.
start_upstream # up_port, up_pid
gw_port=$(free_port)
adm_port=$(free_port)
"$BINARY" serve --listen "127.0.0.1:$gw_port" --admin-listen "127.0.0.1:$adm_port" \
  --upstream "127.0.0.1:$up_port" --routes "$root/routes.toml" --database-url "$DATABASE_URL" \
  --audit-spool "$tmp/audit.spool" --log-format json >"$tmp/gateway.log" 2>&1 &
pids+=("$!")
wait_http "http://127.0.0.1:$adm_port/readyz" 200 30 || die "gateway not ready: $(tail -5 "$tmp/gateway.log")"
paths=(/console/audit /console/flags /console/customers/7 /admin/console-versions)
for i in $(seq "$DENIALS"); do
  p=${paths[$(( i % ${#paths[@]} ))]}
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: console_session=cockpit-norole-$run" "http://127.0.0.1:$gw_port$p")
  [ "$code" = 403 ] || die "$p: $code, not 403"
done

cp_port=$(free_port)
"$BINARY" cockpit --database-url "$DATABASE_URL" --listen "127.0.0.1:$cp_port" >"$tmp/cockpit.log" 2>&1 &
pids+=("$!")
wait_http "http://127.0.0.1:$cp_port/denials" 200 30 || die "cockpit not up: $(cat "$tmp/cockpit.log")"

log "$BINARY, $ROUNDS requests a page"
printf '%-28s %8s %8s %8s %9s\n' page median_ms p90_ms max_ms bytes
for page in / /board.json /timeline /timeline.json /matrix /matrix.json "/matrix?compare=none" \
  "/matrix?cluster=S6" /diff /diff.json /denials /denials.json; do
  url="http://127.0.0.1:$cp_port$page"
  curl -s -o /dev/null "$url"
  for _ in $(seq "$ROUNDS"); do
    curl -s -o /dev/null -w '%{http_code} %{time_total} %{size_download}\n' "$url"
  done | python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
bad = [r[0] for r in rows if r[0] != "200"]
if bad: sys.exit("%s: HTTP %s" % (sys.argv[1], bad[0]))
t = sorted(float(r[1]) * 1e3 for r in rows)
print("%-28s %8.1f %8.1f %8.1f %9s" % (sys.argv[1], t[len(t) // 2], t[int(len(t) * 0.9) - 1 if len(t) >= 10 else -1], t[-1], rows[-1][2]))
' "$page"
done
