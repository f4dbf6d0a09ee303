#!/usr/bin/env python3
"""Rewrites the generated configuration reference, docs/configuration.md, from
scripts/config-reference.sh: `serve` first, then every other command (tests/api/cli.rs checks it)."""
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/rbac-gateway"
OTHERS = ["migrate", "check", "explain", "drift", "rollout", "diff", "matrix", "sweep",
          "mapping push", "mapping activate", "mapping rollback", "mapping history", "mapping show", "cockpit", "test"]


def ref(*cmds):
    return subprocess.run(["bash", str(root / "scripts/config-reference.sh"), binary, *cmds],
                          cwd=root, check=True, capture_output=True, text=True).stdout


def rewrite(path, text_between):
    f = root / path
    text = f.read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    a = text.index(start) + len(start)
    b = text.index(end)
    f.write_text(text[:a] + text_between + text[b:])


rewrite("docs/configuration.md", ref("serve", *OTHERS))
