#!/usr/bin/env bash
# The upgrade drill (issue 71): a database at the previous release's schema (migrations up to
# FROM, 0015 by default, recorded as sqlx records them), filled like a Console that ran for a
# year (SCALE=1: 1,000 admins, 200,000 sessions, 2,000,000 access_audit_events, 200,000
# rbac_grants_audit, 100,000 rbac_change_log rows, 20,000 ticket grants, 20,000 break-glass
# sessions each with its alert and ALERTS=20,000 alerts of another kind, 200,000 group changes),
# Console's write mix under pgbench (4 clients at RATE transactions/s: a session lookup, an audit
# row, a ticket grant and its grants-audit row, a group change, a login; one admin DELETE a
# second), and `rbac-gateway migrate` started DELAY seconds in. Reports Console's latency (p50,
# p99, max) and failed transactions before and during migrate, every lock wait seen on a busy
# table (sampled every 50 ms from pg_locks) with its longest duration, every lock of a write-
# blocking mode migrate's own session held on a table with how long it was seen held (the same
# samples: 50 ms at the least), and migrate's duration. FROM=32 drills an upgrade from a later
# release (migrations 0033-).
#
# Usage: [SCALE=1] [FROM=15] [RATE=100] [DELAY=20] [AFTER=10] [ALERTS=20000] [BINARY=path] scripts/bench/upgrade-drill.sh
set -euo pipefail
SCALE=${SCALE:-1}
FROM=${FROM:-15}
RATE=${RATE:-100}
DELAY=${DELAY:-20}
AFTER=${AFTER:-10}
ALERTS=${ALERTS:-20000}
KEEP=${KEEP:-0}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[drill] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
. "$root/scripts/bench/bench-lib.sh"
need_tools psql python3 initdb pgbench
BINARY=${BINARY:-$root/target/release/rbac-gateway}
[ -x "$BINARY" ] || { log "cargo build --release --bin rbac-gateway"; cargo build --release --quiet --bin rbac-gateway; }
bench_tmp rbac-drill
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
q() { PGOPTIONS="-c client_min_messages=warning" psql "$DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

log "schema at migration $FROM, recorded as sqlx records it"
q -c "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
      installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, checksum BYTEA NOT NULL,
      execution_time BIGINT NOT NULL)"
for f in "$root"/migrations/*.sql; do
  name=$(basename "$f"); v=$((10#${name%%_*}))
  [ "$v" -le "$FROM" ] || continue
  q -1 -f "$f" >/dev/null
  python3 - "$f" "$v" <<'PY' | q
import hashlib, pathlib, sys
p = pathlib.Path(sys.argv[1]); sql = p.read_bytes()
desc = p.stem.split("_", 1)[1].replace("_", " ")
print(f"INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) "
      f"VALUES ({sys.argv[2]}, '{desc}', true, '\\x{hashlib.sha384(sql).hexdigest()}', 0);")
PY
done

log "filling (SCALE=$SCALE)"
n() { python3 -c "print(int($1 * $SCALE))"; }
q -c "INSERT INTO admins (id, email) SELECT 'a-' || i, 'a-' || i || '@corp.example' FROM generate_series(1, $(n 1000)) i"
q -c "INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc)
      SELECT 's-' || i, 'a-' || (1 + i % $(n 1000)), encode(sha256(('t-' || i)::bytea), 'hex'), now() + interval '1 day'
        FROM generate_series(1, $(n 200000)) i"
q -c "INSERT INTO access_audit_events (id, event_type, admin_id, method, path, route, reason, request_id, created_at_utc)
      SELECT 'e-' || i, 'access_denied', 'a-' || (1 + i % $(n 1000)), 'GET', '/x/' || i, 'GET /x/<id>', 'missing_role', 'r-' || i,
             now() - (i % 365) * interval '1 day' FROM generate_series(1, $(n 2000000)) i"
q -c "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, ticket_id, customer_id, granted_by, expires_at_utc)
      SELECT 'g-' || i, 'ticket_grant', 'a-' || (1 + i % $(n 1000)), 'T-' || (i % 20000), i % 500, 'console',
             now() + (i % 90) * interval '1 day' FROM generate_series(1, $(n 200000)) i"
q -c "INSERT INTO rbac_change_log (table_name, admin_id) SELECT 'admin_sessions', 'a-' || (1 + i % $(n 1000)) FROM generate_series(1, $(n 100000)) i"
q -c "INSERT INTO rbac_ticket_grants (id, user_id, role_id, ticket_id, customer_id, granted_by)
      SELECT 'tg-' || i, 'a-' || (1 + i % $(n 1000)), r.id, 'T-' || i, i % 500, 'console'
        FROM generate_series(1, $(n 20000)) i, rbac_roles r WHERE r.name = 'console-user'"
q -c "INSERT INTO rbac_break_glass_sessions (id, user_id, justification, granted_by, granted_at_utc, expires_at_utc)
      SELECT 'bg-' || i, 'a-' || (1 + i % $(n 1000)), 'an incident that needed it, at length', 'console',
             now() - (i % 365) * interval '1 day', now() - (i % 365) * interval '1 day' + interval '1 hour'
        FROM generate_series(1, $(n 20000)) i"
q -c "INSERT INTO rbac_gateway_alerts (key, text, delivered_at_utc)
      SELECT 'break_glass:bg-' || i, 'Break-glass session bg-' || i || ' of a-' || (1 + i % $(n 1000)), now()
        FROM generate_series(1, $(n 20000)) i"
q -c "INSERT INTO rbac_gateway_alerts (key, text, delivered_at_utc)
      SELECT 'composition:' || i, 'The break-glass group changed', now() FROM generate_series(1, $(n "$ALERTS")) i"
q -c "INSERT INTO rbac_gateway_group_changes (what, table_name, operation, actor, alert_key)
      SELECT 'a-' || (1 + i % $(n 1000)) || ' joined raxx-support-team', 'rbac_user_groups', 'INSERT',
             'a-' || (1 + i % $(n 1000)), 'composition:' || (1 + i % 1000)
        FROM generate_series(1, $(n 200000)) i"
q -c "ANALYZE"
admins=$(n 1000)
cat >"$tmp/console.sql" <<SQL
\set a random(1, $admins)
\set s random(1, $(n 200000))
BEGIN;
SELECT admin_id FROM admin_sessions WHERE token_sha256 = encode(sha256(('t-' || :s)::bytea), 'hex') AND revoked_at_utc IS NULL;
INSERT INTO access_audit_events (id, event_type, admin_id, method, path, reason, request_id, created_at_utc)
  VALUES (gen_random_uuid()::text, 'access_denied', 'a-' || :a, 'GET', '/y', 'missing_role', gen_random_uuid()::text, now());
INSERT INTO rbac_ticket_grants (id, user_id, role_id, ticket_id, customer_id, granted_by)
  SELECT gen_random_uuid()::text, 'a-' || :a, id, 'T-load', 7, 'console' FROM rbac_roles WHERE name = 'console-user';
INSERT INTO rbac_grants_audit (id, event_type, target_user_id, ticket_id, customer_id, granted_by)
  VALUES (gen_random_uuid()::text, 'ticket_grant', 'a-' || :a, 'T-load', 7, 'console');
INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc)
  VALUES (gen_random_uuid()::text, 'a-' || :a, encode(sha256(gen_random_uuid()::text::bytea), 'hex'), now() + interval '1 hour');
COMMIT;
BEGIN;
DELETE FROM rbac_user_groups WHERE user_id = 'a-' || :a
   AND group_id = (SELECT id FROM rbac_groups WHERE name = 'raxx-support-team');
INSERT INTO rbac_user_groups (user_id, group_id, granted_by)
  SELECT 'a-' || :a, id, 'console' FROM rbac_groups WHERE name = 'raxx-support-team'
  ON CONFLICT DO NOTHING;
COMMIT;
SQL
cat >"$tmp/delete.sql" <<'SQL'
BEGIN;
INSERT INTO admins (id, email) VALUES ('gone-' || :client_id || '-' || random(), 'gone@x') ON CONFLICT DO NOTHING;
DELETE FROM admins WHERE id LIKE 'gone-%';
COMMIT;
SQL
total=$(( DELAY + AFTER + 600 ))
log "Console's write mix: $RATE tx/s, migrate at +$DELAY s"
pgbench -n -c 4 -j 2 -R "$RATE" -T "$total" -f "$tmp/console.sql" -l --log-prefix="$tmp/console" "$DATABASE_URL" >"$tmp/pgbench.out" 2>&1 &
pgb=$!; pids+=("$pgb")
pgbench -n -c 1 -R 1 -T "$total" -f "$tmp/delete.sql" "$DATABASE_URL" >"$tmp/delete.out" 2>&1 &
pids+=("$!")
( while sleep 0.05; do
    psql "$DATABASE_URL" -X -At -F'|' -c "SELECT extract(epoch FROM now()), a.pid, l.relation::regclass, l.mode,
        extract(epoch FROM now() - a.query_start) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE NOT l.granted AND l.relation IS NOT NULL" 2>/dev/null
  done ) >"$tmp/locks.txt" &
pids+=("$!")
# What migrate's own session holds (application_name rbac-gateway: no gateway runs here), of the
# modes that block a write.
( while sleep 0.05; do
    psql "$DATABASE_URL" -X -At -F'|' -c "SELECT extract(epoch FROM now()), a.xact_start, l.relation::regclass, l.mode
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE a.application_name = 'rbac-gateway' AND l.granted AND l.relation IS NOT NULL
          AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
          AND l.relation::regclass::text NOT LIKE 'pg_%'" 2>/dev/null
  done ) >"$tmp/held.txt" &
pids+=("$!")
sleep "$DELAY"
t0=$(date +%s.%N)
"$BINARY" migrate --database-url "$DATABASE_URL" >"$tmp/migrate.out" 2>&1 || die "migrate failed: $(tail -3 "$tmp/migrate.out")"
t1=$(date +%s.%N)
sleep "$AFTER"
kill -TERM "$pgb" 2>/dev/null || true  # a background job ignores SIGINT
wait "$pgb" 2>/dev/null || true
python3 - "$t0" "$t1" "$tmp" <<'PY'
import glob, sys, collections
t0, t1, tmp = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
before, during, failed = [], [], collections.Counter()
for f in glob.glob(f"{tmp}/console.[0-9]*"):
    for line in open(f):
        p = line.split()
        if len(p) < 6: continue
        lat, end = int(p[2]), int(p[4]) + int(p[5]) / 1e6
        start = end - lat / 1e6
        bucket = during if start < t1 and end > t0 else before if end <= t0 else None
        if p[2] == "failed":
            failed["during" if bucket is during else "other"] += 1; continue
        if bucket is not None: bucket.append(lat / 1000)
def stats(xs):
    xs = sorted(xs)
    if not xs: return "none"
    q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]
    return f"n {len(xs)}  p50 {q(0.5):.1f} ms  p99 {q(0.99):.1f} ms  max {xs[-1]:.1f} ms"
print(f"migrate took {t1 - t0:.1f} s")
print(f"Console before migrate: {stats(before)}")
print(f"Console during migrate: {stats(during)}")
waits = collections.defaultdict(float)
for line in open(f"{tmp}/locks.txt"):
    p = line.strip().split("|")
    if len(p) == 5 and t0 - 1 <= float(p[0]) <= t1 + 1:
        waits[(p[2], p[3])] = max(waits[(p[2], p[3])], float(p[4] or 0))
print("lock waits seen during migrate (table, mode: longest wait of the waiting statement):")
for (rel, mode), w in sorted(waits.items(), key=lambda kv: -kv[1]):
    print(f"  {rel:<32} {mode:<24} {w * 1000:8.0f} ms")
if not waits: print("  none")
held = {}
for line in open(f"{tmp}/held.txt"):
    p = line.strip().split("|")
    if len(p) != 4: continue
    k = (p[1], p[2], p[3])
    first, last = held.get(k, (float(p[0]), float(p[0])))
    held[k] = (min(first, float(p[0])), max(last, float(p[0])))
longest = collections.defaultdict(float)
for (_, rel, mode), (first, last) in held.items():
    longest[(rel, mode)] = max(longest[(rel, mode)], last - first)
print("locks migrate held that block writes (table, mode: longest seen held in one transaction; a lock seen once reads 0, under 50 ms):")
for (rel, mode), h in sorted(longest.items(), key=lambda kv: -kv[1]):
    print(f"  {rel:<32} {mode:<24} {h * 1000:8.0f} ms")
if not longest: print("  none seen")
PY
grep -i "error\|abort" "$tmp/pgbench.out" | head -5 || true
echo "migrate: lock waits cut short and tried again: $(grep -c "lock was not granted" "$tmp/migrate.out" || true)"
