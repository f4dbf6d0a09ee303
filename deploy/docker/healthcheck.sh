#!/bin/bash
# Tiny HTTP probe for the gateway's admin listener, for images without curl (debian:bookworm-slim).
# Uses bash's /dev/tcp, so it needs nothing but bash.
#
#   healthcheck.sh [PATH]      PATH defaults to /healthz; use /readyz for "ready to serve"
#
# The port is taken from GATEWAY_ADMIN_LISTEN (host:port; default 127.0.0.1:9090); the probe
# always connects to 127.0.0.1, which reaches a listener bound to 0.0.0.0 as well.
# Exit 0 when the answer's status is 200, 1 otherwise (connection refused, timeout, 503, ...).
set -u
path=${1:-/healthz}
port=${GATEWAY_ADMIN_LISTEN:-127.0.0.1:9090}
port=${port##*:}
exec 3<>"/dev/tcp/127.0.0.1/${port}" 2>/dev/null || exit 1
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3 || exit 1
IFS= read -r -t 5 status <&3 || exit 1
exec 3<&-
case "$status" in
  "HTTP/1.1 200 "* | "HTTP/1.0 200 "*) exit 0 ;;
  *) echo "probe ${path}: ${status%$'\r'}" >&2; exit 1 ;;
esac
