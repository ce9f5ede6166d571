"""A real HTTP/1.1 keep-alive server on loopback that records *connections*: it plays a token
endpoint (``POST .../oauth/token``, optionally slow), a backend, and — for requests whose
request line carries an absolute URL — a forward proxy (the Connectivity proxy) that answers
for the virtual host itself. Every request is recorded with the id of the TCP connection it
came on, so tests can count connections and see which principals shared one."""

from __future__ import annotations

import base64
import itertools
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    connection: int
    method: str
    target: str  # the request line's target: a path, or an absolute URL (proxied)
    headers: dict[str, str]
    proxied: bool
    client_subject: str | None = None  # CN of the client certificate presented (mTLS)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == low), None)


@dataclass
class Loopback:
    delay: float = 0.0
    tls: ssl.SSLContext | None = None  # server context: HTTPS (handshake in the handler thread)
    drip: float = 0.0  # token endpoint: the whole answer one byte every `drip` seconds (at most ~8 s)
    fail: int = 0  # token endpoint: answer this HTTP status (e.g. 503) while non-zero
    seen: list[Seen] = field(default_factory=list)
    exchanges: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.do_handshake()
                super().setup()
                self.connection_id = next(outer._ids)

            def _reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _drip(self, payload: bytes) -> None:
                try:
                    for i in range(min(len(payload), int(8 / outer.drip))):
                        self.wfile.write(payload[i:i + 1])
                        self.wfile.flush()
                        time.sleep(outer.drip)
                except OSError:
                    pass
                self.close_connection = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                seen = Seen(self.connection_id, self.command, self.path, dict(self.headers.items()),
                            self.path.startswith("http://"))
                if isinstance(self.request, ssl.SSLSocket):
                    peer = self.request.getpeercert()
                    seen.client_subject = dict(x[0] for x in peer["subject"]).get("commonName") if peer else None
                if self.command == "POST" and seen.path.endswith("/oauth/token"):
                    fields = {k: v[0] for k, v in parse_qs(body).items()}
                    with outer._lock:
                        outer.exchanges.append(fields)
                        n = len(outer.exchanges)
                    if outer.fail:
                        self._reply(outer.fail, {"error": "temporarily_unavailable"})
                        return
                    if outer.drip:
                        self._drip(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n'
                                   b'{"access_token": "late", "expires_in": 1}')
                        return
                    if outer.delay:
                        time.sleep(outer.delay)
                    user = user_of(fields.get("assertion", "")) or "technical"
                    self._reply(200, {"access_token": f"at-{user}-{n}", "token_type": "bearer", "expires_in": 3600})
                    return
                with outer._lock:
                    outer.seen.append(seen)
                if outer.drip and "/slow" in seen.path:  # a backend that drips its answer
                    self._drip(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n'
                               b'{"ok": true}')
                    return
                extra = {}
                if (seen.header("X-CSRF-Token") or "").lower() == "fetch":
                    extra["X-CSRF-Token"] = f"csrf-{self.connection_id}"
                self._reply(200, {"ok": True, "connection": self.connection_id}, extra)

            do_GET = do_POST = do_HEAD = do_PATCH = do_DELETE = do_PUT = _handle  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self.server = Server(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.server.server_address[1]}"  # the name in the certificate
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def connections(self) -> set[int]:
        with self._lock:
            return {s.connection for s in self.seen}

    def principals_per_connection(self, header: str = "Proxy-Authorization") -> dict[int, set[str]]:
        result: dict[int, set[str]] = {}
        with self._lock:
            for s in self.seen:
                result.setdefault(s.connection, set()).add(principal_of(s.header(header) or ""))
        return result

    def __enter__(self) -> "Loopback":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def user_of(jwt: str) -> str | None:
    try:
        body = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(claims.get("user_name") or claims.get("sub"))
    except Exception:
        return None


def principal_of(header: str) -> str:
    """``Bearer at-<user>-<n>`` → ``<user>``."""
    token = header.split(" ", 1)[-1]
    return token[3:].rsplit("-", 1)[0] if token.startswith("at-") else token
