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

from propagation.cache import CacheKey, MemoryTokenCache
from propagation.errors import TokenExchangeError
from propagation.oauth import GRANT_CLIENT_CREDENTIALS, ClientCredentials, OAuthClient, TokenResponse
from propagation.resilience import CircuitOpenError

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
    from propagation.resilience import Breakers

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
