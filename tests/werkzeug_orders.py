"""Werkzeug in several registration orders (tests/api/order_differential.rs, issue 44 part 2).

Reads one JSON line per rule set on stdin:

    {"rules": [[path, [methods...]], ...], "requests": [[method, path], ...], "seed": N,
     "shuffles": K}

and routes, for each set, every request (a method and an already decoded path: PATH_INFO) through
a werkzeug Map in several registration orders: the file's, the reverse, and K shuffles drawn
with random.Random(seed) (reproducible). The Map has one
Rule(path, methods=..., endpoint="r{index in the file}") per rule, strict_slashes and
merge_slashes at their defaults, as in Flask. The registration order is the order of the Map's
StateMachineMatcher (the only part of a Map that routes): for each order, the matcher is built
again from the same bound Rule objects, added in that order as Map.add does and sorted by
Map.update(). (A Map per order gives the same answers; building one compiles every rule's URL
builder again, which made the test several times slower.) Prints one JSON line per set:

    {"orders": [[file indexes in registration order], ...],
     "file": [{"outcome": str, "endpoint": "rN" | null, "redirect": bool}, ...],
     "differs": [{"request": i, "outcomes": [outcome in each order]}, ...]}

An outcome is what Console would do: "rN" (rule N's view runs), "308 <location>" (the
strict-slash redirect; no view runs), "405 <allowed methods>" or "404". "file" is the outcome in
the file's order, with the rule a redirect leads to ("endpoint", "redirect": true) as
tests/werkzeug_oracle.py reports it. "differs" lists the requests whose outcome is not the same
in every order.
"""

import json
import random
import sys
from urllib.parse import unquote, urlsplit

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, RequestRedirect, Rule
from werkzeug.routing.matcher import StateMachineMatcher


def in_order(url_map, order):
    """The Map with its rules registered in `order` (file indexes), bound for matching."""
    matcher = StateMachineMatcher(url_map.merge_slashes)
    rules = {int(rule.endpoint[1:]): rule for rule in url_map.iter_rules()}
    for i in order:
        matcher.add(rules[i])
    url_map._matcher = matcher
    url_map._remap = True  # the next match runs Map.update(): the matcher sorts by weight
    return url_map.bind("x")


def outcome(adapter, method, path):
    try:
        endpoint, _ = adapter.match(path, method)
        return endpoint, {"outcome": endpoint, "endpoint": endpoint, "redirect": False}
    except RequestRedirect as e:
        new_path = unquote(urlsplit(e.new_url).path)
        try:
            endpoint, _ = adapter.match(new_path, method)
        except (NotFound, MethodNotAllowed, RequestRedirect):
            endpoint = None
        return f"308 {new_path}", {"outcome": f"308 {new_path}", "endpoint": endpoint, "redirect": True}
    except MethodNotAllowed as e:
        allowed = ",".join(sorted(e.valid_methods or []))
        return f"405 {allowed}", {"outcome": f"405 {allowed}", "endpoint": None, "redirect": False}
    except NotFound:
        return "404", {"outcome": "404", "endpoint": None, "redirect": False}


def run(case):
    rules = case["rules"]
    n = len(rules)
    rng = random.Random(case["seed"])
    orders = [list(range(n)), list(reversed(range(n)))]
    for _ in range(case["shuffles"]):
        order = list(range(n))
        rng.shuffle(order)
        orders.append(order)
    url_map = Map([Rule(p, methods=m, endpoint=f"r{i}") for i, (p, m) in enumerate(rules)])
    requests = case["requests"]
    # outcomes[k][i]: request i in order k.
    outcomes = []
    file_outcomes = []
    for k, order in enumerate(orders):
        adapter = in_order(url_map, order)
        keys = []
        for method, path in requests:
            key, detail = outcome(adapter, method, path)
            keys.append(key)
            if k == 0:
                file_outcomes.append(detail)
        outcomes.append(keys)
    differs = [
        {"request": i, "outcomes": [o[i] for o in outcomes]}
        for i in range(len(requests))
        if len({o[i] for o in outcomes}) > 1
    ]
    return {"orders": orders, "file": file_outcomes, "differs": differs}


def main():
    out = sys.stdout
    for line in sys.stdin:
        if line.strip():
            out.write(json.dumps(run(json.loads(line))) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
