#!/usr/bin/env bash
# Bounded soak (loopback only): mixed allowed/denied/redirected traffic through the gateway for
# DURATION seconds (default 600), the mapping reloaded every RELOAD_EVERY seconds, grants
# changing every GRANT_EVERY seconds. At the end: errors (socket errors + 5xx), 403s answered vs
# audit rows stored (lost rows), and the gateway's RSS sampled every 10 s (memory flat?).
#   DURATION=60 scripts/bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-600}
RELOAD_EVERY=${RELOAD_EVERY:-3}
GRANT_EVERY=${GRANT_EVERY:-2}
CONNECTIONS=${CONNECTIONS:-16}
scripts/setup.sh
command -v wrk >/dev/null && command -v nginx >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null; }
cargo build --release --quiet
bin=target/release/rbac-gateway
state=$(mktemp -d /tmp/rbacgw-soak.XXXXXX); chmod 755 "$state"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pg.sh stop "$state/pg"; rm -rf "$state"
}
trap cleanup EXIT
eval "$(scripts/pg.sh start "$state/pg")"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port); gwp=$(port); adm=$(port)
mkdir -p "$state/nginx"
cat >"$state/nginx/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $state/nginx/nginx.pid; error_log $state/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$up; location / { return 200 "ok\n"; } } }
NGX
nginx -c "$state/nginx/nginx.conf" -p "$state/nginx" & pids+=($!)
"$bin" migrate --database-url "$DATABASE_URL" >/dev/null
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
psql -q "$DATABASE_URL" <<SQL
INSERT INTO admins (id, email) VALUES ('a1', 'allowed@soak'), ('d1', 'denied@soak'), ('g1', 'churn@soak');
INSERT INTO rbac_user_groups (user_id, group_id, granted_by) SELECT 'a1', id, 'soak' FROM rbac_groups WHERE name = 'raxx-support-team';
INSERT INTO rbac_user_groups (user_id, group_id, granted_by) SELECT 'd1', id, 'soak' FROM rbac_groups WHERE name = 'staging-admins';
INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc) VALUES
 ('s1', 'a1', '$(sha soak-allowed)', now() + interval '1 day'),
 ('s2', 'd1', '$(sha soak-denied)', now() + interval '1 day');
SQL
cp routes.toml "$state/routes.toml"
"$bin" serve --listen "127.0.0.1:$gwp" --admin-listen "127.0.0.1:$adm" --upstream "127.0.0.1:$up" \
  --routes "$state/routes.toml" --database-url "$DATABASE_URL" --audit-spool "$state/audit.spool" \
  2>"$state/gateway.log" & gw=$!; pids+=($gw)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$adm/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

# Reloads: alternate the production mapping with a copy whose default mode comment differs
# (a new version, same decisions), so every reload is real but answers stay comparable.
( i=0; while true; do sleep "$RELOAD_EVERY"; i=$((i+1))
    { cat routes.toml; echo "# soak reload $i"; } >"$state/routes.new" && mv "$state/routes.new" "$state/routes.toml"; done ) & pids+=($!)
# Grant churn: an unrelated admin joins and leaves a group (change feed evictions under load).
( while true; do sleep "$GRANT_EVERY"
    psql -q "$DATABASE_URL" -c "INSERT INTO rbac_user_groups (user_id, group_id, granted_by) SELECT 'g1', id, 'soak' FROM rbac_groups WHERE name = 'raxx-devops-team' ON CONFLICT DO NOTHING" >/dev/null
    sleep "$GRANT_EVERY"
    psql -q "$DATABASE_URL" -c "DELETE FROM rbac_user_groups WHERE user_id = 'g1'" >/dev/null; done ) & pids+=($!)
# RSS sampler.
( while true; do awk '/VmRSS/ {print $2}' "/proc/$gw/status" >>"$state/rss.kb" 2>/dev/null; sleep 10; done ) & pids+=($!)

SOAK_ALLOWED=soak-allowed SOAK_DENIED=soak-denied wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s \
  -s scripts/bench/soak/mixed.lua "http://127.0.0.1:$gwp" | tee "$state/wrk.txt"
sleep 2   # let the last group commits land
counts=$(grep SOAK_COUNTS "$state/wrk.txt")
answered_403=$(sed -E 's/.* 403=([0-9]+).*/\1/' <<<"$counts")
errors=$(( $(sed -E 's/.* 5xx=([0-9]+).*/\1/' <<<"$counts") + $(sed -E 's/.*socket_errors=([0-9]+).*/\1/' <<<"$counts") ))
rows=$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM access_audit_events WHERE event_type = 'access_denied'")
reloads=$(curl -s "http://127.0.0.1:$adm/metrics" | awk '/^rbac_gateway_mapping_reloads_total/ {print $1"="$2}' | tr '\n' ' ')
rss_first=$(head -1 "$state/rss.kb"); rss_last=$(tail -1 "$state/rss.kb"); rss_max=$(sort -n "$state/rss.kb" | tail -1)
echo
echo "soak: ${DURATION}s, $CONNECTIONS connections, reload every ${RELOAD_EVERY}s, grant change every ${GRANT_EVERY}s"
echo "  answers:        $counts"
echo "  errors:         $errors (socket errors + 5xx)"
echo "  403 answered:   $answered_403"
lost=$(( answered_403 > rows ? answered_403 - rows : 0 ))
echo "  audit rows:     $rows (lost: $lost; rows beyond answered 403s are requests still in flight when wrk stopped: $((rows - answered_403 > 0 ? rows - answered_403 : 0)), at most one per connection)"
echo "  reloads:        $reloads"
echo "  RSS (KiB):      first $rss_first, last $rss_last, max $rss_max (samples every 10 s: $(tr '\n' ' ' <"$state/rss.kb"))"
[ "$errors" = 0 ] && [ "$lost" = 0 ] && [ $((rows - answered_403)) -le "$CONNECTIONS" ] && echo "soak: ok" || { echo "soak: FAILED"; exit 1; }
