#!/usr/bin/env python3
"""Turns one `rbac-gateway CMD --help` (stdin) into the reference entry for CMD (docs/configuration.md): what
the command does, its usage line, and a table of its arguments and options (flag, environment
variable, default, what it does). Called by scripts/config-reference.sh; nothing is typed by
hand, so the reference cannot drift from the binary (tests/api/cli.rs checks it)."""
import re
import sys


def cell(text):
    return text.replace("|", "\\|").strip()


def main():
    cmd = sys.argv[1]
    lines = [l.rstrip() for l in sys.stdin.read().splitlines()]
    about, i = [], 0
    while i < len(lines) and not lines[i].startswith("Usage:"):
        about.append(lines[i])
        i += 1
    usage = lines[i][len("Usage: "):].strip()
    entries, cur = [], None
    for line in lines[i + 1:]:
        if line in ("Arguments:", "Options:") or not line.strip():
            continue
        if re.match(r"^  \S", line) or re.match(r"^      --", line):
            # A short entry has its text on the same line, after two spaces or more.
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            cur = [parts[0], parts[1:]]
            entries.append(cur)
        elif cur is not None:
            cur[1].append(line.strip())
    out = [f"### `rbac-gateway {cmd}`", "", " ".join(l.strip() for l in about if l.strip()), "",
           f"`{usage}`", "", "| argument or option | environment | default | what |", "|---|---|---|---|"]
    for name, desc in entries:
        if name.startswith("-h, --help"):
            continue
        text = " ".join(desc)
        # `[env: NAME=value]`, or `[env: NAME]` for a variable whose value clap hides (a secret).
        env = re.search(r"\[env: ([A-Z0-9_]+)(?:=[^\]]*)?\]", text)
        default = re.search(r"\[default: ([^\]]*)\]", text)
        values = re.search(r"\[possible values: ([^\]]*)\]", text)
        text = re.sub(r"\s*\[(env|default|possible values): [^\]]*\]", "", text).strip()
        if values:
            text += f" (one of: {values.group(1)})"
        out.append("| `{}` | {} | {} | {} |".format(
            cell(name), f"`{env.group(1)}`" if env else "",
            f"`{cell(default.group(1))}`" if default else "", cell(text)))
    try:
        print("\n".join(out))
        print()
    except BrokenPipeError:
        # The reader went away (`| head`): nothing is left to tell it.
        sys.exit(0)


main()
