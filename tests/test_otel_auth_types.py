"""The span tree and attributes of one call as alice for each Authentication type the
``destinations`` variable can describe, on each transport (issue 19): a token span (with its
grant) exactly where the type makes a token request, the call span naming the type — and no
secret of the destination, the IdP or the user in any exported value."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the test extra installs opentelemetry-sdk")

import propagation
from propagation import Propagator
from propagation.bindings import Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.events import Events
from propagation.exchange.oauth import OAuthClient
from propagation.exchange.redaction import encodings
from propagation.tokens import fingerprint

from test_otel import Otel, attrs, otel  # noqa: F401  (fixture)
from test_outbound_core import TRANSPORTS, Req, Transport, Web, user, web  # noqa: F401  (fixture)

CLIENT_SECRET = "cs-SECRET-4711"
PASSWORD = "pw-SECRET-0815"
IDP = {"tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c", "clientSecret": CLIENT_SECRET}

CASES = [
    pytest.param("NoAuthentication", {"forwardAuthToken": True}, None, id="NoAuthentication-forward"),
    pytest.param("BasicAuthentication", {"User": "u", "Password": PASSWORD}, None, id="BasicAuthentication"),
    pytest.param("OAuth2ClientCredentials", IDP, "client_credentials", id="OAuth2ClientCredentials"),
    pytest.param("OAuth2Password", {**IDP, "User": "u", "Password": PASSWORD}, "password", id="OAuth2Password"),
    pytest.param("OAuth2JWTBearer", IDP, "jwt-bearer", id="OAuth2JWTBearer"),
    pytest.param("OAuth2UserTokenExchange", IDP, "jwt-bearer", id="OAuth2UserTokenExchange"),
    pytest.param("OAuth2TokenExchange", IDP, "token-exchange", id="OAuth2TokenExchange"),
]


def engine(otel: Otel, authentication: str, properties: dict[str, Any]) -> Propagator:
    dest = {"name": "S4", "url": "https://s4.example.com/api", "Authentication": authentication, **properties}
    return Propagator(environ={"destinations": json.dumps([dest])}, bindings=Bindings([]), cache=MemoryTokenCache(),
                      oauth=OAuthClient(retries=0, sleep=lambda s: None), events=Events([otel.sink]))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("authentication, properties, grant", CASES)
def test_one_call_as_alice_per_authentication_type(web: Web, otel: Otel, transport: Transport, authentication: str,
                                                   properties: dict[str, Any], grant: str | None) -> None:
    issued: list[Req] = []

    def token(req: Req) -> tuple[int, dict[str, str], Any]:
        issued.append(req)
        return 200, {}, {"access_token": f"at-SECRET-{len(issued)}", "expires_in": 3600}

    web.on("POST", "https://idp.example.com/oauth/token", token)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    alice = user("alice")
    with propagation.use_token(alice):
        assert transport.call(transport.make(engine(otel, authentication, properties), "S4"), "GET", "Items").status_code == 200

    expected_tree = [("propagation.destination", "propagation.call")]
    if grant is not None:
        expected_tree.append(("propagation.token", "propagation.call"))
    assert otel.tree() == [*expected_tree, ("propagation.call", None)]
    [call] = otel.named("propagation.call")
    assert attrs(call)["propagation.authentication"] == authentication
    assert attrs(call)["http.response.status_code"] == 200
    assert attrs(call)["server.address"] == "s4.example.com"
    if grant is not None:
        [token_span] = otel.named("propagation.token")
        assert attrs(token_span)["propagation.grant"] == grant
        assert attrs(token_span)["server.address"] == "idp.example.com"
        assert [r.form["grant_type"].rpartition(":")[2] for r in issued] == [grant]
        if grant in ("jwt-bearer", "token-exchange"):  # made for the user: the span says whose token
            assert attrs(token_span)["propagation.user.fingerprint"] == fingerprint(alice)
    else:
        assert issued == []

    exported = [json.dumps([attrs(s), [dict(e.attributes or {}) for e in s.events]]) for s in otel.spans]
    exported.append(json.dumps(otel.metrics(), default=str))
    basic = base64.b64encode(f"u:{PASSWORD}".encode()).decode()
    for variant in encodings((alice, alice.split(".")[1], CLIENT_SECRET, PASSWORD, basic, "at-SECRET-1")):
        assert not [d for d in exported if variant in d], variant


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_on_premise_call_as_alice_principal_propagation(web: Web, otel: Otel, transport: Transport) -> None:
    """PrincipalPropagation through the Connectivity proxy: the token span is the connectivity
    jwt-bearer exchange for alice, the call span says OnPremise — and no proxy token is exported."""
    from test_connectivity import CONN_SECRET, CONN_TOKEN_URL, ONPREM, connectivity_binding

    issued: list[Req] = []

    def token(req: Req) -> tuple[int, dict[str, str], Any]:
        issued.append(req)
        return 200, {}, {"access_token": f"px-SECRET-{len(issued)}", "expires_in": 3600}

    web.on("POST", CONN_TOKEN_URL, token)
    web.on("GET", "http://s4-virtual:44300/", lambda r: (200, {}, {}))
    dest = {"name": "S4", "url": ONPREM, "Authentication": "PrincipalPropagation", "ProxyType": "OnPremise"}
    eng = Propagator(environ={"destinations": json.dumps([dest])}, bindings=Bindings([connectivity_binding()]),
                     cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, sleep=lambda s: None), events=Events([otel.sink]))
    alice = user("alice")
    with propagation.use_token(alice):
        assert transport.call(transport.make(eng, "S4"), "GET", "Items").status_code == 200
    assert otel.tree() == [("propagation.destination", "propagation.call"), ("propagation.token", "propagation.call"),
                           ("propagation.call", None)]
    [call] = otel.named("propagation.call")
    assert attrs(call)["propagation.authentication"] == "PrincipalPropagation"
    assert attrs(call)["propagation.proxy_type"] == "OnPremise"
    [token_span] = otel.named("propagation.token")
    assert attrs(token_span)["propagation.grant"] == "jwt-bearer"
    assert attrs(token_span)["propagation.user.fingerprint"] == fingerprint(alice)
    assert [r.form["grant_type"].rpartition(":")[2] for r in issued] == ["jwt-bearer"]
    exported = [json.dumps([attrs(s), [dict(e.attributes or {}) for e in s.events]]) for s in otel.spans]
    exported.append(json.dumps(otel.metrics(), default=str))
    for variant in encodings((alice, alice.split(".")[1], CONN_SECRET, "px-SECRET-1")):
        assert not [d for d in exported if variant in d], variant
