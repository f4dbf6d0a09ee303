#!/usr/bin/env python3
"""Rewrites the README's configuration reference from scripts/config-reference.sh."""
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/rbac-gateway"
ref = subprocess.run(["bash", str(root / "scripts/config-reference.sh"), binary],
                     cwd=root, check=True, capture_output=True, text=True).stdout
readme = root / "README.md"
text = readme.read_text()
start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
a = text.index(start) + len(start)
b = text.index(end)
readme.write_text(text[:a] + ref + text[b:])
