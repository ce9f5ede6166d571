"""Transport only: HTTP(S) servers on loopback that hand each request to a model.

Every server turns the bytes it receives into an :class:`Incoming` request and writes back
whatever the model answers (an object with ``status``, ``headers`` and ``body``, such as
``propagation.testing.landscape.Response``). No protocol decision is taken here: token
issuing, validation, destination lookup and principal checks all live in the landscape
model, so the in-process tests and the sandbox cannot disagree.

* :class:`Service` — one origin (XSUAA, IAS, Destination service, OData backend, iFlow),
  TLS with the sandbox CA.
* :class:`OnPremiseService` — the system behind the Cloud Connector: reachable only through
  the Connectivity proxy (a per-run tunnel secret), answers as the on-premise virtual host.
* :class:`ConnectivityProxy` — a real HTTP forward proxy: absolute-form requests only, asks
  the model whether ``Proxy-Authorization`` is acceptable (407 otherwise), then forwards
  over a socket to the mapped on-premise server and relays its answer.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import secrets
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import urlsplit

from requests.structures import CaseInsensitiveDict

from ..tokens import fingerprint

__all__ = [
    "Incoming",
    "Forwarded",
    "Reply",
    "SimpleReply",
    "Service",
    "OnPremiseService",
    "ConnectivityProxy",
    "origin_of",
    "TUNNEL_HEADER",
    "MAX_BODY",
]

log = logging.getLogger("propagation.sandbox")

LOOPBACK = "127.0.0.1"
MAX_BODY = 1 << 20  # 1 MiB: token requests and OData bodies are small
#: Set by the proxy on forwarded requests; the on-premise server refuses requests without it.
TUNNEL_HEADER = "X-Sandbox-Tunnel"
#: Set by the proxy next to the tunnel secret: the app's connection to the proxy, so that the
#: on-premise system's record names the client connection (pooling through Connectivity).
CONNECTION_HEADER = "X-Sandbox-Connection"
#: Not forwarded by a proxy (RFC 9110 §7.6.1). Proxy-Authorization *is* forwarded: the
#: on-premise stand-in plays the Cloud Connector too, which learns the principal from it.
HOP_BY_HOP = frozenset(
    {"connection", "proxy-connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)


@dataclass(frozen=True)
class Forwarded:
    """What the proxy passed on (for the demo's chain): tokens only as fingerprints."""

    method: str
    url: str  # without the query
    proxy_token: str | None  # fingerprint of the Proxy-Authorization bearer
    user_header: bool  # SAP-Connectivity-Authentication present (the "header" mode)
    location: str | None
    status: int  # the on-premise answer; 0 while the hop is under way (what observers see)
    connection: str | None = None  # the app's connection to the proxy


@dataclass(frozen=True)
class Incoming:
    """One request as the model sees it (same fields as ``landscape.Request``)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = b""
    via_proxy: bool = False
    connection: str | None = None  # "<service>#<n>": the TCP connection the request came on


class Reply(Protocol):
    """An answer to write back (``landscape.Response`` is one)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def body(self) -> bytes: ...


@dataclass(frozen=True)
class SimpleReply:
    """An answer the transport itself gives (malformed request, no route, model crash)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, status: int, error: str, description: str, headers: Mapping[str, str] | None = None) -> "SimpleReply":
        body = json.dumps({"error": error, "error_description": description}).encode()
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, body)


#: Turns an incoming request into the model's answer.
Answer = Callable[[Incoming], Reply]


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-cased, with the default port made explicit."""
    parts = urlsplit(url)
    scheme = (parts.scheme or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


class _BadRequest(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status


# --------------------------------------------------------------------------- server core
class _Server(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` that does the TLS handshake in the request thread (a stalled
    client never blocks the accept loop) and skips the reverse DNS lookup of ``server_bind``."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, service: "Service", tls: ssl.SSLContext | None) -> None:
        self.service = service
        self.tls = tls
        self.local = threading.local()  # one connection per thread: its id
        self._count = itertools.count(1)
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()
        super().__init__((LOOPBACK, 0), _Handler)

    def close_open_connections(self) -> None:
        """Kept-alive connections outlive ``shutdown()``: end them so no request reaches a stopped sandbox."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = LOOPBACK, self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(15)
        self.local.connection = f"{self.service.name}#{next(self._count)}"
        with self._open_lock:
            self._open.add(request)
        try:
            self._serve_connection(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        handler: Any = self.RequestHandlerClass
        if self.tls is None:
            handler(request, client_address, self)
            return
        try:
            conn = self.tls.wrap_socket(request, server_side=True)  # detaches ``request``: track ``conn``
        except (ssl.SSLError, OSError):
            return  # a client that does not trust the sandbox CA, or went away
        with self._open_lock:
            self._open.discard(request)
            self._open.add(conn)
        try:
            handler(conn, client_address, self)
        finally:
            with self._open_lock:
                self._open.discard(conn)
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with persistent connections, as BTP's endpoints: a client that pools
    connections reuses them (each request's ``connection`` id shows it); ``Connection:
    close`` from the client, or a request the transport refuses, ends the connection."""

    server: _Server
    server_version = "propagation-sandbox/1"
    protocol_version = "HTTP/1.1"
    timeout = 15

    @property
    def connection_id(self) -> str | None:
        return getattr(self.server.local, "connection", None)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # request lines may carry query strings; the landscape keeps fingerprinted records

    def _dispatch(self) -> None:
        self.server.service.dispatch(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_MERGE = do_CONNECT = _dispatch

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    n = int(line.split(b";")[0].strip() or b"x", 16)
                except ValueError:
                    raise _BadRequest(400, "malformed chunked body") from None
                if n == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                size += n
                if size > MAX_BODY:
                    raise _BadRequest(413, "request body too large")
                chunks.append(self.rfile.read(n))
                self.rfile.readline(1024)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _BadRequest(400, "malformed Content-Length") from None
        if length > MAX_BODY:
            raise _BadRequest(413, "request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def headers_dict(self) -> CaseInsensitiveDict[str]:
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        for name, value in self.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    def write(self, reply: Reply) -> None:
        body = bytes(reply.body or b"")
        self.send_response(int(reply.status))
        for name, value in (reply.headers or {}).items():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()


# --------------------------------------------------------------------------- services
class Service:
    """One origin served on ``127.0.0.1:<ephemeral port>``; the port is known once
    constructed (bound, not yet serving), so the landscape's origins can be built first."""

    def __init__(self, name: str, tls: ssl.SSLContext | None, *, host: str = "localhost",
                 virtual_hosts: str | None = None) -> None:
        self.name = name
        self.host = host
        #: Answer for ``<label>.<virtual_hosts>:<port>`` too, as the origin the client named in
        #: ``Host`` (XSUAA: one server, a subdomain per tenant), e.g. ``localhost``.
        self.virtual_hosts = virtual_hosts
        self.answer: Answer | None = None
        self._server = _Server(self, tls)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self._server.tls is not None else "http"

    @property
    def url(self) -> str:
        """The origin clients use (``host`` must resolve to loopback: ``localhost``/``127.0.0.1``)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def origin(self) -> str:
        """The origin the model routes by (a subclass may answer for another one)."""
        return self.url

    def start(self) -> "Service":
        if self.answer is None:
            raise RuntimeError(f"{self.name}: nothing to answer with")
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"sandbox-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.close_open_connections()
        self._server.server_close()

    # -- one request ----------------------------------------------------------------
    def dispatch(self, handler: _Handler) -> None:
        try:
            reply = self.handle(handler)
        except _BadRequest as exc:
            handler.close_connection = True  # the body may be unread: the stream is out of step
            reply = SimpleReply.json(exc.status, "invalid_request", str(exc))
        except Exception as exc:  # noqa: BLE001 - a server answers, it does not die
            log.error("sandbox %s: %s while answering %s", self.name, type(exc).__name__, handler.command)
            reply = SimpleReply.json(500, "server_error", f"sandbox {self.name} failed: {type(exc).__name__}")
        try:
            handler.write(reply)
        except OSError:
            pass  # the client went away

    def handle(self, handler: _Handler) -> Reply:
        if not handler.path.startswith("/") or handler.command == "CONNECT":
            raise _BadRequest(400, f"{self.name} is not a proxy")
        body = handler.read_body()
        assert self.answer is not None
        origin = self._virtual_origin(handler.headers.get("Host") or "") or self.origin
        return self.answer(Incoming(handler.command, origin + handler.path, handler.headers_dict(), body, False,
                                    handler.connection_id))

    def _virtual_origin(self, host: str) -> str | None:
        """``https://acme.localhost:P`` when the client asked for that host of this server."""
        if not self.virtual_hosts:
            return None
        name, _, port = host.strip().lower().rpartition(":")
        if port != str(self.port) or not name:
            return None
        base = self.virtual_hosts.lower()
        label, dot, rest = name.partition(".")
        if name == base or (dot and rest == base and label.replace("-", "").isalnum()):
            return f"{self.scheme}://{name}:{self.port}"
        return None


class OnPremiseService(Service):
    """The on-premise system behind the Cloud Connector, answering as the virtual host
    (``http://s4-virtual:44300``) with ``via_proxy=True``. Only the proxy knows the tunnel
    secret, so a direct call from an app (bypassing Connectivity) is refused."""

    def __init__(self, name: str, tls: ssl.SSLContext | None, virtual_origin: str) -> None:
        super().__init__(name, tls, host=LOOPBACK)
        self.virtual_origin = virtual_origin.rstrip("/")
        self.tunnel_secret = secrets.token_urlsafe(24)

    @property
    def origin(self) -> str:
        return self.virtual_origin

    def handle(self, handler: _Handler) -> Reply:
        headers = handler.headers_dict()
        presented = headers.pop(TUNNEL_HEADER, "")
        client_connection = headers.pop(CONNECTION_HEADER, None)
        if not secrets.compare_digest(presented.encode(), self.tunnel_secret.encode()):
            handler.close_connection = True
            return SimpleReply.json(
                403, "forbidden", "The on-premise system is reachable only through the Connectivity proxy."
            )
        if not handler.path.startswith("/"):
            raise _BadRequest(400, f"{self.name} is not a proxy")
        body = handler.read_body()
        assert self.answer is not None
        return self.answer(Incoming(handler.command, self.virtual_origin + handler.path, headers, body, True,
                                    client_connection))


class ConnectivityProxy(Service):
    """The Connectivity service's on-premise HTTP proxy (plain HTTP, like
    ``onpremise_proxy_host:onpremise_proxy_http_port`` inside Cloud Foundry).

    ``check`` is the model's proxy check (``Landscape.check_proxy``): ``None`` forwards,
    anything else (a 407) is sent back as is. ``routes`` maps a virtual origin
    (``http://s4-virtual:44300``) to the on-premise server — the Cloud Connector mapping;
    a request for an unmapped host goes to ``answer`` (the model refuses it as the Cloud
    Connector would).
    CONNECT is refused: on-premise URLs are ``http://``, the proxy headers must be readable.
    """

    def __init__(self, name: str = "connectivity-proxy", *, client_tls: ssl.SSLContext | None = None) -> None:
        super().__init__(name, None, host=LOOPBACK)
        self.check: Callable[[Incoming], Reply | None] | None = None
        self.client_tls = client_tls
        self.routes: dict[str, OnPremiseService] = {}
        self.timeout = 30.0
        self.forwarded: list[Forwarded] = []
        self._observers: list[Callable[[Forwarded], None]] = []
        self._lock = threading.Lock()

    def map(self, service: OnPremiseService) -> None:
        self.routes[origin_of(service.virtual_origin)] = service

    def handle(self, handler: _Handler) -> Reply:
        if handler.command == "CONNECT":
            handler.close_connection = True
            return SimpleReply.json(
                405, "method_not_allowed",
                "CONNECT is not supported: on-premise URLs are http:// virtual hosts of the Cloud Connector.",
                {"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, MERGE"},
            )
        parts = urlsplit(handler.path)
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise _BadRequest(400, "a proxy request needs an absolute http:// URL (absolute-form request target)")
        body = handler.read_body()
        incoming = Incoming(handler.command, handler.path, handler.headers_dict(), body, True, handler.connection_id)
        if self.check is None:
            raise RuntimeError("proxy has no check")
        denied = self.check(incoming)
        if denied is not None:
            return denied
        target = self.routes.get(origin_of(handler.path))
        if target is None:  # no system behind that virtual host: the model answers as the Cloud Connector
            assert self.answer is not None
            return self.answer(incoming)
        bearer = incoming.headers.get("Proxy-Authorization") or ""
        hop = Forwarded(
            incoming.method, f"http://{parts.netloc}{parts.path or '/'}",
            fingerprint(bearer[7:].strip()) if bearer[:7].lower() == "bearer " else None,
            "SAP-Connectivity-Authentication" in incoming.headers,
            incoming.headers.get("SAP-Connectivity-SCC-Location_ID"), 0, incoming.connection,
        )
        with self._lock:
            observers = list(self._observers)
        for observer in observers:  # before the hop, so a trace reads proxy -> backend
            try:
                observer(hop)
            except Exception:  # noqa: BLE001 - a broken observer must not change an answer
                pass
        reply = self.forward(target, incoming, parts.path or "/", parts.query, parts.netloc)
        with self._lock:
            self.forwarded.append(replace(hop, status=int(reply.status)))
        return reply

    def observe(self, observer: Callable[[Forwarded], None]) -> Callable[[], None]:
        """Call ``observer(forwarded)`` as each request is forwarded, before the on-premise
        system answers (``status`` 0; the live trace); ``forwarded`` keeps the answered ones."""
        with self._lock:
            self._observers.append(observer)

        def unsubscribe() -> None:
            with self._lock:
                if observer in self._observers:
                    self._observers.remove(observer)

        return unsubscribe

    def forward(self, target: OnPremiseService, incoming: Incoming, path: str, query: str, netloc: str) -> Reply:
        """Relay over a real socket (TLS with the sandbox CA when the target speaks it)."""
        headers = {k: v for k, v in incoming.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = netloc
        headers[TUNNEL_HEADER] = target.tunnel_secret
        if incoming.connection:
            headers[CONNECTION_HEADER] = incoming.connection
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            conn = http.client.HTTPSConnection(LOOPBACK, target.port, timeout=self.timeout, context=self.client_tls)
        else:
            conn = http.client.HTTPConnection(LOOPBACK, target.port, timeout=self.timeout)
        try:
            conn.request(incoming.method, path + (f"?{query}" if query else ""), body=incoming.body or None, headers=headers)
            response = conn.getresponse()
            body = response.read()
            answer_headers = {
                k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP | {"server", "date"}
            }
            return SimpleReply(response.status, answer_headers, body)
        except (OSError, http.client.HTTPException) as exc:
            return SimpleReply.json(502, "bad_gateway", f"on-premise system unreachable: {type(exc).__name__}")
        finally:
            conn.close()
