#!/usr/bin/env python3
"""Prints the one fenced block in LANG that contains MARKER of a page of docs/deploy/, with the
page's addresses replaced: the configurations the operators' pages print are the ones benchmarks
run (the tests in tests/api/edge.rs read them the same way).

Usage: doc-block.py PAGE LANG MARKER [FROM=TO ...]   (PAGE: nginx.md, caddy.md, traefik.md;
every FROM must occur in the block)
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
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    page, lang, marker = sys.argv[1], sys.argv[2], sys.argv[3]
    path = pathlib.Path(__file__).resolve().parent.parent / "docs" / "deploy" / page
    name = f"docs/deploy/{page}"
    found = [b for b in blocks(path.read_text(), lang) if marker in b]
    if len(found) != 1:
        sys.exit(f"{name}: {len(found)} ```{lang} blocks contain {marker!r}, expected one")
    block = found[0]
    for pair in sys.argv[4:]:
        src, _, dst = pair.partition("=")
        if src not in block:
            sys.exit(f"{name} ```{lang} block has no {src!r}")
        block = block.replace(src, dst)
    sys.stdout.write(block)


main()
