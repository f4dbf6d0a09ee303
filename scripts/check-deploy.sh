#!/usr/bin/env bash
# Static (and cheap functional) checks of deploy/, what .ci/run calls: the checks are
# scripts/check_deploy.py (its docstring says which); this wrapper makes sure PyYAML is there
# first (the project's virtual environment, .venv/: scripts/venv.sh), and runs it with the venv's
# interpreter (with Flask: the stand-ins' smoke tests), never the system's. Prints one line per
# check (PASS / FAIL / SKIP) and exits non-zero when any check fails. Run from anywhere.
# CHECK_DEPLOY_BIN: the binary to check against (default: the newer of
# target/release/rbac-gateway and target/debug/rbac-gateway; never builds).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

scripts/venv.sh >/dev/null 2>&1 || true
if ! .venv/bin/python3 -c 'import yaml' 2>/dev/null; then
  printf 'FAIL  %s\n' "python3 + PyYAML available (scripts/venv.sh failed)"
  exit 1
fi
PATH="$PWD/.venv/bin:$PATH" exec .venv/bin/python3 scripts/check_deploy.py
