"""The engine's connection pools, shared by every session and client it makes (DESIGN §2a).

One pool per :class:`PoolKey` — (scheme, host, port, proxy, client
certificate, TLS verification) and, through the Connectivity proxy, the principal (tenant,
user, location) — so ``propagation.session("S4")`` made per request reuses kept-alive
connections, and a connection through the Cloud Connector never carries a second user.

Bounded: at most ``maxsize`` pools per kind (least recently used evicted first), and a pool
unused for ``idle`` seconds is evicted on the next lookup. An evicted pool is closed only when
its last request is done (httpx closes in-use connections with their pool: 300 principals through
the Connectivity proxy would break calls in flight) — requests' pools leave checked-out
connections alone already. ``close()`` / ``aclose()`` close all.
``httpx`` async transports belong to the event loop that made them, so they are kept per loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from .._log import logger
from ..exchange.flow import ssl_context
from .deadline import AsyncDeadlineBackend, DeadlineBackend, deadline_connection_classes

if TYPE_CHECKING:
    import httpx
    from requests.adapters import HTTPAdapter

__all__ = ["Pools", "PoolKey"]

Cert = tuple[str, str]


P = TypeVar("P")


@dataclass(frozen=True)
class PoolKey:
    """Which pooled connections may carry a request: per origin, proxy, client certificate and
    TLS verification — and through the Connectivity proxy also per principal (tenant, user
    fingerprint, location), so a kept-alive connection through the Cloud Connector never
    carries a second user."""

    scheme: str
    host: str
    port: int | None
    proxy: str | None = None
    certificate: str | None = None  # fingerprint of the client certificate, never the key
    verify: bool = True
    trust: str | None = None  # fingerprint of the destination's trust store (its CA bundle)
    principal: tuple[str | None, str | None, str | None] | None = None


class _Lru(Generic[P]):
    """Pools by key, LRU-bounded; ``get`` hands back the evicted and idle ones to close. A pool
    taken with ``lease=True`` counts as in use until :meth:`release`: evicted meanwhile, it is
    retired instead of closed, and :meth:`release` of its last lease says to close it."""

    def __init__(self, maxsize: int, idle: float, clock: Callable[[], float]) -> None:
        self.maxsize = maxsize
        self.idle = idle
        self._clock = clock
        self._items: "OrderedDict[Any, tuple[P, float]]" = OrderedDict()
        self._leases: dict[int, int] = {}  # id(pool) → requests in flight
        self._retired: dict[int, P] = {}  # evicted while in use: closed by the last release
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], P], lease: bool = False) -> tuple[P, list[P]]:
        """The pool for ``key`` (made if new) and the pools to close now (evicted or idle, unused)."""
        now = self._clock()
        stale: list[P] = []
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                pool = make()
            else:
                pool = entry[0]
            self._items[key] = (pool, now)
            self._items.move_to_end(key)
            if lease:
                self._leases[id(pool)] = self._leases.get(id(pool), 0) + 1
            while len(self._items) > self.maxsize:
                self._evict(self._items.popitem(last=False)[1][0], stale)
            while self._items:  # ordered by last use: only the oldest can be idle (O(1) per call)
                oldest, (candidate, used) = next(iter(self._items.items()))
                if now - used <= self.idle:
                    break
                del self._items[oldest]
                self._evict(candidate, stale)
        return pool, stale

    def _evict(self, pool: P, stale: list[P]) -> None:
        if self._leases.get(id(pool)):
            self._retired[id(pool)] = pool  # requests in flight: closed by the last release
        else:
            stale.append(pool)

    def release(self, pool: P) -> bool:
        """One request on ``pool`` is done; ``True``: it was evicted meanwhile, close it now."""
        with self._lock:
            left = self._leases.get(id(pool), 0) - 1
            if left > 0:
                self._leases[id(pool)] = left
                return False
            self._leases.pop(id(pool), None)
            return self._retired.pop(id(pool), None) is not None

    def drain(self) -> list[P]:
        with self._lock:
            pools = [pool for pool, _ in self._items.values()] + list(self._retired.values())
            self._items.clear()
            self._retired.clear()
            self._leases.clear()
        return pools

    def __len__(self) -> int:
        return len(self._items)


@lru_cache(maxsize=1)
def _adapter_class() -> type:
    """An ``HTTPAdapter`` whose connections end by the call's deadline (:mod:`.deadline`)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    plain, tls = deadline_connection_classes()
    classes = {
        "http": type("DeadlineHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
        "https": type("DeadlineHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
    }

    class DeadlineAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = classes

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            manager.pool_classes_by_scheme = classes
            return manager

    return DeadlineAdapter


@lru_cache(maxsize=1)
def _mtls_adapter_class() -> type:
    """A deadline adapter whose TLS is one :class:`ssl.SSLContext` with the client certificate
    loaded once (no key files per call): the context decides trust and verification, and
    requests' per-call ``verify``/``cert`` are not applied to it."""

    class MtlsAdapter(_adapter_class()):  # type: ignore[misc]
        def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
            self.ssl_context = context
            super().__init__(**kwargs)

        def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
            host_params, _ = super().build_connection_pool_key_attributes(request, verify, None)
            return host_params, {"ssl_context": self.ssl_context, "cert_reqs": self.ssl_context.verify_mode}

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            conn.cert_reqs = self.ssl_context.verify_mode  # no CA files added to the context, no key files
            conn.ca_certs = conn.ca_cert_dir = conn.cert_file = conn.key_file = None

    return MtlsAdapter


def _deadline_adapter() -> "HTTPAdapter":
    return _adapter_class()(pool_connections=4, pool_maxsize=32)  # type: ignore[no-any-return]


class Pools:
    """Connection pools of one engine for ``requests`` (``HTTPAdapter``) and ``httpx``
    (``HTTPTransport`` / ``AsyncHTTPTransport``)."""

    def __init__(self, *, maxsize: int = 256, idle: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self.idle = idle
        self._clock = clock
        self._adapters: _Lru["HTTPAdapter"] = _Lru(maxsize, idle, clock)
        self._transports: _Lru["httpx.HTTPTransport"] = _Lru(maxsize, idle, clock)
        self._async: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lru[httpx.AsyncHTTPTransport]]" = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._trust_dir: str | None = None
        self._trust_files: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Pools(requests={len(self._adapters)}, httpx={len(self._transports)}, maxsize={self.maxsize})"

    # -- requests -------------------------------------------------------------------------
    def adapter(self, key: PoolKey | None, client_cert: Cert | None = None, trust: str | None = None) -> "HTTPAdapter":
        """The ``requests`` pool for ``key``; with ``client_cert`` one whose TLS context holds that
        certificate (loaded once per certificate, shared with httpx: :func:`~propagation.exchange.flow.ssl_context`)."""
        make = _deadline_adapter
        if key is not None and client_cert is not None:
            context = ssl_context(client_cert, key.verify, trust)
            make = lambda: _mtls_adapter_class()(context, pool_connections=4, pool_maxsize=32)  # noqa: E731
        adapter, stale = self._adapters.get(key, make)
        for old in stale:
            logger.debug("closing an idle or evicted connection pool")
            old.close()
        return adapter

    # -- httpx ------------------------------------------------------------------------------
    def transport(self, key: PoolKey, client_cert: Cert | None, trust: str | None = None,
                  lease: bool = False) -> "httpx.HTTPTransport":
        """The sync httpx pool for ``key``; with ``lease`` it stays open (even when evicted) until
        :meth:`release_transport`."""
        import httpx

        def make() -> httpx.HTTPTransport:
            transport = httpx.HTTPTransport(**self._options(key, client_cert, trust))
            pool = transport._pool  # httpcore's pool: its sockets end by the call's deadline
            pool._network_backend = DeadlineBackend(pool._network_backend)
            return transport

        transport, stale = self._transports.get(key, make, lease)
        for old in stale:
            old.close()
        return transport

    def release_transport(self, transport: "httpx.HTTPTransport") -> None:
        """The leased request on ``transport`` is done (its answer read or closed)."""
        if self._transports.release(transport):
            logger.debug("closing an evicted connection pool: its last request is done")
            transport.close()

    def _async_lru(self) -> "_Lru[httpx.AsyncHTTPTransport]":
        loop = asyncio.get_running_loop()
        with self._lock:
            lru = self._async.get(loop)
            if lru is None:
                lru = self._async[loop] = _Lru(self.maxsize, self.idle, self._clock)
        return lru

    async def async_transport(
        self, key: PoolKey, client_cert: Cert | None, trust: str | None = None, lease: bool = False
    ) -> "httpx.AsyncHTTPTransport":
        """The async httpx pool for ``key`` on the running loop (see :meth:`transport`)."""
        import httpx

        lru = self._async_lru()

        def make() -> httpx.AsyncHTTPTransport:
            transport = httpx.AsyncHTTPTransport(**self._options(key, client_cert, trust))
            pool = transport._pool
            pool._network_backend = AsyncDeadlineBackend(pool._network_backend)
            return transport

        transport, stale = lru.get(key, make, lease)
        for old in stale:
            await old.aclose()
        return transport

    async def arelease_transport(self, transport: "httpx.AsyncHTTPTransport") -> None:
        """:meth:`release_transport` for the async pools of the running loop."""
        if self._async_lru().release(transport):
            logger.debug("closing an evicted connection pool: its last request is done")
            await transport.aclose()

    @staticmethod
    def _options(key: PoolKey, client_cert: Cert | None, trust: str | None) -> dict[str, Any]:
        import httpx

        options: dict[str, Any] = {"verify": ssl_context(client_cert, key.verify, trust)}
        if key.proxy:
            options["proxy"] = httpx.Proxy(key.proxy)
        return options

    def trust_file(self, trust: str) -> str:
        """A file holding the PEM bundle ``trust`` (``requests`` takes CA bundles as paths only):
        written once per bundle into a private directory (0700, files 0600), removed by :meth:`close`."""
        digest = hashlib.sha256(trust.encode("utf-8")).hexdigest()[:32]
        with self._lock:
            path = self._trust_files.get(digest)
            if path is None:
                if self._trust_dir is None:
                    self._trust_dir = tempfile.mkdtemp(prefix="propagation-trust-")
                path = os.path.join(self._trust_dir, f"{digest}.pem")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write(trust)
                self._trust_files[digest] = path
        return path

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Close every ``requests`` and sync ``httpx`` pool (async ones: :meth:`aclose`)."""
        for adapter in self._adapters.drain():
            adapter.close()
        for transport in self._transports.drain():
            transport.close()
        with self._lock:
            directory, self._trust_dir = self._trust_dir, None
            self._trust_files.clear()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    async def aclose(self) -> None:
        """Close the async pools of the running loop, and the sync ones."""
        loop = asyncio.get_running_loop()
        with self._lock:
            lru = self._async.pop(loop, None)
        for transport in lru.drain() if lru is not None else []:
            await transport.aclose()
        self.close()
