# Sourced by scripts/bench/load.sh, denials.sh, instructions.sh, forward-auth.sh and
# connections.sh: the tools they need, a throwaway directory, the processes started for the run
# and their cleanup however the script ends, nginx instances in it (the upstream), the admins
# they seed. Expects $root, $KEEP, log and die (and $NGINX, set by need_tools, for start_nginx).

# Makes $tmp (/tmp/PREFIX.XXXXXX, reachable by the postgres user for $tmp/pg) and an empty
# $pids, and stops both on exit.
bench_tmp() { # prefix
  tmp=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$tmp" # the postgres user must reach $tmp/pg
  pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# TERM to every process in $pids, KILL after 10 s; PostgreSQL stopped; $tmp removed unless KEEP=1.
bench_cleanup() {
  local rc=$? pid
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  [ -d "$tmp/pg" ] && "$root/scripts/pg.sh" stop "$tmp/pg"
  if [ "$KEEP" = 1 ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
  exit "$rc"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url expected-status seconds
  local i
  for i in $(seq $(( $3 * 10 ))); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = "$2" ] && return 0
    sleep 0.1
  done
  return 1
}

# nginx in $tmp/NAME: nginx_conf writes its config (the http block of every instance, then the
# server blocks given), start_nginx checks and starts it.
nginx_conf() { # name workers server-block
  local user=""
  [ "$(id -u)" = 0 ] && user="user root;"
  mkdir -p "$tmp/$1"
  cat >"$tmp/$1/nginx.conf" <<EOF
$user
worker_processes $2;
daemon off;
pid $tmp/$1/nginx.pid;
error_log $tmp/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $tmp/$1/body;
  proxy_temp_path $tmp/$1/proxy;
  fastcgi_temp_path $tmp/$1/fastcgi;
  uwsgi_temp_path $tmp/$1/uwsgi;
  scgi_temp_path $tmp/$1/scgi;
$3
}
EOF
}
start_nginx() { # name url expected-status: checks the config, starts it, waits for url; sets started_pid
  "$NGINX" -t -q -p "$tmp/$1" -c "$tmp/$1/nginx.conf" -e "$tmp/$1/error.log" 2>"$tmp/$1/test.log" ||
    die "nginx $1 config: $(cat "$tmp/$1/test.log")"
  "$NGINX" -p "$tmp/$1" -c "$tmp/$1/nginx.conf" -e "$tmp/$1/error.log" >"$tmp/$1/stdout.log" 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
  wait_http "$2" "$3" 10 || die "nginx $1 did not start: $(cat "$tmp/$1/error.log")"
}

# The benchmarks' stand-in for Console: one nginx worker answering 200 "ok\n" to everything.
# Sets up_port and up_pid (its master).
start_upstream() {
  up_port=$(free_port)
  nginx_conf upstream 1 "  server {
    listen 127.0.0.1:$up_port;
    location / { default_type text/plain; return 200 \"ok\\n\"; }
  }"
  start_nginx upstream "http://127.0.0.1:$up_port/" 200
  up_pid=$started_pid
}

# Seeds the benchmarks' admins in $DATABASE_URL: NAME-admin in raxx-platform-admins and
# NAME-norole (no group), with the session tokens TOKEN_ADMIN and TOKEN_NOROLE, and N admins
# NAME-e-I in raxx-platform-admins with one session each, whose token is TOKEN_PREFIX then I.
seed_admins() { # name token-admin token-norole token-prefix n
  psql "$DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 -v name="$1" -v tok_admin="$2" \
    -v tok_norole="$3" -v prefix="$4" -v n="$5" <<'SQL'
INSERT INTO admins (id, email) VALUES
  (:'name' || '-admin', :'name' || '-admin@example.test'),
  (:'name' || '-norole', :'name' || '-norole@example.test');
INSERT INTO rbac_user_groups (user_id, group_id, granted_by)
  SELECT :'name' || '-admin', id, :'name' FROM rbac_groups WHERE name = 'raxx-platform-admins';
INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc) VALUES
  (:'name' || '-s-admin', :'name' || '-admin', encode(sha256(convert_to(:'tok_admin', 'UTF8')), 'hex'), now() + interval '3 hours'),
  (:'name' || '-s-norole', :'name' || '-norole', encode(sha256(convert_to(:'tok_norole', 'UTF8')), 'hex'), now() + interval '3 hours');
INSERT INTO admins (id, email)
  SELECT :'name' || '-e-' || i, :'name' || '-e-' || i || '@example.test' FROM generate_series(1, :n) i;
INSERT INTO rbac_user_groups (user_id, group_id, granted_by)
  SELECT :'name' || '-e-' || i, g.id, :'name' FROM generate_series(1, :n) i, rbac_groups g
  WHERE g.name = 'raxx-platform-admins';
INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc)
  SELECT :'name' || '-se-' || i, :'name' || '-e-' || i, encode(sha256(convert_to(:'prefix' || i, 'UTF8')), 'hex'), now() + interval '3 hours'
  FROM generate_series(1, :n) i;
ANALYZE;
SQL
}

# Installs the Debian packages of the tools named that this machine lacks (root only) and sets
# NGINX. Tools: a command, or nginx (also found in /usr/sbin), psql (postgresql-client), initdb
# (postgresql; also found in /usr/lib/postgresql/*/bin).
need_tools() { # tool...
  local need=() t
  for t in "$@"; do
    case $t in
      nginx) command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx) ;;
      psql) command -v psql >/dev/null || need+=(postgresql-client) ;;
      perf) command -v perf >/dev/null || need+=(linux-perf) ;;
      initdb) command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql) ;;
      *) command -v "$t" >/dev/null || need+=("$t") ;;
    esac
  done
  if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing: ${need[*]} (install them, or run as root)"
    log "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

# The gateway's metric (its admin listener on $adm_port).
metric() { # name or name{labels}: the sample's value, 0 when absent
  curl -s "http://127.0.0.1:$adm_port/metrics" |
    awk -v m="$1" '$1 == m { v = $2 } END { printf "%.0f\n", (v == "" ? 0 : v) }'
}

cpu_ticks() { # "pid [pid...]": utime+stime of the processes and their children (nginx workers), in ticks
  local p q t=0
  for q in $1; do
    for p in "$q" $(pgrep -P "$q" 2>/dev/null); do
      [ -r "/proc/$p/stat" ] || continue
      t=$(( t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat") ))
    done
  done
  echo "$t"
}

# Debian's PgBouncer in transaction mode in front of $DATABASE_URL (pool SIZE, default 32), for
# cold.sh and instructions.sh. Sets pgb_url (the gateway's --database-url through it) and pgb_pid.
start_pgbouncer() { # [size]
  local port pg_port pgb
  need_tools pgbouncer
  port=$(free_port)
  mkdir -p "$tmp/pgb"
  echo '"postgres" ""' >"$tmp/pgb/users.txt"
  pg_port=${DATABASE_URL##*:}
  pg_port=${pg_port%%/*}
  cat >"$tmp/pgb/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
pidfile =
logfile =
auth_type = trust
auth_file = $tmp/pgb/users.txt
pool_mode = transaction
default_pool_size = ${1:-32}
max_client_conn = 1000
INI
  chmod -R a+rX "$tmp/pgb"
  pgb=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
  if [ "$(id -u)" = 0 ]; then "$pgb" -u postgres "$tmp/pgb/pgbouncer.ini" 2>"$tmp/pgb/log" & else "$pgb" "$tmp/pgb/pgbouncer.ini" 2>"$tmp/pgb/log" & fi
  pgb_pid=$!
  pids+=("$pgb_pid")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  pgb_url="postgres://postgres@127.0.0.1:$port/postgres"
}
