#!/usr/bin/env bash
# The cold path (issue 51): every request a session the gateway has not cached (SESSIONS
# sessions rotating, --cache-ttl 0), against PostgreSQL answering the same lookup itself, in the
# same run on the same database, in alternating rounds:
#
#   (g) wrk -t1 -cCONNECTIONS against the gateway, direct to PostgreSQL: requests/s, the
#       gateway's CPU per request and PostgreSQL's CPU per request (/proc utime+stime of the
#       gateway, and of the postmaster and its backends, around the run);
#   (q) pgbench -M prepared -cCONNECTIONS running one statement that does the same lookup
#       (admin_sessions joined with rbac_gateway_principal(admin_id, false), the session picked
#       at random): transactions/s and PostgreSQL's CPU per transaction;
#   (p) as (g), through Debian's PgBouncer in transaction mode (PGBOUNCER=0 skips it), with
#       PgBouncer's own CPU per request in a column of its own.
#
# Prints the medians over ROUNDS and the ratios the issue holds: g/q throughput, PostgreSQL's
# CPU per request g/q, the gateway's CPU per cold request, p/g throughput (of the medians, and
# per round from the two cases run back to back: each round runs q, g and p with g between the
# others, in reverse order in even rounds); and the CPU per cold request of the gateway,
# PostgreSQL and PgBouncer together, g against p; and the requests a statement carried
# (requests over the gateway's rbac_gateway_db_queries_total). Writes target/cold-report.md.
# Settings: ROUNDS (3), DURATION (10 s), CONNECTIONS (32), SESSIONS
# (10000), BUILD=0 (use target/release/rbac-gateway as it is), GW_BIN, KEEP=1, PG_FSYNC,
# LOOKUPS=1 (the gateways read through `--lookup-database-url`, the same URL as their
# `--database-url`: its simple read-only transactions, each with its standby check).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
SESSIONS=${SESSIONS:-10000}
PGBOUNCER=${PGBOUNCER:-1}
KEEP=${KEEP:-0}
log() { echo "cold: $*" >&2; }
die() {
  echo "cold: $*" >&2
  exit 1
}
# shellcheck source=bench-lib.sh
. "$root/scripts/bench/bench-lib.sh"
need_tools nginx psql initdb wrk curl
[ "$PGBOUNCER" = 0 ] || need_tools pgbouncer
PGBENCH=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | tail -1)
[ -x "$PGBENCH" ] || die "no pgbench (Debian's postgresql package has it)"

if [ -z "${GW_BIN:-}" ]; then
  [ "${BUILD:-1}" = 0 ] || cargo build --release --bin rbac-gateway >&2
  GW_BIN=$root/target/release/rbac-gateway
fi

bench_tmp rbacgw-cold
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
export DATABASE_URL
pg_pid=$(head -1 "$tmp/pg/data/postmaster.pid")
psql_q() { psql "$DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
"$GW_BIN" migrate --database-url "$DATABASE_URL" >/dev/null
run=$$
seq -f "cold-e-$run-%.0f" 1 "$SESSIONS" >"$tmp/cookies.txt"
log "seeding $SESSIONS admins with one session each"
seed_admins cold "cold-admin-$run" "cold-norole-$run" "cold-e-$run-" "$SESSIONS"
# pgbench's lookup by number: the same sessions' hashes, keyed 1..SESSIONS.
psql_q <<SQL
CREATE TABLE bench_tokens (i INTEGER PRIMARY KEY, h TEXT NOT NULL);
INSERT INTO bench_tokens SELECT i, encode(sha256(convert_to('cold-e-$run-' || i, 'UTF8')), 'hex')
  FROM generate_series(1, $SESSIONS) i;
ANALYZE bench_tokens;
SQL
cat >"$tmp/lookup.sql" <<SQL
\\set i random(1, $SESSIONS)
SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8, p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until FROM bench_tokens t JOIN admin_sessions s ON s.token_sha256 = t.h AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now() CROSS JOIN LATERAL rbac_gateway_principal(s.admin_id, false) p WHERE t.i = :i;
SQL

start_upstream
ALLOWED_PATH=/ops
start_gateway() { # name database-url: sets gw_port_NAME, gw_pid_NAME
  local port adm lookups=()
  [ "${LOOKUPS:-0}" != 0 ] && lookups=(--lookup-database-url "$2")
  port=$(free_port)
  adm=$(free_port)
  "$GW_BIN" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$adm" \
    --upstream "127.0.0.1:$up_port" --routes "$root/routes.toml" --database-url "$2" \
    --audit-spool "$tmp/audit-$1.spool" --cache-ttl 0 --db-pool-size "$CONNECTIONS" \
    "${lookups[@]}" --log-format json >"$tmp/gateway-$1.log" 2>&1 &
  pids+=($!)
  eval "gw_pid_$1=$!; gw_port_$1=$port; gw_adm_$1=$adm"
  wait_http "http://127.0.0.1:$adm/readyz" 200 30 || die "gateway $1 not ready: $(tail -5 "$tmp/gateway-$1.log")"
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: console_session=$(sed -n 7p "$tmp/cookies.txt")" "http://127.0.0.1:$port$ALLOWED_PATH")
  [ "$got" = 200 ] || die "gateway $1: a rotated session got $got, not 200"
}
start_gateway direct "$DATABASE_URL"
if [ "$PGBOUNCER" != 0 ]; then
  start_pgbouncer "$CONNECTIONS"
  start_gateway pooled "$pgb_url"
fi

CLK_TCK=$(getconf CLK_TCK)
# PostgreSQL's CPU: the postmaster's own and that of the backends it has reaped (cutime, cstime:
# pgbench's connections end before the run is read), plus its live backends'.
pg_ticks() {
  local t p
  t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$pg_pid/stat")
  for p in $(pgrep -P "$pg_pid"); do
    [ -r "/proc/$p/stat" ] || continue
    t=$(( t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat") ))
  done
  echo "$t"
}
results=$tmp/results.tsv
: >"$results"
us_per() { # ticks count
  awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }'
}
# The statements a gateway has sent (its rbac_gateway_db_queries_total: every cold lookup's
# statement, and its few others: the change feed, the readiness check).
statements() { # admin-port
  curl -sf "http://127.0.0.1:$1/metrics" | awk '/^rbac_gateway_db_queries_total / { print $2 }'
}
wrk_run() { # case round port gateway-pid admin-port [pooler-pid]
  local g0 p0 g1 p1 b0=0 b1=0 s0 s1 out n rps
  s0=$(statements "$5")
  g0=$(cpu_ticks "$4")
  [ -z "${6:-}" ] || b0=$(cpu_ticks "$6")
  p0=$(pg_ticks)
  out=$(COOKIES=$tmp/cookies.txt LOAD_PATH=$ALLOWED_PATH wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s "$root/scripts/bench/load/rotate.lua" "http://127.0.0.1:$3$ALLOWED_PATH")
  g1=$(cpu_ticks "$4")
  [ -z "${6:-}" ] || b1=$(cpu_ticks "$6")
  p1=$(pg_ticks)
  s1=$(statements "$5")
  n=$(echo "$out" | awk '/requests in/ { print $1 }')
  rps=$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')
  if echo "$out" | grep -q 'Non-2xx'; then die "$1: non-2xx answers: $out"; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$1" "$rps" "$(us_per $((g1 - g0)) "$n")" "$(us_per $((p1 - p0)) "$n")" "$(us_per $((b1 - b0)) "$n")" \
    "$(awk -v n="$n" -v s="$((${s1%.*} - ${s0%.*}))" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }')" >>"$results"
}
# The postmaster's children: its auxiliary processes and live backends.
pg_children() { pgrep -P "$pg_pid" | wc -l; }
pgbench_run() { # round
  local p0 p1 out n tps before deadline
  before=$(pg_children)
  p0=$(pg_ticks)
  out=$("$PGBENCH" -n -M prepared -c "$CONNECTIONS" -j 1 -T "$DURATION" -f "$tmp/lookup.sql" "$DATABASE_URL" 2>&1)
  # pgbench's backends end after it does: read once the postmaster has reaped them (their CPU is
  # then in its cutime/cstime; read before, a backend that exited unreaped counts nowhere).
  deadline=$((SECONDS + 10))
  while [ "$(pg_children)" -gt "$before" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "pgbench's backends not reaped within 10 s"
    sleep 0.05
  done
  p1=$(pg_ticks)
  n=$(echo "$out" | awk '/number of transactions actually processed/ { print $NF }')
  tps=$(echo "$out" | awk '/^tps/ { print $3; exit }')
  printf '%s\tq\t%s\t0\t%s\t0\t1\n' "$1" "$tps" "$(us_per $((p1 - p0)) "$n")" >>"$results"
}
# g runs between q and p in every round, in reverse order in even rounds (q g p, then p g q):
# each pair the report divides met the machine back to back, and no case always has the round's
# first or last seconds (until 2026-11-27 p always ran last).
run_g() { wrk_run g "$1" "$gw_port_direct" "$gw_pid_direct" "$gw_adm_direct"; }
run_p() { [ "$PGBOUNCER" = 0 ] || wrk_run p "$1" "$gw_port_pooled" "$gw_pid_pooled" "$gw_adm_pooled" "$pgb_pid"; }
for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS"
  if [ $((r % 2)) = 1 ]; then
    pgbench_run "$r"; run_g "$r"; run_p "$r"
  else
    run_p "$r"; run_g "$r"; pgbench_run "$r"
  fi
done

mkdir -p "$root/target"
python3 - "$results" "$root/target/cold-report.md" <<'PY'
import sys, statistics as st
rows = [l.strip().split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for r, case, rps, own, pg, pooler, per in rows:
    by.setdefault(case, []).append((float(rps), float(own), float(pg), float(pooler), float(per)))
med = lambda case, i: st.median(v[i] for v in by[case])
out = ["| case | requests/s | own CPU µs/request | PostgreSQL CPU µs/request | PgBouncer CPU µs/request | requests/statement |", "|---|---|---|---|---|---|"]
names = {"g": "(g) gateway, cold, direct", "q": "(q) pgbench -M prepared, the same lookup", "p": "(p) gateway, cold, through PgBouncer (transaction)"}
for case in ["g", "q", "p"]:
    if case in by:
        out.append(f"| {names[case]} | {med(case,0):,.0f} | {med(case,1):.1f} | {med(case,2):.1f} | {med(case,3):.1f} | {med(case,4):.1f} |")
out.append("")
out.append(f"- cold throughput g/q: {med('g',0)/med('q',0):.2f} (median of rounds)")
out.append(f"- PostgreSQL's CPU per request g/q: {med('g',2)/med('q',2):.2f}")
out.append(f"- the gateway's own CPU per cold request: {med('g',1):.1f} µs")
per_round = lambda a, b: [x[0] / y[0] for x, y in zip(by[a], by[b])]
out.append(f"- g/q per round (back to back): {', '.join(f'{v:.2f}' for v in per_round('g', 'q'))}; median {st.median(per_round('g', 'q')):.2f}")
if "p" in by:
    out.append(f"- through PgBouncer, p/g throughput: {med('p',0)/med('g',0):.2f}")
    out.append(f"- p/g per round (back to back): {', '.join(f'{v:.2f}' for v in per_round('p', 'g'))}; median {st.median(per_round('p', 'g')):.2f}")
    tot = lambda case: med(case, 1) + med(case, 2) + med(case, 3)
    out.append(f"- CPU per cold request, gateway + PostgreSQL + PgBouncer: g {tot('g'):.1f} µs, p {tot('p'):.1f} µs (g/p {tot('g')/tot('p'):.2f})")
out.append("")
out.append("per round: " + "; ".join(f"{r} {c} {rps} req/s own {o} µs pg {p} µs pgbouncer {b} µs {s} per statement" for r, c, rps, o, p, b, s in rows))
text = "\n".join(out)
print(text)
open(sys.argv[2], "w").write(text + "\n")
PY
