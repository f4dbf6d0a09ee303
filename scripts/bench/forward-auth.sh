#!/usr/bin/env bash
# Forward-auth against its floor, per edge, all on 127.0.0.1 (`scripts/bench/load.sh forward-auth`).
#
# For each edge (nginx auth_request, Caddy forward_auth, Traefik forwardAuth), its configuration
# as printed (read out of docs/deploy/EDGE.md, addresses replaced) in front of an nginx
# `return 200 'ok'` as Console, asking in turn:
#   floor    a do-nothing authorizer: nginx `return 200` with the three X-Rbac-* headers, no body
#   gateway  the gateway's /authz (the platform admin's cached session, an allowed route)
# The two run back to back in each round (floor first in odd rounds, gateway first in even).
# Reported: requests/s, p50, p99 and CPU µs per request of the edge, of the authorizer and of
# Console's stand-in, medians over the rounds; gateway/floor of the medians and per round.
#
# Usage: [ROUNDS=3] [DURATION=6] [CONNECTIONS=32] [EDGE_WORKERS=2] [EDGES="nginx caddy traefik"]
#        [BUILD=0] [KEEP=1] scripts/bench/load.sh forward-auth
# Written to target/forward-auth-report.md too.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
DURATION=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
EDGE_WORKERS=${EDGE_WORKERS:-2}
EDGES=${EDGES:-nginx caddy traefik}
ALLOWED_PATH=${ALLOWED_PATH:-/ops}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[forward-auth] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
. "$root/scripts/bench/bench-lib.sh"
need_tools wrk nginx curl psql python3 initdb
# Caddy and Traefik come from the project's virtual environment (scripts/venv.sh), never the
# system's Python.
for e in $EDGES; do
  case $e in
    nginx) ;;
    caddy | traefik) [ -x "$root/.venv/bin/$e" ] || "$root/scripts/venv.sh" ;;
    *) die "unknown edge $e (nginx, caddy, traefik)" ;;
  esac
done
PATH="$root/.venv/bin:$PATH"

if [ "$BUILD" != 0 ]; then
  log "cargo build --release (a few minutes from cold)"
  cargo build --release --quiet --bin rbac-gateway
fi
GW_BIN=$root/target/release/rbac-gateway
[ -x "$GW_BIN" ] || die "$GW_BIN is missing (run without BUILD=0)"

bench_tmp rbac-fauth
log "starting PostgreSQL"
eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$GW_BIN" migrate --database-url "$DATABASE_URL" >/dev/null
run=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
tok_admin="fa-admin-$run"
seed_admins fa "$tok_admin" "fa-norole-$run" "fa-e-$run-" 1
start_upstream # up_port, up_pid: Console's stand-in

gw_port=$(free_port)
adm_port=$(free_port)
authz_port=$(free_port)
"$GW_BIN" serve --listen "127.0.0.1:$gw_port" --admin-listen "127.0.0.1:$adm_port" \
  --upstream "127.0.0.1:$up_port" --routes "$root/routes.toml" --database-url "$DATABASE_URL" \
  --audit-spool "$tmp/audit.spool" --cache-ttl 60 --authz-listen "127.0.0.1:$authz_port" \
  --log-format json >"$tmp/gateway.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
wait_http "http://127.0.0.1:$adm_port/readyz" 200 30 || die "gateway not ready: $(tail -5 "$tmp/gateway.log")"

# The do-nothing authorizer: what the gateway answers for this request, without deciding.
roles=$(curl -s -o /dev/null -D - -H "X-Original-Method: GET" -H "X-Original-URI: $ALLOWED_PATH" \
  -H "Cookie: console_session=$tok_admin" "http://127.0.0.1:$authz_port/authz" |
  awk -F': ' 'tolower($1) == "x-rbac-roles" { sub(/\r$/, "", $2); print $2 }')
[ -n "$roles" ] || die "the gateway's /authz did not allow $ALLOWED_PATH for the platform admin"
noop_port=$(free_port)
nginx_conf noop 1 "  server {
    listen 127.0.0.1:$noop_port;
    location = /authz {
      add_header X-Rbac-Admin-Id fa-admin;
      add_header X-Rbac-Roles \"$roles\";
      add_header X-Rbac-Decision allowed;
      return 200;
    }
  }"
start_nginx noop "http://127.0.0.1:$noop_port/authz" 200
noop_pid=$started_pid
[ "$(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$noop_port/authz")" = 0 ] ||
  die "the do-nothing authorizer answers with a body"

# One edge per (edge, authorizer), from its page's configuration (docs/deploy/).
declare -A edge_port edge_pid
start_edge() { # edge which authz-port
  local e=$1 w=$2 a=$3 port name=$1-$2
  port=$(free_port)
  case $e in
    nginx)
      nginx_conf "$name" "$EDGE_WORKERS" "$(python3 "$root/scripts/doc-block.py" nginx.md nginx auth_request \
        "listen 80;=listen 127.0.0.1:$port;" "127.0.0.1:9191=127.0.0.1:$a" "127.0.0.1:5000=127.0.0.1:$up_port")"
      start_nginx "$name" "http://127.0.0.1:$port/auth/login" 200
      edge_pid[$name]=$started_pid
      ;;
    caddy)
      mkdir -p "$tmp/$name"
      { printf '{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\n'
        python3 "$root/scripts/doc-block.py" caddy.md caddyfile forward_auth ":80 {=http://:$port {" \
          "127.0.0.1:9191=127.0.0.1:$a" "127.0.0.1:5000=127.0.0.1:$up_port"; } >"$tmp/$name/Caddyfile"
      HOME=$tmp/$name XDG_DATA_HOME=$tmp/$name XDG_CONFIG_HOME=$tmp/$name \
        caddy run --config "$tmp/$name/Caddyfile" --adapter caddyfile >"$tmp/$name/log" 2>&1 &
      edge_pid[$name]=$!
      pids+=("$!")
      wait_http "http://127.0.0.1:$port/auth/login" 200 20 || die "caddy did not start: $(tail -5 "$tmp/$name/log")"
      ;;
    traefik)
      mkdir -p "$tmp/$name"
      python3 "$root/scripts/doc-block.py" traefik.md yaml forwardAuth "127.0.0.1:9191=127.0.0.1:$a" \
        "127.0.0.1:5000=127.0.0.1:$up_port" >"$tmp/$name/dynamic.yml"
      { python3 "$root/scripts/doc-block.py" traefik.md yaml $'entryPoints:\n  web:' "\":80\"=\"127.0.0.1:$port\"" \
          "/etc/traefik/rbac-gateway.yml=$tmp/$name/dynamic.yml"
        printf 'log:\n  level: ERROR\n'; } >"$tmp/$name/traefik.yml"
      HOME=$tmp/$name traefik --configFile="$tmp/$name/traefik.yml" >"$tmp/$name/log" 2>&1 &
      edge_pid[$name]=$!
      pids+=("$!")
      wait_http "http://127.0.0.1:$port/auth/login" 200 20 || die "traefik did not start: $(tail -5 "$tmp/$name/log")"
      ;;
  esac
  edge_port[$name]=$port
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: console_session=$tok_admin" "http://127.0.0.1:$port$ALLOWED_PATH")
  [ "$got" = 200 ] || die "$name: $ALLOWED_PATH answered $got"
}
for e in $EDGES; do
  log "starting $e (docs/deploy/ configuration) x2"
  start_edge "$e" floor "$noop_port"
  start_edge "$e" gateway "$authz_port"
done

results=$tmp/results.tsv
: >"$results"
CLK_TCK=$(getconf CLK_TCK)
measure() { # edge which round
  local name=$1-$2 out a0 a1 e0 e1 u0 u1 apid
  out=$tmp/wrk-$name-$3.txt
  if [ "$2" = floor ]; then apid=$noop_pid; else apid=$gw_pid; fi
  local c0 c1
  c0=$(metric 'rbac_gateway_connections_accepted_total{listener="forward-auth"}')
  e0=$(cpu_ticks "${edge_pid[$name]}"); a0=$(cpu_ticks "$apid"); u0=$(cpu_ticks "$up_pid")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Cookie: console_session=$tok_admin" \
    "http://127.0.0.1:${edge_port[$name]}$ALLOWED_PATH" >"$out" 2>&1 || die "wrk ($name) failed: $(cat "$out")"
  e1=$(cpu_ticks "${edge_pid[$name]}"); a1=$(cpu_ticks "$apid"); u1=$(cpu_ticks "$up_pid")
  c1=$(metric 'rbac_gateway_connections_accepted_total{listener="forward-auth"}')
  awk -v e="$1" -v w="$2" -v r="$3" -v et=$((e1 - e0)) -v at=$((a1 - a0)) -v ut=$((u1 - u0)) -v cn=$((c1 - c0)) '
    function us(v,  n) { n = v + 0; if (v ~ /us$/) return n; if (v ~ /ms$/) return n * 1000; if (v ~ /s$/) return n * 1000000; return n }
    /^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) } / requests in / { reqs = $1 }
    /^Requests\/sec:/ { rps = $2 } /Non-2xx or 3xx responses:/ { bad = $5 }
    END { printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", e, w, r, rps, p50, p99, reqs, bad, et, at, ut, cn }
  ' "$out" >>"$results"
}
log "$ROUNDS round(s) x $(wc -w <<<"$EDGES") edge(s) x 2 x ${DURATION}s, wrk -t$THREADS -c$CONNECTIONS"
for r in $(seq "$ROUNDS"); do
  for e in $EDGES; do
    if (( r % 2 )); then measure "$e" floor "$r"; measure "$e" gateway "$r"
    else measure "$e" gateway "$r"; measure "$e" floor "$r"; fi
  done
done
kill -0 "$gw_pid" 2>/dev/null || die "the gateway died: $(tail -5 "$tmp/gateway.log")"
opened=$(metric 'rbac_gateway_connections_accepted_total{listener="forward-auth"}')
asked=$(metric 'rbac_gateway_authz_requests_total{decision="allowed"}')

mkdir -p "$root/target"
python3 - "$results" "$root/target/forward-auth-report.md" "$opened" "$asked" <<PY
import statistics, sys
res, out, opened, asked = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [l.rstrip("\n").split("\t") for l in open(res) if l.strip()]
med = statistics.median
tck = $CLK_TCK
L = [f"# forward-auth vs its floor ({len(set(r[2] for r in rows))} round(s), medians)", "",
     "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency; the edge configurations of docs/deploy/ (nginx "
     "worker_processes $EDGE_WORKERS); Console: nginx return 200; floor: nginx return 200 with the three "
     "X-Rbac-* headers, no body", "",
     "| edge | authorizer | requests/s | p50 | p99 | edge µs/req | authorizer µs/req | Console µs/req | non-2xx | new connections to /authz |",
     "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
summary = []
for e in dict.fromkeys(r[0] for r in rows):
    st = {}
    for w in ("floor", "gateway"):
        rs = [r for r in rows if r[0] == e and r[1] == w]
        per = lambda i: med(int(r[i]) / tck * 1e6 / max(int(r[6]), 1) for r in rs)
        st[w] = dict(rps=med(float(r[3]) for r in rs), p50=med(float(r[4]) for r in rs),
                     p99=med(float(r[5]) for r in rs), edge=per(8), auth=per(9), up=per(10),
                     bad=sum(int(r[7]) for r in rs), conns=sum(int(r[11]) for r in rs),
                     reqs=sum(int(r[6]) for r in rs),
                     by_round={r[2]: float(r[3]) for r in rs})
        s = st[w]
        L.append(f"| {e} | {w} | {s['rps']:,.0f} | {s['p50']/1000:.3f} ms | {s['p99']/1000:.3f} ms | "
                 f"{s['edge']:.1f} | {s['auth']:.1f} | {s['up']:.1f} | {s['bad']} | "
                 + (f"{s['conns']:,} for {s['reqs']:,} requests |" if w == "gateway" else "- |"))
    f, g = st["floor"], st["gateway"]
    per_round = [g["by_round"][k] / f["by_round"][k] for k in sorted(f["by_round"], key=int)]
    summary.append(f"- {e}: gateway/floor {g['rps'] / f['rps']:.2f} of the medians; per round, back to back: "
                   f"{', '.join(f'{x:.2f}' for x in per_round)}, median {med(per_round):.2f}; "
                   f"p99 gateway - floor {(g['p99'] - f['p99']) / 1000:+.3f} ms; CPU per request, edge + authorizer: "
                   f"floor {f['edge'] + f['auth']:.1f} µs, gateway {g['edge'] + g['auth']:.1f} µs")
L.append("")
L += summary
L.append(f"- in all, the gateway's forward-auth listener accepted {opened:,} connections for {asked:,} allowed answers")
text = "\n".join(L) + "\n"
sys.stdout.write(text)
open(out, "w").write(text)
PY
log "report written to target/forward-auth-report.md"
