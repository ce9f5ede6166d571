"""Technical tokens (issue 11, finding 5): an IAS token of a client rather than a user is
never a user — not for the inbound middlewares (401 unless ``allow_technical``), not for
the IAS→XSUAA exchange, not for outbound destinations that need a user."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
import respx
import responses
from flask import Flask

import jwtkit
from propagation import current_token
from propagation.bindings import Bindings
from propagation.engine import Propagator
from propagation.errors import MissingUserTokenError
from propagation.flask import Propagation
from propagation.exchange.oauth import OAuthClient
from propagation.tokens import UserToken

TRUST = "xsuaa-trust-ias-client-id"


def token(claims: dict[str, Any]) -> UserToken:
    return UserToken("h.p.s", {"alg": "RS256"}, claims)


IAS = {"iss": "https://t.accounts.ondemand.com", "app_tid": "tid", "azp": "client-a"}
XSUAA = {"ext_attr": {"enhancer": "XSUAA"}, "zid": "z", "cid": "sb-x"}


@pytest.mark.parametrize(
    "claims, is_user",
    [
        pytest.param({**IAS, "sub": "user-uuid", "sap_id_type": "user"}, True, id="ias-user"),
        pytest.param({**IAS, "sub": "client-a", "sap_id_type": "app"}, False, id="ias-sap-id-type-app"),
        pytest.param({**IAS, "sub": "other", "sap_id_type": "app"}, False, id="ias-app-whatever-sub"),
        pytest.param({**IAS, "sub": "client-a"}, False, id="ias-sub-is-the-client"),
        pytest.param({**IAS, "sub": "user-uuid"}, True, id="ias-user-without-id-type"),
        pytest.param({**IAS, "sub": "user-uuid", "grant_type": "client_credentials"}, False, id="ias-grant-type"),
        pytest.param({**XSUAA, "grant_type": "client_credentials", "sub": "sb-x"}, False, id="xsuaa-client-credentials"),
        pytest.param({**XSUAA, "grant_type": "authorization_code", "sub": "u"}, True, id="xsuaa-user"),
        pytest.param({**XSUAA, "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "sub": "u"}, True,
                     id="xsuaa-jwt-bearer"),
    ],
)
def test_is_user(claims: dict[str, Any], is_user: bool) -> None:
    assert token(claims).is_user is is_user


def technical_ias(ias: jwtkit.Ias, aud: list[str] | None = None) -> str:
    return ias.token("svc", aud=aud, extra={"sub": ias.clientid, "sap_id_type": "app"})


def flask_app(propagator: Propagator, **options: Any) -> Flask:
    app = Flask(__name__)
    Propagation(app, propagator=propagator, **options)

    @app.get("/me")
    def me() -> Any:
        user = current_token()
        return {"is_user": user.is_user if user else None, "kind": user.kind if user else None}

    return app


@pytest.mark.parametrize("make", [pytest.param(lambda x, i: technical_ias(i), id="ias-technical"),
                                  pytest.param(lambda x, i: x.token("sb", grant_type="client_credentials"),
                                               id="xsuaa-client-credentials")])
def test_technical_caller_is_401_by_default(propagator: Propagator, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                            idp_keys: respx.MockRouter, make: Any) -> None:
    response = flask_app(propagator).test_client().get("/me", headers={"Authorization": f"Bearer {make(xsuaa, ias)}"})
    assert response.status_code == 401
    assert response.json["error"] == "invalid_token"
    assert "carries no user (a technical client-credentials token)" in response.json["error_description"]
    assert "allow_technical=True" in response.json["error_description"]


def test_technical_caller_allowed_is_not_a_user(propagator: Propagator, ias: jwtkit.Ias,
                                                idp_keys: respx.MockRouter) -> None:
    raw = technical_ias(ias)
    allowed = flask_app(propagator, allow_technical=True).test_client()
    assert allowed.get("/me", headers={"Authorization": f"Bearer {raw}"}).json == {"is_user": False, "kind": "ias"}
    # The validator's cache is the engine's: a second app on the same engine still refuses it.
    refused = flask_app(propagator).test_client().get("/me", headers={"Authorization": f"Bearer {raw}"})
    assert refused.status_code == 401


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def test_technical_ias_token_is_not_exchanged_for_xsuaa(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                        idp_keys: respx.MockRouter,
                                                        rsps: responses.RequestsMock) -> None:
    rsps.post(xsuaa.token_url, json={"access_token": xsuaa.token("svc"), "expires_in": 3600})
    propagator = Propagator(bindings=bindings, environ={}, oauth=OAuthClient(sleep=lambda s: None, retries=0))
    client = flask_app(propagator, ias_to_xsuaa=True, xsuaa_trust_client_id=TRUST, allow_technical=True).test_client()
    raw = technical_ias(ias, aud=[ias.clientid, TRUST])
    assert client.get("/me", headers={"Authorization": f"Bearer {raw}"}).json == {"is_user": False, "kind": "ias"}
    assert len(rsps.calls) == 0  # never jwt-bearer'd as if it were a user
    refused = flask_app(propagator, ias_to_xsuaa=True, xsuaa_trust_client_id=TRUST).test_client()
    assert refused.get("/me", headers={"Authorization": f"Bearer {raw}"}).status_code == 401
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("destination", [
    pytest.param({"name": "FWD", "url": "https://backend.example.com", "forwardAuthToken": True}, id="forward"),
    pytest.param({"name": "FWD", "url": "https://backend.example.com", "Authentication": "OAuth2JWTBearer",
                  "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c", "clientSecret": "s"},
                 id="jwt-bearer"),
])
def test_technical_ias_token_is_never_forwarded(ias: jwtkit.Ias, rsps: responses.RequestsMock,
                                                destination: dict[str, Any]) -> None:
    engine = Propagator(environ={"destinations": json.dumps([destination])}, bindings=Bindings([]))
    with pytest.raises(MissingUserTokenError):
        engine.headers("FWD", user_token=technical_ias(ias))
    assert len(rsps.calls) == 0
