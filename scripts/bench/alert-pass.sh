#!/usr/bin/env bash
# What an idle gateway costs its database: the alert pass (each second) reads the catalogue for
# Console's code on its tables (`rbac_gateway_console_code`), the gateway's silent triggers
# (`stores::schema::SILENT_ROWS`) and Console's tables' shape (`rbac_gateway_plain`). On a
# database where Console has EXTRA more tables (each with a trigger of its own and a foreign
# key to `admins`, so four more triggers besides) and a partitioned table with a row trigger
# and PARTS partitions (a clone of it on each), with the catalogue analyzed as autovacuum
# leaves it (ANALYZE=0: as made, before autovacuum reaches it), each BIN in turn serves for
# DURATION seconds with no traffic; pg_stat_statements counts what its statements cost the
# server. Prints, per binary, the statements by the server's time, and the server's
# milliseconds per second of the idle gateway (pg_stat_statements counts no statement that was
# cancelled, as by the gateway's statement timeout) and PostgreSQL's CPU from /proc, which does.
#
# Usage: [EXTRA=1500] [PARTS=1000] [DURATION=20] [ANALYZE=1] scripts/bench/alert-pass.sh [[NAME=]BIN ...]
#   BIN      the gateways to measure, in turn, on the same database (default
#            target/release/rbac-gateway, built if missing)
#   KEEP=1   keep the temporary directory
set -euo pipefail
EXTRA=${EXTRA:-1500}
PARTS=${PARTS:-1000}
DURATION=${DURATION:-20}
ANALYZE=${ANALYZE:-1}
KEEP=${KEEP:-0}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[alert-pass] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $EXTRA =~ ^[0-9]+$ ]] || die "EXTRA must be a whole number of tables"
[[ $PARTS =~ ^[0-9]+$ ]] || die "PARTS must be a whole number of partitions"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
. "$root/scripts/bench/bench-lib.sh"
need_tools curl psql python3 initdb
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  [ -x target/release/rbac-gateway ] || { log "cargo build --release --bin rbac-gateway"; cargo build --release --quiet --bin rbac-gateway; }
  bins=(target/release/rbac-gateway)
fi
for b in "${bins[@]}"; do [ -x "${b#*=}" ] || die "${b#*=} is missing"; done

bench_tmp rbac-alert-pass
eval "$(PG_OPTS="-c shared_preload_libraries=pg_stat_statements" \
  "$root/scripts/pg.sh" start "$tmp/pg")"
first=${bins[0]#*=}
"$first" migrate --database-url "$DATABASE_URL" >/dev/null 2>"$tmp/migrate.log" || die "migrate: $(tail -3 "$tmp/migrate.log")"
q() { PGOPTIONS="-c client_min_messages=warning" psql "$DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
log "making $EXTRA more tables of Console's, and a partitioned one of $PARTS partitions"
q -v extra="$EXTRA" -v parts="$PARTS" <<'SQL'
CREATE EXTENSION pg_stat_statements;
CREATE FUNCTION public.consoles_own() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
SET bench.extra = :'extra';
SET bench.parts = :'parts';
DO $$ BEGIN FOR i IN 1..current_setting('bench.extra')::int LOOP
  EXECUTE format('CREATE TABLE console_extra_%s (id int PRIMARY KEY, admin_id text REFERENCES admins (id))', i);
  EXECUTE format('CREATE TRIGGER consoles_own BEFORE INSERT ON console_extra_%s FOR EACH ROW EXECUTE FUNCTION public.consoles_own()', i);
END LOOP; END $$;
CREATE TABLE console_parted (id int) PARTITION BY RANGE (id);
CREATE TRIGGER consoles_own AFTER INSERT ON console_parted FOR EACH ROW EXECUTE FUNCTION public.consoles_own();
DO $$ BEGIN FOR i IN 1..current_setting('bench.parts')::int LOOP
  EXECUTE format('CREATE TABLE console_parted_%s PARTITION OF console_parted FOR VALUES FROM (%s) TO (%s)', i, i * 10, i * 10 + 10);
END LOOP; END $$;
SQL
if [ "$ANALYZE" = 1 ]; then q -c "ANALYZE"; fi
triggers=$(q -c "SELECT count(*) FROM pg_catalog.pg_trigger")
classes=$(q -c "SELECT count(*) FROM pg_catalog.pg_class")
log "pg_trigger $triggers rows, pg_class $classes rows, catalogue analyzed: $ANALYZE"

report="$tmp/report.txt"
pg_master=$(head -1 "$tmp/pg/data/postmaster.pid")
hz=$(getconf CLK_TCK)
pg_ticks() { # user and system ticks of the postmaster, its children (backends, workers) and
  # those it reaped (cutime, cstime): a backend that ends between two samples stays counted
  local t p
  t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$pg_master/stat")
  for p in $(pgrep -P "$pg_master"); do
    t=$(( t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$t"
}
for b in "${bins[@]}"; do
  name=${b%%=*}; bin=${b#*=}; [ "$name" = "$b" ] && name=$(basename "$bin")
  adm_port=$(free_port)
  "$bin" serve --listen 127.0.0.1:0 --admin-listen "127.0.0.1:$adm_port" --upstream 127.0.0.1:9 \
    --routes "$root/routes.toml" --database-url "$DATABASE_URL" --audit-spool "$tmp/$name.spool" \
    --log-format json >"$tmp/$name.log" 2>&1 &
  gw_pid=$!
  pids+=("$gw_pid")
  wait_http "http://127.0.0.1:$adm_port/readyz" 200 30 || die "$name not ready: $(tail -3 "$tmp/$name.log")"
  q -c "SELECT pg_stat_statements_reset()" >/dev/null
  t0=$(pg_ticks)
  sleep "$DURATION"
  t1=$(pg_ticks)
  kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true
  failed=$(grep -c '"alert pass failed' "$tmp/$name.log" || true)
  {
    echo "== $name ($bin): $DURATION s idle, pg_trigger $triggers rows, analyzed $ANALYZE; alert passes failed: $failed"
    echo "  PostgreSQL's CPU (every process, /proc): $(( (t1 - t0) * 1000 / hz / DURATION )) ms per second"
    q -F ' | ' -c "SELECT calls, round(mean_exec_time::numeric, 3), round(total_exec_time::numeric / $DURATION, 2),
                          left(regexp_replace(query, '\s+', ' ', 'g'), 70)
                     FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                      ORDER BY total_exec_time DESC LIMIT 6" | sed 's/^/  /'
    q -c "SELECT 'server ms per second of the idle gateway: ' || round(sum(total_exec_time)::numeric / $DURATION, 2)
            FROM pg_stat_statements
           WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
  } >>"$report"
done
echo "calls | mean ms | ms per second | statement"
cat "$report"
