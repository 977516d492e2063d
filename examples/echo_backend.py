#!/usr/bin/env python3
"""A minimal callback backend for trying sse-gateway by hand (standard library only).

It accepts every stream (answers the connect callback with 200 {}) and prints
each callback on one line, so you can copy a token and send it an event:

    python3 examples/echo_backend.py 127.0.0.1:5000
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Callback(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        action = body.get("action")
        if action == "connect":
            print(f"connect token={body['token']} url={body['request']['url']}", flush=True)
        else:
            print(f"{action} token={body.get('token')} reason={body.get('reason')}", flush=True)
        payload = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5000").rpartition(":")
    print(f"callback backend on http://{host}:{port}/callback", flush=True)
    ThreadingHTTPServer((host, int(port)), Callback).serve_forever()
