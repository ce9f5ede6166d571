"""The near cache: opened tokens kept in the process, in front of the shared Redis cache, so a
cache hit is a dict lookup (no round trip, no AES-GCM open).

Correct across processes because it only serves while it *hears* invalidations: every
:meth:`RedisTokenCache.invalidate` (the 401 re-exchange path) deletes the Redis value and then
publishes the key's digest on a channel (``PUBLISH``, which a Redis Cluster forwards to every
node); an :class:`InvalidationListener` thread per process subscribes and drops that digest
here. Whenever the subscription is not known to be up — before the first subscribe, after a
connection loss, in a forked child — the near cache is empty and serves nothing, so a missed
message can never leave a stale entry behind.

Why pub/sub rather than redis-py's client-side caching (RESP3 ``CLIENT TRACKING``): that
caches raw replies of the blocking client only (not ``redis.asyncio``), so every hit would still
open the sealed value; and it needs tracking set up per node of a cluster. One channel works
for both clients and both modes.

Lifetimes are the shared cache's: an entry carries the exact ``usable_until`` sealed with the
Redis value (itself capped at the user token's expiry by the token flow), so the near cache
never serves a token longer than Redis would.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any, Callable

from .._log import logger
from ..exchange.oauth import TokenResponse

__all__ = ["NearCache", "InvalidationListener"]


class NearCache:
    """Bounded in-process map ``digest → (token, usable_until)``; lock-free reads.

    ``seq`` counts invalidations and resets: a value read from Redis is only stored when no
    invalidation arrived since the read began (``put(..., seq=<seq before the read>)``), so a
    read racing an invalidation elsewhere cannot resurrect the dropped token here.
    """

    def __init__(self, maxsize: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        if maxsize < 1:
            raise ValueError("NearCache maxsize must be >= 1 (leave the near cache out to turn it off)")
        self.maxsize = maxsize
        self.clock = clock
        self.seq = 0
        #: True while invalidations are known to arrive; False serves nothing.
        self.live = False
        self._entries: dict[str, tuple[TokenResponse, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"NearCache(size={len(self)}, maxsize={self.maxsize}, live={self.live})"

    def get(self, digest: str) -> TokenResponse | None:
        if not self.live:
            return None
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self.clock() >= entry[1]:
            self._entries.pop(digest, None)
            return None
        return entry[0]

    def put(self, digest: str, token: TokenResponse, until: float, seq: int) -> None:
        """Keep ``token`` until ``until`` — unless an invalidation or reset happened since
        ``seq`` was read, or the subscription is down. Oldest entries go first when full."""
        with self._lock:
            if not self.live or seq != self.seq or until <= self.clock():
                return
            entries = self._entries
            entries.pop(digest, None)
            entries[digest] = (token, until)
            while len(entries) > self.maxsize:
                del entries[next(iter(entries))]

    def drop(self, digest: str) -> None:
        with self._lock:
            self.seq += 1
            self._entries.pop(digest, None)

    def reset(self, live: bool) -> None:
        """Forget everything; ``live``: whether invalidations arrive from now on."""
        with self._lock:
            self.seq += 1
            self._entries.clear()
            self.live = live


class InvalidationListener:
    """A daemon thread subscribed to the invalidation channel, feeding a :class:`NearCache`.

    ``pubsub(attempt)`` returns a fresh redis-py ``PubSub`` (for a cluster: on another node each
    attempt, since any node relays a ``PUBLISH``). The near cache goes live only after the
    server confirmed the subscription, and is reset on any error, on silence longer than
    ``health`` seconds after a ``PING``, and in a forked child (the thread does not survive a
    fork; the next :meth:`ensure` starts a new one).
    """

    def __init__(self, near: NearCache, channel: str, pubsub: Callable[[int], Any],
                 errors: tuple[type[BaseException], ...], health: float = 5.0) -> None:
        self.near = near
        self.channel = channel
        self._pubsub = pubsub
        self._errors = errors
        self.health = health
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forked(ref))

    def ensure(self) -> None:
        """Start the thread in this process unless it runs (cheap when it does)."""
        if self._pid == os.getpid() or self._stop.is_set():
            return
        with self._start_lock:
            if self._pid == os.getpid() or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="propagation-near-cache", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.near.reset(live=False)

    def _after_fork(self) -> None:
        self._pid = 0
        self._thread = None
        self._start_lock = threading.Lock()
        self.near.reset(live=False)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            pubsub: Any = None
            try:
                pubsub = self._pubsub(attempt)
                pubsub.subscribe(self.channel)
                self._confirm(pubsub)
                self.near.reset(live=True)
                attempt = 0
                self._listen(pubsub)
            except self._errors as exc:
                if attempt == 0:
                    logger.debug("near cache: invalidation channel lost (%s); near cache off until resubscribed",
                                 type(exc).__name__)
            except Exception:  # never let the thread die silently (closing the client ends it quietly)
                if not self._stop.is_set():
                    logger.exception("near cache: invalidation listener failed")
            finally:
                self.near.reset(live=False)
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: S110 - closing a broken connection
                        pass
            self._stop.wait(min(0.02 * 2 ** attempt, 2.0))
            attempt += 1

    def _confirm(self, pubsub: Any) -> None:
        deadline = time.monotonic() + self.health
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message is not None and message.get("type") == "subscribe":
                return
        raise TimeoutError("no subscribe confirmation")

    def _listen(self, pubsub: Any) -> None:
        heard = pinged = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.5)
            now = time.monotonic()
            if message is not None:
                heard = now
                if message.get("type") == "message":
                    data = message.get("data")
                    self.near.drop(data.decode("ascii", "replace") if isinstance(data, bytes) else str(data))
            elif now - heard > 2 * self.health:
                raise TimeoutError("invalidation channel silent after PING")
            if now - heard > self.health and now - pinged > self.health:
                pubsub.ping()
                pinged = now


def _forked(ref: "weakref.ref[InvalidationListener]") -> None:
    listener = ref()
    if listener is not None:
        listener._after_fork()
