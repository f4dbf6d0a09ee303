"""gunicorn + Werkzeug as the oracle for the gateway's Cookie reading (tests/api/cookie_differential.rs).

For each JSON line on stdin, {"name": "console_session", "headers": [HEX, ...], "forward": HEX | null},
builds the raw HTTP/1.1 request a client would send (one `Cookie:` line per entry of "headers",
the bytes as given), and reads it the way Console does:

* gunicorn's own parser (gunicorn.http.parser.RequestParser) and its own environ builder
  (gunicorn.http.wsgi.create): repeated `Cookie` headers are joined with "," into HTTP_COOKIE
  there (gunicorn/http/wsgi.py, the `repeated` dict and `",".join(values)` in `create`);
* Werkzeug's own Request over that environ: `Request(environ).cookies` is exactly what Flask's
  `request.cookies` is (werkzeug/sansio/request.py `cookies` -> werkzeug/http.py `parse_cookie`
  -> werkzeug/sansio/http.py `_cookie_re`, `_cookie_unslash_re`).

The same is done for "forward" (the single Cookie header the gateway would send on, or none).
Prints one JSON line per input line:

    {"client": READ, "forward": READ | null}
    READ = {"status": "ok", "values": [every value of the cookie "name", in order]}
         | {"status": "gunicorn_refused", "error": "..."}   (gunicorn answers 400 itself)
         | {"status": "werkzeug_error", "error": "..."}     (Console would fail with a 500)

`values[0]` is what `request.cookies.get(name)` returns.
"""

import json
import sys

from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser
from werkzeug.wrappers import Request

CFG = Config()


class NoSocket:
    def send(self, data):  # only used for `Expect: 100-continue`, which is never sent here
        pass


def read(name, headers):
    raw = b"GET / HTTP/1.1\r\nHost: console\r\n"
    for h in headers:
        raw += b"Cookie: " + h + b"\r\n"
    raw += b"\r\n"
    try:
        req = next(RequestParser(CFG, iter([raw]), ("127.0.0.1", 1)))
        _resp, environ = wsgi.create(req, NoSocket(), ("127.0.0.1", 1), ("127.0.0.1", 8000), CFG)
    except Exception as e:  # gunicorn's InvalidHeader & co.: it answers 400 without calling the app
        return {"status": "gunicorn_refused", "error": f"{type(e).__name__}: {e}"}
    try:
        values = Request(environ).cookies.getlist(name)
    except Exception as e:
        return {"status": "werkzeug_error", "error": f"{type(e).__name__}: {e}"}
    return {"status": "ok", "values": values}


def main():
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        q = json.loads(line)
        name = q["name"]
        client = read(name, [bytes.fromhex(h) for h in q["headers"]])
        fwd = q.get("forward")
        forward = None if fwd is None else read(name, [bytes.fromhex(fwd)])
        out.write(json.dumps({"client": client, "forward": forward}) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
