"""Exchanged tokens, cached per (destination, grant, client, tenant, user) and reused
until shortly before they expire.

Keys are hashes; the user is a token *fingerprint*, never the token. One exchange per key
at a time (single-flight): a burst of requests from one user makes one call to the IdP.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from ._log import logger
from .oauth import TokenResponse

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


class _Flight:
    """One in-progress ``fetch()`` that concurrent callers for the same key wait on."""

    __slots__ = ("done", "result", "error", "owner", "generation")

    def __init__(self, owner: int, generation: int) -> None:
        self.done = threading.Event()
        self.result: TokenResponse | None = None
        self.error: BaseException | None = None
        self.owner = owner
        self.generation = generation


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
    """

    def __init__(
        self,
        *,
        maxsize: int = 10_000,
        skew: float = 60.0,
        default_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        if skew < 0 or default_ttl < 0:
            raise ValueError("skew and default_ttl must be >= 0")
        self.maxsize = maxsize
        self.skew = skew
        self.default_ttl = default_ttl
        self.clock = clock
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
        me = threading.get_ident()
        with self._lock:
            token = self._lookup(digest)
            if token is not None:
                leader = False
                flight = None
            else:
                flight = self._flights.get(digest)
                leader = flight is None
                if flight is None:
                    flight = self._flights[digest] = _Flight(me, self._generation)
                elif flight.owner == me:
                    raise RuntimeError("get_or_fetch: fetch() asked the cache for its own key (recursion).")
        if token is not None:
            self._log(key, "hit")
            return token, True
        assert flight is not None
        if not leader:
            self._log(key, "wait")
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.result is not None
            return flight.result, True

        self._log(key, "miss")
        try:
            token = fetch()
            if not isinstance(token, TokenResponse):
                raise TypeError(f"fetch() returned {type(token).__name__}, not TokenResponse")
        except BaseException as exc:
            with self._lock:
                self._flights.pop(digest, None)
            flight.error = exc
            flight.done.set()
            raise
        with self._lock:
            self._flights.pop(digest, None)
            if flight.generation == self._generation:
                self._store(digest, token)
        flight.result = token
        flight.done.set()
        return token, False

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
        logger.debug(
            "token cache %s destination=%s grant=%s client=%s tenant=%s user=%s",
            event, key.destination, key.grant, key.client, key.tenant, key.user,
        )
