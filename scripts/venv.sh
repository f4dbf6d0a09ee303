#!/usr/bin/env bash
# Makes the project's virtual environment, .venv/ (ignored by git), with the test tools of
# scripts/test-requirements.txt: installed there, never into the system's Python. Idempotent: a
# venv whose installed requirements are those of the file is left as it is. The tests find the
# tools there (tests/api/helpers: `tool`); scripts/test.sh also puts .venv/bin first on PATH.
# Needs `python3 -m venv` (Debian: python3-venv; scripts/setup.sh --tests installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
req=scripts/test-requirements.txt
stamp=.venv/installed-requirements.txt
if [ -x .venv/bin/python3 ] && cmp -s "$req" "$stamp"; then
  exit 0
fi
[ -x .venv/bin/python3 ] || python3 -m venv .venv
.venv/bin/python3 -m pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
