"""Werkzeug as the oracle for the gateway's matcher (tests/api/differential.rs).

Reads the routes.toml named by argv[1] and builds a werkzeug Map with one
Rule(path, methods=..., endpoint="r{index}") per [[route]] (strict_slashes and merge_slashes at
their defaults, as in Flask). Then, for each JSON line on stdin, {"method": ..., "target": ...}
with the raw request target as sent on the wire, does what gunicorn + Werkzeug do: cut the
query, percent-decode the path once to bytes (PATH_INFO), decode those as UTF-8 with
'replace', and match. Prints one JSON line per input line:

    {"endpoint": "r12" | null, "redirect": bool}

"redirect" is true when Werkzeug answers with a RequestRedirect (a missing trailing slash);
"endpoint" is then the rule the redirect leads to.
"""

import json
import sys
import tomllib
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, RequestRedirect, Rule


def build(path):
    with open(path, "rb") as f:
        routes = tomllib.load(f)["route"]
    return Map(
        [Rule(r["path"], methods=r["methods"], endpoint=f"r{i}") for i, r in enumerate(routes)]
    )


def path_info(target):
    raw = target.split("?", 1)[0]
    # gunicorn: PATH_INFO is the path unquoted to bytes, as latin-1; Werkzeug re-decodes UTF-8.
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def match(adapter, method, path):
    try:
        endpoint, _ = adapter.match(path, method)
        return {"endpoint": endpoint, "redirect": False}
    except RequestRedirect as e:
        new_path = unquote(urlsplit(e.new_url).path)
        try:
            endpoint, _ = adapter.match(new_path, method)
        except (NotFound, MethodNotAllowed, RequestRedirect):
            endpoint = None
        return {"endpoint": endpoint, "redirect": True}
    except (NotFound, MethodNotAllowed):
        return {"endpoint": None, "redirect": False}


def main():
    adapter = build(sys.argv[1]).bind("x")
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        q = json.loads(line)
        out.write(json.dumps(match(adapter, q["method"], path_info(q["target"]))) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
