"""The forum failure, reproduced with a Flask app and shown fixed.

A Flask API receives alice's XSUAA token and calls S/4HANA. Wired by hand, the call goes
out with a client_credentials token and the backend answers 401 ("No user token (JWT) has
been provided…"). Through ``propagation`` the inbound token is validated with sap-xssec,
exchanged by jwt-bearer for alice, and the backend sees alice — and without a user nothing
is sent at all.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
from flask import Flask, jsonify

import propagation
from propagation.flask import Propagation
from propagation.tokens import UserToken

S4 = "https://s4.example.com"
PATH = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation"
TOKEN_URL = "https://provider.authentication.eu10.hana.ondemand.com/oauth/token"
DEST_SECRET = "s4-dest-secret-VALUE"
NO_USER = "No user token (JWT) has been provided. This is strictly necessary for 'PrincipalPropagation'"


def make_app(engine: propagation.Propagator) -> Flask:
    app = Flask(__name__)
    Propagation(app, propagator=engine, public_paths=["/health"])
    propagation.set_default_propagator(engine)

    @app.get("/naive")
    def naive() -> Any:  # the hand-wired way: a technical token, the user is dropped
        token = requests.post(TOKEN_URL, data={"grant_type": "client_credentials"},
                              auth=("s4-client", DEST_SECRET)).json()["access_token"]
        r = requests.get(S4 + PATH, headers={"Authorization": f"Bearer {token}"})
        return jsonify(r.json()), r.status_code

    @app.get("/functional-locations")
    def functional_locations() -> Any:
        r = propagation.session("S4").get(PATH)
        return jsonify(r.json()), r.status_code

    @app.get("/job")
    def job() -> Any:  # code that drops the user context explicitly (e.g. a worker thread)
        with propagation.use_token(None):
            propagation.session("S4").get(PATH)
        return "unreachable"

    @app.errorhandler(propagation.MissingUserTokenError)
    def missing_user(exc: propagation.MissingUserTokenError) -> Any:
        return jsonify(error="unauthorized", error_description=str(exc)), 401

    @app.get("/health")
    def health() -> Any:
        return "ok"

    return app


class Landscape:
    """Token endpoint and S/4HANA stand-ins (responses), recording every call."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.exchanges: list[dict[str, str]] = []
        self.backend_saw: list[str | None] = []
        rsps.add_callback(responses.POST, TOKEN_URL, callback=self.token, content_type="application/json")
        rsps.add_callback(responses.GET, S4 + PATH, callback=self.backend, content_type="application/json")

    def token(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        self.exchanges.append(form)
        if form["grant_type"] == "client_credentials":
            return 200, {}, json.dumps({"access_token": "technical-token", "expires_in": 3600})
        user = UserToken.parse(form["assertion"]).user
        return 200, {}, json.dumps({"access_token": f"s4-token-for:{user}", "expires_in": 3600})

    def backend(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        auth = request.headers.get("Authorization", "")
        user = auth.split("s4-token-for:", 1)[1] if "s4-token-for:" in auth else None
        self.backend_saw.append(user)
        if user is None:
            return 401, {}, json.dumps({"error": {"message": NO_USER}})
        return 200, {}, json.dumps({"value": [{"FunctionalLocation": "1010-FL01"}], "seenBy": user})


@pytest.fixture
def landscape(idp_keys: Any) -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield Landscape(rsps), rsps


@pytest.fixture
def client(vcap_env: Any, xsuaa: Any) -> Any:
    environ = {
        "VCAP_SERVICES": vcap_env(ias=None),
        "destinations": json.dumps([{
            "name": "S4", "url": S4, "Authentication": "OAuth2JWTBearer", "tokenServiceURL": TOKEN_URL,
            "clientId": "s4-client", "clientSecret": DEST_SECRET,
        }]),
    }
    return make_app(propagation.Propagator.from_env(environ)).test_client()


def test_naive_wiring_reproduces_the_forum_failure(client: Any, landscape: Any, xsuaa: Any) -> None:
    stand_ins, _ = landscape
    r = client.get("/naive", headers={"Authorization": f"Bearer {xsuaa.token('alice@example.com')}"})
    assert r.status_code == 401
    assert r.get_json()["error"]["message"] == NO_USER
    assert [e["grant_type"] for e in stand_ins.exchanges] == ["client_credentials"]
    assert stand_ins.backend_saw == [None]


def test_propagation_fixes_it_backend_sees_each_user(client: Any, landscape: Any, xsuaa: Any, idp_keys: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="propagation")
    stand_ins, rsps = landscape
    alice, bob = xsuaa.token("alice@example.com"), xsuaa.token("bob@example.com")
    for user, raw in [("alice@example.com", alice), ("bob@example.com", bob), ("alice@example.com", alice)]:
        r = client.get("/functional-locations", headers={"Authorization": f"Bearer {raw}"})
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.get_json()["seenBy"] == user
    assert stand_ins.backend_saw == ["alice@example.com", "bob@example.com", "alice@example.com"]
    # One jwt-bearer exchange per user, each with that user's own token as the assertion.
    assert [(e["grant_type"], e["assertion"]) for e in stand_ins.exchanges] == [
        ("urn:ietf:params:oauth:grant-type:jwt-bearer", alice),
        ("urn:ietf:params:oauth:grant-type:jwt-bearer", bob),
    ]
    assert idp_keys["xsuaa_token_keys"].call_count == 1  # keys fetched once, then cached
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (alice, bob, DEST_SECRET, "s4-token-for:", xsuaa.clientsecret):
        assert secret not in logs


@pytest.mark.parametrize(
    "headers, path",
    [
        pytest.param({}, "/functional-locations", id="no-authorization-header"),
        pytest.param({"Authorization": "Basic YWxpY2U6cHc="}, "/functional-locations", id="basic-instead-of-bearer"),
    ],
)
def test_without_a_valid_user_nothing_is_sent(client: Any, landscape: Any, headers: dict[str, str], path: str) -> None:
    _, rsps = landscape
    r = client.get(path, headers=headers)
    assert r.status_code == 401
    assert r.get_json()["error"] == "invalid_token"
    assert r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert len(rsps.calls) == 0


def test_code_path_without_user_fails_closed(client: Any, landscape: Any, xsuaa: Any) -> None:
    _, rsps = landscape
    r = client.get("/job", headers={"Authorization": f"Bearer {xsuaa.token()}"})
    assert r.status_code == 401
    assert "strictly necessary for 'OAuth2JWTBearer'" in r.get_json()["error_description"]
    assert len(rsps.calls) == 0  # neither the token endpoint nor S/4HANA was called


def test_health_is_public(client: Any, landscape: Any) -> None:
    assert client.get("/health").status_code == 200
