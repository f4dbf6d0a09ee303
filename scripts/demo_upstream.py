#!/usr/bin/env python3
"""A stand-in for Console in the demo: answers every request with what it received."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        out = json.dumps({
            "console_saw": f"{self.command} {self.path}",
            "x_rbac_admin_id": self.headers.get("X-Rbac-Admin-Id"),
            "x_rbac_roles": self.headers.get("X-Rbac-Roles"),
            "x_request_id": self.headers.get("X-Request-Id"),
            "body_bytes": len(body),
        }, indent=1).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
