"""Test helpers: a real ``redis-server`` on a free loopback port, a counting OAuth token
endpoint on loopback, and the worker a spawned process runs against both.

``redis-server`` is installed from Debian's packages on first use when it is missing
(:func:`ensure_redis_server`), so the README's test command works on a fresh machine; the
tests fail rather than skip when that is impossible, so CI never silently drops them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs

from propagation.sandbox.ports import free_port

__all__ = ["RedisServer", "TokenEndpoint", "ensure_redis_server", "find_redis_server", "free_port", "exchange_worker"]


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_redis_server() -> str | None:
    """``redis-server``'s path, installing Debian's package first when it is missing."""
    found = find_redis_server()
    if found is not None or not shutil.which("apt-get"):
        return found
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "redis-server"]):
        result = subprocess.run(sudo + command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
        if result.returncode != 0:
            return None
    return find_redis_server()


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # 64 client threads may connect at once
    daemon_threads = True


class RedisServer:
    """One ``redis-server`` process: no persistence, loopback only, its own temp dir.

    ``args``: more ``redis-server`` options (e.g. ``--requirepass``); ``tls``: a sandbox
    :class:`~propagation.sandbox.pki.Pki` whose loopback certificate the server presents on
    its (only) port, TLS without client certificates."""

    def __init__(self, binary: str, args: tuple[str, ...] = (), tls: Any = None) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="propagation-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.args = args
        self.tls = tls

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert_file),
                     "--tls-key-file", str(self.tls.key_file), "--tls-ca-cert-file", str(self.tls.ca_file),
                     "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(
            [self.binary, *ports, "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as plain:
                    s = self.tls.client_context().wrap_socket(plain, server_hostname="localhost") if self.tls else plain
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class TokenEndpoint:
    """``POST /oauth/token`` on loopback: issues ``at-<user>-<client>-<n>`` and counts
    requests per (user, client). ``delay`` seconds of latency make races likely."""

    def __init__(self, delay: float = 0.0, on_exchange: Callable[[int], None] | None = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.total = 0
        self.delay = delay
        #: Called with the running count before the n-th exchange is answered (fault injection).
        self.on_exchange = on_exchange
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                fields = {k: v[0] for k, v in parse_qs(body).items()}
                user = _user_of(fields.get("assertion") or fields.get("subject_token") or "")
                client = fields.get("client_id", "?")
                with endpoint._lock:
                    endpoint.counts[(user, client)] += 1
                    endpoint.total += 1
                    n = endpoint.total
                if endpoint.on_exchange is not None:
                    endpoint.on_exchange(n)
                if endpoint.delay:
                    time.sleep(endpoint.delay)
                payload = json.dumps({"access_token": f"at-{user}-{client}-{n}", "token_type": "bearer",
                                      "expires_in": 3600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 - a trivial target for outbound calls
                payload = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "TokenEndpoint":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _user_of(jwt: str) -> str:
    import base64

    try:
        body = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(claims.get("user_name") or claims.get("email") or claims.get("sub"))
    except Exception:
        return "technical"


def destinations(token_url: str, names: list[str]) -> list[dict[str, Any]]:
    """``OAuth2JWTBearer`` destinations, one OAuth client per destination."""
    return [{"name": name, "url": "http://127.0.0.1:9/api", "Authentication": "OAuth2JWTBearer",
             "tokenServiceURL": token_url, "clientId": f"client-{name}", "clientSecret": "dest-secret-VALUE"}
            for name in names]


def exchange_worker(environ: dict[str, str], user_tokens: list[str], names: list[str], threads: int, rounds: int) -> dict[str, Any]:
    """Run in a spawned process: ``threads`` threads resolve the ``Authorization`` header for
    every (user, destination) ``rounds`` times through a ``Propagator`` built from ``environ``."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    from propagation.bindings import Bindings
    from propagation.engine import Propagator
    from propagation.exchange.oauth import OAuthClient

    engine = Propagator(environ=environ, bindings=Bindings([]), oauth=OAuthClient(retries=0, sleep=lambda s: None))
    work = [(u, n) for _ in range(rounds) for u in user_tokens for n in names]
    random.shuffle(work)

    def one(item: tuple[str, str]) -> str:
        return engine.headers(item[1], user_token=item[0])["Authorization"]

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, work))
    return {"cache": type(engine.cache).__name__, "calls": len(results), "distinct": len(set(results))}
