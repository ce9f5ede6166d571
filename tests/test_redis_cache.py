"""RedisTokenCache against a real redis-server: encryption at rest, TTL, isolation,
cross-process single-flight, fallback when Redis dies, configuration from the environment."""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import os
import threading
import time
import uuid
from typing import Iterator

import pytest
import redis

from propagation.bindings import Binding, Bindings
from propagation.caches.memory import CacheKey, MemoryTokenCache
from propagation.engine import Propagator
from propagation.errors import ConfigurationError
from propagation.exchange.oauth import TokenResponse
from propagation.redis_cache import RedisTokenCache, cache_from_env
from redis_server import RedisServer, TokenEndpoint, destinations, ensure_redis_server, exchange_worker

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
JWT_ACCESS = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldC1wYXJ0"


def _binary() -> str:
    binary = ensure_redis_server()
    if binary is None:
        pytest.fail("redis-server is not installed and could not be installed: apt-get install -y redis-server")
    return binary


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer(_binary()).start()
    yield srv
    srv.close()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    srv = RedisServer(_binary()).start()
    yield srv
    srv.close()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def make(url: str, prefix: str, **options) -> RedisTokenCache:
    options.setdefault("key", KEY)
    return RedisTokenCache(url, prefix=prefix, **options)


def key(**changes) -> CacheKey:
    fields = dict(destination="S4", grant="jwt-bearer", client="dest-client", tenant="t1", user="fp-alice", extra="")
    fields.update(changes)
    return CacheKey(**fields)


def token(access: str = JWT_ACCESS, ttl: float = 3600, **extra) -> TokenResponse:
    return TokenResponse(access_token=access, expires_at=time.time() + ttl, scope="read", extra=extra)


# -- storage --------------------------------------------------------------------------------
def test_round_trip_between_two_instances(server, prefix):
    a, b = make(server.url, prefix), make(server.url, prefix)
    original = token(refresh_hint="x", nested={"n": 1})
    got, hit = a.get_or_fetch(key(), lambda: original)
    assert (got, hit) == (original, False)
    again = b.get(key())
    assert again == original  # every field survives, expires_at included
    assert b.get_or_fetch(key(), lambda: pytest.fail("must not fetch")) == (original, True)


def test_redis_holds_no_readable_token(server, prefix, raw):
    cache = make(server.url, prefix)
    plain = token()
    cache.get_or_fetch(key(), lambda: plain)
    names = list(raw.scan_iter(match=f"{prefix}:*"))
    assert names == [f"{prefix}:{{{key().digest()}}}".encode()]  # a hash; the lock is gone
    value = raw.get(names[0])
    assert JWT_ACCESS.encode() not in value
    for part in JWT_ACCESS.split("."):
        assert part.encode() not in value
    assert b"eyJ" not in value and b"access_token" not in value and b"fp-alice" not in value
    assert value != json.dumps(plain.access_token).encode()
    # Two writes of one token never look alike (fresh nonce).
    cache.invalidate(key())
    cache.get_or_fetch(key(), lambda: plain)
    assert raw.get(names[0]) != value


def test_ttl_is_the_usable_lifetime(server, prefix, raw):
    cache = make(server.url, prefix)
    cache.get_or_fetch(key(), lambda: token(ttl=3600))
    cache.get_or_fetch(key(user="fp-short"), lambda: token(ttl=60))
    cache.get_or_fetch(key(user="fp-none"), lambda: TokenResponse(access_token="opaque-VALUE"))
    long_ms = raw.pttl(f"{prefix}:{{{key().digest()}}}")
    short_ms = raw.pttl(f"{prefix}:{{{key(user='fp-short').digest()}}}")
    none_ms = raw.pttl(f"{prefix}:{{{key(user='fp-none').digest()}}}")
    assert 3530_000 < long_ms <= 3540_000  # expires_in - 60 s skew
    assert 28_000 < short_ms <= 30_000  # short tokens: half the lifetime
    assert 290_000 < none_ms <= 300_000  # default_ttl
    cache.get_or_fetch(key(user="fp-dead"), lambda: token(ttl=-1))
    assert not raw.exists(f"{prefix}:{{{key(user='fp-dead').digest()}}}")  # expired: handed out once, not stored


@pytest.mark.parametrize("field, other", [("destination", "S5"), ("grant", "token-exchange"), ("client", "c2"),
                                          ("tenant", "t2"), ("tenant", None), ("user", "fp-bob"), ("extra", "scope=x")])
def test_isolation_per_key_field(server, prefix, field, other):
    cache = make(server.url, prefix)
    cache.get_or_fetch(key(), lambda: token())
    assert cache.get(key(**{field: other})) is None
    fetched, hit = cache.get_or_fetch(key(**{field: other}), lambda: token("other-VALUE"))
    assert (fetched.access_token, hit) == ("other-VALUE", False)


def test_value_moved_to_another_key_does_not_decrypt(server, prefix, raw):
    cache = make(server.url, prefix)
    cache.get_or_fetch(key(), lambda: token())
    raw.set(f"{prefix}:{{{key(user='fp-mallory').digest()}}}", raw.get(f"{prefix}:{{{key().digest()}}}"))
    assert cache.get(key(user="fp-mallory")) is None


def test_wrong_encryption_key_is_a_miss_not_an_error(server, prefix):
    make(server.url, prefix).get_or_fetch(key(), lambda: token("first-VALUE"))
    other = make(server.url, prefix, key=bytes(32))
    assert other.get(key()) is None
    fetched, hit = other.get_or_fetch(key(), lambda: token("second-VALUE"))
    assert (fetched.access_token, hit) == ("second-VALUE", False)
    assert other.get(key()).access_token == "second-VALUE"


def test_garbage_value_is_a_miss(server, prefix, raw):
    cache = make(server.url, prefix)
    raw.set(f"{prefix}:{{{key().digest()}}}", b"not-encrypted")
    assert cache.get(key()) is None


def test_invalidate_and_clear_touch_only_our_namespace(server, prefix, raw):
    cache = make(server.url, prefix)
    raw.set("unrelated", b"keep")
    raw.set(f"{prefix}x:other", b"keep")  # a longer prefix is somebody else's
    cache.get_or_fetch(key(), lambda: token())
    cache.get_or_fetch(key(user="fp-bob"), lambda: token())
    cache.invalidate(key())
    assert cache.get(key()) is None and cache.get(key(user="fp-bob")) is not None
    cache.clear()
    assert list(raw.scan_iter(match=f"{prefix}:*")) == []
    assert raw.get("unrelated") == b"keep" and raw.get(f"{prefix}x:other") == b"keep"
    raw.delete("unrelated", f"{prefix}x:other")


def test_failed_fetch_is_not_cached_and_releases_the_lock(server, prefix, raw):
    cache = make(server.url, prefix)

    def boom() -> TokenResponse:
        raise RuntimeError("idp down")

    with pytest.raises(RuntimeError, match="idp down"):
        cache.get_or_fetch(key(), boom)
    assert list(raw.scan_iter(match=f"{prefix}:*")) == []  # no value, no lock left
    assert cache.get_or_fetch(key(), lambda: token("ok-VALUE"))[0].access_token == "ok-VALUE"


# -- single flight ------------------------------------------------------------------------------
def test_threads_of_one_process_fetch_once(server, prefix):
    cache = make(server.url, prefix)
    calls = []
    start = threading.Barrier(32)

    def fetch() -> TokenResponse:
        calls.append(1)
        time.sleep(0.1)
        return token("shared-VALUE")

    def run() -> None:
        start.wait()
        assert cache.get_or_fetch(key(), fetch)[0].access_token == "shared-VALUE"

    threads = [threading.Thread(target=run) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_waiter_takes_the_value_another_process_stores(server, prefix, raw):
    holder, waiter = make(server.url, prefix), make(server.url, prefix, max_wait=5)
    lock = f"{prefix}:lock:{{{key().digest()}}}"
    raw.set(lock, "someone-else", px=10_000)
    threading.Timer(0.2, lambda: holder._write(key().digest(), token("theirs-VALUE"), 0)).start()
    started = time.monotonic()
    got, hit = waiter.get_or_fetch(key(), lambda: pytest.fail("the lock holder fetches"))
    assert (got.access_token, hit) == ("theirs-VALUE", True)
    assert time.monotonic() - started < 2
    assert raw.get(lock) == b"someone-else"  # never deletes a lock it does not own
    raw.delete(lock)


def test_waiter_gives_up_after_a_bounded_wait(server, prefix, raw):
    cache = make(server.url, prefix, max_wait=0.3)
    lock = f"{prefix}:lock:{{{key().digest()}}}"
    raw.set(lock, "stuck", px=60_000)
    started = time.monotonic()
    got, hit = cache.get_or_fetch(key(), lambda: token("mine-VALUE"))
    assert (got.access_token, hit) == ("mine-VALUE", False)
    assert 0.25 < time.monotonic() - started < 2
    assert raw.get(lock) == b"stuck"
    raw.delete(lock)


def test_four_processes_make_one_exchange_per_user_and_destination(server, prefix, xsuaa):
    users = [xsuaa.token(f"user{i}@example.com") for i in range(5)]
    names = ["S4", "CRM", "HR"]
    with TokenEndpoint(delay=0.05) as idp:
        environ = {"destinations": json.dumps(destinations(idp.url, names)), "PROPAGATION_CACHE_URL": server.url,
                   "PROPAGATION_CACHE_KEY": KEY_B64, "PROPAGATION_CACHE_PREFIX": prefix}
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4) as pool:
            results = pool.starmap(exchange_worker, [(environ, users, names, 16, 3)] * 4)
    assert all(r["cache"] == "RedisTokenCache" for r in results)
    assert sum(r["calls"] for r in results) == 4 * 5 * 3 * 3
    assert len(idp.counts) == 15
    assert set(idp.counts.values()) == {1}, idp.counts
    assert idp.total == 15


# -- Redis down ------------------------------------------------------------------------------------
def test_redis_killed_mid_run_falls_back_and_recovers(own_server, prefix, caplog):
    caplog.set_level(logging.DEBUG, logger="propagation")
    cache = make(own_server.url, prefix, socket_timeout=0.2, cooldown=0.5)
    fetched: list[str] = []

    def fetch_for(user: str):
        def fetch() -> TokenResponse:
            fetched.append(user)
            return token(f"{JWT_ACCESS}-{user}")
        return fetch

    assert cache.get_or_fetch(key(user="fp-1"), fetch_for("fp-1"))[1] is False
    own_server.stop()
    started = time.monotonic()
    for _ in range(50):  # requests keep succeeding; one fetch per key while Redis is down
        for user in ("fp-1", "fp-2"):
            assert cache.get_or_fetch(key(user=user), fetch_for(user))[0].access_token.endswith(user)
    assert time.monotonic() - started < 3
    assert fetched == ["fp-1", "fp-1", "fp-2"]
    assert not cache.available
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # rate-limited
    assert "in-process cache" in warnings[0].getMessage()

    own_server.start()  # same port: after the cooldown Redis is used again
    time.sleep(0.6)
    assert cache.get_or_fetch(key(user="fp-3"), fetch_for("fp-3"))[1] is False
    assert cache.available
    assert make(own_server.url, prefix).get(key(user="fp-3")) is not None

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert JWT_ACCESS not in text and KEY_B64 not in text


def test_redis_never_reachable(prefix, caplog):
    from redis_server import free_port

    cache = make(f"redis://127.0.0.1:{free_port()}/0", prefix, socket_timeout=0.2)
    got, hit = cache.get_or_fetch(key(), lambda: token("fallback-VALUE"))
    assert (got.access_token, hit) == ("fallback-VALUE", False)
    assert cache.get(key()).access_token == "fallback-VALUE"
    cache.invalidate(key())
    cache.clear()
    assert cache.get(key()) is None
    assert any(r.levelno == logging.WARNING for r in caplog.records)


# -- configuration ------------------------------------------------------------------------------
def test_from_env_url_and_engine_wiring(server, prefix):
    environ = {"PROPAGATION_CACHE_URL": server.url, "PROPAGATION_CACHE_KEY": KEY_B64, "PROPAGATION_CACHE_PREFIX": prefix}
    engine = Propagator.from_env(environ)
    assert isinstance(engine.cache, RedisTokenCache) and engine.cache.prefix == prefix
    assert isinstance(Propagator.from_env({}).cache, MemoryTokenCache)


def test_missing_or_bad_key_is_a_configuration_error_naming_the_variable(server):
    with pytest.raises(ConfigurationError, match="PROPAGATION_CACHE_KEY"):
        cache_from_env({"PROPAGATION_CACHE_URL": server.url})
    for bad in ("c2hvcnQ=", "not base64 !!", base64.b64encode(bytes(31)).decode()):
        with pytest.raises(ConfigurationError, match="PROPAGATION_CACHE_KEY") as info:
            cache_from_env({"PROPAGATION_CACHE_URL": server.url, "PROPAGATION_CACHE_KEY": bad})
        assert bad not in str(info.value)
    with pytest.raises(ConfigurationError, match="redis://"):
        cache_from_env({"PROPAGATION_CACHE_URL": "http://x", "PROPAGATION_CACHE_KEY": KEY_B64})


def test_from_binding_hostname_and_uri(server, prefix):
    host = Binding(name="cache", label="redis-cache", credentials={"hostname": "127.0.0.1", "port": str(server.port),
                                                                    "password": "", "tls": False},
                   plan="standard", tags=(), source="test")
    cache = RedisTokenCache.from_env({"PROPAGATION_CACHE_KEY": KEY_B64}, Bindings([host]), prefix=prefix)
    assert isinstance(cache, RedisTokenCache)
    cache.get_or_fetch(key(), lambda: token())
    assert make(server.url, prefix).get(key()) is not None

    uri = Binding(name="cache", label="redis-cache", credentials={"uri": f"redis://:pw-SECRET@127.0.0.1:{server.port}"},
                  plan="standard", tags=(), source="test")
    cache = RedisTokenCache.from_env({"PROPAGATION_CACHE_KEY": KEY_B64}, Bindings([uri]))
    assert "pw-SECRET" not in repr(cache) and "pw-SECRET" not in cache.where
    assert cache_from_env({}, Bindings([])).__class__ is MemoryTokenCache


def test_url_password_never_logged(prefix, caplog):
    from redis_server import free_port

    cache = make(f"redis://:pw-SECRET@127.0.0.1:{free_port()}/0", prefix, socket_timeout=0.2)
    cache.get_or_fetch(key(), lambda: token())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Redis" in text and "pw-SECRET" not in text and JWT_ACCESS not in text


# -- async (redis.asyncio) ----------------------------------------------------------------------
def test_coroutines_and_a_second_process_make_one_exchange_without_blocking_the_loop(server, prefix, raw):
    """50 coroutines of one process (its own cache object) and a thread standing for another
    process miss the same key at once: one fetch in all; the event loop keeps ticking."""
    import asyncio

    ours, theirs = make(server.url, prefix), make(server.url, prefix)
    fetches: list[str] = []
    gaps: list[float] = []

    async def afetch() -> TokenResponse:
        fetches.append("coroutine")
        await asyncio.sleep(0.2)
        return token("shared-VALUE")

    def fetch() -> TokenResponse:
        fetches.append("thread")
        time.sleep(0.2)
        return token("shared-VALUE")

    async def main() -> list[tuple[TokenResponse, bool]]:
        other = asyncio.get_running_loop().run_in_executor(None, theirs.get_or_fetch, key(), fetch)
        stop = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                gaps.append(time.perf_counter() - last)
                last = time.perf_counter()

        ticker = asyncio.create_task(tick())
        results = await asyncio.gather(*(ours.aget_or_fetch(key(), afetch) for _ in range(50)))
        await other
        stop.set()
        await ticker
        await ours.aclose()
        return results

    results = asyncio.run(main())
    assert len(fetches) == 1, fetches
    assert {t.access_token for t, _ in results} == {"shared-VALUE"}
    assert max(gaps) < 0.19, max(gaps)  # a loop blocked by the 0.2 s fetch of the other side would show it
    assert raw.keys(f"{prefix}:lock:*") == []  # the lock was released


def test_async_falls_back_to_memory_when_redis_is_down(prefix):
    import asyncio

    cache = RedisTokenCache("redis://127.0.0.1:1", key=KEY, prefix=prefix, socket_timeout=0.2)
    calls: list[int] = []

    async def afetch() -> TokenResponse:
        calls.append(1)
        return token("fallback-VALUE")

    async def main() -> None:
        first = await cache.aget_or_fetch(key(), afetch)
        second = await cache.aget_or_fetch(key(), afetch)
        assert first == (first[0], False) and second[1] is True
        await cache.aclose()

    asyncio.run(main())
    assert len(calls) == 1 and not cache.available
