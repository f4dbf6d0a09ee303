#!/usr/bin/env bash
# What erasing an admin (I-6) costs Console's DELETE (issue 71): the gateway's tables filled with
# ROWS rows each of other admins (rbac_gateway_group_changes, rbac_gateway_alerts), ADMINS admins
# with a real membership change, break-glass session and alerts (through the triggers and the
# alert pass), then each admin deleted under EXPLAIN ANALYZE: the erasure trigger's time per
# admin (median and worst), by index (after `migrate` built the erasure's indexes) and, for the
# comparison, with those indexes dropped (every row read, as before migration 0025).
# PAIRED=migrations/NNNN_x.sql instead compares, on the same data and in one session, the
# erasure trigger's body as migrated with the one that migration made, a quarter of the admins
# each, alternating (this body, that one, this, that).
#
# Usage: [ROWS=1000000] [ADMINS=20] [BINARY=path] [PAIRED=migration] scripts/bench/erasure.sh
set -euo pipefail
ROWS=${ROWS:-1000000}
ADMINS=${ADMINS:-20}
KEEP=${KEEP:-0}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[erasure] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROWS =~ ^[1-9][0-9]*$ && $ADMINS =~ ^[1-9][0-9]*$ ]] || die "ROWS and ADMINS are positive integers"
. "$root/scripts/bench/bench-lib.sh"
need_tools psql python3 initdb
BINARY=${BINARY:-$root/target/release/rbac-gateway}
[ -x "$BINARY" ] || { log "cargo build --release --bin rbac-gateway"; cargo build --release --quiet --bin rbac-gateway; }
bench_tmp rbac-erasure
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$BINARY" migrate --database-url "$DATABASE_URL" >/dev/null
q() { psql "$DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
log "filling $ROWS rows a table"
q -c "INSERT INTO rbac_gateway_group_changes (what, table_name, operation, actor, erasure_keys, alert_key)
      SELECT 'admin other-' || i || '@corp.example (other-' || i || ') made a permanent member of the break-glass group',
             'rbac_user_groups', 'INSERT', 'ops-' || (i % 50) || '@corp.example',
             ARRAY['other-' || i, 'ops-' || (i % 50) || '@corp.example'], 'composition:other-' || i
        FROM generate_series(1, $ROWS) i"
q -c "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys)
      SELECT 'composition:other-' || i, 'Break-glass group changed: admin other-' || i || '@corp.example (other-' || i
             || ') made a permanent member of the break-glass group. By database user console, actor ops@corp.example, from -',
             ARRAY['other-' || i, 'ops@corp.example']
        FROM generate_series(1, $ROWS) i"
for i in $(seq "$ADMINS"); do
  q -c "BEGIN; INSERT INTO admins (id, email) VALUES ('leaving-$i', 'leaving-$i@corp.example');
        SET LOCAL rbac_gateway.actor = 'leaving-$i@corp.example';
        INSERT INTO rbac_user_groups (user_id, group_id, granted_by) SELECT 'leaving-$i', id, 'bench' FROM rbac_groups WHERE name = 'break-glass';
        INSERT INTO rbac_break_glass_sessions (id, user_id, justification, granted_by, expires_at_utc)
          VALUES ('bg-$i', 'leaving-$i', 'bench', 'bench', now() + interval '1 hour'); COMMIT;"
done
"$BINARY" sweep --once --database-url "$DATABASE_URL" >"$tmp/sweep.out" 2>&1 || die "sweep: $(tail -3 "$tmp/sweep.out")"
[ "$(q -c "SELECT count(*) FROM rbac_gateway_alerts WHERE erasure_keys && ARRAY['leaving-1']")" -ge 2 ] || die "the admins' alerts were not raised"
"$BINARY" migrate --database-url "$DATABASE_URL" >/dev/null
q -c "ANALYZE rbac_gateway_group_changes; ANALYZE rbac_gateway_alerts"
erase() { # first last label: each admin's DELETE under EXPLAIN ANALYZE, all in one session (as
  # Console's pooled connection runs them), the first apart (PL/pgSQL compiles and plans then)
  local i
  for i in $(seq "$1" "$2"); do
    echo "EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM admins WHERE id = 'leaving-$i';"
    echo '\echo ==='
  done >"$tmp/erase.sql"
  q -f "$tmp/erase.sql" | python3 -c '
import json, statistics, sys
label = sys.argv[1]
ts = []
for part in sys.stdin.read().split("===")[:-1]:
    plan = json.loads(part)[0]
    ts.append(sum(t["Time"] for t in plan.get("Triggers", []) if "erase" in t["Trigger Name"]))
first, rest = ts[0], sorted(ts[1:]) or [ts[0]]
print(f"{label:<28} admins {len(ts):>3}  trigger ms per admin: median {statistics.median(rest):8.2f}  worst {rest[-1]:8.2f}  (first in the session {first:.2f})")
' "$3"
}
if [ -n "${PAIRED:-}" ]; then
  # Each body as its migration writes it, schema-qualified for public (the bench's schema).
  body() {
    python3 - "$1" <<'PY'
import sys
src = open(sys.argv[1]).read()
a = src.index("CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin()")
b = src.index("$fn$;\n$sql$", a) + len("$fn$;\n")
print(src[a:b].replace("@s.", "public."))
PY
  }
  q -At -c "SELECT pg_get_functiondef('rbac_gateway_erase_admin()'::regprocedure)" >"$tmp/this.sql"
  echo ';' >>"$tmp/this.sql"
  body "$PAIRED" >"$tmp/that.sql" || die "no erasure trigger body in $PAIRED"
  # with the setting `migrate` gives it where the server has one (as the body migrated has)
  cat >>"$tmp/that.sql" <<'SQL'
DO $$ BEGIN IF current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL THEN
  ALTER ROUTINE public.rbac_gateway_erase_admin() SET restrict_nonsystem_relation_kind = 'view, foreign-table';
END IF; END $$;
SQL
  n=$(( ADMINS / 4 ))
  [ "$n" -ge 2 ] || die "PAIRED needs ADMINS of 8 or more"
  # vacuumed first: autovacuum's pass over the rows just filled fell in the first block
  q -c "VACUUM ANALYZE rbac_gateway_group_changes" -c "VACUUM ANALYZE rbac_gateway_alerts"
  echo "rows a table: $ROWS (vacuumed)"
  for i in 0 1 2 3; do
    if [ $(( i % 2 )) -eq 0 ]; then f=this; label="as migrated"; else f=that; label="as in $(basename "$PAIRED" .sql | cut -c1-4)"; fi
    q -f "$tmp/$f.sql"
    erase $(( i * n + 1 )) $(( i * n + n )) "$label"
  done
  exit 0
fi
half=$(( ADMINS / 2 ))
[ "$half" -ge 1 ] || half=1
echo "rows a table: $ROWS"
erase 1 "$half" "by index"
q -c "DROP INDEX idx_rggc_erasure, idx_rgal_erasure, idx_rggc_unkeyed, idx_rgal_unkeyed"
[ "$half" -lt "$ADMINS" ] && erase $(( half + 1 )) "$ADMINS" "indexes dropped (as before)"
