"""Exchanged tokens, cached per (destination, grant, client, tenant, user) and reused
until shortly before they expire.

Keys are hashes; the user is a token *fingerprint*, never the token. One exchange per key
at a time (single-flight): a burst of requests from one user makes one call to the IdP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from functools import lru_cache
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, runtime_checkable

from .._log import logger
from ..errors import TokenExchangeError
from ..events.instrument import note_cache
from ..exchange.oauth import TokenResponse

__all__ = ["CacheKey", "TokenCache", "MemoryTokenCache"]


@dataclass(frozen=True)
class CacheKey:
    """Everything a cached token is bound to (DESIGN §6, cache isolation).

    ``user`` is the user token's fingerprint, ``extra`` any further variation of the
    request (scope, resource, token URL…). Nothing here is secret, so ``repr`` may be
    logged; a raw JWT passed as ``user`` is refused.
    """

    destination: str
    grant: str
    client: str
    tenant: str | None = None
    user: str | None = None
    extra: str = ""

    def __post_init__(self) -> None:
        if self.user is not None and self.user.count(".") >= 2 and len(self.user) > 64:
            raise ValueError("CacheKey.user must be a token fingerprint, not a raw token.")

    def digest(self) -> str:
        """SHA-256 over a JSON array of the fields: stable across processes, and no two
        different keys can join to the same text (``None`` ≠ ``""``, no separator tricks)."""
        return _digest(self.destination, self.grant, self.client, self.tenant, self.user, self.extra)


@lru_cache(maxsize=4096)
def _digest(*fields: str | None) -> str:
    # Memoized: the hot path asks for the same key's digest on every outbound call.
    text = json.dumps(["v1", *fields], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@runtime_checkable
class TokenCache(Protocol):
    """What the engine needs from a token cache (memory here; Redis elsewhere)."""

    def get(self, key: CacheKey) -> TokenResponse | None:
        """The cached token, if still usable."""
        ...

    def get_or_fetch(self, key: CacheKey, fetch: Callable[[], TokenResponse]) -> tuple[TokenResponse, bool]:
        """The cached token, or ``fetch()``'s result (cached); ``(token, was_hit)``."""
        ...

    def invalidate(self, key: CacheKey) -> None:
        """Forget one token (e.g. the target answered 401 with it)."""
        ...

    def clear(self) -> None:
        """Forget everything."""
        ...


def _owner() -> tuple[int, int | None]:
    """Who runs a fetch: the thread, and the asyncio task within it (coroutines of one loop
    share a thread but are different callers)."""
    task = asyncio.current_task() if asyncio._get_running_loop() is not None else None  # no exception per sync call
    return threading.get_ident(), id(task) if task is not None else None


class _Flight:
    """One in-progress ``fetch()`` that concurrent callers for the same key wait on: threads
    on ``done``, coroutines on a future of their own loop (woken thread-safely)."""

    __slots__ = ("done", "result", "error", "abandoned", "owner", "generation", "waiters")

    def __init__(self, owner: tuple[int, int | None], generation: int) -> None:
        self.done = threading.Event()
        self.result: TokenResponse | None = None
        self.error: BaseException | None = None
        #: The leader was cancelled (or its thread's caller went away): no outcome — a waiter leads.
        self.abandoned = False
        self.owner = owner
        self.generation = generation
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def finish(self) -> list[tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]]:
        """Mark done (under the cache lock, so no coroutine registers after this) and hand
        back the coroutines to wake with :func:`_wake_all` outside the lock."""
        self.done.set()
        waiters, self.waiters = self.waiters, []
        return waiters

    def outcome(self) -> TokenResponse:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _wake_all(waiters: list[tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]]) -> None:
    for loop, future in waiters:
        try:
            loop.call_soon_threadsafe(_wake, future)
        except RuntimeError:  # that loop is closed: nobody is waiting there any more
            pass


def _wake(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class MemoryTokenCache:
    """A bounded, thread-safe, in-process LRU :class:`TokenCache` with single-flight.

    An entry is used until ``expires_at - skew``; when the token lives less than
    ``2 * skew``, half its lifetime is the skew instead (a 60 s token is still reused for
    ~30 s). A token without ``expires_at`` lives ``default_ttl``. ``clock`` must be the
    wall clock (``time.time``), because ``TokenResponse.expires_at`` is epoch seconds.

    Single-flight: concurrent misses for one key run ``fetch()`` once; the others wait and
    get the same token. If that ``fetch()`` raises, every waiter re-raises *the same*
    exception (as :class:`concurrent.futures.Future` does) rather than retrying: a refusing
    or unreachable IdP then sees one request per burst, not one per waiting thread.
    Failures are never cached; the next call fetches again. No lock is held while
    fetching, so different keys never wait for each other.

    Cancellation is not an outcome: when the leader is cancelled (``CancelledError``) or its
    thread is interrupted (any ``BaseException`` that is not an ``Exception``), the flight is
    abandoned and one waiter leads a new fetch with its own ``fetch()`` — waiters get the token
    or the exchange's real error, never a cancellation that is not theirs. Waiters give up
    ``wait_timeout`` seconds after they started waiting, however often leadership passed.
    """

    def __init__(
        self,
        *,
        maxsize: int = 10_000,
        skew: float = 60.0,
        default_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
        wait_timeout: float = 30.0,
    ) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        if skew < 0 or default_ttl < 0:
            raise ValueError("skew and default_ttl must be >= 0")
        self.maxsize = maxsize
        self.skew = skew
        self.default_ttl = default_ttl
        self.clock = clock
        #: How long a caller waits for another caller's fetch of the same key.
        self.wait_timeout = wait_timeout
        self._entries: OrderedDict[str, tuple[TokenResponse, float]] = OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        return f"MemoryTokenCache(size={len(self)}, maxsize={self.maxsize}, skew={self.skew})"

    # -- TokenCache -----------------------------------------------------------------------
    def get(self, key: CacheKey) -> TokenResponse | None:
        digest = key.digest()
        with self._lock:
            token = self._lookup(digest)
        self._log(key, "hit" if token is not None else "miss")
        return token

    def get_or_fetch(self, key: CacheKey, fetch: Callable[[], TokenResponse]) -> tuple[TokenResponse, bool]:
        """``(token, True)`` when no ``fetch()`` ran for this caller (cached, or another
        thread's concurrent fetch); ``(token, False)`` for the caller whose fetch ran."""
        digest = key.digest()
        ends = time.monotonic() + self.wait_timeout
        while True:
            token, flight, leader = self._join(key, digest)
            if token is not None:
                return token, True
            assert flight is not None
            if leader:
                break
            self._log(key, "wait")
            if not flight.done.wait(max(ends - time.monotonic(), 0.0)):
                raise self._gave_up(key)
            if not flight.abandoned:
                return flight.outcome(), True
        self._log(key, "miss")
        try:
            token = self._checked(fetch())
        except Exception as exc:
            self._land(digest, flight, None, exc)
            raise
        except BaseException:  # the caller went away: no outcome for the waiters
            self._abandon(digest, flight)
            raise
        self._land(digest, flight, token, None)
        return token, False

    async def aget_or_fetch(self, key: CacheKey, fetch: Callable[[], Awaitable[TokenResponse]]) -> tuple[TokenResponse, bool]:
        """:meth:`get_or_fetch` for coroutines: a waiter awaits (never blocks the loop), and
        one flight serves threads and coroutines alike."""
        digest = key.digest()
        ends = time.monotonic() + self.wait_timeout
        while True:
            token, flight, leader = self._join(key, digest)
            if token is not None:
                return token, True
            assert flight is not None
            if leader:
                break
            self._log(key, "wait")
            await self._await(key, flight, ends)
            if not flight.abandoned:
                return flight.outcome(), True
        self._log(key, "miss")
        try:
            token = self._checked(await fetch())
        except Exception as exc:
            self._land(digest, flight, None, exc)
            raise
        except BaseException:  # CancelledError: this caller's, not the waiters'
            self._abandon(digest, flight)
            raise
        self._land(digest, flight, token, None)
        return token, False

    async def _await(self, key: CacheKey, flight: _Flight, ends: float) -> None:
        """Wait (without blocking the loop) until ``flight`` is done, or give up at ``ends``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            ready = flight.done.is_set()
            if not ready:
                flight.waiters.append((loop, future))
        if not ready:
            try:
                await asyncio.wait_for(asyncio.shield(future), max(ends - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise self._gave_up(key) from None

    def _join(self, key: CacheKey, digest: str) -> tuple[TokenResponse | None, _Flight | None, bool]:
        """The cached token, or the flight to wait on / lead (``leader``)."""
        me = _owner()
        with self._lock:
            token = self._lookup(digest)
            if token is not None:
                leader, flight = False, None
            else:
                flight = self._flights.get(digest)
                leader = flight is None
                if flight is None:
                    flight = self._flights[digest] = _Flight(me, self._generation)
                elif flight.owner == me:
                    raise RuntimeError("get_or_fetch: fetch() asked the cache for its own key (recursion).")
        if token is not None:
            self._log(key, "hit")
        return token, flight, leader

    def _land(self, digest: str, flight: _Flight, token: TokenResponse | None, error: BaseException | None) -> None:
        with self._lock:
            if self._flights.get(digest) is flight:
                del self._flights[digest]
            if token is not None and flight.generation == self._generation:
                self._store(digest, token)
            flight.result, flight.error = token, error
            waiters = flight.finish()
        _wake_all(waiters)

    def _abandon(self, digest: str, flight: _Flight) -> None:
        """The leader went away without an outcome: wake the waiters to lead a new flight."""
        with self._lock:
            if self._flights.get(digest) is flight:
                del self._flights[digest]
            flight.abandoned = True
            waiters = flight.finish()
        _wake_all(waiters)

    def _gave_up(self, key: CacheKey) -> TokenExchangeError:
        self._log(key, "wait-timeout")
        return TokenExchangeError(
            f"Waited {self.wait_timeout:g} s for another caller's token request (destination '{key.destination}'): "
            f"the deadline passed; nothing was sent by this caller."
        )

    @staticmethod
    def _checked(token: Any) -> TokenResponse:
        if not isinstance(token, TokenResponse):
            raise TypeError(f"fetch() returned {type(token).__name__}, not TokenResponse")
        return token

    def invalidate(self, key: CacheKey) -> None:
        with self._lock:
            self._entries.pop(key.digest(), None)
        self._log(key, "invalidate")

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            # Fetches already running finish for their waiters but are not stored.
            self._generation += 1

    # -- internals (call with the lock held) ------------------------------------------------
    def _lookup(self, digest: str) -> TokenResponse | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        token, usable_until = entry
        if self.clock() >= usable_until:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return token

    def usable_until(self, token: TokenResponse, now: float) -> float:
        """When a token stored at ``now`` stops being handed out (see the class doc)."""
        if token.expires_at is None:
            return now + self.default_ttl
        lifetime = token.expires_at - now
        skew = self.skew if lifetime >= 2 * self.skew else lifetime / 2
        return token.expires_at - skew

    def _store(self, digest: str, token: TokenResponse) -> None:
        now = self.clock()
        until = self.usable_until(token, now)
        if until <= now or self.maxsize == 0:
            return  # already expired (or caching disabled): hand it out once, keep nothing
        self._entries[digest] = (token, until)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    @staticmethod
    def _log(key: CacheKey, event: str) -> None:
        note_cache(event)
        logger.debug(
            "token cache %s destination=%s grant=%s client=%s tenant=%s user=%s",
            event, key.destination, key.grant, key.client, key.tenant, key.user,
        )
