#!/usr/bin/env bash
# Prints the configuration reference (docs/configuration.md), generated from the CLI definition
# (clap, through each command's --help and scripts/config-reference.py), so the documentation
# cannot drift from the binary. tests/api/cli.rs checks docs/configuration.md holds exactly this.
set -euo pipefail
# Usage: config-reference.sh [BIN [COMMAND...]]: docs/configuration.md holds `serve`, then the
# other commands (scripts/update-config-reference.py writes it).
bin=${1:-target/debug/rbac-gateway}
shift || true
cmds=("$@")
[ ${#cmds[@]} -gt 0 ] || cmds=(serve migrate check explain drift rollout diff matrix sweep "mapping push" "mapping activate" "mapping rollback" "mapping history" "mapping show")
here=$(dirname "$0")
for cmd in "${cmds[@]}"; do
  # A subcommand of a command ("mapping push") is two words.
  read -ra words <<<"$cmd"
  env -i COLUMNS=100 "$bin" "${words[@]}" --help | python3 "$here/config-reference.py" "$cmd"
done
