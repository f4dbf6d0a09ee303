#!/usr/bin/env python3
"""Rewrites the README's configuration reference from the CLI (scripts/config-reference.sh)."""
import subprocess
import sys

binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/rbac-gateway"
ref = subprocess.run(["bash", "scripts/config-reference.sh", binary], capture_output=True, text=True, check=True).stdout
start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
text = open("README.md").read()
i, j = text.index(start) + len(start), text.index(end)
open("README.md", "w").write(text[:i] + ref + text[j:])
