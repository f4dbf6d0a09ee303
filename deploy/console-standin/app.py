"""Console stand-in for deploy/compose.yaml.

Not Console: a handful of Console's routes, each answering which view ran and the X-Rbac-*
headers the gateway attached. Lets you see, end to end, what the gateway forwards and what it
stops (the gateway's redirects to /auth/login and its 403s never reach these views).

    gunicorn --bind 0.0.0.0:5000 app:app

It also plays Console's audit writer (SC-A3), the one writer of customer_audit_events, as far as
the gateway needs it (I-5; docs/audit-writer.md): `POST /api/internal/customer-audit/events`
takes one event with `Authorization: Bearer <AUDIT_WRITER_TOKEN>` (anything else: 401) and an
`Idempotency-Key`; each new event is chained: its hash is HMAC-SHA-256 under the writer's key
(AUDIT_WRITER_HMAC_KEY, the stand-in of the KMS key) of the previous hash, a newline and the
event's canonical JSON. A key already recorded with the same event answers 200 and appends
nothing; with another event, 409. `GET` of the same path (same token) lists the chain and whether
it verifies (`chain_ok`, recomputed from the first event). The chain lives in a SQLite file
(AUDIT_WRITER_DB), so restarts and several workers agree. For tests of the gateway's retries:
AUDIT_WRITER_FAIL_FIRST=N answers the first N POSTs 500, AUDIT_WRITER_SLOW_FIRST=N makes the
first N POSTs wait AUDIT_WRITER_SLOW_SECONDS before they are handled (and recorded).
"""

import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time

from flask import Flask, jsonify, request

app = Flask(__name__)

AUDIT_PATH = "/api/internal/customer-audit/events"
AUDIT_DB = os.environ.get("AUDIT_WRITER_DB", "/tmp/console-audit-writer.sqlite3")
AUDIT_TOKEN = os.environ.get("AUDIT_WRITER_TOKEN", "")
AUDIT_KEY = os.environ.get("AUDIT_WRITER_HMAC_KEY", "stand-in-kms-key").encode()
FAIL_FIRST = int(os.environ.get("AUDIT_WRITER_FAIL_FIRST", "0"))
SLOW_FIRST = int(os.environ.get("AUDIT_WRITER_SLOW_FIRST", "0"))
SLOW_SECONDS = float(os.environ.get("AUDIT_WRITER_SLOW_SECONDS", "0"))
GENESIS = "0" * 64
REQUIRED = ("idempotency_key", "dimension", "action", "actor", "admin_id", "occurred_at",
            "audit_row_id", "source")
ACTIONS = ("operator.rbac.grant", "operator.rbac.revoke")
_lock = threading.Lock()


def audit_db():
    db = sqlite3.connect(AUDIT_DB, timeout=30, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL,"
               " event TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    return db


def bump(db, name):
    db.execute("INSERT INTO counts VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET n = n + 1", (name,))
    return db.execute("SELECT n FROM counts WHERE name = ?", (name,)).fetchone()[0]


def canonical(event):
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev, event_text):
    return hmac.new(AUDIT_KEY, (prev + "\n" + event_text).encode(), hashlib.sha256).hexdigest()


def authorized():
    given = request.headers.get("Authorization", "")
    return bool(AUDIT_TOKEN) and hmac.compare_digest(given.encode(), ("Bearer " + AUDIT_TOKEN).encode())


@app.route(AUDIT_PATH, methods=["POST"])
def audit_write():
    with _lock:
        db = audit_db()
        db.execute("BEGIN IMMEDIATE")
        n = bump(db, "posts")
        db.execute("COMMIT")
    if n <= SLOW_FIRST:
        time.sleep(SLOW_SECONDS)
    if not authorized():
        with _lock:
            db = audit_db()
            bump(db, "refused")
        return jsonify(error="unauthorized"), 401
    if n <= FAIL_FIRST:
        return jsonify(error="writer unavailable (AUDIT_WRITER_FAIL_FIRST)"), 500
    event = request.get_json(silent=True)
    key = request.headers.get("Idempotency-Key", "")
    if not isinstance(event, dict) or any(not event.get(f) for f in REQUIRED):
        return jsonify(error="an event needs " + ", ".join(REQUIRED)), 422
    if event["dimension"] != "operator_interaction" or event["action"] not in ACTIONS:
        return jsonify(error="dimension operator_interaction, action one of " + ", ".join(ACTIONS)), 422
    if key != event["idempotency_key"]:
        return jsonify(error="Idempotency-Key must equal the event's idempotency_key"), 422
    text = canonical(event)
    with _lock:
        db = audit_db()
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute("SELECT seq, event FROM events WHERE key = ?", (key,)).fetchone()
            if found is not None:
                bump(db, "duplicates")
                db.execute("COMMIT")
                if found[1] != text:
                    return jsonify(error="idempotency key already used by another event", seq=found[0]), 409
                return jsonify(status="duplicate", seq=found[0]), 200
            last = db.execute("SELECT hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            prev = last[0] if last else GENESIS
            h = chain_hash(prev, text)
            cur = db.execute("INSERT INTO events (key, event, prev, hash) VALUES (?, ?, ?, ?)",
                             (key, text, prev, h))
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise
    return jsonify(status="recorded", seq=cur.lastrowid, hash=h), 201


@app.route(AUDIT_PATH, methods=["GET"])
def audit_read():
    if not authorized():
        return jsonify(error="unauthorized"), 401
    db = audit_db()
    rows = db.execute("SELECT seq, key, event, prev, hash FROM events ORDER BY seq").fetchall()
    counts = dict(db.execute("SELECT name, n FROM counts").fetchall())
    prev, ok = GENESIS, True
    for _, _, text, p, h in rows:
        ok = ok and p == prev and hmac.compare_digest(h, chain_hash(prev, text))
        prev = h
    return jsonify(
        events=[dict(seq=s, key=k, event=json.loads(e), prev=p, hash=h) for s, k, e, p, h in rows],
        chain_ok=ok,
        posts=counts.get("posts", 0),
        refused=counts.get("refused", 0),
        duplicates=counts.get("duplicates", 0),
    )


def answer(view, **args):
    rbac = {k: v for k, v in request.headers.items() if k.lower().startswith("x-rbac-")}
    return jsonify(
        view=view,
        method=request.method,
        path=request.full_path if request.query_string else request.path,
        args=args,
        rbac_headers=rbac,
    )


@app.route("/health")
def health():
    return answer("health.health")


@app.route("/auth/login", methods=["GET", "POST"])
def login():
    return answer("auth.login")


@app.route("/auth/logout", methods=["GET", "POST"])
def logout():
    return answer("auth.logout")


@app.route("/console/customers/<int:id>")
def customer(id):
    return answer("customers.customer_detail", id=id)


@app.route("/console/customers/<int:id>/tickets")
def customer_tickets(id):
    return answer("customers.customer_tickets", id=id)


@app.route("/ops")
def ops():
    return answer("ops.index")


@app.route("/ops/dispatch/<action_id>", methods=["POST"])
def ops_dispatch(action_id):
    return answer("ops.dispatch", action_id=action_id)


@app.route("/ops/status/<job_id>")
def ops_status(job_id):
    return answer("ops.status", job_id=job_id)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
