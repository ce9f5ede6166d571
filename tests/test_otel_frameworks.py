"""The library's spans nest under the server span of the app's OpenTelemetry instrumentation
(Flask, FastAPI) and are the parents of the HTTP client spans that
``opentelemetry-instrumentation-requests``/``-httpx`` make for the requests it sends."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

pytest.importorskip("opentelemetry.instrumentation.flask", reason="the test extra installs the instrumentations")

from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.trace import SpanKind

import propagation

from test_otel import Otel, otel  # noqa: F401  (fixture)
from test_outbound_core import Web, counting_idp, user, web  # noqa: F401  (fixture)


def parents(kit: Otel) -> list[tuple[str, SpanKind, str | None]]:
    """(span, kind, parent span) for every span, in finishing order; server spans as ``SERVER <route>``."""
    by_id = {s.context.span_id: s for s in kit.spans}

    def label(span: Any) -> str:
        return f"SERVER {span.name}" if span.kind is SpanKind.SERVER else span.name

    out = []
    for span in kit.spans:
        parent = by_id.get(span.parent.span_id) if span.parent else None
        out.append((label(span), span.kind, label(parent) if parent is not None else None))
    return out


@pytest.fixture
def requests_instrumented(otel: Otel) -> Iterator[None]:
    RequestsInstrumentor().instrument(tracer_provider=otel.tracer_provider)
    yield
    RequestsInstrumentor().uninstrument()


@pytest.fixture
def httpx_instrumented(otel: Otel) -> Iterator[None]:
    HTTPXClientInstrumentor().instrument(tracer_provider=otel.tracer_provider)
    yield
    HTTPXClientInstrumentor().uninstrument()


def test_flask_server_span_then_the_call_then_requests_client_spans(web: Web, otel: Otel, requests_instrumented: None) -> None:
    flask = pytest.importorskip("flask")
    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    engine = otel.engine()
    app = flask.Flask("otel-test")
    FlaskInstrumentor().instrument_app(app, tracer_provider=otel.tracer_provider)
    try:
        @app.get("/orders")
        def orders() -> Any:
            with propagation.use_token(user("alice")):
                return {"status": engine.session("S4").get("Items").status_code}

        assert app.test_client().get("/orders").get_json() == {"status": 200}
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    assert [(name, parent) for name, _, parent in parents(otel)] == [
        ("propagation.destination", "propagation.call"),
        ("POST", "propagation.token"),            # requests' client span of the jwt-bearer request
        ("propagation.token", "propagation.call"),
        ("GET", "propagation.call"),              # requests' client span of the backend call
        ("propagation.call", "SERVER GET /orders"),
        ("SERVER GET /orders", None),
    ]
    kinds = {name: kind for name, kind, _ in parents(otel)}
    assert kinds["POST"] is SpanKind.CLIENT and kinds["propagation.call"] is SpanKind.INTERNAL


def test_fastapi_server_span_then_the_call_then_httpx_client_spans(web: Web, otel: Otel, httpx_instrumented: None) -> None:
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    engine = otel.engine()
    app = fastapi.FastAPI()

    @app.get("/orders")
    async def orders() -> Any:
        with propagation.use_token(user("alice")):
            async with engine.async_client("S4") as s4:
                return {"status": (await s4.get("Items")).status_code}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=otel.tracer_provider)
    try:
        with TestClient(app) as client:
            assert client.get("/orders").json() == {"status": 200}
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    ours = [(name, parent) for name, _, parent in parents(otel) if not name.startswith("SERVER GET /orders http")]
    assert [(n, p) for n, p in ours if "http send" not in n and "http receive" not in n] == [
        ("propagation.destination", "propagation.call"),
        ("POST", "propagation.token"),            # httpx's client span of the jwt-bearer request
        ("propagation.token", "propagation.call"),
        ("GET", "propagation.call"),              # httpx's client span of the backend call
        ("propagation.call", "SERVER GET /orders"),
        ("SERVER GET /orders", None),
    ]
