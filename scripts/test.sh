#!/usr/bin/env bash
# Runs every test: unit tests, the mapping's tests (routes.test.toml), the integration suite
# (real PostgreSQL, a real upstream, the real gateway binary on real sockets), formatting, clippy
# and the docs (rustdoc's warnings are errors). Starts a throwaway PostgreSQL when DATABASE_URL
# is not set. The test tools come from the project's virtual environment (.venv/,
# scripts/setup.sh --tests), first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
PATH="$PWD/.venv/bin:$PATH"
export PATH
if [ -z "${DATABASE_URL:-}" ]; then
  PG_TMP=$(mktemp -d /tmp/rbacgw-test-pg.XXXXXX)
  chmod 755 "$PG_TMP"
  trap 'scripts/pg.sh stop "$PG_TMP"; rm -rf "$PG_TMP"' EXIT
  eval "$(scripts/pg.sh start "$PG_TMP")"
  echo "throwaway PostgreSQL at $DATABASE_URL"
fi
export DATABASE_URL
cargo fmt --check
# The migrations, linted as squawk sees them (each finding that stays justified:
# scripts/squawk-justifications.txt).
python3 scripts/squawk.py
cargo clippy --all-targets -- -D warnings
# Broken or private intra-doc links, unclosed HTML in a doc comment: before the long tests.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
# Console's mapping pinned by its tests (routes.test.toml beside routes.toml; synthetic
# principals, no database), before the long tests: a failing case stops the run here.
cargo run --quiet --bin rbac-gateway -- test --routes routes.toml
cargo test --all-targets
