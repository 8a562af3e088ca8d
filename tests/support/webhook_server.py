#!/usr/bin/env python3
"""A webhook receiver for tests: answers 500 to the first N requests, then 200 (or always
STATUS if given), to POST and GET. Each request is appended to LOG as a JSON line (method, path, headers, body)."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, log_path, fail_first = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
final_status = int(sys.argv[4]) if len(sys.argv) > 4 else 200
seen = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode("utf-8")
        seen += 1
        status = 500 if seen <= fail_first else final_status
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"n": seen, "status": status, "path": self.path,
                                "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}, ensure_ascii=False) + "\n")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}' if status == 200 else b'{"error": "try later"}')

    do_GET = do_POST

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
