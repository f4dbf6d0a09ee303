#!/usr/bin/env python3
"""Prints the one fenced block of README.md in LANG that contains MARKER, with the README's
addresses replaced: the configurations the README prints are the ones benchmarks run (the
tests in tests/api/edge.rs read them the same way).

Usage: readme-block.py LANG MARKER [FROM=TO ...]   (every FROM must occur in the block)
"""
import pathlib
import sys


def blocks(text, lang):
    out, cur = [], None
    for line in text.splitlines():
        if cur is None:
            if line.rstrip() == "```" + lang:
                cur = []
        elif line.rstrip() == "```":
            out.append("\n".join(cur) + "\n")
            cur = None
        else:
            cur.append(line)
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    lang, marker = sys.argv[1], sys.argv[2]
    readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    found = [b for b in blocks(readme.read_text(), lang) if marker in b]
    if len(found) != 1:
        sys.exit(f"README.md: {len(found)} ```{lang} blocks contain {marker!r}, expected one")
    block = found[0]
    for pair in sys.argv[3:]:
        src, _, dst = pair.partition("=")
        if src not in block:
            sys.exit(f"README.md ```{lang} block has no {src!r}")
        block = block.replace(src, dst)
    sys.stdout.write(block)


main()
