#!/usr/bin/env python3
"""Dumps a Flask app's url_map as the JSON `rbac-gateway check --app-routes` reads.

Usage: python3 scripts/dump_flask_routes.py MODULE:APP_OR_FACTORY > console-routes.json
       (e.g. console.app:create_app, or app:app)

Output: [{"rule": "/console/customers/<int:id>", "methods": ["GET"], "endpoint": "customers.detail",
          "strict_slashes": true}, ...]
HEAD and OPTIONS, which Flask adds to every rule, are left out; Flask's own `static` rule is kept.
The rules are in Console's registration order: Werkzeug tries equally weighted segments in that
order, and `check --app-routes` reports such rules (routes.toml cannot express the order).
"""
import importlib
import json
import sys


def load(spec):
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr or "app")
    if callable(obj) and not hasattr(obj, "url_map"):
        obj = obj()
    return obj


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.path.insert(0, ".")
    app = load(sys.argv[1])
    out = []
    for rule in app.url_map.iter_rules():
        methods = sorted(m for m in (rule.methods or ()) if m not in ("HEAD", "OPTIONS"))
        out.append(
            {
                "rule": rule.rule,
                "methods": methods,
                "endpoint": rule.endpoint,
                # Resolved from the map's default when the rule is bound.
                "strict_slashes": bool(rule.strict_slashes),
            }
        )
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
