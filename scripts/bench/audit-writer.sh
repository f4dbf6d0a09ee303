#!/usr/bin/env bash
# I-5's backlog (issue 69 §2): N rbac_grants_audit rows of the gateway's owed to Console's audit
# writer (as after a writer outage, or the first deploy with --audit-writer-url), one gateway
# delivering them to the Console stand-in's writer (deploy/console-standin/app.py under gunicorn,
# WORKERS workers of 4 threads, its HMAC chain in SQLite): the time until every row is delivered,
# the rate, and whether the writer holds each once with its chain whole.
#   scripts/bench/audit-writer.sh [BIN]        N=2000 WORKERS=1 by default; BUILD=0: the release
#                                              binary as it is; CHAIN=/dev/shm/chain.sqlite3: the
#                                              writer's chain on tmpfs (its fsyncs out of the way)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-2000}
WORKERS=${WORKERS:-1}
bin=${1:-}
if [ -z "$bin" ]; then
  [ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bin rbac-gateway
  bin=target/release/rbac-gateway
fi
[ -x .venv/bin/gunicorn ] || { echo "needs .venv/ (scripts/setup.sh --tests)" >&2; exit 1; }
state=$(mktemp -d /tmp/rbacgw-audit-writer.XXXXXX)
chmod 755 "$state"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pg.sh stop "$state/pg"
  rm -rf "$state"
  [ -z "${CHAIN:-}" ] || rm -f "$CHAIN"
}
trap cleanup EXIT
eval "$(scripts/pg.sh start "$state/pg")"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
"$bin" migrate --database-url "$DATABASE_URL" >/dev/null
psql -q "$DATABASE_URL" <<SQL
INSERT INTO admins (id, email) VALUES ('00000000-0000-4000-8000-00000000a11c', 'alice@example.test');
INSERT INTO rbac_grants_audit (id, event_type, target_user_id, ticket_id, customer_id, justification, granted_by)
  SELECT gen_random_uuid()::text, 'ticket_expire', '00000000-0000-4000-8000-00000000a11c', 'T-' || g, g,
         'expired', 'rbac-gateway' FROM generate_series(1, $N) g;
SQL
token=bench-audit-writer-token-0123456789
writer_port=$(free_port); admin_port=$(free_port)
chain=${CHAIN:-$state/chain.sqlite3}
rm -f "$chain"
AUDIT_WRITER_DB="$chain" AUDIT_WRITER_TOKEN=$token PYTHONDONTWRITEBYTECODE=1 \
  .venv/bin/gunicorn --bind "127.0.0.1:$writer_port" --workers "$WORKERS" --threads 4 \
  --chdir deploy/console-standin app:app 2>"$state/writer.log" & pids+=($!)
url="http://127.0.0.1:$writer_port/api/internal/customer-audit/events"
for _ in $(seq 100); do curl -s -o /dev/null "$url" && break; sleep 0.1; done
t0=$(date +%s.%N)
GATEWAY_AUDIT_WRITER_TOKEN=$token "$bin" serve --listen 127.0.0.1:0 --admin-listen "127.0.0.1:$admin_port" \
  --routes routes.toml --database-url "$DATABASE_URL" --sweep-interval 0 \
  --audit-spool "$state/audit.spool" --audit-writer-url "$url" 2>"$state/gateway.log" & pids+=($!)
done_rows=0
for _ in $(seq 6000); do
  done_rows=$(psql -Atq "$DATABASE_URL" -c "SELECT count(*) FROM rbac_gateway_audit_outbox WHERE delivered_at_utc IS NOT NULL")
  [ "$done_rows" -ge "$N" ] && break
  sleep 0.1
done
t1=$(date +%s.%N)
[ "$done_rows" -ge "$N" ] || { echo "only $done_rows of $N delivered in 600 s" >&2; tail -5 "$state/gateway.log" >&2; exit 1; }
span=$(psql -Atq "$DATABASE_URL" -c "SELECT round(extract(epoch FROM max(delivered_at_utc) - min(delivered_at_utc))::numeric, 2) FROM rbac_gateway_audit_outbox")
curl -s -H "Authorization: Bearer $token" "$url" | python3 -c '
import json, sys
d = json.load(sys.stdin)
keys = [e["key"] for e in d["events"]]
print("writer: %d events, %d distinct, %d POSTs, %d duplicates, chain_ok %s" % (len(keys), len(set(keys)), d["posts"], d["duplicates"], d["chain_ok"]))'
python3 -c "
n, t0, t1, span = $N, $t0, $t1, $span
print(f'{n} rows owed: all delivered {t1 - t0:.1f} s after the gateway started; first to last delivery {span:.1f} s: {n / span:.0f} rows/s')"
