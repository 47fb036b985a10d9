"""A custom-engine server that ignores SIGTERM: it goes only when SIGKILLed.

Stands in for an engine that takes seconds to exit (vLLM freeing a GPU), so tests can
show the plane does not wait on it. Usage: python stubborn_server.py PORT
"""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
