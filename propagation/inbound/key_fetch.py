"""Rate limit for signing-key fetches caused by tokens with an unknown key.

sap-xssec fetches the IdP's keys whenever a token names a key id (``kid``) or a zone
(XSUAA ``zid``, IAS issuer and ``app_tid``) it has no keys cached for — *before* the
signature is checked. Unauthenticated callers could therefore make every request cost an
outbound fetch (40 requests with made-up ``kid``/``zid`` → 40 fetches). This limiter lets a
key slot (issuer, zone, kid) that has validated a token before through without limit, and
grants fetches for slots not yet known from a token bucket per issuer/zone and one for the
whole process; while a bucket is empty the token is refused (401) without a fetch. A slot
that then validates becomes known and gives its fetch back, so key rotations and new
subscriber tenants cost nothing in normal operation; under a flood of bogus keys a genuine
new key may wait for the bucket to refill (seconds), which is the price of not amplifying.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable

__all__ = ["KeyFetchLimiter"]

Slot = tuple[Hashable, ...]


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class KeyFetchLimiter:
    """Token buckets for key fetches of unknown key slots (see the module docstring).

    ``per_issuer`` fetches in a burst per issuer/zone, refilled at one per
    ``refill_seconds``; ``overall`` fetches in a burst for the process, refilled at
    ``overall / refill_seconds`` per second (a flood varying the zone is bounded too).
    """

    def __init__(
        self,
        *,
        per_issuer: int = 3,
        overall: int = 20,
        refill_seconds: float = 10.0,
        max_known: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_issuer = per_issuer
        self.overall = overall
        self.refill_seconds = refill_seconds
        self.max_known = max_known
        self._clock = clock
        self._known: OrderedDict[Slot, None] = OrderedDict()
        self._issuers: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._overall = _Bucket(float(overall), clock())
        self._pending: dict[Slot, threading.Event] = {}
        self._lock = threading.Lock()

    def known(self, slot: Slot) -> bool:
        """True when a token of this slot validated before (no limit applies)."""
        return slot in self._known

    def acquire(self, slot: Slot, wait: float = 10.0) -> bool:
        """May a token of the unknown ``slot`` be verified (and so fetch keys)? False while
        its issuer/zone or the process is out of fetches. A True answer must be followed by
        :meth:`done`. Concurrent tokens of one slot wait for the first one's outcome (one
        fetch for a burst of a new key), then pass when it validated."""
        while True:
            with self._lock:
                if slot in self._known:
                    return True
                pending = self._pending.get(slot)
                if pending is None:
                    if not self._take(slot[:-1]):
                        return False
                    self._pending[slot] = threading.Event()
                    return True
            pending.wait(wait)
            if slot in self._known:
                return True
            if not pending.is_set():
                return False  # the first verification hangs: do not pile up behind it

    def done(self, slot: Slot, valid: bool) -> None:
        """The verification :meth:`acquire` allowed is over; ``valid``: the slot is genuine,
        known from now on, and its fetch is given back."""
        with self._lock:
            if valid and slot not in self._known:
                self._known[slot] = None
                while len(self._known) > self.max_known:
                    self._known.popitem(last=False)
                bucket = self._issuers.get(slot[:-1])
                if bucket is not None:
                    bucket.tokens = min(float(self.per_issuer), bucket.tokens + 1)
                self._overall.tokens = min(float(self.overall), self._overall.tokens + 1)
            pending = self._pending.pop(slot, None)
        if pending is not None:
            pending.set()

    def _take(self, issuer: Hashable) -> bool:
        now = self._clock()
        bucket = self._issuers.get(issuer)
        if bucket is None:
            bucket = self._issuers[issuer] = _Bucket(float(self.per_issuer), now)
            while len(self._issuers) > self.max_known:
                self._issuers.popitem(last=False)
        self._refill(bucket, now, self.per_issuer, 1.0 / self.refill_seconds)
        self._refill(self._overall, now, self.overall, self.overall / self.refill_seconds)
        if bucket.tokens < 1 or self._overall.tokens < 1:
            return False
        bucket.tokens -= 1
        self._overall.tokens -= 1
        return True

    @staticmethod
    def _refill(bucket: _Bucket, now: float, capacity: int, rate: float) -> None:
        if now > bucket.stamp:
            bucket.tokens = min(float(capacity), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
