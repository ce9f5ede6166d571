"""Cancellation is an event of its own, never a result (issue 17): a cancelled breaker probe
gives its slot back, and a cancelled single-flight leader hands the fetch on to a waiter —
coroutines, threads, and both mixed."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
import respx

from propagation.caches.memory import CacheKey, MemoryTokenCache
from propagation.errors import TokenExchangeError
from propagation.exchange.oauth import GRANT_CLIENT_CREDENTIALS, ClientCredentials, OAuthClient, TokenResponse
from propagation.exchange.resilience import CircuitOpenError

TOKEN_URL = "https://idp.example.com/oauth/token"
CLIENT = ClientCredentials("c", "s")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CallerGone(BaseException):
    """What a thread sees when its caller goes away (like ``KeyboardInterrupt``/``SystemExit``)."""


def _tripped_client() -> tuple[OAuthClient, Clock]:
    """One 503 opens the breaker (threshold 1); the clock then moves past the cool-down."""
    client = OAuthClient(retries=0, breaker_threshold=1, breaker_cooldown=30.0)
    clock = client.breakers.clock = Clock()
    return client, clock


# -- breakers ------------------------------------------------------------------------------------------
def test_a_cancelled_async_probe_gives_its_slot_back_and_the_next_call_probes() -> None:
    client, clock = _tripped_client()
    entered, release = asyncio.Event(), asyncio.Event()
    answers = iter(["503", "slow", "ok"])

    async def idp(request: httpx.Request) -> httpx.Response:
        what = next(answers)
        if what == "503":
            return httpx.Response(503)
        if what == "slow":  # the IdP is slow: the caller's app-level timeout cancels it meanwhile
            entered.set()
            await release.wait()
        return httpx.Response(200, json={"access_token": "fresh", "expires_in": 3600})

    async def scenario() -> None:
        with respx.mock() as router:
            router.post(TOKEN_URL).mock(side_effect=idp)
            with pytest.raises(TokenExchangeError, match="503"):
                await client.arequest_token(TOKEN_URL, CLIENT, GRANT_CLIENT_CREDENTIALS)
            with pytest.raises(CircuitOpenError):
                await client.arequest_token(TOKEN_URL, CLIENT, GRANT_CLIENT_CREDENTIALS)
            clock.now += 31  # past the cool-down: the next call is the probe
            probe = asyncio.ensure_future(client.arequest_token(TOKEN_URL, CLIENT, GRANT_CLIENT_CREDENTIALS))
            await entered.wait()
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            # The IdP recovered: the next call probes (not CircuitOpenError forever) and closes the breaker.
            token = await client.arequest_token(TOKEN_URL, CLIENT, GRANT_CLIENT_CREDENTIALS)
            assert token.access_token == "fresh"
            assert client.breakers.open_keys() == []
            assert next(answers, None) is None  # three requests: the 503, the cancelled probe, the new probe
        await client.aclose()

    asyncio.run(scenario())


def test_a_sync_probe_whose_caller_goes_away_gives_its_slot_back() -> None:
    import responses

    client, clock = _tripped_client()
    answers = iter(["503", "gone", "ok"])

    def idp(request: Any) -> tuple[int, dict[str, str], str]:
        what = next(answers)
        if what == "503":
            return 503, {}, ""
        if what == "gone":
            raise CallerGone()
        return 200, {"Content-Type": "application/json"}, '{"access_token": "fresh", "expires_in": 3600}'

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, TOKEN_URL, callback=idp)
        with pytest.raises(TokenExchangeError, match="503"):
            client.request_token(TOKEN_URL, CLIENT, GRANT_CLIENT_CREDENTIALS)
        clock.now += 31
        with pytest.raises(CallerGone):
            client.request_token(TOKEN_URL, CLIENT, GRANT_CLIENT_CREDENTIALS)
        assert client.request_token(TOKEN_URL, CLIENT, GRANT_CLIENT_CREDENTIALS).access_token == "fresh"
        assert client.breakers.open_keys() == []
    client.close()


def test_a_cancelled_caller_that_is_not_the_probe_frees_no_slot() -> None:
    """Only the probe gives a slot back: a caller that passed while the breaker was closed and is
    cancelled later cannot let a second probe through."""
    from propagation.exchange.resilience import Breakers

    clock = Clock()
    breakers = Breakers(threshold=1, cooldown=30.0, clock=clock)
    key = ("idp.example.com", None)
    assert breakers.before(key, "x") is False  # closed: an ordinary caller
    breakers.failure(key)
    clock.now += 31
    assert breakers.before(key, "x") is True  # the probe
    with pytest.raises(CircuitOpenError):
        breakers.before(key, "x")  # one probe at a time
    breakers.release(key)
    assert breakers.before(key, "x") is True  # the slot is free again


# -- single-flight: a cancelled leader hands the fetch on ----------------------------------------------
KEY = CacheKey(destination="S4", grant="jwt-bearer", client="c", tenant="t", user="fp-alice")


def _token(value: str) -> TokenResponse:
    return TokenResponse(value, expires_at=4_000_000_000.0)


class Waits:
    """Counts the cache's "wait" events (a caller joined a flight as a waiter), across threads."""

    def __init__(self, cache: MemoryTokenCache) -> None:
        self.count = 0
        self.changed = threading.Condition()
        original = cache._log

        def log(key: CacheKey, event: str) -> None:
            original(key, event)
            if event == "wait":
                with self.changed:
                    self.count += 1
                    self.changed.notify_all()

        cache._log = log  # type: ignore[method-assign]

    def reach(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= n, timeout=10), self.count


async def _waiting_registered(cache: MemoryTokenCache, n: int) -> None:
    """Until ``n`` coroutines wait on the flight (each yield lets one more register)."""
    for _ in range(1000):
        if any(len(flight.waiters) >= n for flight in list(cache._flights.values())):
            return
        await asyncio.sleep(0)
    raise AssertionError("the waiters never registered")


def test_a_cancelled_coroutine_leader_hands_the_fetch_to_a_waiting_coroutine() -> None:
    cache = MemoryTokenCache()
    fetched: list[str] = []

    async def scenario() -> None:
        started, never = asyncio.Event(), asyncio.Event()

        async def leader_fetch() -> TokenResponse:
            started.set()
            await never.wait()  # a slow IdP
            raise AssertionError("unreachable")

        def waiter_fetch(name: str) -> Any:
            async def fetch() -> TokenResponse:
                fetched.append(name)
                return _token(f"from-{name}")
            return fetch

        leader = asyncio.ensure_future(cache.aget_or_fetch(KEY, leader_fetch))
        await started.wait()
        waiters = [asyncio.ensure_future(cache.aget_or_fetch(KEY, waiter_fetch(n))) for n in ("w1", "w2")]
        await _waiting_registered(cache, 2)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        results = await asyncio.gather(*waiters)
        assert len(fetched) == 1  # leadership passed to one waiter; the other waited for it
        assert {token.access_token for token, _ in results} == {f"from-{fetched[0]}"}
        assert sorted(hit for _, hit in results) == [False, True]

    asyncio.run(scenario())
    assert cache.get(KEY) is not None and cache.get(KEY).access_token == f"from-{fetched[0]}"


def test_an_interrupted_thread_leader_hands_the_fetch_to_a_waiting_thread() -> None:
    cache = MemoryTokenCache()
    waits = Waits(cache)
    leading = threading.Event()
    outcomes: dict[str, Any] = {}

    def leader_fetch() -> TokenResponse:
        leading.set()
        waits.reach(2)  # both waiters wait on this flight; then this thread's caller goes away
        raise CallerGone()

    def lead() -> None:
        try:
            cache.get_or_fetch(KEY, leader_fetch)
        except CallerGone as exc:
            outcomes["leader"] = exc

    def wait(name: str) -> None:
        try:
            outcomes[name] = cache.get_or_fetch(KEY, lambda: _token(f"from-{name}"))
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever a waiter got
            outcomes[name] = exc

    threads = [threading.Thread(target=lead)] + [threading.Thread(target=wait, args=(n,)) for n in ("w1", "w2")]
    threads[0].start()
    assert leading.wait(10)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert isinstance(outcomes["leader"], CallerGone)
    assert all(isinstance(outcomes[n], tuple) for n in ("w1", "w2")), outcomes
    tokens = {outcomes[n][0].access_token for n in ("w1", "w2")}
    assert len(tokens) == 1 and tokens <= {"from-w1", "from-w2"}, outcomes


def test_a_thread_waiting_on_a_cancelled_coroutine_leader_gets_the_token() -> None:
    """A thread using ``session()`` waits on a coroutine's exchange, which is cancelled."""
    cache = MemoryTokenCache()
    waits = Waits(cache)
    outcome: dict[str, Any] = {}

    async def scenario() -> None:
        started, never = asyncio.Event(), asyncio.Event()

        async def leader_fetch() -> TokenResponse:
            started.set()
            await never.wait()
            raise AssertionError("unreachable")

        leader = asyncio.ensure_future(cache.aget_or_fetch(KEY, leader_fetch))
        await started.wait()

        def in_thread() -> None:
            try:
                outcome["thread"] = cache.get_or_fetch(KEY, lambda: _token("from-thread"))
            except BaseException as exc:  # noqa: BLE001
                outcome["thread"] = exc

        thread = threading.Thread(target=in_thread)
        thread.start()
        await asyncio.to_thread(waits.reach, 1)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        await asyncio.to_thread(thread.join, 10)

    asyncio.run(scenario())
    assert outcome["thread"] == (_token("from-thread"), False), outcome


def test_a_coroutine_waiting_on_an_interrupted_thread_leader_gets_the_token() -> None:
    cache = MemoryTokenCache()
    interrupt = threading.Event()
    leading = threading.Event()
    outcome: dict[str, Any] = {}

    def leader_fetch() -> TokenResponse:
        leading.set()
        interrupt.wait(10)
        raise CallerGone()

    def lead() -> None:
        try:
            cache.get_or_fetch(KEY, leader_fetch)
        except CallerGone as exc:
            outcome["leader"] = exc

    async def scenario() -> None:
        thread = threading.Thread(target=lead)
        thread.start()
        await asyncio.to_thread(leading.wait, 10)

        async def fetch() -> TokenResponse:
            return _token("from-coroutine")

        waiter = asyncio.ensure_future(cache.aget_or_fetch(KEY, fetch))
        await _waiting_registered(cache, 1)
        interrupt.set()
        outcome["coroutine"] = await waiter
        await asyncio.to_thread(thread.join, 10)

    asyncio.run(scenario())
    assert isinstance(outcome["leader"], CallerGone)
    assert outcome["coroutine"] == (_token("from-coroutine"), False)


def test_a_real_error_of_the_exchange_still_reaches_every_waiter() -> None:
    """Not a cancellation: the waiters get the exchange's own error (one request per burst)."""
    cache = MemoryTokenCache()
    calls: list[str] = []

    async def scenario() -> list[Any]:
        started, fail = asyncio.Event(), asyncio.Event()

        async def leader_fetch() -> TokenResponse:
            calls.append("leader")
            started.set()
            await fail.wait()
            raise TokenExchangeError("Token request failed: 400 invalid_grant", status=400, error="invalid_grant")

        async def other() -> TokenResponse:
            calls.append("waiter")
            return _token("never")

        leader = asyncio.ensure_future(cache.aget_or_fetch(KEY, leader_fetch))
        await started.wait()
        waiters = [asyncio.ensure_future(cache.aget_or_fetch(KEY, other)) for _ in range(3)]
        await _waiting_registered(cache, 3)
        fail.set()
        return await asyncio.gather(leader, *waiters, return_exceptions=True)

    results = asyncio.run(scenario())
    assert calls == ["leader"]
    assert all(isinstance(r, TokenExchangeError) and r.error == "invalid_grant" for r in results)


def test_async_client_calls_of_one_user_survive_the_cancellation_of_the_one_leading_the_exchange() -> None:
    """End to end: two ``async_client`` calls of alice share one exchange; the leading call is
    cancelled (an app-level timeout) while the IdP is slow: the other call gets its token and
    its answer, and the breaker is untouched."""
    import json

    from propagation import Propagator
    from propagation.bindings import Bindings
    from test_outbound_core import user

    engine = Propagator(
        environ={"destinations": json.dumps([{
            "name": "S4", "url": "https://s4.example.com/api", "Authentication": "OAuth2JWTBearer",
            "tokenServiceURL": TOKEN_URL, "clientId": "c", "clientSecret": "s"}])},
        bindings=Bindings([]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, breaker_threshold=1))
    alice = user("alice")

    async def scenario() -> None:
        entered, never = asyncio.Event(), asyncio.Event()
        exchanges: list[str] = []

        async def idp(request: httpx.Request) -> httpx.Response:
            exchanges.append("x")
            if len(exchanges) == 1:
                entered.set()
                await never.wait()
            return httpx.Response(200, json={"access_token": "alice-token", "expires_in": 3600})

        with respx.mock() as router:
            router.post(TOKEN_URL).mock(side_effect=idp)
            backend = router.get("https://s4.example.com/api/Items").respond(json={"ok": True})
            s4 = engine.async_client("S4", user_token=alice)
            first = asyncio.ensure_future(s4.get("Items"))
            await entered.wait()
            second = asyncio.ensure_future(s4.get("Items"))
            await _waiting_registered(engine.cache, 1)  # type: ignore[arg-type]
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert (await second).status_code == 200
            assert backend.calls.last.request.headers["Authorization"] == "Bearer alice-token"
            assert len(exchanges) == 2 and engine.oauth.breakers.open_keys() == []
        await engine.aclose()

    asyncio.run(scenario())


def test_an_async_client_call_cancelled_while_probing_leaves_the_breaker_closable() -> None:
    """Issue 17's reproduction, end to end: threshold 1, one 503, past the cool-down an
    ``async_client`` call (the probe) is cancelled while the IdP is slow; the IdP recovers and
    the next call goes through — not ``CircuitOpenError`` until a restart."""
    import json

    from propagation import Propagator
    from propagation.bindings import Bindings
    from test_outbound_core import user

    oauth = OAuthClient(retries=0, breaker_threshold=1, breaker_cooldown=30.0)
    clock = oauth.breakers.clock = Clock()
    engine = Propagator(
        environ={"destinations": json.dumps([{
            "name": "S4", "url": "https://s4.example.com/api", "Authentication": "OAuth2JWTBearer",
            "tokenServiceURL": TOKEN_URL, "clientId": "c", "clientSecret": "s"}])},
        bindings=Bindings([]), cache=MemoryTokenCache(), oauth=oauth)
    alice = user("alice")

    async def scenario() -> None:
        entered, never = asyncio.Event(), asyncio.Event()
        answers = iter(["503", "slow", "ok"])

        async def idp(request: httpx.Request) -> httpx.Response:
            what = next(answers)
            if what == "503":
                return httpx.Response(503)
            if what == "slow":
                entered.set()
                await never.wait()
            return httpx.Response(200, json={"access_token": "alice-token", "expires_in": 3600})

        with respx.mock() as router:
            router.post(TOKEN_URL).mock(side_effect=idp)
            router.get("https://s4.example.com/api/Items").respond(json={"ok": True})
            s4 = engine.async_client("S4", user_token=alice)
            with pytest.raises(TokenExchangeError, match="503"):
                await s4.get("Items")
            clock.now += 31
            probe = asyncio.ensure_future(s4.get("Items"))
            await entered.wait()
            probe.cancel()  # an app-level timeout
            with pytest.raises(asyncio.CancelledError):
                await probe
            assert (await s4.get("Items")).status_code == 200
            assert oauth.breakers.open_keys() == []
        await engine.aclose()

    asyncio.run(scenario())
