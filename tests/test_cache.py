"""MemoryTokenCache: key hashing, expiry with skew (fake clock), LRU bounds, invalidation,
and single-flight under real threads (no sleeping: threads meet on Events)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import pytest

from propagation.caches.memory import CacheKey, MemoryTokenCache, TokenCache
from propagation.exchange.oauth import TokenResponse
from propagation.tokens import fingerprint

T0 = 1_700_000_000.0
USER_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVlLXZhbHVlLXZhbHVl"
JOIN_TIMEOUT = 10.0


class Clock:
    """A wall clock that only moves when told to."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(name: str = "S4", **kw: Any) -> CacheKey:
    return CacheKey(destination=name, grant="jwt-bearer", client="sb-app!t42", **kw)


def token(value: str = "at-1", expires_at: float | None = T0 + 3600) -> TokenResponse:
    return TokenResponse(access_token=value, expires_at=expires_at)


class Fetcher:
    """A fetch() that counts its calls and hands out numbered tokens."""

    def __init__(self, lifetime: float | None = 3600, clock: Clock | None = None) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.clock = clock or Clock()

    def __call__(self) -> TokenResponse:
        self.calls += 1
        expires = None if self.lifetime is None else self.clock() + self.lifetime
        return token(f"at-{self.calls}", expires)


# -- CacheKey ------------------------------------------------------------------------------
def test_digest_is_stable_sha256_hex() -> None:
    k = key(tenant="t1", user=fingerprint(USER_JWT), extra="scope=a")
    assert k.digest() == key(tenant="t1", user=fingerprint(USER_JWT), extra="scope=a").digest()
    assert len(k.digest()) == 64 and int(k.digest(), 16) >= 0
    assert k == key(tenant="t1", user=fingerprint(USER_JWT), extra="scope=a") and hash(k) == hash(key(tenant="t1", user=fingerprint(USER_JWT), extra="scope=a"))


@pytest.mark.parametrize(
    "a, b",
    [
        pytest.param(CacheKey("a|b", "g", "c"), CacheKey("a", "b|g", "c"), id="separator-shift"),
        pytest.param(CacheKey("a", "g", "c", tenant=None), CacheKey("a", "g", "c", tenant=""), id="none-vs-empty"),
        pytest.param(CacheKey("a", "g", "c", tenant="x"), CacheKey("a", "g", "c", user="x"), id="field-swap"),
        pytest.param(CacheKey("a", "g", "c", user="u1"), CacheKey("a", "g", "c", user="u2"), id="user"),
        pytest.param(CacheKey("a", "g", "c", tenant="t1"), CacheKey("a", "g", "c", tenant="t2"), id="tenant"),
        pytest.param(CacheKey("a", "g", "c1"), CacheKey("a", "g", "c2"), id="client"),
        pytest.param(CacheKey("a", "g", "c", extra="1"), CacheKey("a", "g", "c", extra="2"), id="extra"),
        pytest.param(CacheKey('a","b', "g", "c"), CacheKey("a", 'b","g', "c"), id="quote-injection"),
    ],
)
def test_digest_distinguishes(a: CacheKey, b: CacheKey) -> None:
    assert a.digest() != b.digest()


def test_key_refuses_a_raw_token_as_user() -> None:
    with pytest.raises(ValueError) as info:
        key(user=USER_JWT)
    assert USER_JWT not in str(info.value)


def test_memory_cache_is_a_token_cache() -> None:
    assert isinstance(MemoryTokenCache(), TokenCache)


# -- expiry -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lifetime, skew, usable_for",
    [
        pytest.param(3600, 60, 3540, id="long-token-full-skew"),
        pytest.param(120, 60, 60, id="exactly-two-skews"),
        pytest.param(60, 60, 30, id="60s-token-half-lifetime"),
        pytest.param(10, 60, 5, id="short-token-half-lifetime"),
        pytest.param(3600, 0, 3600, id="no-skew"),
        pytest.param(None, 60, 300, id="no-expiry-default-ttl"),
    ],
)
def test_usable_until_expiry_minus_skew(lifetime: float | None, skew: float, usable_for: float) -> None:
    clock = Clock()
    cache = MemoryTokenCache(skew=skew, default_ttl=300, clock=clock)
    fetch = Fetcher(lifetime, clock)
    first, hit = cache.get_or_fetch(key(), fetch)
    assert (first.access_token, hit, len(cache)) == ("at-1", False, 1)

    clock.now = T0 + usable_for - 0.001
    assert cache.get(key()) is first
    assert cache.get_or_fetch(key(), fetch) == (first, True)

    clock.now = T0 + usable_for
    assert cache.get(key()) is None
    assert len(cache) == 0
    second, hit = cache.get_or_fetch(key(), fetch)
    assert (second.access_token, hit, fetch.calls) == ("at-2", False, 2)


@pytest.mark.parametrize(
    "expires_at",
    [pytest.param(T0 - 5, id="expired"), pytest.param(T0, id="expires-now")],
)
def test_expired_response_is_returned_not_stored(expires_at: float) -> None:
    cache = MemoryTokenCache(clock=Clock())
    calls: list[int] = []

    def fetch() -> TokenResponse:
        calls.append(1)
        return token("stale", expires_at)

    assert cache.get_or_fetch(key(), fetch) == (token("stale", expires_at), False)
    assert len(cache) == 0
    cache.get_or_fetch(key(), fetch)
    assert len(calls) == 2


def test_default_clock_is_wall_clock() -> None:
    """``expires_at`` is epoch seconds, so a monotonic default would never expire tokens right."""
    import time

    assert MemoryTokenCache().clock is time.time


def test_invalid_settings() -> None:
    for kw in ({"maxsize": -1}, {"skew": -1}, {"default_ttl": -1}):
        with pytest.raises(ValueError):
            MemoryTokenCache(**kw)


# -- LRU, invalidate, clear -------------------------------------------------------------------
def test_lru_eviction() -> None:
    cache = MemoryTokenCache(maxsize=2, clock=Clock())
    cache.get_or_fetch(key("A"), lambda: token("a"))
    cache.get_or_fetch(key("B"), lambda: token("b"))
    assert cache.get(key("A")) is not None  # A is now the most recently used
    cache.get_or_fetch(key("C"), lambda: token("c"))
    assert len(cache) == 2
    assert cache.get(key("B")) is None
    assert [cache.get(key(n)).access_token for n in "AC"] == ["a", "c"]  # type: ignore[union-attr]


def test_maxsize_zero_disables_storage() -> None:
    cache = MemoryTokenCache(maxsize=0, clock=Clock())
    fetch = Fetcher()
    cache.get_or_fetch(key(), fetch)
    cache.get_or_fetch(key(), fetch)
    assert (len(cache), fetch.calls) == (0, 2)


def test_invalidate_one_key_only() -> None:
    cache = MemoryTokenCache(clock=Clock())
    fetch = Fetcher()
    cache.get_or_fetch(key("A"), fetch)
    cache.get_or_fetch(key("B"), fetch)
    cache.invalidate(key("A"))
    cache.invalidate(key("missing"))  # no error
    assert cache.get(key("A")) is None
    assert cache.get(key("B")).access_token == "at-2"  # type: ignore[union-attr]
    assert cache.get_or_fetch(key("A"), fetch)[0].access_token == "at-3"


def test_clear() -> None:
    cache = MemoryTokenCache(clock=Clock())
    cache.get_or_fetch(key("A"), Fetcher())
    cache.clear()
    assert len(cache) == 0 and cache.get(key("A")) is None


def test_isolation_per_user_tenant_client() -> None:
    cache = MemoryTokenCache(clock=Clock())
    fetch = Fetcher()
    keys = [
        key(user="u1", tenant="t1"), key(user="u2", tenant="t1"), key(user="u1", tenant="t2"),
        CacheKey("S4", "jwt-bearer", "other-client", "t1", "u1"),
    ]
    tokens = [cache.get_or_fetch(k, fetch)[0].access_token for k in keys]
    assert tokens == ["at-1", "at-2", "at-3", "at-4"]
    assert [cache.get(k).access_token for k in keys] == tokens  # type: ignore[union-attr]


def test_failure_is_not_cached() -> None:
    cache = MemoryTokenCache(clock=Clock())
    with pytest.raises(RuntimeError, match="idp down"):
        cache.get_or_fetch(key(), lambda: (_ for _ in ()).throw(RuntimeError("idp down")))
    assert len(cache) == 0
    assert cache.get_or_fetch(key(), Fetcher()) == (token("at-1", T0 + 3600), False)


def test_fetch_must_return_a_token_response() -> None:
    cache = MemoryTokenCache(clock=Clock())
    with pytest.raises(TypeError):
        cache.get_or_fetch(key(), lambda: "at-raw")  # type: ignore[arg-type, return-value]
    assert len(cache) == 0


def test_recursive_fetch_for_same_key_fails_instead_of_deadlocking() -> None:
    cache = MemoryTokenCache(clock=Clock())
    with pytest.raises(RuntimeError, match="recursion"):
        cache.get_or_fetch(key(), lambda: cache.get_or_fetch(key(), Fetcher())[0])
    assert cache.get_or_fetch(key(), Fetcher())[1] is False  # the flight was cleaned up


# -- single-flight (real threads) ---------------------------------------------------------------
class WaitCounter(logging.Handler):
    """Sets ``ready`` once ``expected`` callers are parked on an in-flight fetch (the cache
    logs "token cache wait" just before waiting): a sleep-free rendezvous."""

    def __init__(self, expected: int) -> None:
        super().__init__(logging.DEBUG)
        self.expected = expected
        self.count = 0
        self.ready = threading.Event()
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("token cache wait"):
            with self._lock:
                self.count += 1
                if self.count >= self.expected:
                    self.ready.set()


@pytest.fixture
def waiters() -> Any:
    handlers: list[WaitCounter] = []
    log = logging.getLogger("propagation")
    old_level = log.level
    log.setLevel(logging.DEBUG)

    def make(expected: int) -> WaitCounter:
        handler = WaitCounter(expected)
        log.addHandler(handler)
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        log.removeHandler(handler)
    log.setLevel(old_level)


def run_threads(n: int, target: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive(), "thread hung"


def test_single_flight_one_fetch_for_32_threads(waiters: Callable[[int], WaitCounter]) -> None:
    cache = MemoryTokenCache(clock=Clock())
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []
    results: list[tuple[TokenResponse, bool] | BaseException] = [RuntimeError("not run")] * 32
    parked = waiters(31)

    def fetch() -> TokenResponse:
        calls.append(1)
        started.set()
        assert release.wait(JOIN_TIMEOUT)
        return token("shared")

    def worker(i: int) -> None:
        try:
            results[i] = cache.get_or_fetch(key(), fetch)
        except BaseException as exc:  # pragma: no cover - reported below
            results[i] = exc

    threads = run_threads(32, worker)
    assert started.wait(JOIN_TIMEOUT)
    assert parked.ready.wait(JOIN_TIMEOUT), f"only {parked.count} waiters arrived"
    release.set()
    join(threads)

    assert len(calls) == 1
    assert all(isinstance(r, tuple) for r in results), results
    assert {r[0].access_token for r in results} == {"shared"}  # type: ignore[index]
    assert sorted(r[1] for r in results) == [False] + [True] * 31  # type: ignore[index]
    assert len(cache) == 1


def test_single_flight_failure_reaches_every_waiter_and_is_not_cached(waiters: Callable[[int], WaitCounter]) -> None:
    cache = MemoryTokenCache(clock=Clock())
    started, release = threading.Event(), threading.Event()
    boom = RuntimeError("IdP refused")
    calls: list[int] = []
    errors: list[BaseException | None] = [None] * 8
    parked = waiters(7)

    def fetch() -> TokenResponse:
        calls.append(1)
        started.set()
        assert release.wait(JOIN_TIMEOUT)
        raise boom

    def worker(i: int) -> None:
        try:
            cache.get_or_fetch(key(), fetch)
        except BaseException as exc:
            errors[i] = exc

    threads = run_threads(8, worker)
    assert started.wait(JOIN_TIMEOUT) and parked.ready.wait(JOIN_TIMEOUT)
    release.set()
    join(threads)

    assert len(calls) == 1
    assert all(e is boom for e in errors)  # the same exception, re-raised in each waiter
    assert len(cache) == 0
    assert cache.get_or_fetch(key(), Fetcher())[1] is False  # next call fetches again


def test_different_keys_fetch_concurrently() -> None:
    """Each fetch waits for the other to start: with any lock held across fetch() this
    would time out instead of finishing."""
    cache = MemoryTokenCache(clock=Clock())
    a_started, b_started = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def fetch_a() -> TokenResponse:
        a_started.set()
        results["a_saw_b"] = b_started.wait(JOIN_TIMEOUT)
        return token("a")

    def fetch_b() -> TokenResponse:
        b_started.set()
        results["b_saw_a"] = a_started.wait(JOIN_TIMEOUT)
        return token("b")

    def worker(i: int) -> None:
        name, fetch = (("A", fetch_a), ("B", fetch_b))[i]
        results[name] = cache.get_or_fetch(key(name), fetch)[0].access_token

    join(run_threads(2, worker))
    assert results == {"a_saw_b": True, "b_saw_a": True, "A": "a", "B": "b"}


def test_other_keys_are_served_while_a_fetch_is_in_flight() -> None:
    cache = MemoryTokenCache(clock=Clock())
    cache.get_or_fetch(key("B"), lambda: token("b"))
    started, release = threading.Event(), threading.Event()

    def slow() -> TokenResponse:
        started.set()
        assert release.wait(JOIN_TIMEOUT)
        return token("a")

    threads = run_threads(1, lambda i: cache.get_or_fetch(key("A"), slow) and None)
    assert started.wait(JOIN_TIMEOUT)
    assert cache.get(key("B")).access_token == "b"  # type: ignore[union-attr]
    cache.invalidate(key("C"))
    assert len(cache) == 1
    release.set()
    join(threads)
    assert len(cache) == 2


def test_clear_during_fetch_does_not_store_the_result() -> None:
    cache = MemoryTokenCache(clock=Clock())
    started, release = threading.Event(), threading.Event()
    out: list[TokenResponse] = []

    def slow() -> TokenResponse:
        started.set()
        assert release.wait(JOIN_TIMEOUT)
        return token("before-clear")

    threads = run_threads(1, lambda i: out.append(cache.get_or_fetch(key(), slow)[0]))
    assert started.wait(JOIN_TIMEOUT)
    cache.clear()
    release.set()
    join(threads)
    assert out[0].access_token == "before-clear"
    assert len(cache) == 0


# -- logs ---------------------------------------------------------------------------------------
def test_logs_hold_key_fields_but_no_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="propagation")
    cache = MemoryTokenCache(clock=Clock())
    secret = "eyJhbGciOiJub25lIn0.eyJ4IjoxfQ.c2VjcmV0LWFjY2Vzcy10b2tlbg"
    k = key(tenant="t1", user=fingerprint(USER_JWT))
    cache.get_or_fetch(k, lambda: token(secret))
    cache.get_or_fetch(k, lambda: token(secret))
    cache.get(k)
    cache.invalidate(k)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("token cache miss") for m in messages)
    assert any(m.startswith("token cache hit") for m in messages)
    logged = "\n".join(messages)
    assert secret not in logged and USER_JWT not in logged
    assert fingerprint(USER_JWT) in logged and "destination=S4" in logged and "tenant=t1" in logged
    assert secret not in repr(cache)
