#!/usr/bin/env bash
# One command, a complete local setup: installs what is missing, builds the gateway, starts a
# throwaway PostgreSQL, applies the migrations, seeds demo admins and sessions, starts a
# stand-in Console and the gateway, and prints curl lines that show a 200, a 302 and a 403, then
# I-4 by default (a break-glass session proceeds only once its ops alert was delivered) and a
# ticket grant the sweep ends arriving at Console's audit writer (I-5; the stand-in writer of
# deploy/console-standin/app.py runs under gunicorn from .venv/, which `scripts/setup.sh --tests`
# makes: without it the demo shows /readyz saying that I-5 is not met).
#   scripts/demo.sh          keep everything running until Ctrl-C
#   scripts/demo.sh --check  run the curl lines, check the answers, stop everything (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
scripts/setup.sh
cargo build --quiet
bin=target/debug/rbac-gateway
state=$(mktemp -d /tmp/rbacgw-demo.XXXXXX)
chmod 755 "$state"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pg.sh stop "$state/pg"
  rm -rf "$state"
}
trap cleanup EXIT
eval "$(scripts/pg.sh start "$state/pg")"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port); gw_port=$(free_port); admin_port=$(free_port); hook_port=$(free_port)
"$bin" migrate --database-url "$DATABASE_URL" >/dev/null
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
psql -q "$DATABASE_URL" <<SQL
INSERT INTO admins (id, email) VALUES
  ('00000000-0000-4000-8000-00000000a11c', 'alice@example.test'),
  ('00000000-0000-4000-8000-000000000b0b', 'bob@example.test'),
  ('00000000-0000-4000-8000-0000000ca201', 'carol@example.test');
INSERT INTO rbac_user_groups (user_id, group_id, granted_by)
  SELECT '00000000-0000-4000-8000-00000000a11c', id, 'demo' FROM rbac_groups WHERE name = 'raxx-platform-admins';
INSERT INTO rbac_user_groups (user_id, group_id, granted_by)
  SELECT '00000000-0000-4000-8000-000000000b0b', id, 'demo' FROM rbac_groups WHERE name = 'raxx-support-team';
INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc) VALUES
  (gen_random_uuid()::text, '00000000-0000-4000-8000-00000000a11c', '$(sha demo-alice)', now() + interval '8 hours'),
  (gen_random_uuid()::text, '00000000-0000-4000-8000-000000000b0b', '$(sha demo-bob)', now() + interval '8 hours'),
  (gen_random_uuid()::text, '00000000-0000-4000-8000-0000000ca201', '$(sha demo-carol)', now() + interval '8 hours');
-- carol holds no group: a one-hour break-glass session is her only way in (004 §6).
INSERT INTO rbac_break_glass_sessions (id, user_id, justification, granted_by, expires_at_utc) VALUES
  ('demo-break-glass', '00000000-0000-4000-8000-0000000ca201', 'INC-42: the database failover runbook', 'demo', now() + interval '1 hour');
-- I-5: a ticket grant of bob's that expired a minute ago; the sweep ends it, audit row first.
INSERT INTO rbac_ticket_grants (id, user_id, role_id, ticket_id, customer_id, granted_by, expires_at_utc)
  SELECT '00000000-0000-4000-8000-0000000071c7', '00000000-0000-4000-8000-000000000b0b', id, '4711', 42,
         'alice@example.test', now() - interval '1 minute' FROM rbac_roles WHERE name = 'raptor-audit-support';
SQL
# Console's audit writer (I-5): the stand-in's, under gunicorn from .venv/ when it is there.
writer=()
audit_token=demo-audit-writer-token-0123456789
if [ -x .venv/bin/gunicorn ]; then
  writer_port=$(free_port)
  AUDIT_WRITER_DB="$state/audit-writer.sqlite3" AUDIT_WRITER_TOKEN=$audit_token PYTHONDONTWRITEBYTECODE=1 \
    .venv/bin/gunicorn --bind "127.0.0.1:$writer_port" --workers 1 --threads 2 \
    --chdir deploy/console-standin app:app 2>"$state/audit-writer.log" & pids+=($!)
  writer_url="http://127.0.0.1:$writer_port/api/internal/customer-audit/events"
  writer=(--audit-writer-url "$writer_url")
fi
python3 scripts/demo_upstream.py "$up_port" & pids+=($!)
# The stand-in must answer before the first curl line, or the 200 line sees a 502.
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$up_port/" && break; sleep 0.1; done
curl -s -o /dev/null "http://127.0.0.1:$up_port/" || { echo "the Console stand-in did not start" >&2; exit 1; }
gw_env=()
[ ${#writer[@]} -eq 0 ] || gw_env=("GATEWAY_AUDIT_WRITER_TOKEN=$audit_token")
env "${gw_env[@]}" "$bin" serve --listen "127.0.0.1:$gw_port" --admin-listen "127.0.0.1:$admin_port" \
  --upstream "127.0.0.1:$up_port" --routes routes.toml --database-url "$DATABASE_URL" \
  --audit-spool "$state/audit.spool" --log-format text --sweep-interval 1 "${writer[@]}" \
  --alert-webhook-url "http://127.0.0.1:$hook_port/services/ops-alerts" 2>"$state/gateway.log" & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null || { cat "$state/gateway.log"; exit 1; }

gw="http://127.0.0.1:$gw_port"
lines=(
  "200|alice (raxx-platform-admins) opens the ops page|curl -si -H 'Cookie: console_session=demo-alice' $gw/ops"
  "302|no session: sent to the login page|curl -si $gw/console/customers/42?tab=audit"
  "403|bob (raxx-support-team) is not a console-manager|curl -si -H 'Cookie: console_session=demo-bob' $gw/ops"
  "400|a path Console would route differently is refused|curl -si --path-as-is $gw/console/customers/42/%2e%2e/invite"
  "403|carol's break-glass session waits for its ops alert (I-4): the ops webhook is not up yet|curl -si -H 'Cookie: console_session=demo-carol' $gw/console/admins/online"
)
fail=0
echo
echo "rbac-gateway is listening on $gw (admin: http://127.0.0.1:$admin_port/metrics), Console stand-in on :$up_port"
for l in "${lines[@]}"; do
  IFS='|' read -r want what cmd <<<"$l"
  echo
  echo "# $what (expect $want)"
  echo "$cmd"
  got=$(eval "$cmd -o /dev/null -w '%{http_code}'")
  echo "-> $got"
  [ "$got" = "$want" ] || fail=1
done
echo
echo "# the ops webhook comes up (a stand-in on :$hook_port): carol's alert is delivered, then her session proceeds"
python3 scripts/demo_upstream.py "$hook_port" >/dev/null 2>&1 & pids+=($!)
carol="curl -s -o /dev/null -w '%{http_code}' -H 'Cookie: console_session=demo-carol' $gw/console/admins/online"
echo "$carol"
got=000
for _ in $(seq 60); do got=$(eval "$carol"); [ "$got" = 200 ] && break; sleep 0.25; done
echo "-> $got"
[ "$got" = 200 ] || fail=1
psql "$DATABASE_URL" -c "SELECT key, delivered_at_utc IS NOT NULL AS delivered, left(text, 90) AS text FROM rbac_gateway_alerts WHERE key = 'break_glass:demo-break-glass'"
echo
echo "# the audit rows of the 403s (each of carol's tries before her alert was delivered has one):"
echo "psql '$DATABASE_URL' -c 'SELECT event_type, admin_id, method, path, route, required, reason FROM access_audit_events'"
psql "$DATABASE_URL" -c 'SELECT event_type, admin_id, method, path, route, required, reason FROM access_audit_events'
echo
if [ ${#writer[@]} -gt 0 ]; then
  echo "# I-5: bob's expired ticket grant, ended by the sweep, as Console's audit writer received it:"
  echo "curl -s -H 'Authorization: Bearer $audit_token' $writer_url"
  events=""
  for _ in $(seq 150); do
    events=$(curl -s -H "Authorization: Bearer $audit_token" "$writer_url" || true)
    case "$events" in *operator.rbac.revoke*) break ;; esac
    sleep 0.1
  done
  python3 - "$events" <<'PY' || { echo "-> the revocation did not arrive (see $state/gateway.log)"; fail=1; }
import json, sys
d = json.loads(sys.argv[1] or "{}")
for e in d.get("events", []):
    print(json.dumps(e["event"], sort_keys=True))
print("chain_ok:", d.get("chain_ok"))
sys.exit(0 if d.get("chain_ok") and any(e["event"]["action"] == "operator.rbac.revoke" for e in d.get("events", [])) else 1)
PY
else
  echo "# I-5: no audit writer in this demo (scripts/setup.sh --tests installs the stand-in's Flask and gunicorn):"
  curl -s "http://127.0.0.1:$admin_port/readyz" | grep 'I-5' || fail=1
fi
if [ "$mode" = "--check" ]; then
  [ "$fail" = 0 ] && echo "demo check: ok" || { echo "demo check: FAILED"; cat "$state/gateway.log"; exit 1; }
  exit 0
fi
[ "$fail" = 0 ] || echo "warning: an answer differed from the expected one; see $state/gateway.log"
echo
echo "Everything keeps running; press Ctrl-C to stop and clean up. Gateway log: $state/gateway.log"
wait
