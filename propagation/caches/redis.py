"""A :class:`~propagation.caches.memory.TokenCache` in Redis, shared by every worker process.

* Keys are ``"<prefix>:{<CacheKey.digest()>}"``: hashes only, never a token. The braces are a
  Redis Cluster hash tag: a value and its lock (``<prefix>:lock:{<digest>}``) share one slot,
  so the lock protocol stays on one node in cluster mode.
* Values are the :class:`TokenResponse` as JSON, encrypted with AES-256-GCM under a key
  from the configuration (``PROPAGATION_CACHE_KEY``), a random 96-bit nonce per value and
  the Redis key as associated data: a dump of Redis holds no usable token, and a value
  copied to another key does not decrypt. A value that does not decrypt (another key, a
  rotated key, garbage) is a miss, never an error.
* The Redis TTL is the token's usable lifetime, computed exactly as
  :class:`~propagation.caches.memory.MemoryTokenCache` does (its :meth:`usable_until`).
* Single-flight across processes: ``SET <prefix>:lock:{<digest>} <random> NX PX lock_ms``;
  the winner fetches, stores and deletes its own lock (compare-and-delete in Lua); the
  others poll the value with a short bounded back-off up to ``max_wait`` seconds, then
  fetch themselves. Within a process, threads asking for one key share one flight first.
* Redis down or slow (socket timeouts of ``socket_timeout`` seconds): a warning (at most
  one per ``cooldown``, without secrets), then an in-process :class:`MemoryTokenCache`
  serves until the cooldown has passed and Redis is tried again. A request never fails
  because of the cache.
* Redis Cluster (``cluster_mode: true`` in the binding, ``?cluster=true`` in the URL): redis-py's
  ``RedisCluster`` follows ``MOVED``/``ASK`` and re-reads the slot map after a failover; a node
  that stays down falls back as above. See :mod:`propagation.caches.redis_config` for the sources.
* A near cache (:mod:`propagation.caches.near`) in front: a hit is a dict lookup; invalidations
  reach every process over pub/sub before their next use of the token.

``redis`` and ``cryptography`` are the ``propagation[redis]`` extra; they are imported only
when a :class:`RedisTokenCache` is built, so the core does not need them.
"""

from __future__ import annotations

import secrets
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .._log import logger
from .memory import CacheKey, MemoryTokenCache, TokenCache
from ..errors import ConfigurationError, TokenExchangeError
from ..events import NULL_EVENTS, Events
from .near import InvalidationListener, NearCache
from ..exchange.oauth import TokenResponse
from .redis_async import _RELEASE, AsyncRedisMixin, _RedisDown
from .redis_config import CACHE_URL_ENV, PLACEHOLDER_USER, REDIS_LABEL, RedisTarget, target_from_env
from .sealing import Sealer, decode_key

if TYPE_CHECKING:
    from ..bindings import Bindings

__all__ = ["RedisTokenCache", "cache_from_env", "CACHE_URL_ENV", "CACHE_KEY_ENV", "REDIS_LABEL", "PLACEHOLDER_USER"]

CACHE_KEY_ENV = "PROPAGATION_CACHE_KEY"
CACHE_PREFIX_ENV = "PROPAGATION_CACHE_PREFIX"
CACHE_TIMEOUT_ENV = "PROPAGATION_CACHE_TIMEOUT"
#: Entries of the near cache (0 turns it off).
CACHE_NEAR_SIZE_ENV = "PROPAGATION_CACHE_NEAR_SIZE"

class _Flight:
    __slots__ = ("done", "result", "error", "owner")

    def __init__(self, owner: int) -> None:
        self.done = threading.Event()
        self.result: TokenResponse | None = None
        self.error: BaseException | None = None
        self.owner = owner


class RedisTokenCache(AsyncRedisMixin):
    """Shared, encrypted token cache in Redis (or Redis Cluster) with cross-process
    single-flight and a near cache.

    Build it with ``url`` (``redis://`` or ``rediss://``; ``?cluster=true`` for a cluster),
    ``client`` (a ``redis.Redis`` or ``redis.cluster.RedisCluster``) or ``connection`` (keyword
    arguments for ``redis.Redis``), and ``key``, the 32-byte AES key. ``skew`` and
    ``default_ttl`` mean what they mean for :class:`MemoryTokenCache` (which is also the
    fallback, bounded by ``fallback_maxsize``). ``near_maxsize=0`` turns the near cache off.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        key: bytes,
        client: Any = None,
        connection: Mapping[str, Any] | None = None,
        cluster: bool = False,
        prefix: str = "propagation:tokens",
        skew: float = 60.0,
        default_ttl: float = 300.0,
        socket_timeout: float = 0.3,
        lock_ms: int = 10_000,
        max_wait: float = 5.0,
        cooldown: float = 5.0,
        fallback_maxsize: int = 10_000,
        near_maxsize: int = 10_000,
        events: Events = NULL_EVENTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
            raise ConfigurationError("RedisTokenCache key must be 32 bytes (AES-256).")
        if sum(x is not None for x in (url, client, connection)) != 1:
            raise ConfigurationError("RedisTokenCache needs exactly one of url, client or connection.")
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisClusterException
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigurationError("The Redis token cache needs the extra: pip install 'propagation[redis]'.") from exc

        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, RedisClusterException, OSError)
        self._sealer = Sealer(bytes(key))
        self.prefix = prefix.rstrip(":")
        if "{" in self.prefix or "}" in self.prefix:
            raise ConfigurationError("The Redis cache prefix must not contain '{' or '}' (they make the hash tag).")
        self.lock_ms = int(lock_ms)
        self.max_wait = float(max_wait)
        self.cooldown = float(cooldown)
        self.clock = clock
        self.events = events
        # The fallback doubles as the TTL policy: one implementation of skew/default_ttl.
        self.fallback = MemoryTokenCache(maxsize=fallback_maxsize, skew=skew, default_ttl=default_ttl, clock=clock)
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "retry": Retry(NoBackoff(), 0),  # fail fast: the fallback is the retry
            "health_check_interval": 30,
        }
        self._options = options
        self._target: RedisTarget | None = None
        self._async_clients: Any = weakref.WeakKeyDictionary()
        if client is not None:
            from redis.cluster import RedisCluster

            self.redis = client
            self.cluster = isinstance(client, RedisCluster)
            self.where = "redis cluster" if self.cluster else "redis"
        elif url is not None:
            self._target = RedisTarget.parse(url, cluster=cluster)
            self.redis = self._target.client(**options)
            self.cluster, self.where = self._target.cluster, self._target.where
        else:
            assert connection is not None
            self.redis = redis.Redis(**{**options, **dict(connection)})
            self.cluster = False
            self.where = f"redis://{connection.get('host', 'localhost')}:{connection.get('port', 6379)}"
        self._connection = dict(connection) if connection is not None else None
        self._release = self.redis.register_script(_RELEASE)
        self._down_until = 0.0
        self._warned_at = -1e18
        self._state = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self.channel = f"{self.prefix}:invalidations"
        self.near: NearCache | None = None
        self._listener: InvalidationListener | None = None
        if near_maxsize:
            self.near = NearCache(near_maxsize, clock)
            self._listener = InvalidationListener(self.near, self.channel, self._pubsub, self._redis_errors)

    def __repr__(self) -> str:
        return f"RedisTokenCache(where={self.where!r}, prefix={self.prefix!r}, available={self.available})"

    # -- configuration -----------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str], bindings: "Bindings | None" = None, **options: Any) -> "RedisTokenCache | None":
        """The cache ``PROPAGATION_CACHE_URL`` or a ``redis-cache`` binding describes, else ``None``."""
        target = target_from_env(environ, bindings)
        if target is None:
            return None
        raw_key = environ.get(CACHE_KEY_ENV)
        if not raw_key:
            raise ConfigurationError(f"A Redis token cache is configured but {CACHE_KEY_ENV} is not set "
                                     "(base64 of 32 random bytes: the AES-256 key for cached tokens).")
        key = decode_key(raw_key)
        if environ.get(CACHE_PREFIX_ENV):
            options.setdefault("prefix", environ[CACHE_PREFIX_ENV])
        for name, option, kind in ((CACHE_TIMEOUT_ENV, "socket_timeout", float), (CACHE_NEAR_SIZE_ENV, "near_maxsize", int)):
            if environ.get(name):
                try:
                    options.setdefault(option, kind(environ[name]))
                except ValueError:
                    raise ConfigurationError(f"{name} must be a {'number of seconds' if kind is float else 'whole number'}.") from None
        if options.get("near_maxsize", 0) < 0:
            raise ConfigurationError(f"{CACHE_NEAR_SIZE_ENV} must be 0 (off) or a positive number of entries.")
        return cls(target.url, key=key, cluster=target.cluster, **options)

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

    def _report(self, key: CacheKey, what: str, layer: str) -> None:
        self.events.point("cache", **{
            "propagation.cache": what, "propagation.cache.layer": layer, "propagation.destination": key.destination,
            "propagation.grant": key.grant, "propagation.tenant": key.tenant, "propagation.user.fingerprint": key.user})

    # -- near cache -------------------------------------------------------------------------------
    def _pubsub(self, attempt: int) -> Any:
        """A fresh PubSub for the listener; in a cluster, on the next node each attempt."""
        if self.cluster:
            nodes = self.redis.get_nodes()
            return self.redis.pubsub(node=nodes[attempt % len(nodes)])
        return self.redis.pubsub()

    def _near_get(self, key: CacheKey, digest: str) -> TokenResponse | None:
        near = self.near
        if near is None:
            return None
        token = near.get(digest)
        if token is not None:
            if self.events.enabled:
                self._report(key, "hit", "near")
            return token
        assert self._listener is not None
        self._listener.ensure()
        return None

    def _near_seq(self) -> int:
        return self.near.seq if self.near is not None else 0

    def _keep(self, digest: str, opened: tuple[TokenResponse, float] | None, seq: int) -> TokenResponse | None:
        """The token of an opened value (``None`` when absent or past its time), kept near."""
        if opened is None:
            return None
        token, until = opened
        if self.clock() >= until:
            return None
        if self.near is not None:
            self.near.put(digest, token, until, seq)
        return token

    # -- encryption ---------------------------------------------------------------------------
    def _name(self, digest: str) -> str:
        return f"{self.prefix}:{{{digest}}}"

    def _lock_name(self, digest: str) -> str:
        return f"{self.prefix}:lock:{{{digest}}}"

    def _seal(self, name: str, token: TokenResponse, until: float) -> bytes:
        return self._sealer.seal(name, token, until)

    def _open(self, name: str, value: bytes | None) -> TokenResponse | None:
        opened = self._sealer.open(name, value)
        return None if opened is None or self.clock() >= opened[1] else opened[0]

    def _read(self, digest: str, seq: int) -> TokenResponse | None:
        name = self._name(digest)
        return self._keep(digest, self._sealer.open(name, self._call("get", self.redis.get, name)), seq)

    def _write(self, digest: str, token: TokenResponse, seq: int) -> None:
        now = self.clock()
        until = self.fallback.usable_until(token, now)
        ttl_ms = int((until - now) * 1000)
        if ttl_ms <= 0:
            return
        name = self._name(digest)
        self._call("set", self.redis.set, name, self._seal(name, token, until), px=ttl_ms)
        self._keep(digest, (token, until), seq)

    # -- TokenCache -----------------------------------------------------------------------------
    def get(self, key: CacheKey) -> TokenResponse | None:
        digest = key.digest()
        token = self._near_get(key, digest)
        if token is not None:
            return token
        try:
            return self._read(digest, self._near_seq())
        except _RedisDown:
            return self.fallback.get(key)

    def get_or_fetch(self, key: CacheKey, fetch: Callable[[], TokenResponse]) -> tuple[TokenResponse, bool]:
        """``(token, True)`` unless this caller's ``fetch()`` ran (as MemoryTokenCache)."""
        digest = key.digest()
        near = self._near_get(key, digest)
        if near is not None:
            return near, True
        me = threading.get_ident()
        with self._state:
            flight = self._flights.get(digest)
            leader = flight is None
            if flight is None:
                flight = self._flights[digest] = _Flight(me)
            elif flight.owner == me:
                raise RuntimeError("get_or_fetch: fetch() asked the cache for its own key (recursion).")
        if not leader:
            if self.events.enabled:
                self._report(key, "wait", "redis")
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
        lock = self._lock_name(digest)
        mine = secrets.token_hex(16)
        seq = self._near_seq()
        try:
            token = self._read(digest, seq)
            if token is not None:
                if self.events.enabled:
                    self._report(key, "hit", "redis")
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
                token = self._read(digest, seq)
                if token is not None:
                    return token, True
            if mine:
                # Double check under the lock: the previous holder may have stored the value
                # and released between our last read and our SET NX.
                token = self._read(digest, seq)
                if token is not None:
                    self._unlock(lock, mine)
                    return token, True
        except _RedisDown:
            return self._fallback(key, fetch)

        if self.events.enabled:
            self._report(key, "miss", "redis")
        try:
            token = self._checked(fetch())
            try:
                self._write(digest, token, seq)
            except _RedisDown:
                self.fallback.get_or_fetch(key, lambda: token)
            return token, False
        finally:
            if mine:
                self._unlock(lock, mine)

    def _fallback(self, key: CacheKey, fetch: Callable[[], TokenResponse]) -> tuple[TokenResponse, bool]:
        token, hit = self.fallback.get_or_fetch(key, fetch)
        if self.events.enabled:
            self._report(key, "hit" if hit else "miss", "memory")
        return token, hit

    def _unlock(self, lock: str, mine: str) -> None:
        try:
            self._call("unlock", self._release, keys=[lock], args=[mine])
        except _RedisDown:
            pass  # the lock expires by itself after lock_ms

    _checked = staticmethod(MemoryTokenCache._checked)  # one check of what fetch() returned

    def _forget_here(self, key: CacheKey) -> str:
        """The in-process half of an invalidation (near cache, fallback, event); the digest."""
        digest = key.digest()
        if self.near is not None:
            self.near.drop(digest)
        self.fallback.invalidate(key)
        if self.events.enabled:
            self._report(key, "invalidate", "redis")
        return digest

    def invalidate(self, key: CacheKey) -> None:
        """Forget ``key`` here, in Redis, and (via the channel) in every process's near cache."""
        digest = self._forget_here(key)
        try:
            self._call("delete", self.redis.delete, self._name(digest))
            self._call("publish", self.redis.publish, self.channel, digest)
        except _RedisDown:
            pass

    def clear(self) -> None:
        """Delete this cache's keys (``{prefix}:*``) only; never the rest of the database."""
        self.fallback.clear()
        if self.near is not None:
            self.near.reset(live=self.near.live)
        try:
            batch: list[Any] = []
            for name in self._call("scan", self.redis.scan_iter, match=f"{_glob_escape(self.prefix)}:*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    self._delete(batch)
                    batch.clear()
            if batch:
                self._delete(batch)
        except _RedisDown:
            pass
        except self._redis_errors as exc:  # raised while iterating scan_iter
            self._failed(exc, "scan")

    def _delete(self, names: list[Any]) -> None:
        if self.cluster:  # keys of many slots: one DEL per key (the client routes each)
            for name in names:
                self._call("delete", self.redis.delete, name)
        else:
            self._call("delete", self.redis.delete, *names)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        try:
            self.redis.close()
        except self._redis_errors:
            pass



def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def cache_from_env(environ: Mapping[str, str], bindings: "Bindings | None" = None, *,
                   events: Events = NULL_EVENTS) -> TokenCache:
    """:class:`RedisTokenCache` when ``PROPAGATION_CACHE_URL`` or a ``redis-cache`` binding
    configures one, else a :class:`MemoryTokenCache`."""
    cache = RedisTokenCache.from_env(environ, bindings, events=events)
    return cache if cache is not None else MemoryTokenCache()
