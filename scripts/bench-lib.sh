# Sourced by scripts/load.sh and scripts/instructions.sh: a throwaway directory, the processes
# started for the run, their cleanup however the script ends, and nginx instances in it. Expects
# $root, $KEEP, log and die (and $NGINX for start_nginx).

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
