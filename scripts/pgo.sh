#!/usr/bin/env bash
# Makes the profile release builds are optimised with (profile-guided optimisation):
# pgo/rbac-gateway.profdata and pgo/rustc-version. Builds the gateway instrumented, twice (in
# target/pgo-generate as `cargo build --release` builds it, in target/pgo-generate-dev as a build
# with tests does: see below), runs each in front of an nginx upstream with its own PostgreSQL through the
# request kinds scripts/load.sh measures (an allowed route with one cached session, a mix of
# routes, denials with their audit rows, an admin without roles, sessions rotating through the
# cache, no session, request bodies, the forward-auth listener), merges what it counted, and
# cleans target/release so the next `cargo build --release` uses the new profile everywhere
# (scripts/rustc-pgo adds it; cargo rebuilds the gateway's own crates when the profile changes,
# rustc lists it as an input, but not the crates.io dependencies).
# Run it again after changing the data plane: functions that changed since the profile was made
# are compiled without it (correct, not optimised for their hot paths).
#   scripts/pgo.sh      (about 15 minutes here from cold; KEEP=1 keeps the temporary directory; SECS=5 per load)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
KEEP=${KEEP:-0}
SECS=${SECS:-5}
log() { printf '[pgo] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

. "$root/scripts/bench-lib.sh"

need_tools wrk nginx cmake curl psql initdb

# llvm-profdata of this rustc's LLVM (rustup's llvm-tools component).
profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  log "rustup component add llvm-tools"
  rustup component add llvm-tools >/dev/null
fi
[ -x "$profdata" ] || die "no llvm-profdata at $profdata"

bench_tmp rbac-pgo

# Two instrumented builds of the gateway, each trained below and merged into one profile. Symbol
# names carry a hash of each crate's dependencies and their features, and a build with a test, an
# example or a bench (`cargo test --release`) turns on the features of the dev-dependencies
# (criterion, casbin, tempfile: regex, smallvec's `union`, syn...), so every function of the
# gateway and of hyper has another name there than in `cargo build --release`. A profile of one
# build alone leaves the other without profile data (measured 2026-11-25: 17,126 instructions per
# request against 21,073). Merged, the profile has both names and either build finds its own.
build_instrumented() { # target-dir cargo-args...
  RUSTFLAGS="-Cprofile-generate=$tmp/build-scripts" \
    cargo build --release --quiet --target-dir "$1" "${@:2}"
}
log "building the instrumented gateway as cargo build --release builds it (target/pgo-generate)"
build_instrumented "$root/target/pgo-generate" --bin rbac-gateway
log "building it again as a build with tests builds it (target/pgo-generate-dev)"
build_instrumented "$root/target/pgo-generate-dev" --bin rbac-gateway --example bare_proxy
BIN=$root/target/pgo-generate/release/rbac-gateway
DEV_BIN=$root/target/pgo-generate-dev/release/rbac-gateway

eval "$("$root/scripts/pg.sh" start "$tmp/pg")"
"$BIN" migrate --database-url "$DATABASE_URL" >/dev/null
sessions=2000
seq -f "pgo-e-%.0f" 1 "$sessions" >"$tmp/cookies.txt"
seed_admins pgo pgo-admin-token pgo-norole-token pgo-e- "$sessions"

start_upstream
up=$up_port

admin="Cookie: console_session=pgo-admin-token"
check() { # expected url [curl args]
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' "${@:3}" "$2")
  [ "$got" = "$1" ] || die "$2: expected $1, got $got"
}
cat >"$tmp/mix.lua" <<'LUA'
-- allowed routes of several kinds (static, variables, deep), one session, in turn
local paths = { "/ops", "/dashboard", "/console/customers/", "/console/customers/42",
  "/console/customers/42/audit", "/console/customers/42/rbac-grants/roles", "/api/status/sites/7",
  "/dashboard/api/sites/7/latency-history", "/console/audit", "/api/billing/dashboard/a/b/c",
  "/console/admins/online", "/api/rbac/me" }
local reqs, i = {}, 0
function init(args)
  for k, p in ipairs(paths) do
    reqs[k] = wrk.format("GET", p, { ["Cookie"] = "console_session=pgo-admin-token" }, nil)
  end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
LUA
cat >"$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "reason=pgo&note=" .. string.rep("x", 200)
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Cookie"] = "console_session=pgo-admin-token"
LUA

load() { # what wrk-args...
  log "$1"
  wrk -t1 -d"${SECS}s" "${@:2}" >"$tmp/wrk.out" || die "wrk failed ($1): $(cat "$tmp/wrk.out")"
  grep -q ' requests in ' "$tmp/wrk.out" || die "wrk made no requests ($1)"
}

train() { # gateway-binary: serves the request kinds load.sh measures, then exits
  log "training $1"
  gw=$(free_port)
  adm=$(free_port)
  authz=$(free_port)
  LLVM_PROFILE_FILE="$tmp/gateway-%p.profraw" "$1" serve --listen "127.0.0.1:$gw" \
    --admin-listen "127.0.0.1:$adm" --authz-listen "127.0.0.1:$authz" --upstream "127.0.0.1:$up" \
    --routes "$root/routes.toml" --database-url "$DATABASE_URL" --audit-spool "$tmp/audit.spool" \
    --cache-ttl 60 --log-format json >"$tmp/gateway.log" 2>&1 &
  gw_pid=$!
  pids+=("$gw_pid")
  wait_http "http://127.0.0.1:$adm/readyz" 200 30 || die "gateway not ready: $(tail -5 "$tmp/gateway.log")"

  GW=http://127.0.0.1:$gw
  check 200 "$GW/ops" -H "$admin"
  check 403 "$GW/console/flags/promotions" -H "$admin"
  check 403 "$GW/ops" -H "Cookie: console_session=pgo-norole-token"
  check 302 "$GW/ops"
  check 200 "$GW/_alerts/dismiss-all" -H "$admin" -X POST --data x=1
  check 200 "http://127.0.0.1:$authz/authz" -H "$admin" -H "X-Original-Method: GET" -H "X-Original-URI: /ops"

  load "allowed route, one cached session" -c32 -H "$admin" "$GW/ops"
  load "allowed route, one cached session (again)" -c32 -H "$admin" "$GW/ops"
  load "a mix of allowed routes" -c32 -s "$tmp/mix.lua" "$GW/"
  load "denied (403 and an audit row each)" -c16 -H "$admin" "$GW/console/flags/promotions"
  load "an admin without roles" -c8 -H "Cookie: console_session=pgo-norole-token" "$GW/ops"
  COOKIES=$tmp/cookies.txt LOAD_PATH=/ops \
    load "$sessions sessions rotating through the cache" -c32 -s "$root/scripts/load/rotate.lua" "$GW/ops"
  load "no session (302)" -c8 "$GW/ops"
  load "request bodies" -c16 -s "$tmp/post.lua" "$GW/_alerts/dismiss-all"
  load "forward-auth /authz" -c16 -H "$admin" -H "X-Original-Method: GET" -H "X-Original-URI: /ops" \
    "http://127.0.0.1:$authz/authz"

  log "stopping the gateway (it writes its profile as it exits)"
  kill -TERM "$gw_pid"
  wait "$gw_pid" || die "the gateway exited with $?: $(tail -5 "$tmp/gateway.log")"
}

train "$BIN"
train "$DEV_BIN"
raw=("$tmp"/gateway-*.profraw)
[ "${#raw[@]}" = 2 ] && [ -s "${raw[0]}" ] && [ -s "${raw[1]}" ] || die "expected two profiles, got: ${raw[*]}"

# Merged beside the profile and then renamed over it: a failed merge leaves the old profile (rustc
# reports an unreadable one as a warning only, and the build would go on without it).
"$profdata" merge --sparse -o "$root/pgo/rbac-gateway.profdata.new" "${raw[@]}"
rustc -vV >"$root/pgo/rustc-version.new"
mv "$root/pgo/rbac-gateway.profdata.new" "$root/pgo/rbac-gateway.profdata"
mv "$root/pgo/rustc-version.new" "$root/pgo/rustc-version"
log "wrote pgo/rbac-gateway.profdata ($(du -h "$root/pgo/rbac-gateway.profdata" | cut -f1)) and pgo/rustc-version"
log "cargo clean --release: the next release build uses the new profile"
cargo clean --release --quiet
