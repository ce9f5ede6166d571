"""Loopback servers for the benchmarks: a counting OAuth token endpoint and a trivial target.

Both are one ``ThreadingHTTPServer`` speaking HTTP/1.1 keep-alive, so connection setup does
not dominate what is measured. For the load test (``bench/loadtest.py``) the same server can
play XSUAA over TLS: ``token_keys`` (served at ``GET /token_keys``, where sap-xssec looks),
a ``delay`` per exchange (an IdP is not instant; it also widens the window in which worker
processes race for one key); its certificate comes from :class:`propagation.sandbox.pki.Pki`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # 64 client threads may connect at once
    daemon_threads = True


class LoopbackServer:
    """``POST /oauth/token`` issues ``at-<user>-<client>-<n>`` and counts per (user, client);
    ``GET /token_keys`` answers ``token_keys`` when given; ``GET`` anything else answers a
    small JSON body. ``delay`` seconds per exchange; ``tls`` = (certificate, key) files."""

    def __init__(self, *, delay: float = 0.0, token_keys: dict[str, Any] | None = None,
                 tls: tuple[str, str] | None = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.exchanges = 0
        self.gets = 0
        self.key_fetches = 0
        self.delay = delay
        self.scheme = "https" if tls else "http"
        self.token_keys = token_keys  # may be set after construction (the keys' URL names our port)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.do_handshake()
                super().setup()

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
                if outer.delay:
                    time.sleep(outer.delay)
                self._send(json.dumps({"access_token": f"at-{user}-{client}-{n}", "token_type": "bearer",
                                       "expires_in": 3600}).encode())

            def do_GET(self) -> None:  # noqa: N802
                if outer.token_keys is not None and urlsplit(self.path).path == "/token_keys":
                    with outer._lock:
                        outer.key_fetches += 1
                    self._send(json.dumps(outer.token_keys).encode())
                    return
                with outer._lock:
                    outer.gets += 1
                self._send(b'{"value":[]}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            # The handshake runs in the handler thread (Handler.setup), not in the accept loop.
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base(self) -> str:
        # TLS: "localhost", the name in the certificate; plain: the address itself.
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}"

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


# -- gunicorn (bench/loadtest.py) ---------------------------------------------------------------------------------
class Gunicorn:
    """``python -m gunicorn`` in our process group; stopped with SIGTERM, then SIGKILL for
    the master and every worker it still has."""

    def __init__(self, port: int, workers: int, threads: int, env: dict[str, str], log: Path, ready: Path,
                 app: str = "loadtest_app:app") -> None:
        self.port, self.workers, self.log, self.ready = port, workers, log, ready
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
             "--worker-class", "gthread", "--threads", str(threads), "--keep-alive", "5",
             "--graceful-timeout", "5", "--timeout", "60", "--backlog", "512",
             "--log-level", "warning", "--error-logfile", str(log),
             "--pythonpath", f"{ROOT},{BENCH}", app],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every worker has imported the app, and one answers ``/health``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            if len(list(self.ready.iterdir())) >= self.workers:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        conn.close()
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn workers not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def _children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        children = self._children()
        self.proc.send_signal(signal.SIGTERM)  # graceful: the master stops its workers
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            children += self._children()
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in children:  # only these pids: the workers this master forked
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
