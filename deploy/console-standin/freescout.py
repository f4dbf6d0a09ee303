"""FreeScout stand-in for deploy/compose.yaml.

Not FreeScout: the two things the gateway needs of it. It answers the conversation status the
gateway asks for (GATEWAY_TICKET_VALIDATION_URL: the sweep, the webhook receiver and requests on
a customer_param rule), and it plays FreeScout's webhook when a ticket closes: the status
changes, then the gateway's webhook receiver is called, signed as FreeScout signs it.

    gunicorn --bind 0.0.0.0:5000 freescout:app      # the status API: GET /api/conversations/<id>
    python freescout.py close 42                     # close ticket 42 and call the webhook

Every ticket is "active" until closed. Statuses live in a JSON file (FREESCOUT_STATE), so the
command and the server agree.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import urllib.error
import urllib.request

from flask import Flask, jsonify

STATE = os.environ.get("FREESCOUT_STATE", "/tmp/freescout-tickets.json")
WEBHOOK_URL = os.environ.get("FREESCOUT_WEBHOOK_URL", "http://gateway:8081/freescout/webhook")

app = Flask(__name__)


def statuses():
    try:
        with open(STATE) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def set_status(ticket_id, status):
    s = statuses()
    s[ticket_id] = status
    with open(STATE + ".tmp", "w") as f:
        json.dump(s, f)
    os.replace(STATE + ".tmp", STATE)


def signature(secret, body):
    """X-FreeScout-Signature: the base64 HMAC-SHA1 of the body under the webhook's secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha1).digest()).decode()


@app.route("/health")
def health():
    return jsonify(status="ok")


@app.route("/api/conversations/<ticket_id>")
def conversation(ticket_id):
    return jsonify(id=ticket_id, status=statuses().get(ticket_id, "active"))


def close(ticket_id):
    set_status(ticket_id, "closed")
    body = json.dumps({"id": ticket_id, "status": "closed"}).encode()
    req = urllib.request.Request(WEBHOOK_URL, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "X-FreeScout-Signature": signature(os.environ["GATEWAY_FREESCOUT_WEBHOOK_SECRET"], body),
    })
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, answer = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read().decode()
    print(status, answer.strip())
    return 0 if status == 200 else 1


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "close":
        sys.exit("usage: python freescout.py close TICKET_ID")
    sys.exit(close(sys.argv[2]))
