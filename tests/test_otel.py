"""OpenTelemetry spans and metrics of the library (DESIGN §2c), with the SDK's in-memory
exporters: the span tree and attributes of one call as alice on each transport, a cached second
call, a refusal, a 401 re-exchange, an IdP outage with the breaker open — and a scan of every
exported value for the secrets the test used."""

from __future__ import annotations

import json
import logging
from typing import Any, Iterator

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the test extra installs opentelemetry-sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import propagation
from propagation import MissingUserTokenError, Propagator
from propagation.bindings import Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.events import Events
from propagation.events.logs import LogSink
from propagation.events.otel import OTelSink
from propagation.exchange.oauth import OAuthClient
from propagation.exchange.redaction import encodings
from propagation.tokens import fingerprint

from test_outbound_core import TRANSPORTS, Transport, Web, counting_idp, user, web  # noqa: F401  (fixture)

CLIENT_SECRET = "cs-SECRET-4711"
DEST = {"name": "S4", "url": "https://s4.example.com/api", "Authentication": "OAuth2JWTBearer",
        "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c", "clientSecret": CLIENT_SECRET}


class Otel:
    """An SDK tracer and meter provider with in-memory exporters, and an engine reporting to them."""

    def __init__(self) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.sink = OTelSink(self.tracer_provider, self.meter_provider)

    def engine(self, *, breaker_threshold: int = 5, extra_sinks: tuple[Any, ...] = ()) -> Propagator:
        return Propagator(environ={"destinations": json.dumps([DEST])}, bindings=Bindings([]), cache=MemoryTokenCache(),
                          oauth=OAuthClient(retries=0, sleep=lambda s: None, breaker_threshold=breaker_threshold),
                          events=Events([self.sink, *extra_sinks]))

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_out.get_finished_spans())

    def tree(self) -> list[tuple[str, str | None]]:
        """(span name, parent span name) in finishing order."""
        by_id = {s.context.span_id: s.name for s in self.spans}
        return [(s.name, by_id.get(s.parent.span_id) if s.parent else None) for s in self.spans]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        found.setdefault(metric.name, []).append((dict(point.attributes), value if value is not None else point.count))
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    kit = Otel()
    yield kit
    kit.tracer_provider.shutdown()
    kit.meter_provider.shutdown()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_call_as_alice_then_a_cached_one(web: Web, otel: Otel, transport: Transport) -> None:
    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    engine = otel.engine()
    alice = user("alice")
    s4 = transport.make(engine, "S4")
    with propagation.use_token(alice):
        transport.call(s4, "GET", "Items?$top=2")
        first = list(otel.spans)
        transport.call(s4, "GET", "Items")
    assert [(s.name, p) for s, (_, p) in zip(first, otel.tree())] == [
        ("propagation.destination", "propagation.call"),
        ("propagation.token", "propagation.call"),
        ("propagation.call", None),
    ]
    assert otel.tree()[3:] == [("propagation.destination", "propagation.call"), ("propagation.call", None)]
    token = attrs(otel.named("propagation.token")[0])
    assert token == {
        "server.address": "idp.example.com", "url.full": "https://idp.example.com/oauth/token",
        "propagation.grant": "jwt-bearer", "propagation.client": "c", "propagation.tenant": "provider-zid",
        "propagation.user.fingerprint": fingerprint(alice), "propagation.breaker": "closed",
        "http.response.status_code": 200, "propagation.attempts": 1,
    }
    first_call, cached_call = (attrs(s) for s in otel.named("propagation.call"))
    expected = {
        "propagation.destination": "S4", "http.request.method": "GET",
        "url.full": "https://s4.example.com/api/Items?$top=REDACTED", "server.address": "s4.example.com",
        "propagation.proxy_type": "Internet", "propagation.destination.source": "destinations environment variable",
        "propagation.tenant": "provider-zid", "propagation.user.fingerprint": fingerprint(alice),
        "propagation.cache": "miss", "http.response.status_code": 200,
    }
    expected = {k: v for k, v in expected.items() if v is not None}
    assert {k: first_call.get(k) for k in expected} == expected
    assert cached_call["propagation.cache"] == "hit" and cached_call["url.full"] == "https://s4.example.com/api/Items"
    destination = attrs(otel.named("propagation.destination")[0])
    assert destination == {"propagation.destination": "S4", "propagation.tenant": "provider-zid",
                           "propagation.destination.source": "destinations environment variable", "propagation.authentication": "OAuth2JWTBearer"}
    events = [(e.name, dict(e.attributes or {})["propagation.cache"]) for s in otel.named("propagation.call") for e in s.events]
    assert events == [("propagation.cache", "miss"), ("propagation.cache", "hit")]
    metrics = otel.metrics()
    assert metrics["propagation.token.requests"] == [
        ({"propagation.grant": "jwt-bearer", "server.address": "idp.example.com", "propagation.outcome": "ok"}, 1)]
    assert sorted((a["propagation.cache"], v) for a, v in metrics["propagation.cache.lookups"]) == [("hit", 1), ("miss", 1)]
    assert [v for _, v in metrics["propagation.token.duration"]] == [1]  # one histogram sample


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refusal_is_a_failed_call_span_with_a_refusal_event_and_metric(web: Web, otel: Otel, transport: Transport) -> None:
    with pytest.raises(MissingUserTokenError):
        transport.call(transport.make(otel.engine(), "S4"), "GET", "Items")
    assert web.seen == []
    assert otel.tree() == [("propagation.destination", "propagation.call"), ("propagation.call", None)]
    call = otel.named("propagation.call")[0]
    assert call.status.status_code.name == "ERROR" and attrs(call)["error.type"] == "MissingUserTokenError"
    assert [(e.name, dict(e.attributes or {})) for e in call.events] == [
        ("propagation.refusal", {"propagation.destination": "S4", "propagation.refusal": "MissingUserTokenError",
                                 "error.type": "MissingUserTokenError"})]
    assert otel.metrics()["propagation.refusals"] == [({"error.type": "MissingUserTokenError"}, 1)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_401_re_exchange_shows_two_token_requests_in_one_call(web: Web, otel: Otel, transport: Transport) -> None:
    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (401 if r.header("Authorization") == "Bearer at-alice-1" else 200, {}, {}))
    with propagation.use_token(user("alice")):
        assert transport.call(transport.make(otel.engine(), "S4"), "GET", "Items").status_code == 200
    assert [n for n, p in otel.tree() if p == "propagation.call"] == [
        "propagation.destination", "propagation.token", "propagation.destination", "propagation.token"]
    call = attrs(otel.named("propagation.call")[0])
    assert call["propagation.reexchange"] == 401 and call["http.response.status_code"] == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_idp_outage_opens_the_breaker_and_the_next_call_fails_fast(web: Web, otel: Otel, transport: Transport) -> None:
    web.on("POST", "https://idp.example.com/oauth/token", lambda r: (503, {}, {"error": "unavailable"}))
    engine = otel.engine(breaker_threshold=2)
    s4 = transport.make(engine, "S4")
    with propagation.use_token(user("alice")):
        for _ in range(3):
            with pytest.raises(propagation.TokenExchangeError):
                transport.call(s4, "GET", "Items")
    assert len(web.seen) == 2  # the third request never left
    tokens = [attrs(s) for s in otel.named("propagation.token")]
    assert [(t["propagation.attempts"], t.get("http.response.status_code"), t["propagation.breaker"]) for t in tokens] == [
        (1, 503, "closed"), (1, 503, "open"), (0, None, "open")]
    assert [t["error.type"] for t in tokens] == ["TokenExchangeError", "TokenExchangeError", "CircuitOpenError"]
    breaker_events = [dict(e.attributes or {}) for s in otel.named("propagation.token") for e in s.events]
    # breakers are per (host, tenant): the event names both; the metric's labels never a tenant
    assert breaker_events == [{"propagation.breaker": "open", "server.address": "idp.example.com",
                               "propagation.tenant": "provider-zid"}]
    assert otel.metrics()["propagation.breaker.changes"] == [
        ({"propagation.breaker": "open", "server.address": "idp.example.com"}, 1)]
    outcomes = sorted((a["propagation.outcome"], v) for a, v in otel.metrics()["propagation.token.requests"])
    assert outcomes == [("error", 3)]


def test_no_secret_in_any_span_event_metric_or_log_record(web: Web, otel: Otel, caplog: pytest.LogCaptureFixture) -> None:
    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (401 if r.header("Authorization") == "Bearer at-alice-1" else 200, {}, {}))
    alice = user("alice")
    caplog.set_level(logging.DEBUG, logger="propagation")
    engine = otel.engine(extra_sinks=(LogSink(),))
    for transport in (t.values[0] for t in TRANSPORTS):
        with propagation.use_token(alice):
            transport.call(transport.make(engine, "S4"), "GET", "Items?sig=q-SECRET-9")
    dumped = [json.dumps([attrs(s), [dict(e.attributes or {}) for e in s.events]]) for s in otel.spans]
    dumped.append(json.dumps(otel.metrics(), default=str))
    dumped += [r.getMessage() + json.dumps(getattr(r, "propagation", {}), default=str) for r in caplog.records]
    assert any("token" in r.getMessage() for r in caplog.records)  # the log sink did write
    assert all(getattr(r, "correlation_id", None) for r in caplog.records if r.name.startswith("propagation"))
    secrets = (alice, alice.split(".")[1], CLIENT_SECRET, "at-alice-1", "at-alice-2", "q-SECRET-9")
    for variant in encodings(secrets):
        leaks = [d for d in dumped if variant in d]
        assert not leaks, variant


def test_attributes_shaped_like_secrets_are_refused_by_the_hub() -> None:
    seen: list[Any] = []

    class Keep:
        def begin(self, event: Any) -> None: ...
        def end(self, event: Any, handle: Any) -> None: seen.append(dict(event.attributes))
        def point(self, event: Any) -> None: seen.append(dict(event.attributes))

    hub = Events([Keep()])
    with hub.span("call", **{"propagation.destination": "S4", "propagation.user.fingerprint": "ab12"}) as event:
        event.set(**{"http.request.header.authorization": "Bearer x", "propagation.note": user("bob"),
                     "propagation.user.name": "bob"})
    hub.point("cache", **{"propagation.client_secret": "s3cr3t", "propagation.cert": "-----BEGIN CERTIFICATE-----"})
    assert seen == [
        {"propagation.destination": "S4", "propagation.user.fingerprint": "ab12",
         "http.request.header.authorization": "[refused]", "propagation.note": "[refused]"},
        {"propagation.client_secret": "[refused]", "propagation.cert": "[refused]"},
    ]
    named = Events([Keep()], user_names=True)
    named.point("inbound", **{"propagation.user.name": "bob"})
    assert seen[-1] == {"propagation.user.name": "bob"}


def test_without_an_sdk_the_default_sink_is_idle_and_wakes_up_when_the_app_configures_one(
        web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    engine = Propagator(environ={"destinations": json.dumps([DEST])}, bindings=Bindings([]), cache=MemoryTokenCache(),
                        oauth=OAuthClient(retries=0, sleep=lambda s: None), events=Events([OTelSink()]))
    assert not engine.events.enabled  # opentelemetry-api alone: nothing is built per call
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with propagation.use_token(user("alice")):
        engine.session("S4").get("Items")
        assert exporter.get_finished_spans() == ()
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # what trace.set_tracer_provider() does
        assert engine.events.enabled
        engine.session("S4").get("Items")
    assert [s.name for s in exporter.get_finished_spans()] == ["propagation.destination", "propagation.call"]


def test_a_single_flight_waiter_is_a_cache_wait(web: Web, otel: Otel) -> None:
    import asyncio

    issued = counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    engine = otel.engine()

    async def main() -> None:
        async with engine.async_client("S4") as s4:
            with propagation.use_token(user("alice")):
                await asyncio.gather(s4.get("Items"), s4.get("Items"))

    asyncio.run(main())
    assert len(issued) == 1
    calls = [attrs(s)["propagation.cache"] for s in otel.named("propagation.call")]
    assert sorted(calls) == ["miss", "wait"]
    assert sorted((a["propagation.cache"], v) for a, v in otel.metrics()["propagation.cache.lookups"]) == [("miss", 1), ("wait", 1)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_call_span_goes_out_as_w3c_traceparent_without_an_instrumented_client(web: Web, otel: Otel,
                                                                                   transport: Transport) -> None:
    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    with propagation.use_token(user("alice")):
        transport.call(transport.make(otel.engine(), "S4"), "GET", "Items")
    call = otel.named("propagation.call")[0]
    (sent,) = web.to("https://s4.example.com/")
    assert sent.header("traceparent") == f"00-{call.context.trace_id:032x}-{call.context.span_id:016x}-{int(call.context.trace_flags):02x}"
