#!/usr/bin/env bash
# The gateway's two request-path statements sent each way a client can send them (issue 68 §1,
# issue 67's "bind the values"): the cold lookup (BATCH_SQL, src/stores/session_batch.rs, as Lookup::render writes it)
# and the denial's audit INSERT (src/stores/audit/mod.rs), against one PostgreSQL, direct and
# behind Debian's PgBouncer in transaction mode, by the bench-only crate
# scripts/bench/lookup-protocols (not part of the gateway's build; see its src/main.rs for the
# modes: named, named-values, simple, simple-noset, typed, typed-tx, typed-unnest, typed-unnest-tx, copy).
#
# One connection, one operation at a time, N operations (N_BATCH when the batch is more than
# one) after WARMUP; per operation: wall µs,
# the client's CPU µs, PostgreSQL's CPU µs (the postmaster and its backends, /proc utime+stime
# around the loop) and PgBouncer's; under callgrind (CG_N operations) the client's instructions
# in the loop alone (--toggle-collect); under strace (ST_N operations) the client's sends per
# operation (each send but COPY's data is followed by a wait for the answer: the round trips);
# both in the first CG_ROUNDS rounds (1: they do not move with the machine's load). The modes of a
# case run back to back in each round, in reverse order in even rounds; medians over ROUNDS.
# Writes target/lookup-protocols-report.tsv (every run) and target/lookup-protocols-report.md.
# Settings: ROUNDS (3), N (5000), N_BATCH (1000), WARMUP (200), CG_N (300), CG_ROUNDS (1), ST_N (200), COLD_BATCHES ("1 14"),
# AUDIT_BATCHES ("1 12"), SESSIONS (10000), PGBOUNCER=0 (direct only), GW_BIN (the binary
# whose `migrate` makes the schema: target/release/rbac-gateway, else target/debug's), KEEP=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
ROUNDS=${ROUNDS:-3}
N=${N:-5000}
N_BATCH=${N_BATCH:-1000}
WARMUP=${WARMUP:-200}
CG_N=${CG_N:-300}
CG_ROUNDS=${CG_ROUNDS:-1}
ST_N=${ST_N:-200}
COLD_BATCHES=${COLD_BATCHES:-1 14}
AUDIT_BATCHES=${AUDIT_BATCHES:-1 12}
SESSIONS=${SESSIONS:-10000}
PGBOUNCER=${PGBOUNCER:-1}
KEEP=${KEEP:-0}
log() { echo "lookup-protocols: $*" >&2; }
die() {
  echo "lookup-protocols: $*" >&2
  exit 1
}
# shellcheck source=bench-lib.sh
. "$root/scripts/bench/bench-lib.sh"
need_tools psql initdb valgrind strace python3
[ "$PGBOUNCER" = 0 ] || need_tools pgbouncer

crate=$root/scripts/bench/lookup-protocols
CARGO_TARGET_DIR=$crate/target cargo build --release --manifest-path "$crate/Cargo.toml" >&2
LP=$crate/target/release/lookup-protocols
if [ -z "${GW_BIN:-}" ]; then
  GW_BIN=$root/target/release/rbac-gateway
  [ -x "$GW_BIN" ] || GW_BIN=$root/target/debug/rbac-gateway
fi
[ -x "$GW_BIN" ] || die "no gateway binary for migrate (cargo build)"

bench_tmp rbacgw-lp
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
export DATABASE_URL
pg_pid=$(head -1 "$tmp/pg/data/postmaster.pid")
"$GW_BIN" migrate --database-url "$DATABASE_URL" >/dev/null
run=$$
log "seeding $SESSIONS admins with one session each"
seed_admins lp "lp-admin-$run" "lp-norole-$run" "lp-e-$run-" "$SESSIONS"
psql "$DATABASE_URL" -X -q -At -c \
  "SELECT encode(sha256(convert_to('lp-e-$run-' || i, 'UTF8')), 'hex') FROM generate_series(1, $SESSIONS) i" \
  >"$tmp/hashes.txt"
targets=("direct $DATABASE_URL 0")
if [ "$PGBOUNCER" != 0 ]; then
  start_pgbouncer 4
  targets+=("pgbouncer $pgb_url $pgb_pid")
fi

out=$root/target/lookup-protocols-report.tsv
mkdir -p "$root/target"
printf 'round\ttarget\top\tmode\tbatch\tn\twall_us\tclient_cpu_us\tpg_cpu_us\tpgb_cpu_us\tinstructions\tsends\n' >"$out"
seq_no=0
one() { # round target url pgb-pid op mode batch
  local r=$1 target=$2 url=$3 pgb=$4 op=$5 mode=$6 batch=$7 line cg instr="" sends="" n=$N
  [ "$batch" = 1 ] || n=$N_BATCH
  seq_no=$((seq_no + 1))
  line=$("$LP" "$url" "$op" "$mode" "$batch" "$n" "$WARMUP" "$pg_pid" "$pgb" "$tmp/hashes.txt" "n$run-$seq_no" 2>"$tmp/err") ||
    die "$target $op $mode $batch: $(cat "$tmp/err")"
  if [ "$r" -le "$CG_ROUNDS" ]; then
    seq_no=$((seq_no + 1))
    cg=$tmp/cg.out
    valgrind --tool=callgrind --callgrind-out-file="$cg" --toggle-collect='*measured_loop*' \
      "$LP" "$url" "$op" "$mode" "$batch" "$CG_N" "$WARMUP" 0 0 "$tmp/hashes.txt" "c$run-$seq_no" >/dev/null 2>"$tmp/err" ||
      die "callgrind $target $op $mode $batch: $(cat "$tmp/err")"
    instr=$(awk -v n="$CG_N" '/^(summary|totals):/ { t = $2 } END { printf "%.0f", t / n }' "$cg")
    seq_no=$((seq_no + 1))
    strace -f -e trace=sendto,sendmsg,write,writev -o "$tmp/strace" \
      "$LP" "$url" "$op" "$mode" "$batch" "$ST_N" "$WARMUP" 0 0 "$tmp/hashes.txt" "s$run-$seq_no" >/dev/null 2>"$tmp/err" ||
      die "strace $target $op $mode $batch: $(cat "$tmp/err")"
    # Sends to a socket between the loop's markers (written to fd 2), per operation.
    sends=$(awk -v n="$ST_N" '/LOOP-START/ { on = 1; next } /LOOP-END/ { on = 0 }
      on && /(sendto|sendmsg|writev|write)\(([3-9]|[1-9][0-9]+),/ { c++ } END { printf "%.2f", c / n }' "$tmp/strace")
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$target" "$line" "$instr" "$sends" >>"$out"
  log "round $r $target $(printf '%s' "$line" | cut -f1-3): $(printf '%s' "$line" | cut -f5-8 | tr '\t' ' ') µs (wall, client, pg, pgb); $instr instructions; ${sends:-.} sends"
}

for r in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    read -r target url pgb <<<"$t"
    for op in cold audit; do
      if [ "$op" = cold ]; then batches=$COLD_BATCHES; modes=(named simple simple-noset typed typed-tx); else
        batches=$AUDIT_BATCHES; modes=(simple simple-noset typed typed-tx typed-unnest typed-unnest-tx named named-values copy); fi
      for batch in $batches; do
        order=("${modes[@]}")
        if [ $((r % 2)) = 0 ]; then
          order=()
          for ((i = ${#modes[@]} - 1; i >= 0; i--)); do order+=("${modes[$i]}"); done
        fi
        for mode in "${order[@]}"; do
          # A named statement is not pooler-safe: the gateway never sends one through PgBouncer.
          [ "$target" = pgbouncer ] && [[ $mode == named* ]] && continue
          one "$r" "$target" "$url" "$pgb" "$op" "$mode" "$batch"
        done
      done
    done
  done
done

python3 - "$out" "$root/target/lookup-protocols-report.md" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cases = {}
for r in rows:
    cases.setdefault((r["target"], r["op"], r["batch"]), {}).setdefault(r["mode"], []).append(r)
def med(rs, k):
    v = [float(x[k]) for x in rs if x[k] != ""]
    return statistics.median(v) if v else float("nan")
out = ["| target | op | batch | mode | instructions | client CPU µs | PostgreSQL CPU µs | PgBouncer CPU µs | wall µs | sends | PG CPU vs simple, per round |",
       "|---|---|---|---|---|---|---|---|---|---|---|"]
for (target, op, batch), modes in cases.items():
    base = modes.get("simple")
    for mode, rs in modes.items():
        sends = [x["sends"] for x in rs if x["sends"]]
        per_round = ""
        if base and mode != "simple":
            b = {x["round"]: float(x["pg_cpu_us"]) for x in base}
            per_round = " ".join("%+.0f%%" % (100 * (float(x["pg_cpu_us"]) / b[x["round"]] - 1)) for x in rs if x["round"] in b and b[x["round"]] > 0)
        out.append("| %s | %s | %s | %s | %s | %.1f | %.1f | %.1f | %.1f | %s | %s |" % (
            target, op, batch, mode, "{:,.0f}".format(med(rs, "instructions")), med(rs, "client_cpu_us"),
            med(rs, "pg_cpu_us"), med(rs, "pgb_cpu_us"), med(rs, "wall_us"), sends[0] if sends else "", per_round))
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
