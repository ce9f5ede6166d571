"""The near cache in front of Redis: a hit is a dict lookup (no Redis command), an invalidation
in one cache instance reaches another (own connections, own listener — as another process)
before its next use, a read racing an invalidation is not kept, a lost subscription or a fork
empties it, it is bounded, and it never serves past the sealed lifetime. Real ``redis-server``
and a real 3-master cluster."""

from __future__ import annotations

import os
import statistics
import time
import tracemalloc
import uuid
from typing import Any, Iterator

import pytest
import requests

from propagation.caches.memory import CacheKey
from propagation.events import Event, Events
from propagation.caches.near import NearCache
from propagation.exchange.oauth import TokenResponse
from propagation.redis_cache import RedisTokenCache
from redis_cluster import RedisCluster, start_cluster
from redis_server import RedisServer, TokenEndpoint, ensure_redis_server

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def single() -> Iterator[RedisServer]:
    binary = ensure_redis_server()
    if binary is None:
        pytest.fail("redis-server is not installed and could not be installed: apt-get install -y redis-server")
    srv = RedisServer(binary).start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    nodes = start_cluster(3)
    yield nodes
    nodes.close()


@pytest.fixture(params=["single", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(request.param).url


def key(user: str = "fp-alice") -> CacheKey:
    return CacheKey(destination="S4", grant="jwt-bearer", client="c", tenant="t1", user=user)


def token(access: str = "at-VALUE", ttl: float = 3600) -> TokenResponse:
    return TokenResponse(access_token=access, expires_at=time.time() + ttl)


def live(cache: RedisTokenCache, timeout: float = 5.0) -> RedisTokenCache:
    """Start the listener and wait (bounded) until the server confirmed the subscription."""
    assert cache._listener is not None and cache.near is not None
    cache._listener.ensure()
    deadline = time.monotonic() + timeout
    while not cache.near.live:
        assert time.monotonic() < deadline, "near cache did not go live"
        time.sleep(0.001)
    return cache


def make(url: str, prefix: str, **options: Any) -> RedisTokenCache:
    return live(RedisTokenCache(url, key=KEY, prefix=prefix, **options))


class Counting:
    """Counts the commands a cache sends (wraps the methods it calls)."""

    def __init__(self, cache: RedisTokenCache) -> None:
        self.calls: list[str] = []
        for name in ("get", "set", "delete", "publish"):
            original = getattr(cache.redis, name)
            setattr(cache.redis, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return original(*args, **kwargs)

        return counted


def test_a_hit_sends_nothing_to_redis(url):
    cache = make(url, uuid.uuid4().hex[:8])
    cache.get_or_fetch(key(), lambda: token())
    counting = Counting(cache)
    for _ in range(1000):
        assert cache.get_or_fetch(key(), lambda: pytest.fail("cached"))[0].access_token == "at-VALUE"
    assert counting.calls == []
    cache.close()


def test_invalidation_reaches_another_instance_before_its_next_request(url):
    """A (the instance whose call got a 401) invalidates; B — its own connections and its own
    listener, as another process — has dropped the token sooner than one request takes."""
    prefix = uuid.uuid4().hex[:8]
    a, b = make(url, prefix), make(url, prefix)
    digest = key().digest()
    windows, request_times = [], []
    with TokenEndpoint() as backend, requests.Session() as http:  # "one request": a pooled GET on loopback
        http.get(backend.base + "/x")
        for round_ in range(10):
            a.get_or_fetch(key(), lambda: token(f"at-{round_}"))
            assert b.get_or_fetch(key(), lambda: pytest.fail("shared"))[0].access_token == f"at-{round_}"
            assert b.near.get(digest) is not None
            started = time.perf_counter()
            a.invalidate(key())
            while b.near.get(digest) is not None:
                assert time.perf_counter() - started < 2, "B still serves the invalidated token"
                time.sleep(0)  # let B's listener thread run, as B's own request I/O would
            windows.append(time.perf_counter() - started)
            # one request, measured in the same round: under the same load as the window beside it
            started = time.perf_counter()
            http.get(backend.base + "/x")
            request_times.append(time.perf_counter() - started)
    one_request = statistics.median(request_times)
    print(f"invalidation window median {statistics.median(windows) * 1e6:.0f} us, max {max(windows) * 1e6:.0f} us; one request {one_request * 1e6:.0f} us")
    assert statistics.median(windows) < one_request, (windows, one_request)
    assert b.get_or_fetch(key(), lambda: token("fresh-VALUE")) == (b.get(key()), False)
    a.close()
    b.close()


def test_a_read_racing_an_invalidation_is_not_kept(single):
    cache = make(single.url, uuid.uuid4().hex[:8])
    other = make(single.url, cache.prefix)
    other.get_or_fetch(key(), lambda: token())
    seq = cache._near_seq()  # the read starts ...
    cache.near.drop(key().digest())  # ... an invalidation arrives meanwhile ...
    assert cache._read(key().digest(), seq) is not None  # ... the (old) value is returned once
    assert len(cache.near) == 0  # but not kept
    cache.close()
    other.close()


def test_a_lost_subscription_empties_the_near_cache_and_redis_answers_again_after():
    binary = ensure_redis_server()
    assert binary is not None
    srv = RedisServer(binary).start()
    try:
        cache = make(srv.url, "lost", socket_timeout=0.2, cooldown=0.2)
        cache.get_or_fetch(key(), lambda: token())
        assert len(cache.near) == 1
        srv.stop()
        deadline = time.monotonic() + 5
        while cache.near.live:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert len(cache.near) == 0
        fetched = []
        assert cache.get_or_fetch(key(), lambda: fetched.append(1) or token("fallback-VALUE"))[1] is False
        assert fetched == [1]  # nothing stale was served
        srv.start()
        live(cache)
        cache.close()
    finally:
        srv.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_does_not_serve_the_parents_entries(single):
    cache = make(single.url, uuid.uuid4().hex[:8])
    cache.get_or_fetch(key(), lambda: token())
    assert len(cache.near) == 1
    pid = os.fork()
    if pid == 0:  # child: its listener thread did not survive the fork
        os._exit(0 if (not cache.near.live and len(cache.near) == 0) else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert len(cache.near) == 1  # the parent is untouched
    cache.close()


def test_never_served_past_its_sealed_lifetime(single):
    now = [time.time()]
    cache = make(single.url, uuid.uuid4().hex[:8], clock=lambda: now[0])
    capped = TokenResponse(access_token="at-VALUE", expires_at=now[0] + 600)  # e.g. the user token's exp
    cache.get_or_fetch(key(), lambda: capped)
    until = cache.near._entries[key().digest()][1]
    assert until == cache.fallback.usable_until(capped, now[0]) <= capped.expires_at
    now[0] = until - 0.001
    assert cache.get_or_fetch(key(), lambda: pytest.fail("still usable"))[1] is True
    now[0] = until
    fetched, hit = cache.get_or_fetch(key(), lambda: token("new-VALUE", ttl=3600 + 600))
    assert (fetched.access_token, hit) == ("new-VALUE", False)
    cache.close()


def test_bounded_with_10000_users():
    near = NearCache(maxsize=1000)
    near.reset(live=True)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(10_000):
        near.put(f"{i:064x}", TokenResponse(access_token=f"at-{i:08d}" + "x" * 900, expires_at=time.time() + 3600),
                 time.time() + 3000, near.seq)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert len(near) == 1000
    assert near.get(f"{0:064x}") is None and near.get(f"{9_999:064x}") is not None  # oldest out first
    assert grown < 1000 * 3_000, grown  # ~1 KB per token kept, 1,000 kept: never 10,000


def test_near_off_and_bounded_through_the_cache(single):
    off = RedisTokenCache(single.url, key=KEY, prefix=uuid.uuid4().hex[:8], near_maxsize=0)
    assert off.near is None
    off.get_or_fetch(key(), lambda: token())
    counting = Counting(off)
    off.get_or_fetch(key(), lambda: pytest.fail("cached in Redis"))
    assert counting.calls == ["get"]
    small = make(single.url, uuid.uuid4().hex[:8], near_maxsize=5)
    for i in range(20):
        small.get_or_fetch(key(f"fp-{i}"), lambda: token())
    assert len(small.near) == 5
    off.close()
    small.close()


def test_cache_events_name_the_layer(single):
    seen: list[Event] = []

    class Sink:
        def begin(self, event: Event) -> None: ...
        def end(self, event: Event, handle: Any) -> None: ...
        def point(self, event: Event) -> None:
            seen.append(event)

    cache = make(single.url, uuid.uuid4().hex[:8], events=Events([Sink()]))
    other = RedisTokenCache(single.url, key=KEY, prefix=cache.prefix, near_maxsize=0)
    cache.get_or_fetch(key(), lambda: token())  # miss in Redis, fetched
    cache.get_or_fetch(key(), lambda: token())  # near hit
    other.get_or_fetch(key(user="fp-bob"), lambda: token())
    cache.get_or_fetch(key(user="fp-bob"), lambda: token())  # Redis hit
    cache.invalidate(key())
    got = [(e.kind, e.attributes["propagation.cache"], e.attributes["propagation.cache.layer"]) for e in seen]
    assert got == [("cache", "miss", "redis"), ("cache", "hit", "near"), ("cache", "hit", "redis"),
                   ("cache", "invalidate", "redis")]
    assert seen[0].attributes == {"propagation.cache": "miss", "propagation.cache.layer": "redis",
                                  "propagation.destination": "S4", "propagation.grant": "jwt-bearer",
                                  "propagation.tenant": "t1", "propagation.user.fingerprint": "fp-alice"}
    cache.close()
    other.close()
