"""Protocol logic without I/O, and the two executors that perform it (DESIGN §7, ``httpx._auth``).

Every rule that talks to an IdP or the Destination service — token requests and their
retries, lookups, service tokens, the connectivity exchange, the outbound plan — is written
**once**, as a generator that *yields steps* and *receives their results*:

* :class:`HttpCall` → an :class:`Answer` (or a :class:`TransportFailure` thrown in);
* :class:`Sleep` → ``None`` (back-off between attempts);
* :class:`Cached` → ``(TokenResponse, was_hit)`` from a token cache, running the step's own
  sub-flow on a miss (single-flight across threads and coroutines);
* :class:`Invalidate` → ``None`` (drop one cached entry).

:func:`run_sync` performs the steps with ``requests`` (blocking); :func:`run_async` with
``httpx.AsyncClient``, ``asyncio.sleep`` and the caches' awaitable side, so an async caller never
blocks its event loop. Exceptions raised while performing a step are thrown into the flow, so
the flow — not the executor — decides what is retried.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import os
import shutil
import ssl
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generator, Mapping, Protocol, TypeVar

from ..events.instrument import cache_point
from . import peer_json

if TYPE_CHECKING:
    import httpx
    import requests

__all__ = [
    "HttpCall",
    "Answer",
    "TransportFailure",
    "Sleep",
    "Cached",
    "Invalidate",
    "Flow",
    "SyncIO",
    "AsyncIO",
    "run_sync",
    "run_async",
    "ClientCertFiles",
]

T = TypeVar("T")


class Cache(Protocol):
    """The part of :class:`propagation.caches.memory.TokenCache` the executors use (keys are
    :class:`propagation.caches.memory.CacheKey`)."""

    def get_or_fetch(self, key: Any, fetch: Callable[[], Any]) -> tuple[Any, bool]: ...

    def invalidate(self, key: Any) -> None: ...


@dataclass(frozen=True, repr=False)
class HttpCall:
    """One HTTP request a flow wants sent. Never follows redirects; ``client_cert`` is
    ``(PEM chain, PEM key)`` for mTLS."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, str] | None = None
    params: Mapping[str, str] | None = None
    client_cert: tuple[str, str] | None = None
    timeout: float | tuple[float, float] | None = None
    #: ``time.monotonic()`` by which the whole request — connect, headers, body — must be done.
    deadline: float | None = None

    def __repr__(self) -> str:  # headers and body hold secrets
        return f"HttpCall({self.method} {self.url.split('?', 1)[0]!r})"


@dataclass(frozen=True, repr=False)
class Answer:
    """A transport-neutral HTTP answer (status, lower-cased headers, body)."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        """The body as JSON, parsed within bounds (size and depth, :mod:`propagation.exchange.peer_json`):
        :class:`~propagation.errors.PeerAnswerError` (a ``ValueError``) when it is not usable."""
        return peer_json.loads(self.content, "answer")

    def __repr__(self) -> str:
        return f"Answer(status={self.status})"


class TransportFailure(Exception):
    """The request did not get an answer. ``kind``: ``tls``, ``connect``, ``timeout`` or ``other``
    (only the exception's class name is kept: messages may echo URLs with secrets)."""

    def __init__(self, kind: str, cause: str) -> None:
        super().__init__(f"{kind} ({cause})")
        self.kind = kind
        self.cause = cause


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, repr=False)
class Cached:
    """``cache.get_or_fetch(key, <run fetch()'s flow>)`` → ``(token, was_hit)``."""

    cache: Cache
    key: Any
    fetch: Callable[[], "Flow[Any]"]
    #: The fetched token is kept no longer than this (epoch seconds): the expiry of the user
    #: token it was made from — an exchanged token never outlives its user's token.
    not_after: float | None = None


@dataclass(frozen=True, repr=False)
class Invalidate:
    cache: Cache
    key: Any


Step = HttpCall | Sleep | Cached | Invalidate
Flow = Generator[Step, Any, T]


# -- client certificates -----------------------------------------------------------------------
class ClientCertFiles:
    """PEM certificate and key in a private temp dir for exactly one use.

    ``requests`` and :mod:`ssl` take client certificates only as file paths. The directory comes
    from :func:`tempfile.mkdtemp` (mode 0700), the files are created 0600 with ``O_EXCL``, and the
    whole directory is removed on exit, also when the request failed.
    """

    def __init__(self, certificate: str, key: str) -> None:
        self._certificate = certificate
        self._key = key
        self.directory: str | None = None

    def __enter__(self) -> tuple[str, str]:
        self.directory = tempfile.mkdtemp(prefix="propagation-mtls-")
        try:
            cert_file = self._write("client.crt", self._certificate)
            key_file = self._write("client.key", self._key)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        return cert_file, key_file

    def _write(self, name: str, pem: str) -> str:
        assert self.directory is not None
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(pem if pem.endswith("\n") else pem + "\n")
        return path

    def __exit__(self, *exc: object) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def ca_bundle() -> str:
    """The CA bundle to trust: ``SSL_CERT_FILE`` or ``REQUESTS_CA_BUNDLE`` when set (as
    ``httpx`` and ``requests`` honour them), else certifi's."""
    import certifi

    return os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE") or certifi.where()


def ssl_context(client_cert: tuple[str, str] | None, verify: bool = True, trust: str | None = None) -> ssl.SSLContext:
    """A TLS context trusting :func:`ca_bundle` — or only the PEM certificates ``trust`` (a
    destination's trust store) — with ``client_cert`` loaded (its files exist only while
    loading); ``verify=False`` (``TrustAll``) checks nothing. Contexts are shared (loading a CA
    bundle takes milliseconds: not per connection pool, and not on an event loop each time)."""
    return _ssl_context(client_cert, verify, trust, ca_bundle() if verify and trust is None else None)


@functools.lru_cache(maxsize=64)
def _ssl_context(
    client_cert: tuple[str, str] | None, verify: bool, trust: str | None, cafile: str | None
) -> ssl.SSLContext:
    if trust is not None and verify:
        context = ssl.create_default_context(cadata=trust)
    else:
        context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        with ClientCertFiles(*client_cert) as (cert_file, key_file):
            context.load_cert_chain(cert_file, key_file)
    return context


# -- executors -------------------------------------------------------------------------------------
def _failure(exc: BaseException) -> TransportFailure:
    """Map a ``requests`` or ``httpx`` transport exception to a :class:`TransportFailure`."""
    import httpx
    import requests

    name = type(exc).__name__
    if isinstance(exc, (requests.exceptions.SSLError, ssl.SSLError)):
        return TransportFailure("tls", name)
    if isinstance(exc, httpx.ConnectError) and isinstance(exc.__cause__ or exc.__context__, ssl.SSLError):
        return TransportFailure("tls", name)
    if isinstance(exc, (requests.exceptions.Timeout, httpx.TimeoutException)):
        return TransportFailure("timeout", name)
    if isinstance(exc, (requests.exceptions.ConnectionError, httpx.NetworkError, httpx.RemoteProtocolError)):
        return TransportFailure("connect", name)
    return TransportFailure("other", name)


def _remaining(call: HttpCall) -> float | None:
    if call.deadline is None:
        return None
    left = call.deadline - time.monotonic()
    if left <= 0:
        raise TransportFailure("timeout", "DeadlineExceeded")
    return left


def _bounded(timeout: Any, left: float | None) -> Any:
    """Per-read timeouts never longer than the time left."""
    if left is None or timeout is None:
        return timeout if left is None else left
    if isinstance(timeout, tuple):
        return (min(timeout[0], left), min(timeout[1], left))
    return min(float(timeout), left)


class SyncIO:
    """Performs :class:`HttpCall` with a ``requests.Session`` (blocking). A call with a deadline
    runs on a worker thread that the caller stops waiting for at the deadline (a peer dripping
    bytes cannot stretch it; the abandoned request ends with its per-read timeout)."""

    def __init__(self, session: "requests.Session", sleep: Callable[[float], None] = time.sleep,
                 workers: Any = None) -> None:
        self.session = session
        self.sleep = sleep
        self.workers = workers

    def http(self, call: HttpCall) -> Answer:
        left = _remaining(call)
        if left is None or self.workers is None:
            return self._http(call, left)
        import concurrent.futures

        future = self.workers.submit(contextvars.copy_context().run, self._http, call, left)  # spans nest
        try:
            return future.result(timeout=left)  # type: ignore[no-any-return]
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TransportFailure("timeout", "DeadlineExceeded") from None

    def _http(self, call: HttpCall, left: float | None) -> Answer:
        import requests

        call = call if left is None else dataclasses.replace(call, timeout=_bounded(call.timeout, left))
        try:
            if call.client_cert is not None:
                with ClientCertFiles(*call.client_cert) as cert:
                    response = self._send(call, cert)
            else:
                response = self._send(call, None)
        except requests.exceptions.RequestException as exc:
            raise _failure(exc) from exc
        with response:
            return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    def _send(self, call: HttpCall, cert: tuple[str, str] | None) -> "requests.Response":
        return self.session.request(
            call.method,
            call.url,
            data=dict(call.data) if call.data is not None else None,
            headers=dict(call.headers),
            params=dict(call.params) if call.params else None,
            cert=cert,
            timeout=call.timeout,
            allow_redirects=False,
        )


class AsyncIO:
    """Performs :class:`HttpCall` with ``httpx.AsyncClient``: one client per (event loop,
    client certificate), made on first use and closed by :meth:`aclose`."""

    def __init__(self, sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.sleep = sleep or asyncio.sleep
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, httpx.AsyncClient]]" = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def _client(self, cert: tuple[str, str] | None) -> "httpx.AsyncClient":
        import httpx

        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._clients.setdefault(loop, {})
            client = clients.get(cert)
        if client is None:
            verify = ssl_context(cert)
            # trust_env: the CA bundle and proxy variables apply as they do to ``requests``.
            client = httpx.AsyncClient(verify=verify, follow_redirects=False, trust_env=True)
            with self._lock:
                client = clients.setdefault(cert, client)
        return client

    async def http(self, call: HttpCall) -> Answer:
        import httpx

        client = self._client(call.client_cert)
        left = _remaining(call)
        timeout = _bounded(call.timeout, left)
        if isinstance(timeout, tuple):
            timeout = httpx.Timeout(timeout[1], connect=timeout[0])
        sending = client.request(
            call.method,
            call.url,
            data=dict(call.data) if call.data is not None else None,
            headers=dict(call.headers),
            params=dict(call.params) if call.params else None,
            timeout=timeout,
        )
        try:
            response = await (sending if left is None else asyncio.wait_for(sending, left))
        except asyncio.TimeoutError:
            raise TransportFailure("timeout", "DeadlineExceeded") from None
        except httpx.HTTPError as exc:
            raise _failure(exc) from exc
        return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    async def aclose(self) -> None:
        """Close the clients of the running loop (others are closed with their loop)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._clients.pop(loop, {})
        for client in clients.values():
            await client.aclose()


def _capped(token: Any, not_after: float | None) -> Any:
    expires_at = getattr(token, "expires_at", False)
    if not_after is None or expires_at is False or (expires_at is not None and expires_at <= not_after):
        return token
    return dataclasses.replace(token, expires_at=not_after)


async def _acapped(fetching: Awaitable[Any], not_after: float | None) -> Any:
    return _capped(await fetching, not_after)


def run_sync(flow: "Flow[T]", io: SyncIO) -> T:
    """Drive ``flow`` to its result, performing each step with blocking I/O. A ``BaseException``
    that is not an ``Exception`` (``KeyboardInterrupt``…) is no step's result: the flow is closed
    (its ``finally`` blocks run, a breaker probe gives its slot back) and the exception goes on."""
    try:
        return _drive_sync(flow, io)
    finally:
        flow.close()  # a no-op once finished


def _drive_sync(flow: "Flow[T]", io: SyncIO) -> T:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            if isinstance(step, HttpCall):
                value = io.http(step)
            elif isinstance(step, Sleep):
                io.sleep(step.seconds)
            elif isinstance(step, Cached):
                value = step.cache.get_or_fetch(step.key, lambda s=step: _capped(run_sync(s.fetch(), io), s.not_after))
                cache_point(step, value)
            elif isinstance(step, Invalidate):
                step.cache.invalidate(step.key)
            else:  # pragma: no cover - a programming error
                raise TypeError(f"unknown flow step {step!r}")
        except Exception as exc:  # thrown into the flow: it decides
            error = exc


async def run_async(flow: "Flow[T]", io: AsyncIO) -> T:
    """Drive ``flow`` to its result without blocking the event loop. Cancellation is an event of
    its own, never a step's result: the flow is closed (a breaker probe gives its slot back,
    nothing is counted) and ``CancelledError`` goes on to the caller."""
    try:
        return await _drive_async(flow, io)
    finally:
        flow.close()


async def _drive_async(flow: "Flow[T]", io: AsyncIO) -> T:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            if isinstance(step, HttpCall):
                value = await io.http(step)
            elif isinstance(step, Sleep):
                await io.sleep(step.seconds)
            elif isinstance(step, Cached):
                value = await aget_or_fetch(step.cache, step.key, lambda s=step: _acapped(run_async(s.fetch(), io), s.not_after))
                cache_point(step, value)
            elif isinstance(step, Invalidate):
                ainvalidate = getattr(step.cache, "ainvalidate", None)
                if ainvalidate is not None:
                    await ainvalidate(step.key)
                else:
                    step.cache.invalidate(step.key)
            else:  # pragma: no cover
                raise TypeError(f"unknown flow step {step!r}")
        except Exception as exc:
            error = exc


async def aget_or_fetch(cache: Cache, key: Any, afetch: Callable[[], Awaitable[Any]]) -> Any:
    """A cache's awaitable ``get_or_fetch``: its own ``aget_or_fetch`` when it has one, else its
    blocking one run in a worker thread whose ``fetch`` is awaited back on this loop (so a
    third-party cache keeps its single-flight and never blocks the loop). The fetch runs as a
    task of its own: cancelling the caller does not cancel it, so it completes for the waiters."""
    native = getattr(cache, "aget_or_fetch", None)
    if native is not None:
        return await native(key, afetch)
    loop = asyncio.get_running_loop()

    def fetch() -> Any:
        import concurrent.futures

        try:
            return asyncio.run_coroutine_threadsafe(afetch(), loop).result()  # type: ignore[arg-type]
        except concurrent.futures.CancelledError:
            # Cancelled on its loop: no outcome (a BaseException), never an error for the waiters.
            raise asyncio.CancelledError() from None

    return await asyncio.to_thread(cache.get_or_fetch, key, fetch)
