"""Console stand-in for the hostile-input tests (tests/api/hostile.rs).

Not Console: a Flask app with one view for EVERY rule of the routes.toml named by ROUTES_FILE,
registered exactly as written there (path and methods as-is, endpoint "r{index}"), so that
Werkzeug, behind real gunicorn, decides which view runs just as it would in Console. Each view
answers JSON naming itself and the identity headers it received; when VIEW_LOG is set, each view
also appends that JSON as one line to that file before answering, so a view that ran for a
request whose answer never reached the client (smuggled, desynchronised) is still on record.

    ROUTES_FILE=routes.toml VIEW_LOG=/tmp/views.jsonl \
        gunicorn -b 127.0.0.1:5000 -w 1 --chdir tests/console_standin app:app
"""

import json
import os
import time
import tomllib

from flask import Flask, jsonify, request

# No built-in /static rule: routes.toml has its own /static/<path:filename>.
app = Flask(__name__, static_folder=None)

ROUTES_FILE = os.environ["ROUTES_FILE"]
VIEW_LOG = os.environ.get("VIEW_LOG")
# The view of the rule "/slow" takes this many seconds (an in-flight request, tests/api/heroku.rs).
SLOW_SECONDS = float(os.environ.get("SLOW_SECONDS", "0"))
# A line is appended to this file when that view starts (the request is in flight in Console).
SLOW_STARTED = os.environ.get("SLOW_STARTED")

with open(ROUTES_FILE, "rb") as f:
    ROUTES = tomllib.load(f)["route"]


def make_view(endpoint, rule):
    def view(**view_args):
        if rule == "/slow" and SLOW_SECONDS:
            if SLOW_STARTED:
                with open(SLOW_STARTED, "a", encoding="utf-8") as started:
                    started.write("started\n")
            time.sleep(SLOW_SECONDS)
        answer = {
            "endpoint": endpoint,
            "rule": rule,
            "view_args": view_args,
            "method": request.method,
            "x_rbac_admin_id": request.headers.get("X-Rbac-Admin-Id"),
            "x_rbac_roles": request.headers.get("X-Rbac-Roles"),
            "x_request_id": request.headers.get("X-Request-Id"),
            "x_forwarded_for": request.headers.get("X-Forwarded-For"),
            "user_agent": request.headers.get("User-Agent"),
            "script_name": request.environ.get("SCRIPT_NAME", ""),
            "raw_uri": request.environ.get("RAW_URI"),
            "path": request.path,
        }
        if VIEW_LOG:
            with open(VIEW_LOG, "a", encoding="utf-8") as log:
                log.write(json.dumps(answer) + "\n")
                log.flush()
        return jsonify(answer)

    view.__name__ = endpoint
    return view


for index, route in enumerate(ROUTES):
    endpoint = f"r{index}"
    app.add_url_rule(
        route["path"],
        endpoint=endpoint,
        view_func=make_view(endpoint, route["path"]),
        methods=route["methods"],
    )
