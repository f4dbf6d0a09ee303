#!/usr/bin/env bash
# Static (and cheap functional) checks of deploy/, what .ci/run calls: the checks are
# scripts/check_deploy.py (its docstring says which); this wrapper makes sure PyYAML is there
# first. Prints one line per check (PASS / FAIL / SKIP) and exits non-zero when any check fails.
# Run from anywhere. CHECK_DEPLOY_BIN: the binary to check against (default: the newer of
# target/release/rbac-gateway and target/debug/rbac-gateway; never builds).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install --quiet pyyaml >/dev/null 2>&1 || true
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  printf 'FAIL  %s\n' "python3 + PyYAML available (pip install pyyaml failed)"
  exit 1
fi
exec python3 scripts/check_deploy.py
