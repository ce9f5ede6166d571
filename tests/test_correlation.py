"""Correlation ids (DESIGN §2c, §5): read from the inbound request as ``sap_cf_logging`` does,
generated when absent, sent on every outbound call as ``X-CorrelationID`` on all three
transports, on the library's log records, and never swapped between concurrent requests."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from typing import Any

import pytest

import propagation
from propagation import ConfigurationError, Propagator
from propagation.asgi import PropagationASGIMiddleware
from propagation.caches.memory import MemoryTokenCache
from propagation.correlation import CorrelationFilter, from_environ, use_correlation_id
from propagation.exchange.oauth import OAuthClient
from propagation.wsgi import PropagationMiddleware

import jwtkit
from conftest import make_bindings
from test_outbound_core import TRANSPORTS, Transport, Web, web  # noqa: F401  (fixture)

BASIC = {"name": "API", "url": "https://api.example.com/v1", "Authentication": "BasicAuthentication",
         "User": "u", "Password": "p"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def engine(**environ: str) -> Propagator:
    return Propagator(environ={"destinations": json.dumps([BASIC]), **environ}, bindings=make_bindings(jwtkit.Xsuaa()),
                      cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, sleep=lambda s: None))


def serve(eng: Propagator, transport: Transport, inbound: dict[str, str]) -> str | None:
    """One inbound request through the WSGI (session, client) or ASGI (async_client)
    middleware; the app calls API and answers the id it saw. Returns that id."""
    seen: dict[str, Any] = {}
    if transport.name == "async_client":
        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen["id"] = propagation.correlation_id()
            async with eng.async_client("API") as api:
                await api.get("Items")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware = PropagationASGIMiddleware(app, propagator=eng, require_token=False)
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [(k.lower().encode(), v.encode()) for k, v in inbound.items()]}

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            pass

        asyncio.run(middleware(scope, receive, send))
    else:
        def wsgi_app(environ: Any, start_response: Any) -> Any:
            seen["id"] = propagation.correlation_id()
            transport.call(transport.make(eng, "API"), "GET", "Items")
            start_response("204 No Content", [])
            return [b""]

        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO(b""),
                   **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in inbound.items()}}
        PropagationMiddleware(wsgi_app, propagator=eng, require_token=False)(environ, lambda *a: None)
    return seen.get("id")


INBOUND = [
    pytest.param({"X-Correlation-ID": "corr-1"}, "corr-1", id="X-Correlation-ID"),
    pytest.param({"X-CorrelationID": "corr-2"}, "corr-2", id="X-CorrelationID"),
    pytest.param({"X-Request-ID": "req-3"}, "req-3", id="X-Request-ID"),
    pytest.param({"X-Vcap-Request-Id": "0f1e2d3c-vcap"}, "0f1e2d3c-vcap", id="X-Vcap-Request-Id"),
    pytest.param({"X-Vcap-Request-Id": "v", "X-Request-ID": "r", "X-Correlation-ID": "c"}, "c", id="first-present-wins"),
    pytest.param({}, None, id="generated-when-absent"),
    pytest.param({"X-Correlation-ID": "a b\r\nX-Injected: 1"}, None, id="unusable-value-replaced"),
    pytest.param({"X-Correlation-ID": "x" * 129}, None, id="overlong-value-replaced"),
]


@pytest.mark.parametrize(("inbound", "expected"), INBOUND)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_inbound_id_arrives_at_the_backend(web: Web, transport: Transport, inbound: dict[str, str], expected: str | None) -> None:
    web.on("GET", "https://api.example.com/", lambda r: (200, {}, {}))
    seen = serve(engine(), transport, inbound)
    (call,) = web.seen
    sent = call.header("X-CorrelationID")
    assert sent == seen
    if expected is None:
        assert UUID.fullmatch(sent or ""), sent
    else:
        assert sent == expected


@pytest.mark.parametrize(("environ", "header"), [
    pytest.param({"PROPAGATION_CORRELATION_HEADER": "off"}, None, id="off"),
    pytest.param({"PROPAGATION_CORRELATION_HEADER": "X-Request-ID"}, "X-Request-ID", id="renamed"),
])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_outbound_header_can_be_renamed_or_turned_off(web: Web, transport: Transport, environ: dict[str, str],
                                                          header: str | None) -> None:
    web.on("GET", "https://api.example.com/", lambda r: (200, {}, {}))
    serve(engine(**environ), transport, {"X-Correlation-ID": "corr-9"})
    (call,) = web.seen
    assert call.header("X-CorrelationID") is None if header != "X-CorrelationID" else True
    if header is not None:
        assert call.header(header) == "corr-9"


def test_a_bad_header_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="PROPAGATION_CORRELATION_HEADER"):
        engine(PROPAGATION_CORRELATION_HEADER="X Bad:Header")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_id_the_application_sets_itself_is_kept(web: Web, transport: Transport) -> None:
    web.on("GET", "https://api.example.com/", lambda r: (200, {}, {}))
    with use_correlation_id("job-42"):
        transport.call(transport.make(engine(), "API"), "GET", "Items", headers={"x-correlationid": "mine"})
        transport.call(transport.make(engine(), "API"), "GET", "Items")
    assert [c.header("X-CorrelationID") for c in web.seen] == ["mine", "job-42"]


def test_no_id_outside_a_request_or_block(web: Web) -> None:
    web.on("GET", "https://api.example.com/", lambda r: (200, {}, {}))
    assert propagation.correlation_id() is None
    engine().session("API").get("Items")
    assert web.seen[0].header("X-CorrelationID") is None


def test_100_interleaved_coroutines_never_swap_ids(web: Web) -> None:
    web.on("GET", "https://api.example.com/", lambda r: (200, {}, {}))
    eng = engine()
    api = eng.async_client("API")
    answers: dict[str, tuple[str | None, str | None]] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        mine = propagation.correlation_id()
        for _ in range(3):
            await asyncio.sleep(0)  # let the other 99 run in between
        response = await api.get(f"Items/{scope['path'].strip('/')}")
        await asyncio.sleep(0)
        answers[scope["path"]] = (mine, propagation.correlation_id())
        await send({"type": "http.response.start", "status": response.status_code, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = PropagationASGIMiddleware(app, propagator=eng, require_token=False)

    async def one(i: int) -> None:
        scope = {"type": "http", "method": "GET", "path": f"/{i}", "headers": [(b"x-request-id", f"req-{i}".encode())]}

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            pass

        await middleware(scope, receive, send)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(100)))
        await api.aclose()

    asyncio.run(main())
    assert answers == {f"/{i}": (f"req-{i}", f"req-{i}") for i in range(100)}
    sent = {c.url.rsplit("/", 1)[1]: c.header("X-CorrelationID") for c in web.seen}
    assert sent == {str(i): f"req-{i}" for i in range(100)}


def test_log_records_carry_the_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="propagation")
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "app record", None, None)

    def app(environ: Any, start_response: Any) -> Any:
        logging.getLogger("propagation").info("inside")
        CorrelationFilter().filter(record)  # on the app's own handlers too
        start_response("204 No Content", [])
        return [b""]

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_CORRELATION_ID": "corr-log"}
    PropagationMiddleware(app, propagator=engine(), require_token=False)(environ, lambda *a: None)
    with use_correlation_id("job-7"):
        logging.getLogger("propagation").info("in a job")
    logging.getLogger("propagation").info("outside")
    assert [(r.getMessage(), r.correlation_id) for r in caplog.records] == [
        ("inside", "corr-log"), ("in a job", "job-7"), ("outside", "-")]
    assert record.correlation_id == "corr-log" and from_environ({}) != from_environ({})
