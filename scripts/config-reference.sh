#!/usr/bin/env bash
# Prints the README's configuration reference, generated from the CLI definition (clap), so the
# documentation cannot drift from the binary. tests/api/cli.rs checks the README holds exactly this.
set -euo pipefail
bin=${1:-target/debug/rbac-gateway}
for cmd in serve migrate check explain drift rollout diff matrix sweep; do
  echo "### \`rbac-gateway $cmd\`"
  echo
  echo '```text'
  env -i COLUMNS=100 "$bin" "$cmd" --help | sed -e 's/[[:space:]]*$//'
  echo '```'
  echo
done
