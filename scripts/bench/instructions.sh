#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a figure other tenants of
# this shared machine do not move (wall-clock CPU varies by 10-30% between runs). Repeated runs
# agree within about 0.5%; timed background work (the mapping watcher's polls, cache upkeep) is
# spread over however many requests the slowed process served.
# The gateway runs under `valgrind --tool=callgrind` in front of an nginx upstream; after a
# warm-up, instrumentation is switched on for one `wrk -t1 -c32 -d${DURATION}s` run of the
# allowed path with one cached session (load.sh's case c), and the process's instructions
# (every thread: the data plane and the background tasks) are divided by the requests wrk saw.
#   scripts/bench/instructions.sh [BIN]     (BIN defaults to target/release/rbac-gateway, built first)
#   DURATION=10  TOP=25 (functions listed, by own instructions; 0 for none)  KEEP=1 (keep the profile)
#   SYSCALLS=1   instead of callgrind, the gateway runs as it is and `perf stat` counts its system
#                calls per request over the same wrk run (all of them, and write, epoll_wait,
#                recvfrom, sendto, writev): the kernel's share, which callgrind does not see
#   TRACED=1     every request traced (OTEL_TRACES_SAMPLER=always_on), the spans exported to the
#                nginx upstream (it answers 200 to the OTLP POSTs): what a traced request costs
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
DURATION=${DURATION:-10}
TOP=${TOP:-25}
KEEP=${KEEP:-0}
log() { printf '[instructions] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

. "$root/scripts/bench/bench-lib.sh"

SYSCALLS=${SYSCALLS:-0}
TRACED=${TRACED:-0}
if [ "$SYSCALLS" = 1 ]; then need_tools perf wrk nginx psql python3; else need_tools valgrind wrk nginx psql python3; fi

if [ $# -ge 1 ]; then
  BIN=$1
else
  log "cargo build --release"
  cargo build --release --quiet --bin rbac-gateway
  BIN=$root/target/release/rbac-gateway
fi
[ -x "$BIN" ] || die "$BIN is not an executable"

bench_tmp rbac-instr

eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$BIN" migrate --database-url "$DATABASE_URL" >/dev/null
token="instr-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -v tok="$token" <<'SQL'
INSERT INTO admins (id, email) VALUES ('instr-admin', 'instr-admin@example.test');
INSERT INTO rbac_user_groups (user_id, group_id, granted_by)
  SELECT 'instr-admin', id, 'instructions.sh' FROM rbac_groups WHERE name = 'raxx-platform-admins';
INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc) VALUES
  ('instr-s', 'instr-admin', encode(sha256(convert_to(:'tok', 'UTF8')), 'hex'), now() + interval '3 hours');
SQL

start_upstream
up=$up_port

gw=$(free_port)
adm=$(free_port)
out=$tmp/callgrind.out
under=(valgrind --tool=callgrind --callgrind-out-file="$out" --instr-atstart=no --dump-instr=no)
[ "$SYSCALLS" = 1 ] && under=()
otel=()
[ "$TRACED" = 1 ] && otel=(env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:$up/v1/traces" OTEL_TRACES_SAMPLER=always_on)
"${otel[@]}" "${under[@]}" "$BIN" serve --listen "127.0.0.1:$gw" --admin-listen "127.0.0.1:$adm" --upstream "127.0.0.1:$up" \
  --routes "$root/routes.toml" --database-url "$DATABASE_URL" --audit-spool "$tmp/audit.spool" \
  --cache-ttl 600 >"$tmp/gateway.log" 2>&1 &
vg=$!
pids+=("$vg")
for _ in $(seq 300); do
  curl -s -o /dev/null "http://127.0.0.1:$adm/readyz" && break
  kill -0 "$vg" 2>/dev/null || die "the gateway did not start: $(tail -5 "$tmp/gateway.log")"
  sleep 0.2
done
url="http://127.0.0.1:$gw/ops"
got=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: console_session=$token" "$url")
[ "$got" = 200 ] || die "allowed request answered $got, expected 200"

calls="raw_syscalls:sys_enter"
for c in write epoll_wait recvfrom sendto writev; do calls+=",syscalls:sys_enter_$c"; done
if [ "$SYSCALLS" = 1 ]; then
  log "warm-up, then ${DURATION}s of wrk -t1 -c32 under perf stat"
  wrk -t1 -c32 -d3s -H "Cookie: console_session=$token" "$url" >/dev/null
  perf stat -x, -e "$calls" -p "$vg" -o "$tmp/perf.csv" -- sleep $((DURATION + 2)) &
  perf_pid=$!
  sleep 1 # perf attaches before wrk starts; its window is longer than wrk's run
  wrk_out=$(wrk -t1 -c32 -d"${DURATION}s" -H "Cookie: console_session=$token" "$url")
  wait "$perf_pid" || die "perf stat failed: $(cat "$tmp/perf.csv")"
else
  log "warm-up, then ${DURATION}s of wrk -t1 -c32 under callgrind"
  wrk -t1 -c32 -d3s -H "Cookie: console_session=$token" "$url" >/dev/null
  callgrind_control -i on "$vg" >/dev/null
  wrk_out=$(wrk -t1 -c32 -d"${DURATION}s" -H "Cookie: console_session=$token" "$url")
  callgrind_control -i off "$vg" >/dev/null
  callgrind_control -d "$vg" >/dev/null
fi
requests=$(awk '/ requests in /{ print $1 }' <<<"$wrk_out")
non2xx=$(awk '/Non-2xx or 3xx responses:/{ print $5 }' <<<"$wrk_out")
[ -z "$non2xx" ] || die "wrk saw $non2xx non-2xx answers"
[ "${requests:-0}" -gt 0 ] || die "wrk made no requests: $wrk_out"
if [ "$SYSCALLS" = 1 ]; then
  # perf's CSV: count,unit,event,...; "<not supported>" or "<not counted>" is a failure.
  awk -F, -v n="$requests" -v bin="$(basename "$BIN")" '
    /^#/ || NF < 3 { next }
    $1 !~ /^[0-9]+$/ { bad = bad " " $3; next }
    { printf "%-32s %8.3f per request (%s in all)\n", $3, $1 / n, $1 }
    END { printf "%s requests; %s\n", n, bin; if (bad != "") { print "not counted:" bad > "/dev/stderr"; exit 1 } }
  ' "$tmp/perf.csv"
  exit 0
fi
# Each dump has one `totals:` line (its `summary:` line may repeat it): count the totals only.
total=$(cat "$out"* | awk '/^totals:/ { s += $2 } END { printf "%.0f\n", s }')
printf 'instructions per request: %d (%s instructions, %s requests; %s)\n' \
  "$((total / requests))" "$total" "$requests" "$(basename "$BIN")"
if [ "$TOP" -gt 0 ]; then
  last=$(ls "$out"* | tail -1)
  callgrind_annotate --inclusive=no "$last" 2>/dev/null | awk '/^-+$/ { n++ } n >= 4' |
    grep -E '^ *[0-9,]+ \(' | head -"$TOP" | sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/library/##' | cut -c1-160
fi
