"""Loopback servers for the benchmark: a counting OAuth token endpoint and a trivial target.

Both are one ``ThreadingHTTPServer`` speaking HTTP/1.1 keep-alive, so connection setup does
not dominate what is measured.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # 64 client threads may connect at once
    daemon_threads = True


class LoopbackServer:
    """``POST /oauth/token`` issues ``at-<user>-<client>-<n>`` and counts per (user, client);
    ``GET`` anything answers a small JSON body."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.exchanges = 0
        self.gets = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def _send(self, payload: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                fields = {k: v[0] for k, v in parse_qs(body).items()}
                user = _user_of(fields.get("assertion") or "")
                client = fields.get("client_id", "?")
                with outer._lock:
                    outer.counts[(user, client)] += 1
                    outer.exchanges += 1
                    n = outer.exchanges
                self._send(json.dumps({"access_token": f"at-{user}-{client}-{n}", "token_type": "bearer",
                                       "expires_in": 3600}).encode())

            def do_GET(self) -> None:  # noqa: N802
                with outer._lock:
                    outer.gets += 1
                self._send(b'{"value":[]}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def token_url(self) -> str:
        return f"{self.base}/oauth/token"

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _user_of(jwt: str) -> str:
    try:
        body = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(claims.get("user_name") or claims.get("sub"))
    except Exception:
        return "technical"


def rate(fn: Any, n: int) -> float:
    """Calls per second of ``fn()`` over ``n`` calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)
