"""RedisTokenCache against a real 3-master Redis Cluster on loopback (``tests/redis_cluster.py``):
one slot per key's value and lock, one exchange per user across 3 processes x 64 threads, a
master SIGKILLed mid-run, and the BTP binding shape (``cluster_mode: true``)."""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import subprocess
import threading
import time
import uuid
from typing import Iterator

import pytest
import redis

from propagation.bindings import Binding, Bindings
from propagation.caches.memory import CacheKey
from propagation.exchange.oauth import TokenResponse
from propagation.redis_cache import RedisTokenCache
from redis_cluster import RedisCluster, cluster_worker, start_cluster
from redis_server import TokenEndpoint, destinations

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    nodes = start_cluster(3)
    yield nodes
    nodes.close()


@pytest.fixture
def prefix() -> str:
    return f"c-{uuid.uuid4().hex[:8]}"


def key(user: str = "fp-alice") -> CacheKey:
    return CacheKey(destination="S4", grant="jwt-bearer", client="dest-client", tenant="t1", user=user)


def token(access: str = "at-VALUE", ttl: float = 3600) -> TokenResponse:
    return TokenResponse(access_token=access, expires_at=time.time() + ttl)


def raw_client(cluster: RedisCluster) -> redis.RedisCluster:
    return redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])


def test_value_and_lock_share_one_slot_and_keys_spread_over_the_masters(cluster, prefix):
    cache = RedisTokenCache(cluster.url, key=KEY, prefix=prefix)
    raw = raw_client(cluster)
    seen_during_fetch: dict[str, object] = {}

    def fetch() -> TokenResponse:  # runs while this process holds the lock
        lock = cache._lock_name(key().digest())
        seen_during_fetch["lock"] = raw.get(lock)
        seen_during_fetch["slots"] = (raw.keyslot(lock), raw.keyslot(cache._name(key().digest())))
        return token()

    assert cache.get_or_fetch(key(), fetch)[1] is False
    assert seen_during_fetch["lock"] is not None  # the lock really was taken, on the key's node
    lock_slot, value_slot = seen_during_fetch["slots"]
    assert lock_slot == value_slot
    # 60 users' values land on all three masters: the cluster is really used, not one node.
    for i in range(60):
        cache.get_or_fetch(key(f"fp-{i}"), lambda: token())
    owners = {raw.get_node_from_key(cache._name(key(f"fp-{i}").digest())).port for i in range(60)}
    assert owners == set(cluster.ports)
    assert cache.available
    cache.clear()
    assert [k for k in raw.scan_iter(match=f"{prefix}:*")] == []
    cache.close()
    raw.close()


def test_btp_binding_with_cluster_mode(cluster, prefix, caplog):
    """The binding BTP hands out: hostname of one node, cluster_mode true, no TLS on loopback."""
    creds = {"hostname": "127.0.0.1", "port": str(cluster.ports[1]), "password": "", "tls": False, "cluster_mode": True}
    binding = Binding(name="cache", label="redis-cache", credentials=creds, plan="standard", tags=("cache",), source="test")
    cache = RedisTokenCache.from_env({"PROPAGATION_CACHE_KEY": KEY_B64}, Bindings([binding]), prefix=prefix)
    assert cache is not None and cache.cluster and "(cluster)" in cache.where
    for i in range(30):  # keys of every master: no MOVED ends up as a fallback
        cache.get_or_fetch(key(f"fp-{i}"), lambda: token())
    assert cache.available and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    other = RedisTokenCache(cluster.url, key=KEY, prefix=prefix, near_maxsize=0)
    assert all(other.get(key(f"fp-{i}")) is not None for i in range(30))
    cache.close()
    other.close()


def test_three_processes_of_64_threads_make_one_exchange_per_user(cluster, prefix, xsuaa):
    users = [(f"user{i}@example.com", xsuaa.token(f"user{i}@example.com")) for i in range(50)]
    with TokenEndpoint(delay=0.02) as idp:
        environ = {"destinations": json.dumps(destinations(idp.url, ["S4"])), "PROPAGATION_CACHE_URL": cluster.url,
                   "PROPAGATION_CACHE_KEY": KEY_B64, "PROPAGATION_CACHE_PREFIX": prefix}
        with multiprocessing.get_context("spawn").Pool(3) as pool:
            results = pool.starmap(cluster_worker, [(environ, users, ["S4"], 64, 3)] * 3)
    assert all(r["cache"] == "RedisTokenCache" and r["cluster"] is True for r in results), results
    assert sum(r["calls"] for r in results) == 3 * 50 * 3
    assert [r["failed"] for r in results] == [[], [], []] and sum(r["wrong"] for r in results) == 0
    assert idp.total == len(idp.counts) == 50, idp.counts  # exchanges == users


def test_a_master_killed_mid_run_fails_no_request_and_mixes_no_users(prefix, xsuaa, caplog):
    """SIGKILL one of three masters (no replica: its slots are gone) from inside the token
    endpoint after the 20th exchange, while three processes are mid-run: every call still
    answers with the caller's own token; keys of that master fall back to memory."""
    users = [(f"user{i}@example.com", xsuaa.token(f"user{i}@example.com")) for i in range(50)]
    nodes = start_cluster(3)
    victim = nodes.ports[2]
    killed = threading.Event()

    def kill(n: int) -> None:
        if n == 20:
            nodes.kill(victim)
            killed.set()

    try:
        with TokenEndpoint(delay=0.02, on_exchange=kill) as idp:
            environ = {"destinations": json.dumps(destinations(idp.url, ["S4"])), "PROPAGATION_CACHE_URL": nodes.url,
                       "PROPAGATION_CACHE_KEY": KEY_B64, "PROPAGATION_CACHE_PREFIX": prefix,
                       "PROPAGATION_CACHE_TIMEOUT": "0.2"}
            with multiprocessing.get_context("spawn").Pool(3) as pool:
                results = pool.starmap(cluster_worker, [(environ, users, ["S4"], 64, 4)] * 3)
    finally:
        nodes.close()
    assert killed.is_set()
    assert sum(r["calls"] for r in results) == 3 * 50 * 4
    assert [r["failed"] for r in results] == [[], [], []], results
    assert sum(r["wrong"] for r in results) == 0
    assert set(u for u, _ in idp.counts) == {u for u, _ in users}
    assert 50 <= idp.total <= 3 * 50  # at most one exchange per user per process


def test_cancelled_lock_holder_releases_the_lock_and_a_waiter_fetches_itself(cluster, prefix):
    """Issue 17's cancellation rule on the Redis lock: the holder is cancelled mid-fetch; the
    lock is gone at once (not after lock_ms), and a second coroutine, polling, fetches itself —
    it never sees the holder's CancelledError."""
    import asyncio

    cache = RedisTokenCache(cluster.url, key=KEY, prefix=prefix, lock_ms=60_000, max_wait=30)
    raw = raw_client(cluster)
    lock = cache._lock_name(key().digest())
    started = asyncio.Event

    async def main() -> tuple[TokenResponse, bool]:
        holding = started()

        async def slow() -> TokenResponse:
            holding.set()
            await asyncio.sleep(30)
            raise AssertionError("not reached")

        async def mine() -> TokenResponse:
            return token("waiter-VALUE")

        holder = asyncio.create_task(cache.aget_or_fetch(key(), slow))
        await holding.wait()
        assert raw.get(lock) is not None
        waiter = asyncio.create_task(cache.aget_or_fetch(key(), mine))
        await asyncio.sleep(0.05)  # the waiter is polling the held lock
        assert not waiter.done()
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        result = await asyncio.wait_for(waiter, 5)
        await cache.aclose()
        return result

    got, hit = asyncio.run(main())
    assert (got.access_token, hit) == ("waiter-VALUE", False)
    assert raw.get(lock) is None
    cache.close()
    raw.close()


def test_resharding_a_slot_range_while_calls_run(cluster, prefix, caplog):
    """``redis-cli --cluster reshard`` moves 1,000 slots (keys and all, MIGRATE) from one master
    to another while 8 threads keep calling for 200 users: the client follows MOVED and ASK,
    nothing falls back to memory, and there is still one fetch per user."""
    from concurrent.futures import ThreadPoolExecutor

    cache = RedisTokenCache(cluster.url, key=KEY, prefix=prefix, near_maxsize=0)  # every call goes to Redis
    raw = raw_client(cluster)
    # CLUSTER NODES lines: "<id> 127.0.0.1:<port>@<cport> ..." → {port: id}
    ids = {int(line.split()[1].split("@")[0].rsplit(":", 1)[1]): line.split()[0]
           for line in cluster.command(cluster.ports[0], "CLUSTER", "NODES").splitlines()}
    fetches: dict[str, int] = {}
    lock = threading.Lock()

    def fetch_for(user: str):
        def fetch() -> TokenResponse:
            with lock:
                fetches[user] = fetches.get(user, 0) + 1
            return token(f"at-{user}")
        return fetch

    users = [f"fp-{i}" for i in range(200)]
    for user in users[:100]:  # half of them already in Redis: their keys are migrated
        cache.get_or_fetch(key(user), fetch_for(user))
    done = threading.Event()
    answers: list[bool] = []

    def caller(offset: int) -> None:
        while not done.is_set() or len(answers) < 4000:
            user = users[(offset + len(answers)) % len(users)]
            got, _ = cache.get_or_fetch(key(user), fetch_for(user))
            answers.append(got.access_token == f"at-{user}")

    source, target = cluster.ports[0], cluster.ports[1]
    with ThreadPoolExecutor(8) as pool:
        callers = [pool.submit(caller, i * 25) for i in range(8)]
        resharded = subprocess.run([cluster.cli, "--cluster", "reshard", f"127.0.0.1:{source}", "--cluster-from",
                                    ids[source], "--cluster-to", ids[target], "--cluster-slots", "1000",
                                    "--cluster-yes", "--cluster-pipeline", "10"],
                                   capture_output=True, text=True, timeout=120)
        done.set()
        for f in callers:
            f.result()
    assert resharded.returncode == 0, resharded.stdout[-1000:] + resharded.stderr[-1000:]
    assert "Moving slot" in resharded.stdout
    assert all(answers) and len(answers) >= 4000
    assert cache.available and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert fetches == {user: 1 for user in users}
    moved = [u for u in users[:100] if raw.get_node_from_key(cache._name(key(u).digest())).port == target]
    cluster.wait_ok()
    cache.close()
    raw.close()
    assert moved, "no stored key was in the moved slots"



def test_tls_cluster_from_a_btp_binding(prefix, monkeypatch, caplog):
    """``tls: true`` and ``cluster_mode: true``: a cluster whose nodes speak TLS only (clients
    and bus), certificates checked against the trust store (the sandbox CA via SSL_CERT_FILE)."""
    from redis_cluster import NodeCertificates

    pki = NodeCertificates()
    nodes = start_cluster(3, tls=pki)
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
        creds = {"hostname": "127.0.0.1", "port": nodes.ports[2], "password": "", "tls": True, "cluster_mode": True}
        binding = Binding(name="cache", label="redis-cache", credentials=creds, plan="standard", tags=("cache",), source="t")
        cache = RedisTokenCache.from_env({"PROPAGATION_CACHE_KEY": KEY_B64}, Bindings([binding]), prefix=prefix)
        assert cache is not None and cache.cluster and cache.where.startswith("rediss://")
        for i in range(30):
            cache.get_or_fetch(key(f"fp-{i}"), lambda: token())
        assert cache.available and not [r for r in caplog.records if r.levelno >= logging.WARNING]
        raw = redis.RedisCluster(host="127.0.0.1", port=nodes.ports[0], ssl=True, ssl_ca_certs=str(pki.ca_file))
        owners = {raw.get_node_from_key(cache._name(key(f"fp-{i}").digest())).port for i in range(30)}
        assert owners == set(nodes.ports) and all(raw.exists(cache._name(key(f"fp-{i}").digest())) for i in range(30))
        raw.close()
        cache.close()
    finally:
        nodes.close()
        pki.cleanup()
