"""One event model, several sinks: the trace lines (``PROPAGATION_TRACE``, the sandbox's
``exec --trace`` and demo), the log records, and the engine's default hub."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import propagation
from propagation import MissingUserTokenError, Propagator
from propagation.bindings import Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.events import Event, Events
from propagation.events.logs import LogSink
from propagation.events.trace import TraceSink, format_event
from propagation.exchange.oauth import OAuthClient
from propagation.tokens import fingerprint

from test_outbound_core import Web, counting_idp, user, web  # noqa: F401  (fixture)

DEST = {"name": "S4", "url": "https://s4.example.com/api", "Authentication": "OAuth2JWTBearer",
        "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c", "clientSecret": "s-SECRET-1"}


def engine(events: Events | None = None, **environ: str) -> Propagator:
    return Propagator(environ={"destinations": json.dumps([DEST]), **environ}, bindings=Bindings([]),
                      cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, sleep=lambda s: None), events=events)


def test_the_trace_lines_of_a_call_a_cached_call_and_a_refusal(web: Web) -> None:
    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    out = io.StringIO()
    eng = engine(Events([TraceSink(out, clock=lambda: 0.0)], clock=lambda: 0.0))
    alice = user("alice")
    with propagation.use_token(alice), propagation.use_correlation_id("corr-1"):
        eng.session("S4").get("Items")
        eng.session("S4").get("Items")
    with pytest.raises(MissingUserTokenError):
        eng.session("S4").get("Items")
    fp = "#" + fingerprint(alice)[:12]
    lines = [line.split(None, 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        f"lib     token   jwt-bearer idp=idp.example.com client=c user={fp} tenant=provider-zid -> 200 attempts=1",
        f"lib     call    S4 GET https://s4.example.com/api/Items auth=OAuth2JWTBearer user={fp} tenant=provider-zid "
        "cache=miss -> 200 corr=corr-1",
        f"lib     call    S4 GET https://s4.example.com/api/Items auth=OAuth2JWTBearer user={fp} tenant=provider-zid "
        "cache=hit -> 200 corr=corr-1",
        "lib     refused S4: MissingUserTokenError",
        "lib     call    S4 GET https://s4.example.com/api/Items auth=OAuth2JWTBearer -> MissingUserTokenError",
    ]


def test_propagation_trace_appends_the_lines_to_a_file(web: Web, tmp_path: Path) -> None:
    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    target = tmp_path / "events.log"
    eng = engine(PROPAGATION_TRACE=str(target))
    with propagation.use_token(user("alice")):
        eng.session("S4").get("Items")
    kinds = [line.split()[2] for line in target.read_text().splitlines()]
    assert kinds == ["token", "call"]


def test_default_hub_without_sdk_trace_or_debug_logging_is_disabled() -> None:
    assert not engine().events.enabled


def test_the_log_sink_writes_debug_records_with_the_correlation_id(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    caplog.set_level(logging.DEBUG, logger="propagation.events")
    eng = engine()  # DEBUG on propagation.events at construction: the default hub has the log sink
    assert any(isinstance(s, LogSink) for s in eng.events._sinks)
    with propagation.use_token(user("alice")), propagation.use_correlation_id("corr-7"):
        eng.session("S4").get("Items")
    records = [r for r in caplog.records if r.name == "propagation.events"]
    assert [r.getMessage().split()[0] for r in records] == ["destination", "token", "cache", "call"]
    assert {r.correlation_id for r in records} == {"corr-7"}
    assert records[2].propagation["propagation.cache"] == "miss"  # type: ignore[attr-defined]


def test_a_broken_sink_never_breaks_a_call(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))

    class Broken:
        def begin(self, event: Event) -> Any:
            raise RuntimeError("sink down")

        def end(self, event: Event, handle: Any) -> None:
            raise RuntimeError("sink down")

        def point(self, event: Event) -> None:
            raise RuntimeError("sink down")

    with propagation.use_token(user("alice")):
        assert engine(Events([Broken()])).session("S4").get("Items").status_code == 200
    assert any("event sink" in r.getMessage() for r in caplog.records)


def test_format_event_leaves_out_cache_points_and_successful_resolutions() -> None:
    assert format_event(Event("cache", {"propagation.cache": "hit"}, 0, 0, "ok")) is None
    assert format_event(Event("destination", {"propagation.destination": "S4"}, 0, 1, "ok")) is None
    failed = Event("destination", {"propagation.destination": "S4"}, 0, 1, "error", "DestinationNotFoundError")
    assert format_event(failed) == "resolve S4 -> DestinationNotFoundError"


@pytest.mark.parametrize("value, names", [
    pytest.param("true", True, id="on"), pytest.param("0", False, id="off"), pytest.param("", False, id="unset"),
])
def test_the_user_names_switch(value: str, names: bool) -> None:
    assert engine(PROPAGATION_EVENT_USER_NAMES=value).events.user_names is names


def test_a_misspelt_user_names_switch_is_refused_not_read_as_off() -> None:
    from propagation.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="PROPAGATION_EVENT_USER_NAMES must be true or false, not 'ture'."):
        engine(PROPAGATION_EVENT_USER_NAMES="ture")
