"""The ``redis.asyncio`` side of :class:`propagation.caches.redis.RedisTokenCache`: the same
protocol (near cache, sealed values, ``SET NX`` lock, fallback) awaited, so nothing blocks the
event loop. One async client per event loop (redis.asyncio connections belong to a loop).

Cancellation: a coroutine cancelled while it holds the Redis lock releases it (the release is
shielded from a second cancellation; at worst the lock expires after ``lock_ms``). Waiters in
other coroutines or processes only poll Redis, so they never receive someone else's
``CancelledError``: they find the lock gone and fetch themselves.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .memory import CacheKey
from ..exchange.oauth import TokenResponse

__all__ = ["AsyncRedisMixin"]

# KEYS[1] = lock key, ARGV[1] = our random lock value: delete only a lock we still own.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class _RedisDown(Exception):
    """Internal: Redis could not be used for this call (already logged)."""


class AsyncRedisMixin:
    """Async methods of the Redis token cache; the state is :class:`RedisTokenCache`'s."""

    # Provided by RedisTokenCache (declared for type checkers).
    _async_clients: Any
    _options: dict[str, Any]
    _target: Any
    _connection: dict[str, Any] | None
    _redis_errors: tuple[type[BaseException], ...]
    redis: Any
    cluster: bool
    fallback: Any
    channel: str
    near: Any
    lock_ms: int
    max_wait: float
    clock: Callable[[], float]
    events: Any
    _sealer: Any

    if TYPE_CHECKING:  # RedisTokenCache's methods this side uses
        @property
        def available(self) -> bool: ...
        def _failed(self, exc: BaseException, doing: str) -> None: ...
        def _name(self, digest: str) -> str: ...
        def _lock_name(self, digest: str) -> str: ...
        def _seal(self, name: str, token: TokenResponse, until: float) -> bytes: ...
        def _keep(self, digest: str, opened: tuple[TokenResponse, float] | None, seq: int) -> TokenResponse | None: ...
        def _near_get(self, key: CacheKey, digest: str) -> TokenResponse | None: ...
        def _near_seq(self) -> int: ...
        def _report(self, key: CacheKey, what: str, layer: str) -> None: ...
        @staticmethod
        def _checked(token: Any) -> TokenResponse: ...
        def _forget_here(self, key: CacheKey) -> str: ...
        def get_or_fetch(self, key: CacheKey, fetch: Callable[[], TokenResponse]) -> tuple[TokenResponse, bool]: ...
        def invalidate(self, key: CacheKey) -> None: ...

    def _aredis(self) -> Any:
        """The ``redis.asyncio`` client of the running loop, or ``None`` when one cannot be
        built from what this cache was given (then the blocking client runs in a thread)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            import redis.asyncio as aredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            options = {**self._options, "retry": Retry(NoBackoff(), 0)}
            if self._target is not None:
                client = self._target.async_client(**options)
            elif self._connection is not None:
                client = aredis.Redis(**{**options, **self._connection})
            elif self.cluster:
                return None
            else:
                kwargs = getattr(getattr(self.redis, "connection_pool", None), "connection_kwargs", None)
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

    async def _aread(self, client: Any, digest: str, seq: int) -> TokenResponse | None:
        name = self._name(digest)
        value = await self._acall("get", client.get, name)
        return self._keep(digest, self._sealer.open(name, value), seq)

    async def aget_or_fetch(self, key: CacheKey, fetch: Callable[[], Awaitable[TokenResponse]]) -> tuple[TokenResponse, bool]:
        """:meth:`get_or_fetch` for coroutines, with ``redis.asyncio``: the same Redis lock, so
        one exchange per key across coroutines, threads and processes; nothing blocks the loop."""
        digest = key.digest()
        near = self._near_get(key, digest)
        if near is not None:
            return near, True
        client = self._aredis()
        if client is None:  # a client object we cannot mirror: its blocking calls go to a thread
            loop = asyncio.get_running_loop()
            return await asyncio.to_thread(
                self.get_or_fetch, key, lambda: asyncio.run_coroutine_threadsafe(fetch(), loop).result()
            )
        lock, mine = self._lock_name(digest), secrets.token_hex(16)
        seq = self._near_seq()
        report = self.events.enabled
        try:
            token = await self._aread(client, digest, seq)
            if token is not None:
                if report:
                    self._report(key, "hit", "redis")
                return token, True
            deadline, delay = time.monotonic() + self.max_wait, 0.005
            while not await self._acall("lock", client.set, lock, mine, nx=True, px=self.lock_ms):
                if time.monotonic() >= deadline:  # another process's fetch takes too long: fetch here
                    mine = ""
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                token = await self._aread(client, digest, seq)
                if token is not None:
                    return token, True
            if mine:  # the previous holder may have stored and released in between
                token = await self._aread(client, digest, seq)
                if token is not None:
                    await asyncio.shield(self._aunlock(client, lock, mine))
                    return token, True
        except _RedisDown:
            token, hit = await self.fallback.aget_or_fetch(key, fetch)
            if report:
                self._report(key, "hit" if hit else "miss", "memory")
            return token, hit
        if report:
            self._report(key, "miss", "redis")
        try:
            token = self._checked(await fetch())
            await self._astore(client, key, digest, token, seq)
            return token, False
        finally:
            if mine:  # also when cancelled: a second cancellation cannot stop the release
                await asyncio.shield(self._aunlock(client, lock, mine))

    async def _astore(self, client: Any, key: CacheKey, digest: str, token: TokenResponse, seq: int) -> None:
        now = self.clock()
        until = self.fallback.usable_until(token, now)
        if until <= now:
            return
        name = self._name(digest)
        try:
            await self._acall("set", client.set, name, self._seal(name, token, until), px=int((until - now) * 1000))
        except _RedisDown:
            await self.fallback.aget_or_fetch(key, _returning(token))
        else:
            self._keep(digest, (token, until), seq)

    async def _aunlock(self, client: Any, lock: str, mine: str) -> None:
        try:
            await self._acall("unlock", client.eval, _RELEASE, 1, lock, mine)
        except _RedisDown:
            pass  # the lock expires by itself after lock_ms

    async def ainvalidate(self, key: CacheKey) -> None:
        """:meth:`invalidate` without blocking the loop."""
        client = self._aredis()
        if client is None:
            await asyncio.to_thread(self.invalidate, key)
            return
        digest = self._forget_here(key)
        try:
            await self._acall("delete", client.delete, self._name(digest))
            await self._acall("publish", client.publish, self.channel, digest)
        except _RedisDown:
            pass

    async def aclose(self) -> None:
        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _returning(token: TokenResponse) -> Callable[[], Any]:
    async def fetch() -> TokenResponse:
        return token

    return fetch
