# Sourced by scripts/load.sh and scripts/instructions.sh: a throwaway directory, the processes
# started for the run, and their cleanup however the script ends. Expects $root, $KEEP and log.

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
