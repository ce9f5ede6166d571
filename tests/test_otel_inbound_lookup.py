"""The ``inbound`` span (validation that was not answered from the cache) and the ``lookup``
spans of Destination-service calls, with their metrics."""

from __future__ import annotations

import io
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the test extra installs opentelemetry-sdk")

import jwtkit
import propagation
from conftest import make_bindings
from propagation import Propagator
from propagation.events import Events
from propagation.tokens import fingerprint
from propagation.wsgi import PropagationMiddleware

from test_otel import Otel, attrs, otel  # noqa: F401  (fixture)
from test_outbound_core import TRANSPORTS, Transport, Web, destination_service, user, web  # noqa: F401  (fixture)


def call_app(app: Any, authorization: str) -> str:
    status: dict[str, str] = {}
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/orders", "wsgi.input": io.BytesIO(b""),
               "HTTP_AUTHORIZATION": authorization}
    body = app(environ, lambda s, h, e=None: status.setdefault("status", s))
    b"".join(body)
    return status["status"]


@pytest.mark.parametrize("user_names", [pytest.param(False, id="fingerprints-only"), pytest.param(True, id="user-names-opt-in")])
def test_inbound_validation_span_once_per_token_and_for_a_rejection(otel: Otel, xsuaa: jwtkit.Xsuaa, idp_keys: Any,
                                                                    user_names: bool) -> None:
    engine = Propagator(bindings=make_bindings(xsuaa), environ={},
                        events=Events([otel.sink], user_names=user_names))

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = PropagationMiddleware(app, propagator=engine)
    raw = xsuaa.token("alice@example.com")
    assert [call_app(wrapped, f"Bearer {raw}") for _ in range(2)] == ["200 OK", "200 OK"]
    assert call_app(wrapped, "Bearer " + raw[:-4] + "AAAA").startswith("401")
    ok, rejected = otel.named("propagation.inbound")  # the second request was answered from the cache
    expected = {"propagation.user.fingerprint": fingerprint(raw), "propagation.token.kind": "xsuaa",
                "propagation.tenant": xsuaa.zid}
    if user_names:
        expected["propagation.user.name"] = "alice@example.com"
    assert attrs(ok) == expected
    assert rejected.status.status_code.name == "ERROR" and attrs(rejected)["error.type"] == "InvalidTokenError"
    assert raw not in str([attrs(s) for s in otel.spans])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_destination_service_lookups_are_spans_under_the_resolution(web: Web, otel: Otel, transport: Transport) -> None:
    plain = destination_service(web)
    engine = Propagator(environ={}, bindings=plain.bindings, cache=plain.cache, oauth=plain.oauth,
                        events=Events([otel.sink]))
    with propagation.use_token(user("alice")):
        assert transport.call(transport.make(engine, "S4"), "GET", "/Items").status_code == 200
    tree = otel.tree()
    lookups = [attrs(s) for s in otel.named("propagation.lookup")]
    assert tree == [
        ("propagation.token", "propagation.lookup"),  # the service token (client_credentials)
        ("propagation.lookup", "propagation.destination"),  # the configuration ($skipTokenRetrieval)
        ("propagation.destination", "propagation.call"),
        ("propagation.lookup", "propagation.call"),  # the Basic header (authTokens)
        ("propagation.call", None),
    ]
    for lookup in lookups:
        assert lookup["server.address"] == "destination.example.com" and lookup["propagation.destination"] == "S4"
        assert lookup["http.response.status_code"] == 200 and lookup["propagation.attempts"] == 1
    assert {lk["propagation.lookup"] for lk in lookups} <= {"configuration", "tokens"}
    durations = otel.metrics()["propagation.lookup.duration"]
    assert sum(count for _, count in durations) == len(lookups) >= 1
