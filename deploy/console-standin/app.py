"""Console stand-in for deploy/compose.yaml.

Not Console: a handful of Console's routes, each answering which view ran and the X-Rbac-*
headers the gateway attached. Lets you see, end to end, what the gateway forwards and what it
stops (the gateway's redirects to /auth/login and its 403s never reach these views).

    gunicorn --bind 0.0.0.0:5000 app:app
"""

from flask import Flask, jsonify, request

app = Flask(__name__)


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
