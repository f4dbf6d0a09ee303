#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on a free loopback port with a private socket dir.
# Usage: eval "$(scripts/pg.sh start DIR)"   -> exports DATABASE_URL and PG_DIR
#        eval "$(scripts/pg.sh standby DIR PRIMARY_URL)"   -> exports STANDBY_URL and STANDBY_DIR:
#        a streaming standby of PRIMARY_URL's server (pg_basebackup -R), started as `start` does
#        scripts/pg.sh restart DIR | stop DIR
# PG_FSYNC=off (the default: a throwaway server for tests and benchmarks) or on: commits reach
# the disk before they are acknowledged, as on a production server (`scripts/bench/load.sh`'s denied
# path, whose audit rows are committed before each 403, is measured both ways in docs/performance-log.md).
# PG_OPTS: more server options, as `-c name=value ...` (a bench's `shared_preload_libraries`).
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?data directory}
# The server's own bindir (initdb on PATH may be a link to it): pg_basebackup is beside it.
bindir=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")")
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$cmd" in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1
  fi
  # A server started again in the same directory keeps its port (clients reconnect to it).
  if [ -f "$dir/port" ]; then port=$(cat "$dir/port"); else
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fi
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-off} -c max_connections=300 ${PG_OPTS:-}" start >/dev/null
  echo "$port" >"$dir/port"
  echo "export PG_DIR=$dir"
  echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
  ;;
standby)
  primary=${3:?primary URL}
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$bindir/pg_basebackup" -d "$primary" -D "$dir/data" -R -X stream >"$dir/basebackup.log" 2>&1
  fi
  bash "$0" start "$dir" | sed 's/^export PG_DIR=/export STANDBY_DIR=/; s/^export DATABASE_URL=/export STANDBY_URL=/'
  ;;
restart)
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -m fast -w -t 60 restart >/dev/null
  ;;
stop)
  [ -f "$dir/data/postmaster.pid" ] && as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  ;;
esac
