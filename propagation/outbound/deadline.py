"""A total deadline for calls to a destination (DESIGN §6 "Time"): a target that drips its
answer one byte at a time cannot stretch a call, whatever the per-read timeouts.

The deadline of the call in progress is a context variable, set by the adapters around each
request. The engine's connection pools read it at the socket: every read and write gets the
time left as its timeout, and none is started once the time is up — so the client raises its
own timeout error (``requests.exceptions.ReadTimeout`` / ``ConnectionError``,
``httpx.ReadTimeout``…), exactly as for a per-read timeout. No thread, no timer.

* ``requests`` (urllib3): the engine's adapters build connections whose socket is wrapped
  (:class:`DeadlineSocket`) once connected;
* ``httpx`` (httpcore): the engine's transports get a network backend whose streams clamp
  each operation's timeout (:class:`DeadlineBackend`, :class:`AsyncDeadlineBackend`).

A connection takes the deadline of the request it sends (when it writes it) and keeps it for the
answer: a *streamed* answer (``requests`` ``stream=True``, httpx ``stream()``) is bounded by its
call's deadline until its body is consumed or closed, although it is read after the call returned.
"""

from __future__ import annotations

import io
import socket
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

__all__ = ["DEADLINE", "deadline", "DeadlineSocket", "DeadlineBackend", "AsyncDeadlineBackend", "DEFAULT_CALL_DEADLINE"]

#: Seconds a call to a destination may take in all (request sent, answer read), by default.
DEFAULT_CALL_DEADLINE = 120.0

#: ``time.monotonic()`` by which the call in progress must be done; ``None``: no deadline.
DEADLINE: ContextVar[float | None] = ContextVar("propagation.call_deadline", default=None)


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """The calls made inside the block end within ``seconds`` (``None``: no deadline)."""
    handle = DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        DEADLINE.reset(handle)


_CURRENT: Any = object()  # "the deadline of the context", as opposed to a connection's own


def _left(timeout: float | None, ends: Any = _CURRENT) -> float | None:
    """``timeout`` shortened to the time left until ``ends`` (by default the context's
    deadline); raise ``socket.timeout`` when none is."""
    if ends is _CURRENT:
        ends = DEADLINE.get()
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        raise socket.timeout("deadline exceeded")
    return left if timeout is None else min(timeout, left)


# -- requests / urllib3 -----------------------------------------------------------------------------
class DeadlineSocket:
    """A connected socket (plain or TLS) whose reads and writes end by the call's deadline.
    Everything else is the socket's own."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._timeout = self._applied = sock.gettimeout()
        self._ends = DEADLINE.get()  # the deadline of the request on this connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def settimeout(self, value: float | None) -> None:
        self._timeout = self._applied = value
        self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def _clamp(self) -> None:
        wanted = _left(self._timeout, self._ends)
        if wanted != self._applied:  # far from the deadline: the socket's own timeout, no call
            self._sock.settimeout(wanted)
            self._applied = wanted

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._clamp()
        return self._sock.recv_into(buffer, nbytes, flags)  # type: ignore[no-any-return]

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._clamp()
        return self._sock.recv(bufsize, flags)  # type: ignore[no-any-return]

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._ends = DEADLINE.get()  # a request is sent: its deadline holds until its answer is read
        self._clamp()
        self._sock.sendall(data, flags) if flags else self._sock.sendall(data)

    def send(self, data: Any, flags: int = 0) -> int:
        self._ends = DEADLINE.get()
        self._clamp()
        return self._sock.send(data, flags)  # type: ignore[no-any-return]

    def makefile(self, mode: str = "r", buffering: int | None = None, **kwargs: Any) -> Any:
        """The buffered reader ``http.client`` reads the answer from: its reads come back here."""
        if "r" not in mode or "b" not in mode:
            return self._sock.makefile(mode, buffering, **kwargs)
        self._sock._io_refs += 1  # as socket.makefile does: the socket outlives its reader
        return io.BufferedReader(socket.SocketIO(self, "rb"), io.DEFAULT_BUFFER_SIZE)  # type: ignore[arg-type]


def deadline_connection_classes() -> tuple[type, type]:
    """urllib3 connection classes whose socket is a :class:`DeadlineSocket` once connected."""
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class DeadlineHTTPConnection(HTTPConnection):
        def connect(self) -> None:
            super().connect()
            self.sock = DeadlineSocket(self.sock)

    class DeadlineHTTPSConnection(HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            self.sock = DeadlineSocket(self.sock)

    return DeadlineHTTPConnection, DeadlineHTTPSConnection


# -- httpx / httpcore -------------------------------------------------------------------------------
class _Stream:
    """A connection's stream: writes take the sending call's deadline, reads keep it (so the
    body of a streamed answer, read after the call returned, still ends by it)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._ends = DEADLINE.get()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _httpcore_left(timeout, "ReadTimeout", self._ends))  # type: ignore[no-any-return]

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._ends = DEADLINE.get()
        self._stream.write(buffer, _httpcore_left(timeout, "WriteTimeout", self._ends))

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> "_Stream":
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, _left(timeout)))


class _AsyncStream:
    """The async twin of :class:`_Stream`."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._ends = DEADLINE.get()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, _httpcore_left(timeout, "ReadTimeout", self._ends))  # type: ignore[no-any-return]

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._ends = DEADLINE.get()
        await self._stream.write(buffer, _httpcore_left(timeout, "WriteTimeout", self._ends))

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> "_AsyncStream":
        return _AsyncStream(await self._stream.start_tls(ssl_context, server_hostname, _left(timeout)))


def _httpcore_left(timeout: float | None, error: str, ends: Any = _CURRENT) -> float | None:
    """:func:`_left` for httpcore, whose callers expect its own timeout exceptions."""
    try:
        return _left(timeout, ends)
    except socket.timeout:
        import httpcore

        raise getattr(httpcore, error)("deadline exceeded") from None


def _mapped(error: socket.timeout, exc_type: type) -> Exception:
    return exc_type(str(error) or "deadline exceeded")


class DeadlineBackend:
    """An httpcore network backend whose streams end by the call's deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> _Stream:
        import httpcore

        try:
            return _Stream(self._inner.connect_tcp(host, port, _left(timeout), local_address, socket_options))
        except socket.timeout as exc:
            raise _mapped(exc, httpcore.ConnectTimeout) from None

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> _Stream:
        return _Stream(self._inner.connect_unix_socket(path, _left(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class AsyncDeadlineBackend:
    """The async twin of :class:`DeadlineBackend`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Any = None) -> _AsyncStream:
        import httpcore

        try:
            return _AsyncStream(await self._inner.connect_tcp(host, port, _left(timeout), local_address, socket_options))
        except socket.timeout as exc:
            raise _mapped(exc, httpcore.ConnectTimeout) from None

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> _AsyncStream:
        return _AsyncStream(await self._inner.connect_unix_socket(path, _left(timeout), socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
