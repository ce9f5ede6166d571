"""A :class:`~propagation.caches.memory.TokenCache` in Redis, shared by every worker process.

* Keys are ``"{prefix}:{CacheKey.digest()}"``: hashes only, never a token.
* Values are the :class:`TokenResponse` as JSON, encrypted with AES-256-GCM under a key
  from the configuration (``PROPAGATION_CACHE_KEY``), a random 96-bit nonce per value and
  the Redis key as associated data: a dump of Redis holds no usable token, and a value
  copied to another key does not decrypt. A value that does not decrypt (another key, a
  rotated key, garbage) is a miss, never an error.
* The Redis TTL is the token's usable lifetime, computed exactly as
  :class:`~propagation.caches.memory.MemoryTokenCache` does (its :meth:`usable_until`).
* Single-flight across processes: ``SET {prefix}:lock:{digest} <random> NX PX lock_ms``;
  the winner fetches, stores and deletes its own lock (compare-and-delete in Lua); the
  others poll the value with a short bounded back-off up to ``max_wait`` seconds, then
  fetch themselves. Within a process, threads asking for one key share one flight first.
* Redis down or slow (socket timeouts of ``socket_timeout`` seconds): a warning (at most
  one per ``cooldown``, without secrets), then an in-process :class:`MemoryTokenCache`
  serves until the cooldown has passed and Redis is tried again. A request never fails
  because of the cache.

``redis`` and ``cryptography`` are the ``propagation[redis]`` extra; they are imported only
when a :class:`RedisTokenCache` is built, so the core does not need them.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urlsplit

from .._log import logger
from .memory import CacheKey, MemoryTokenCache, TokenCache
from ..errors import ConfigurationError, TokenExchangeError
from ..exchange.oauth import TokenResponse
from .sealing import Sealer, decode_key

if TYPE_CHECKING:
    from ..bindings import Bindings

__all__ = ["RedisTokenCache", "cache_from_env", "CACHE_URL_ENV", "CACHE_KEY_ENV", "REDIS_LABEL"]

CACHE_URL_ENV = "PROPAGATION_CACHE_URL"
CACHE_KEY_ENV = "PROPAGATION_CACHE_KEY"
CACHE_PREFIX_ENV = "PROPAGATION_CACHE_PREFIX"
CACHE_TIMEOUT_ENV = "PROPAGATION_CACHE_TIMEOUT"
#: Label of a bound Redis service (BTP "Redis on SAP BTP, hyperscaler option").
REDIS_LABEL = "redis-cache"

# KEYS[1] = lock key, ARGV[1] = our random lock value: delete only a lock we still own.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class _RedisDown(Exception):
    """Internal: Redis could not be used for this call (already logged)."""


class _Flight:
    __slots__ = ("done", "result", "error", "owner")

    def __init__(self, owner: int) -> None:
        self.done = threading.Event()
        self.result: TokenResponse | None = None
        self.error: BaseException | None = None
        self.owner = owner


class RedisTokenCache:
    """Shared, encrypted token cache in Redis with cross-process single-flight.

    Build it with ``url`` (``redis://`` or ``rediss://``), ``client`` (a ``redis.Redis``)
    or ``connection`` (keyword arguments for ``redis.Redis``), and ``key``, the 32-byte
    AES key. ``skew`` and ``default_ttl`` mean what they mean for :class:`MemoryTokenCache`
    (which is also the fallback, bounded by ``fallback_maxsize``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        key: bytes,
        client: Any = None,
        connection: Mapping[str, Any] | None = None,
        prefix: str = "propagation:tokens",
        skew: float = 60.0,
        default_ttl: float = 300.0,
        socket_timeout: float = 0.3,
        lock_ms: int = 10_000,
        max_wait: float = 5.0,
        cooldown: float = 5.0,
        fallback_maxsize: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
            raise ConfigurationError("RedisTokenCache key must be 32 bytes (AES-256).")
        if sum(x is not None for x in (url, client, connection)) != 1:
            raise ConfigurationError("RedisTokenCache needs exactly one of url, client or connection.")
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigurationError("The Redis token cache needs the extra: pip install 'propagation[redis]'.") from exc

        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._sealer = Sealer(bytes(key))
        self.prefix = prefix.rstrip(":")
        self.lock_ms = int(lock_ms)
        self.max_wait = float(max_wait)
        self.cooldown = float(cooldown)
        self.clock = clock
        # The fallback doubles as the TTL policy: one implementation of skew/default_ttl.
        self.fallback = MemoryTokenCache(maxsize=fallback_maxsize, skew=skew, default_ttl=default_ttl, clock=clock)
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "retry": Retry(NoBackoff(), 0),  # fail fast: the fallback is the retry
            "health_check_interval": 30,
        }
        # How to build a redis.asyncio client for aget_or_fetch (one per event loop).
        self._async_spec: tuple[str, Any] = ("client", client) if client is not None else (
            ("url", url) if url is not None else ("connection", dict(connection or {})))
        self._async_options = {k: v for k, v in options.items() if k != "retry"}
        self._async_clients: Any = weakref.WeakKeyDictionary()
        if client is not None:
            self.redis = client
            self.where = "redis"
        elif url is not None:
            scheme = urlsplit(url).scheme
            if scheme not in ("redis", "rediss"):
                raise ConfigurationError(f"{CACHE_URL_ENV} must be a redis:// or rediss:// URL (got scheme {scheme!r}).")
            self.redis = redis.Redis.from_url(url, **options)
            parts = urlsplit(url)
            self.where = f"{scheme}://{parts.hostname}:{parts.port or 6379}"  # no user info, ever
        else:
            assert connection is not None
            self.redis = redis.Redis(**{**options, **dict(connection)})
            self.where = f"redis://{connection.get('host', 'localhost')}:{connection.get('port', 6379)}"
        self._release = self.redis.register_script(_RELEASE)
        self._down_until = 0.0
        self._warned_at = -1e18
        self._state = threading.Lock()
        self._flights: dict[str, _Flight] = {}

    def __repr__(self) -> str:
        return f"RedisTokenCache(where={self.where!r}, prefix={self.prefix!r}, available={self.available})"

    # -- configuration -----------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str], bindings: "Bindings | None" = None, **options: Any) -> "RedisTokenCache | None":
        """The cache ``PROPAGATION_CACHE_URL`` or a ``redis-cache`` binding describes, else ``None``."""
        url = (environ.get(CACHE_URL_ENV) or "").strip()
        connection: dict[str, Any] | None = None
        if not url and bindings is not None:
            binding = bindings.find(label=REDIS_LABEL)
            if binding is not None:
                creds = binding.credentials
                if creds.get("uri"):
                    url = str(creds["uri"])
                elif creds.get("hostname"):
                    connection = {"host": str(creds["hostname"]), "port": int(creds.get("port") or 6379)}
                    if creds.get("password"):
                        connection["password"] = str(creds["password"])
                    tls = creds.get("tls")
                    if tls is True or str(tls).lower() in ("true", "1", "yes"):
                        connection["ssl"] = True
                else:
                    raise ConfigurationError(f"Binding '{binding.name}' (label {REDIS_LABEL}) has neither 'uri' nor 'hostname'.")
        if not url and connection is None:
            return None
        raw_key = environ.get(CACHE_KEY_ENV)
        if not raw_key:
            raise ConfigurationError(f"A Redis token cache is configured but {CACHE_KEY_ENV} is not set "
                                     "(base64 of 32 random bytes: the AES-256 key for cached tokens).")
        key = decode_key(raw_key)
        if environ.get(CACHE_PREFIX_ENV):
            options.setdefault("prefix", environ[CACHE_PREFIX_ENV])
        if environ.get(CACHE_TIMEOUT_ENV):
            try:
                options.setdefault("socket_timeout", float(environ[CACHE_TIMEOUT_ENV]))
            except ValueError:
                raise ConfigurationError(f"{CACHE_TIMEOUT_ENV} must be a number of seconds.") from None
        if url:
            return cls(url, key=key, **options)
        return cls(key=key, connection=connection, **options)

    # -- state ------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while in the cooldown after a Redis failure."""
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException, doing: str) -> None:
        now = time.monotonic()
        with self._state:
            self._down_until = now + self.cooldown
            warn = now - self._warned_at >= self.cooldown
            if warn:
                self._warned_at = now
        if warn:
            # The exception *type* only: messages of client libraries may quote a URL.
            logger.warning(
                "token cache: Redis at %s failed (%s during %s); using the in-process cache, retrying Redis in %.0f s",
                self.where, type(exc).__name__, doing, self.cooldown,
            )

    def _call(self, doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.available:
            raise _RedisDown()
        try:
            return fn(*args, **kwargs)
        except self._redis_errors as exc:
            self._failed(exc, doing)
            raise _RedisDown() from None

    # -- encryption ---------------------------------------------------------------------------
    def _name(self, digest: str) -> str:
        return f"{self.prefix}:{digest}"

    def _seal(self, name: str, token: TokenResponse, until: float) -> bytes:
        return self._sealer.seal(name, token, until)

    def _open(self, name: str, value: bytes | None) -> TokenResponse | None:
        opened = self._sealer.open(name, value)
        if opened is None:
            return None
        token, until = opened
        return None if self.clock() >= until else token

    def _read(self, name: str) -> TokenResponse | None:
        return self._open(name, self._call("get", self.redis.get, name))

    def _write(self, name: str, token: TokenResponse) -> None:
        now = self.clock()
        until = self.fallback.usable_until(token, now)
        ttl_ms = int((until - now) * 1000)
        if ttl_ms <= 0:
            return
        self._call("set", self.redis.set, name, self._seal(name, token, until), px=ttl_ms)

    # -- TokenCache -----------------------------------------------------------------------------
    def get(self, key: CacheKey) -> TokenResponse | None:
        try:
            return self._read(self._name(key.digest()))
        except _RedisDown:
            return self.fallback.get(key)

    def get_or_fetch(self, key: CacheKey, fetch: Callable[[], TokenResponse]) -> tuple[TokenResponse, bool]:
        """``(token, True)`` unless this caller's ``fetch()`` ran (as MemoryTokenCache)."""
        digest = key.digest()
        me = threading.get_ident()
        with self._state:
            flight = self._flights.get(digest)
            leader = flight is None
            if flight is None:
                flight = self._flights[digest] = _Flight(me)
            elif flight.owner == me:
                raise RuntimeError("get_or_fetch: fetch() asked the cache for its own key (recursion).")
        if not leader:
            if not flight.done.wait(self.fallback.wait_timeout):
                raise TokenExchangeError(
                    f"Waited {self.fallback.wait_timeout:g} s for another thread's token request "
                    f"(destination '{key.destination}'): the deadline passed; nothing was sent by this caller."
                )
            if flight.error is not None:
                raise flight.error
            assert flight.result is not None
            return flight.result, True
        try:
            token, hit = self._lead(key, digest, fetch)
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.result = token
            return token, hit
        finally:
            with self._state:
                self._flights.pop(digest, None)
            flight.done.set()

    def _lead(self, key: CacheKey, digest: str, fetch: Callable[[], TokenResponse]) -> tuple[TokenResponse, bool]:
        name = self._name(digest)
        lock = f"{self.prefix}:lock:{digest}"
        mine = secrets.token_hex(16)
        try:
            token = self._read(name)
            if token is not None:
                return token, True
            deadline = time.monotonic() + self.max_wait
            delay = 0.005
            while not self._call("lock", self.redis.set, lock, mine, nx=True, px=self.lock_ms):
                # Another process is fetching: wait for its value, bounded.
                if time.monotonic() >= deadline:
                    logger.debug("token cache: waited %.1f s for another process's fetch; fetching here", self.max_wait)
                    mine = ""
                    break
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                token = self._read(name)
                if token is not None:
                    return token, True
            if mine:
                # Double check under the lock: the previous holder may have stored the value
                # and released between our last read and our SET NX.
                token = self._read(name)
                if token is not None:
                    self._unlock(lock, mine)
                    return token, True
        except _RedisDown:
            return self.fallback.get_or_fetch(key, fetch)

        try:
            token = self._checked(fetch)
            try:
                self._write(name, token)
            except _RedisDown:
                self.fallback.get_or_fetch(key, lambda: token)
            return token, False
        finally:
            if mine:
                self._unlock(lock, mine)

    def _unlock(self, lock: str, mine: str) -> None:
        try:
            self._call("unlock", self._release, keys=[lock], args=[mine])
        except _RedisDown:
            pass  # the lock expires by itself after lock_ms

    @staticmethod
    def _checked(fetch: Callable[[], TokenResponse]) -> TokenResponse:
        token = fetch()
        if not isinstance(token, TokenResponse):
            raise TypeError(f"fetch() returned {type(token).__name__}, not TokenResponse")
        return token

    # -- async (redis.asyncio): never blocks the event loop ---------------------------------------
    def _aredis(self) -> Any:
        """The ``redis.asyncio`` client of the running loop, or ``None`` when one cannot be
        built from what this cache was given (then the blocking client runs in a thread)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            import redis.asyncio as aredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            kind, spec = self._async_spec
            options = {**self._async_options, "retry": Retry(NoBackoff(), 0)}
            if kind == "url":
                client = aredis.Redis.from_url(spec, **options)
            elif kind == "connection":
                client = aredis.Redis(**{**options, **spec})
            else:
                kwargs = getattr(getattr(spec, "connection_pool", None), "connection_kwargs", None)
                if not isinstance(kwargs, dict) or "host" not in kwargs:
                    return None
                client = aredis.Redis(**{k: v for k, v in kwargs.items() if k in ("host", "port", "db", "password", "username")},
                                      **options)
            self._async_clients[loop] = client
        return client

    async def _acall(self, doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.available:
            raise _RedisDown()
        try:
            return await fn(*args, **kwargs)
        except self._redis_errors as exc:
            self._failed(exc, doing)
            raise _RedisDown() from None

    async def aget_or_fetch(self, key: CacheKey, fetch: Callable[[], Any]) -> tuple[TokenResponse, bool]:
        """:meth:`get_or_fetch` for coroutines, with ``redis.asyncio``: the same Redis lock, so
        one exchange per key across coroutines, threads and processes; nothing blocks the loop."""
        client = self._aredis()
        if client is None:  # a client object we cannot mirror: its blocking calls go to a thread
            loop = asyncio.get_running_loop()
            return await asyncio.to_thread(
                self.get_or_fetch, key, lambda: asyncio.run_coroutine_threadsafe(fetch(), loop).result()
            )
        digest = key.digest()
        name, lock, mine = self._name(digest), f"{self.prefix}:lock:{digest}", secrets.token_hex(16)
        try:
            token = self._open(name, await self._acall("get", client.get, name))
            if token is not None:
                return token, True
            deadline, delay = time.monotonic() + self.max_wait, 0.005
            while not await self._acall("lock", client.set, lock, mine, nx=True, px=self.lock_ms):
                if time.monotonic() >= deadline:  # another process's fetch takes too long: fetch here
                    mine = ""
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                token = self._open(name, await self._acall("get", client.get, name))
                if token is not None:
                    return token, True
            if mine:  # the previous holder may have stored and released in between
                token = self._open(name, await self._acall("get", client.get, name))
                if token is not None:
                    await self._aunlock(client, lock, mine)
                    return token, True
        except _RedisDown:
            return await self.fallback.aget_or_fetch(key, fetch)
        try:
            token = self._checked(await fetch())
            now = self.clock()
            until = self.fallback.usable_until(token, now)
            if until > now:
                try:
                    await self._acall("set", client.set, name, self._seal(name, token, until), px=int((until - now) * 1000))
                except _RedisDown:
                    await self.fallback.aget_or_fetch(key, _returning(token))
            return token, False
        finally:
            if mine:
                await self._aunlock(client, lock, mine)

    async def _aunlock(self, client: Any, lock: str, mine: str) -> None:
        try:
            await self._acall("unlock", client.eval, _RELEASE, 1, lock, mine)
        except _RedisDown:
            pass  # the lock expires by itself after lock_ms

    async def aclose(self) -> None:
        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def invalidate(self, key: CacheKey) -> None:
        self.fallback.invalidate(key)
        try:
            self._call("delete", self.redis.delete, self._name(key.digest()))
        except _RedisDown:
            pass

    def clear(self) -> None:
        """Delete this cache's keys (``{prefix}:*``) only; never the rest of the database."""
        self.fallback.clear()
        try:
            batch: list[Any] = []
            for name in self._call("scan", self.redis.scan_iter, match=f"{_glob_escape(self.prefix)}:*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    self._call("delete", self.redis.delete, *batch)
                    batch.clear()
            if batch:
                self._call("delete", self.redis.delete, *batch)
        except _RedisDown:
            pass
        except self._redis_errors as exc:  # raised while iterating scan_iter
            self._failed(exc, "scan")

    def close(self) -> None:
        try:
            self.redis.close()
        except self._redis_errors:
            pass


def _returning(token: TokenResponse) -> Callable[[], Any]:
    async def fetch() -> TokenResponse:
        return token

    return fetch


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def cache_from_env(environ: Mapping[str, str], bindings: "Bindings | None" = None) -> TokenCache:
    """:class:`RedisTokenCache` when ``PROPAGATION_CACHE_URL`` or a ``redis-cache`` binding
    configures one, else a :class:`MemoryTokenCache`."""
    cache = RedisTokenCache.from_env(environ, bindings)
    return cache if cache is not None else MemoryTokenCache()
