#!/usr/bin/env python3
"""A sample application with a rich health endpoint, standard library only (it also runs inside images).

GET  /health               {"applicationHealthState": ..., "customMetrics": "..."}, as Azure expects
GET  /                     a greeting naming the version
POST /control?state=S      switch the reported state (Healthy, Unhealthy, or "garbage" for an invalid body)
POST /control?phase=N      set PhaseOrderingNumber (empty clears it); &skip=true|false
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class AppState:
    def __init__(self, state: str, phase: int | None, skip: bool, version: str) -> None:
        self.lock = threading.Lock()
        self.state = state
        self.phase = phase
        self.skip = skip
        self.version = version

    def health_body(self) -> bytes:
        with self.lock:
            if self.state == "garbage":
                return b"this is not JSON"
            rolling: dict[str, Any] = {"SkipUpgrade": self.skip}
            if self.phase is not None:
                rolling["PhaseOrderingNumber"] = self.phase
            doc = {
                "applicationHealthState": self.state,
                "customMetrics": json.dumps({"rollingUpgrade": rolling}),
            }
        return json.dumps(doc).encode()


def make_handler(app: AppState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: probes come every few seconds
            return

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/health":
                self._send(200, app.health_body())
            elif path == "/":
                self._send(200, f"hello from sample app {app.version}\n".encode(), "text/plain")
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/control":
                self._send(404, b'{"error": "not found"}')
                return
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            with app.lock:
                if "state" in query:
                    app.state = query["state"]
                if "phase" in query:
                    app.phase = int(query["phase"]) if query["phase"] else None
                if "skip" in query:
                    app.skip = query["skip"].lower() == "true"
            self._send(200, app.health_body())

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--state", default="Healthy", help="initial applicationHealthState")
    parser.add_argument("--phase", type=int, default=None, help="PhaseOrderingNumber to report")
    parser.add_argument("--skip-upgrade", action="store_true", help="report SkipUpgrade=true")
    parser.add_argument("--version-label", default="v1", help="shown by GET /")
    args = parser.parse_args()
    app = AppState(args.state, args.phase, args.skip_upgrade, args.version_label)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(app))
    print(f"sample app {args.version_label} on {args.host}:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
