#!/usr/bin/env python3
"""Runs squawk (the PostgreSQL migration linter, squawk-cli from PyPI) over migrations/ and fails
on any finding scripts/squawk-justifications.txt does not justify, and on a justification no
finding needs any more (so the file stays the list of what is true). Called by scripts/test.sh."""
import json
import pathlib
import shutil
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
squawk = shutil.which("squawk")
if squawk is None:
    sys.exit("squawk is not installed (scripts/setup.sh --tests installs squawk-cli into .venv/)")
justified = {}
for line in (root / "scripts/squawk-justifications.txt").read_text().splitlines():
    if not line.strip() or line.startswith("#"):
        continue
    parts = line.split(None, 2)
    if len(parts) < 3:
        sys.exit(f"scripts/squawk-justifications.txt: no justification: {line!r}")
    justified[(parts[0], parts[1])] = parts[2]
files = sorted(str(p.relative_to(root)) for p in (root / "migrations").glob("*.sql"))
out = subprocess.run([squawk, "--reporter", "json", "--pg-version", "15", *files], cwd=root,
                     capture_output=True, text=True)
try:
    findings = json.loads(out.stdout or "[]")
except json.JSONDecodeError:
    sys.exit(f"squawk did not answer JSON (exit {out.returncode}): {out.stdout}{out.stderr}")
used, bad = set(), []
for f in findings:
    name = pathlib.Path(f["file"]).name
    for key in ((name, f["rule_name"]), ("*", f["rule_name"])):
        if key in justified:
            used.add(key)
            break
    else:
        bad.append(f"{f['file']}:{f['line']}: {f['rule_name']}: {f['message']}")
stale = [f"{k[0]} {k[1]}" for k in justified if k not in used]
for b in bad:
    print(f"squawk: not justified: {b}")
for s in stale:
    print(f"squawk: a justification no finding needs (remove it): {s}")
print(f"squawk: {len(findings)} finding(s) over {len(files)} migrations, {len(bad)} not justified")
sys.exit(1 if bad or stale else 0)
