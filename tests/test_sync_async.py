"""Sync/async mix-ups fail loudly where they happen (issue 20, item 3): blocking calls on a
running event loop warn once per call site (or raise, or stay silent: ``PROPAGATION_BLOCKING_CALLS``),
and an ``async_client`` used from sync code says to await it or to use ``client()``."""

from __future__ import annotations

import asyncio
import json
import warnings
from typing import Any, Callable

import pytest
import responses
import respx

from propagation import Propagator
from propagation.bindings import Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.errors import BlockingCallError, ConfigurationError
from propagation.exchange.oauth import OAuthClient
from propagation.outbound.loopcheck import BlockingCallWarning

URL = "https://s4.example.com/api"


def engine(**environ: str) -> Propagator:
    return Propagator(
        environ={"destinations": json.dumps([{"name": "S4", "url": URL, "Authentication": "NoAuthentication"}]), **environ},
        bindings=Bindings([]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0))


CALLS: list[Any] = [
    pytest.param(lambda e: e.session("S4").get("Items"), "async_client", id="session"),
    pytest.param(lambda e: e.client("S4").get("Items"), "async_client", id="client"),
    pytest.param(lambda e: e.headers("S4"), "async_headers", id="headers"),
]


def in_a_coroutine(call: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return call()

    return asyncio.run(main())


@pytest.fixture
def backend() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps, respx.mock(assert_all_called=False) as router:
        rsps.add(responses.GET, f"{URL}/Items", json={"ok": True})
        router.get(f"{URL}/Items").respond(json={"ok": True})
        yield


@pytest.mark.parametrize("call, instead", CALLS)
def test_a_blocking_call_on_a_running_loop_warns_naming_the_async_twin(backend: Any, call: Any, instead: str) -> None:
    e = engine()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):  # one call site, three calls: one warning
            in_a_coroutine(lambda: call(e))
    blocking = [w for w in caught if issubclass(w.category, BlockingCallWarning)]
    assert len(blocking) == 1, [str(w.message) for w in caught]
    assert instead in str(blocking[0].message) and "event loop" in str(blocking[0].message)
    assert blocking[0].filename == __file__  # it points at the application's line


@pytest.mark.parametrize("call, instead", CALLS)
def test_blocking_calls_raise_when_configured(backend: Any, call: Any, instead: str) -> None:
    e = engine(PROPAGATION_BLOCKING_CALLS="raise")
    with pytest.raises(BlockingCallError, match=instead):
        in_a_coroutine(lambda: call(e))
    call(e)  # outside an event loop the same call is fine


@pytest.mark.parametrize("call, instead", CALLS)
def test_blocking_calls_stay_silent_when_ignored_or_outside_a_loop(backend: Any, call: Any, instead: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlockingCallWarning)
        in_a_coroutine(lambda: call(engine(PROPAGATION_BLOCKING_CALLS="ignore")))
        call(engine())


def test_an_unknown_blocking_calls_setting_is_refused(backend: Any) -> None:
    with pytest.raises(ConfigurationError, match="PROPAGATION_BLOCKING_CALLS must be one of warn, raise, ignore"):
        in_a_coroutine(lambda: engine(PROPAGATION_BLOCKING_CALLS="loud").headers("S4"))


@pytest.mark.parametrize("verb", ["get", "post", "request"])
def test_an_async_client_call_read_like_a_response_in_sync_code_says_to_use_client(verb: str) -> None:
    s4 = engine().async_client("S4")
    pending = s4.request("GET", "Items") if verb == "request" else getattr(s4, verb)("Items")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "coroutine was never awaited" on top
        with pytest.raises(AttributeError, match=rf"async_client\(\.\.\.\)\.{verb}\(\) returns a coroutine.*"
                                                 r"propagation\.client\(\.\.\.\)"):
            pending.status_code


def test_with_async_client_in_sync_code_says_async_with_or_client() -> None:
    with pytest.raises(TypeError, match=r"use `async with`.*`with propagation\.client\(\.\.\.\)`"):
        with engine().async_client("S4"):
            pass


def test_async_client_calls_are_still_coroutines_for_await_gather_and_asyncio_run(backend: Any) -> None:
    s4 = engine().async_client("S4")

    async def main() -> list[int]:
        first = await s4.get("Items")
        rest = await asyncio.gather(s4.get("Items"), asyncio.ensure_future(s4.request("GET", "Items")))
        return [first.status_code] + [r.status_code for r in rest]

    assert asyncio.run(main()) == [200, 200, 200]
    assert asyncio.run(s4.get("Items")).status_code == 200
