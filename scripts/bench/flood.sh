#!/usr/bin/env bash
# What an unauthenticated flood can make the gateway write to Console's database (issue 66 §5):
# wrk sends requests without a session to paths no rule maps at the gateway's full rate while
# pgbench runs a Console query (a session lookup by token hash) and a loop of an admin's denied
# requests runs beside them. For each --anonymous-denial-window of WINDOWS (0: a row per denial,
# the behaviour before) and each flood (one client; a new client per request, the worst case for
# the window, through --trusted-proxies 1 and X-Forwarded-For): flood requests/s, rows written to
# access_audit_events per second (counted before and after, the window's last row included), the
# denials each row without a session stands for, the Console
# query's p50 and p99, and whether every one of the admin's denials kept its own row.
#
# Usage: [DURATION=10] [CONNECTIONS=64] [WINDOWS="0 60"] [BINARY=path] scripts/bench/flood.sh
#   KEEP=1 keeps the temporary directory.
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
WINDOWS=${WINDOWS:-0 60}
KEEP=${KEEP:-0}
DENIED_PATH=/console/flags/promotions

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[flood] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"
for w in $WINDOWS; do [[ $w =~ ^[0-9]+$ ]] || die "WINDOWS are whole seconds: $w"; done
. "$root/scripts/bench/bench-lib.sh"
need_tools wrk nginx curl psql python3 initdb pgbench

BINARY=${BINARY:-$root/target/release/rbac-gateway}
if [ ! -x "$BINARY" ]; then
  log "cargo build --release --bin rbac-gateway"
  cargo build --release --quiet --bin rbac-gateway
fi
[ -x "$BINARY" ] || die "$BINARY is missing"

bench_tmp rbac-flood
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$BINARY" migrate --database-url "$DATABASE_URL" >/dev/null
run=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
seed_admins flood "flood-admin-$run" "flood-norole-$run" "flood-e-$run-" 10
start_upstream # up_port
lookup=$(printf '%s' "flood-e-$run-1" | sha256sum | cut -d' ' -f1)
printf "SELECT admin_id FROM admin_sessions WHERE token_sha256 = '%s' AND revoked_at_utc IS NULL;\n" "$lookup" >"$tmp/console.sql"

inserted() { psql "$DATABASE_URL" -X -At -c "SELECT count(*) FROM access_audit_events"; }
rows_of() { psql "$DATABASE_URL" -X -At -c "SELECT count(*), coalesce(sum(occurrences), 0) FROM access_audit_events WHERE $1"; }

printf '%-7s %-12s %12s %12s %14s %12s %12s %s\n' window flood "flood req/s" "rows/s" "denials/row" "console p50" "console p99" "admin's denials: rows"
for window in $WINDOWS; do
  for flood in one-client new-client-each; do
    gw_port=$(free_port); adm_port=$(free_port)
    "$BINARY" serve --listen "127.0.0.1:$gw_port" --admin-listen "127.0.0.1:$adm_port" \
      --upstream "127.0.0.1:$up_port" --routes "$root/routes.toml" --database-url "$DATABASE_URL" \
      --audit-spool "$tmp/audit-$window-$flood.spool" --cache-ttl 60 --trusted-proxies 1 \
      --anonymous-denial-window "$window" --log-format json >"$tmp/gateway-$window-$flood.log" 2>&1 &
    gw_pid=$!
    pids+=("$gw_pid")
    wait_http "http://127.0.0.1:$adm_port/readyz" 200 30 || die "gateway not ready: $(tail -5 "$tmp/gateway-$window-$flood.log")"
    GW=http://127.0.0.1:$gw_port
    psql "$DATABASE_URL" -X -q -c "SELECT 1" >/dev/null
    i0=$(inserted)
    before_admin=$(psql "$DATABASE_URL" -X -At -c "SELECT count(*) FROM access_audit_events WHERE admin_id = 'flood-norole'")
    before=$(rows_of "admin_id IS NULL" | cut -d'|' -f2)
    pgbench -n -c 2 -j 1 -T "$DURATION" -f "$tmp/console.sql" -l --log-prefix="$tmp/pgb-$window-$flood" "$DATABASE_URL" >"$tmp/pgbench-$window-$flood.out" 2>&1 &
    pgb=$!
    ( sent=0; end=$(( $(date +%s) + DURATION ))
      while [ "$(date +%s)" -lt "$end" ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: console_session=flood-norole-$run" "$GW$DENIED_PATH")
        [ "$code" = 403 ] && sent=$((sent + 1))
        sleep 0.05
      done; echo "$sent" >"$tmp/admin-$window-$flood" ) &
    admin_loop=$!
    if [ "$flood" = one-client ]; then
      out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$GW/no/such/page")
    else
      out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$root/scripts/bench/flood/clients.lua" "$GW/")
    fi
    wait "$pgb" || die "pgbench failed: $(cat "$tmp/pgbench-$window-$flood.out")"
    wait "$admin_loop"
    i1=$(inserted)
    kill -TERM "$gw_pid"; wait "$gw_pid" 2>/dev/null || true
    after=$(rows_of "admin_id IS NULL" | cut -d'|' -f2)
    admin_rows=$(( $(psql "$DATABASE_URL" -X -At -c "SELECT count(*) FROM access_audit_events WHERE admin_id = 'flood-norole'") - before_admin ))
    admin_sent=$(cat "$tmp/admin-$window-$flood")
    python3 - "$window" "$flood" "$DURATION" "$out" "$i0" "$i1" "$before" "$after" "$admin_sent" "$admin_rows" "$tmp"/pgb-"$window"-"$flood"* <<'PY'
import re, sys, statistics
window, flood, duration, out, i0, i1, before, after, sent, rows = sys.argv[1:11]
logs = sys.argv[11:]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
written = int(i1) - int(i0)
denials = int(after) - int(before)
lat = sorted(int(l.split()[2]) for f in logs for l in open(f) if l.strip())
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
per_row = denials / max(written - int(rows), 1)
print(f"{window:<7} {flood:<12} {rps:12.0f} {written / float(duration):12.1f} {per_row:14.1f} {p(0.5):10.2f}ms {p(0.99):10.2f}ms {rows}/{sent}" + ("" if int(rows) == int(sent) else "  LOST"))
PY
  done
done
