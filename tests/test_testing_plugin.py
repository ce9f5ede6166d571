"""propagation.testing: the emulated BTP landscape (model), its in-process transport and the
pytest plugin — tested directly (exact answers of every emulated service), through the
library (the traffic a real app makes) and as a plugin (``pytester``)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import httpx
import pytest
import requests
from flask import Flask, jsonify

import propagation
from propagation.flask import Propagation
from propagation.testing import Landscape, Origins, Request, emulate
from propagation.testing.landscape import NO_USER_TOKEN_MESSAGE

pytest_plugins = ["pytester"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
FL_PATH = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation"
ROOT = Path(__file__).resolve().parents[1]


# ============================================================================ helpers
@pytest.fixture(scope="module")
def land() -> Landscape:
    """One model for the direct tests (key generation is the slow part); records reset per test."""
    landscape = Landscape(tenants=("provider", "acme"))
    for line in (
        "S4 OnPremise PrincipalPropagation location=LOC1",
        "S4H OnPremise PrincipalPropagation",
        "BASIC BasicAuthentication",
        "CC OAuth2ClientCredentials",
        "PW OAuth2Password",
        "JWT OAuth2JWTBearer",
        "UTE OAuth2UserTokenExchange",
        "TX OAuth2TokenExchange tokenService.body.resource=hr-api",
        "SAML OAuth2SAMLBearerAssertion",
        "SAMLSYS OAuth2SAMLBearerAssertion SystemUser=SYS_USER",
        "FWD NoAuthentication forward",
        "ENVONLY OAuth2JWTBearer source=env",
    ):
        landscape.destination(line)
    return landscape


@pytest.fixture(autouse=True)
def _fresh_records(request: pytest.FixtureRequest) -> None:
    if "land" in request.fixturenames:
        request.getfixturevalue("land").reset()


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def post(land: Landscape, url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> Any:
    body = urlencode(form).encode()
    return land.handle(Request("POST", url, {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}, body))


def xsuaa_token_url(land: Landscape, tenant: str | None = None) -> str:
    return f"{land.tenant_url(tenant)}/oauth/token"


def client_form(land: Landscape, client: str) -> dict[str, str]:
    return {"client_id": client, "client_secret": land.client_secret(client)}


def service_token(land: Landscape, tenant: str | None = None) -> str:
    answer = post(land, xsuaa_token_url(land, tenant), {"grant_type": "client_credentials", **client_form(land, land.destination_client)})
    assert answer.status == 200
    return answer.json()["access_token"]


def proxy_token(land: Landscape, user_token: str | None) -> str:
    form = client_form(land, land.connectivity_client)
    if user_token is None:
        form["grant_type"] = "client_credentials"
    else:
        form.update(grant_type=JWT_BEARER, assertion=user_token, token_format="jwt", response_type="token")
    answer = post(land, xsuaa_token_url(land), form)
    assert answer.status == 200, answer.json()
    return answer.json()["access_token"]


def find(land: Landscape, name: str, headers: dict[str, str] | None = None, bearer: str | None = None) -> Any:
    url = f"{land.origins.destination}/destination-configuration/v1/destinations/{name}"
    return land.handle(Request("GET", url, {"Authorization": f"Bearer {bearer or service_token(land)}", **(headers or {})}))


def backend(land: Landscape, authorization: str | None, url: str | None = None) -> Any:
    headers = {"Authorization": authorization} if authorization else {}
    return land.handle(Request("GET", url or land.origins.backend + FL_PATH, headers))


# ============================================================================ XSUAA
def _grant_cases() -> list[Any]:
    return [
        pytest.param("client_credentials", "body", None, 200, None, id="client_credentials-body"),
        pytest.param("client_credentials", "basic", None, 200, None, id="client_credentials-basic"),
        pytest.param("client_credentials", "wrong-secret", None, 401, "invalid_client", id="wrong-secret"),
        pytest.param("client_credentials", "none", None, 401, "invalid_client", id="no-client-auth"),
        pytest.param("client_credentials", "secretless", None, 401, "invalid_client", id="mtls-not-emulated"),
        pytest.param("password", "body", "alice", 200, None, id="password"),
        pytest.param("password", "body", "alice-wrong", 401, "unauthorized", id="password-wrong"),
        pytest.param("jwt-bearer", "basic", "xsuaa", 200, None, id="jwt-bearer-xsuaa"),
        pytest.param("jwt-bearer", "body", "xsuaa-expired", 400, "invalid_grant", id="jwt-bearer-expired"),
        pytest.param("jwt-bearer", "body", "xsuaa-other-zone", 400, "invalid_grant", id="jwt-bearer-other-zone"),
        pytest.param("jwt-bearer", "body", "technical", 400, "invalid_grant", id="jwt-bearer-technical"),
        pytest.param("jwt-bearer", "body", "ias", 200, None, id="jwt-bearer-ias-cross-consumption"),
        pytest.param("jwt-bearer", "body", "ias-no-trust-aud", 400, "invalid_grant", id="jwt-bearer-ias-no-trust"),
        pytest.param("jwt-bearer", "body", "garbage", 401, "invalid_token", id="jwt-bearer-garbage"),
        pytest.param("jwt-bearer", "body", "missing", 400, "invalid_request", id="jwt-bearer-no-assertion"),
        pytest.param("urn:example:grant", "body", None, 400, "unsupported_grant_type", id="unsupported-grant"),
        pytest.param("refresh_token", "body", None, 401, "invalid_token", id="refresh-token-unknown"),
    ]


@pytest.mark.parametrize("grant, auth, subject, status, error", _grant_cases())
def test_xsuaa_token_endpoint(land: Landscape, grant: str, auth: str, subject: str | None, status: int,
                              error: str | None) -> None:
    client = land.app_client
    secret = land.client_secret(client)
    form: dict[str, str] = {"grant_type": {"jwt-bearer": JWT_BEARER}.get(grant, grant)}
    headers: dict[str, str] = {}
    if auth == "body":
        form.update(client_id=client, client_secret=secret)
    elif auth == "basic":
        headers["Authorization"] = basic(client, secret)
    elif auth == "wrong-secret":
        form.update(client_id=client, client_secret="not-the-secret")
    elif auth == "secretless":
        form["client_id"] = client
    if grant == "password":
        form.update(username="alice", password="alice-password" if subject == "alice" else "nope")
    assertions = {
        "xsuaa": lambda: land.user_token("alice"),
        "xsuaa-expired": lambda: land.user_token("alice", ttl=-60),
        "xsuaa-other-zone": lambda: land.user_token("alice", tenant="acme"),
        "technical": lambda: land.technical_token(),
        "ias": lambda: land.user_token("alice", kind="ias"),
        "ias-no-trust-aud": lambda: land.user_token("alice", kind="ias", cross_consumption=False),
        "garbage": lambda: "not-a-jwt",
    }
    if grant == "jwt-bearer" and subject in assertions:
        form["assertion"] = assertions[subject]()
    answer = post(land, xsuaa_token_url(land), form, headers)
    assert answer.status == status
    body = answer.json()
    if error is None:
        assert set(body) >= {"access_token", "token_type", "expires_in", "scope"}
        claims = land._verify(body["access_token"]).claims
        assert claims["cid"] == client and claims["zid"] == land.provider.zid
        if grant in ("password", "jwt-bearer"):
            assert claims["user_name"] == "alice" and f"{land.xsappname}.Read" in claims["scope"]
        else:
            assert "user_name" not in claims and claims["grant_type"] == "client_credentials"
    else:
        assert body["error"] == error and body["error_description"]
        assert "access_token" not in body
    (exchange,) = land.exchanges
    assert (exchange.service, exchange.status, exchange.error) == ("xsuaa", status, error)
    assert exchange.grant == {"jwt-bearer": "jwt-bearer"}.get(grant, grant)


def test_xsuaa_token_keys_and_jku(land: Landscape) -> None:
    token = land.user_token("alice")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["jku"] == f"https://{land.origins.uaadomain}/token_keys?zid={land.provider.zid}"
    keys = land.handle(Request("GET", header["jku"])).json()["keys"]
    assert [k["kid"] for k in keys] == [header["kid"]] and keys[0]["value"].startswith("-----BEGIN PUBLIC KEY-----")
    assert land.traffic.values("url") == [f"https://{land.origins.uaadomain}/token_keys"]


def test_subscriber_zone_has_its_own_token_endpoint(land: Landscape) -> None:
    acme_user = land.user_token("alice", tenant="acme")
    form = {"grant_type": JWT_BEARER, "assertion": acme_user, **client_form(land, land.connectivity_client)}
    answer = post(land, xsuaa_token_url(land, "acme"), form)
    assert answer.status == 200
    claims = land._verify(answer.json()["access_token"]).claims
    assert claims["iss"] == "https://acme.authentication.sandbox.test/oauth/token"
    assert (claims["zid"], claims["ext_attr"]["zdn"]) == (land.tenants["acme"].zid, "acme")
    assert land.exchanges.values("tenant") == ["acme"]


# ============================================================================ IAS
def test_ias_discovery_and_keys(land: Landscape) -> None:
    config = land.handle(Request("GET", f"{land.origins.ias}/.well-known/openid-configuration")).json()
    assert config["issuer"] == land.origins.ias and config["token_endpoint"] == f"{land.origins.ias}/oauth2/token"
    keys = land.handle(Request("GET", config["jwks_uri"])).json()["keys"]
    header = json.loads(base64.urlsafe_b64decode(land.user_token("bob", kind="ias").split(".")[0] + "=="))
    assert [k["kid"] for k in keys] == [header["kid"]]


def test_ias_public_client_token_is_exchanged_for_the_apps(land: Landscape) -> None:
    public = land.user_token("alice", kind="ias", public_client="mobile-app")
    assert land._verify(public).claims["aud"] == "mobile-app"
    form = {"grant_type": JWT_BEARER, "assertion": public, **client_form(land, land.ias_client)}
    answer = post(land, f"{land.origins.ias}/oauth2/token", form)
    assert answer.status == 200
    claims = land._verify(answer.json()["access_token"]).claims
    assert claims["aud"] == [land.ias_client, land.trust_client_id] and claims["email"] == "alice@example.com"
    (exchange,) = land.exchanges
    assert (exchange.service, exchange.grant, exchange.client, exchange.user, exchange.subject) == (
        "ias", "jwt-bearer", land.ias_client, "alice", "ias")


def _ias_password_cases() -> list[Any]:
    return [
        pytest.param("app-basic", "alice", "alice-password", 200, None, id="app-client-basic"),
        pytest.param("app-body", "alice@example.com", "alice-password", 200, None, id="app-client-by-email"),
        pytest.param("public", "bob", "bob-password", 200, None, id="public-client-id-only"),
        pytest.param("app-basic", "alice", "wrong", 400, "invalid_grant", id="wrong-password"),
        pytest.param("unknown-public", "alice", "alice-password", 401, "invalid_client", id="unregistered-public-client"),
        pytest.param("public-cc", None, None, 401, "invalid_client", id="public-client-cannot-use-client-credentials"),
    ]


@pytest.mark.parametrize("auth, username, password, status, error", _ias_password_cases())
def test_ias_password_grant(land: Landscape, auth: str, username: str | None, password: str | None, status: int,
                            error: str | None) -> None:
    """A user logs in at IAS: the app's client (aud + the XSUAA trust client) or a public client (aud: itself)."""
    from propagation.testing.landscape import PUBLIC_CLIENT_ID

    form: dict[str, str] = {"grant_type": "password", "username": username or "", "password": password or ""}
    headers: dict[str, str] = {}
    if auth == "app-basic":
        headers["Authorization"] = basic(land.ias_client, land.client_secret(land.ias_client))
    elif auth == "app-body":
        form.update(client_form(land, land.ias_client))
    elif auth == "public":
        form["client_id"] = PUBLIC_CLIENT_ID
    elif auth == "unknown-public":
        form["client_id"] = "not-registered"
    else:
        form = {"grant_type": "client_credentials", "client_id": PUBLIC_CLIENT_ID}
    answer = post(land, f"{land.origins.ias}/oauth2/token", form, headers)
    assert (answer.status, answer.json().get("error")) == (status, error)
    (exchange,) = land.exchanges
    assert exchange.service == "ias" and "password" not in exchange.params
    if status != 200:
        return
    claims = land._verify(answer.json()["access_token"]).claims
    expected = [land.ias_client, land.trust_client_id] if auth.startswith("app") else PUBLIC_CLIENT_ID
    assert (claims["aud"], claims["iss"], claims["email"]) == (expected, land.origins.ias, f"{exchange.user}@example.com")
    assert (exchange.grant, exchange.user, exchange.client_auth) == (
        "password", username.split("@")[0], {"app-basic": "basic", "app-body": "body", "public": "none"}[auth])


@pytest.mark.parametrize(
    "path, status, ids",
    [
        pytest.param(FL_PATH, 200, ["1010-PLT-01", "1010-PLT-01-PMP", "1010-PLT-01-CMP"], id="api-functionallocation"),
        pytest.param("/sap/opu/odata/sap/API_FUNCTIONALLOCATION_SRV/A_FunctionalLocation?$top=2", 200,
                     ["1010-PLT-01", "1010-PLT-01-PMP"], id="v2-entity-set-top"),
        pytest.param("/sap/opu/odata/sap/API_FUNCTIONALLOCATION_SRV/A_FunctionalLocation('1010-PLT-01-CMP')", 200,
                     ["1010-PLT-01-CMP"], id="v2-single-entity"),
        pytest.param("/sap/opu/odata/sap/API_FUNCTIONALLOCATION_SRV/A_FunctionalLocation('nope')", 404, [],
                     id="v2-unknown-entity"),
        pytest.param("/sap/opu/odata/sap/API_OTHER/Entity", 200, [], id="other-service"),
    ],
)
def test_backend_serves_functional_locations_under_both_services(land: Landscape, path: str, status: int,
                                                                 ids: list[str]) -> None:
    answer = backend(land, f"Bearer {land.user_token('alice')}", land.origins.backend + path)
    assert answer.status == status
    d = answer.json().get("d", {})
    rows = d.get("results", [d] if "FunctionalLocation" in d else [])
    assert [row["FunctionalLocation"] for row in rows] == ids
    assert land.calls.values("status") == [status]  # the record holds the status the caller got


def test_calls_record_the_real_status_of_a_post(land: Landscape) -> None:
    token = land.user_token("alice")
    answer = land.handle(Request("POST", land.origins.iflow + "/http/orders", {"Authorization": f"Bearer {token}"}, b"{}"))
    assert answer.status == 403  # a user token of the app's client may not call the iFlow
    form = {"grant_type": JWT_BEARER, "assertion": token, **client_form(land, land.iflow_client)}
    iflow_token = post(land, xsuaa_token_url(land), form).json()["access_token"]
    answer = land.handle(Request("POST", land.origins.iflow + "/http/orders", {"Authorization": f"Bearer {iflow_token}"}, b"{}"))
    assert answer.status == 201
    assert [(c.service, c.method, c.user, c.status) for c in land.calls] == [
        ("iflow", "POST", "alice", 403), ("iflow", "POST", "alice", 201)]


@pytest.mark.parametrize(
    "extra, subject_kind, status, error, scheme",
    [
        pytest.param({"resource": "urn:sap:identity:application:provider:name:hr-api"}, "ias", 200, None, "Bearer", id="resource"),
        pytest.param({"token_format": "opaque"}, "ias", 200, None, "Bearer", id="opaque"),
        pytest.param({"requested_token_type": "urn:sap:identity:oauth:token-type:saml2-header"}, "ias", 200, None,
                     "SAML2.0", id="saml2-header"),
        pytest.param({"resource": "urn:sap:identity:application:provider:name:unknown"}, "ias", 400, "invalid_target",
                     None, id="unknown-resource"),
        pytest.param({}, "xsuaa", 400, "invalid_grant", None, id="xsuaa-subject"),
        pytest.param({"subject_token_type": "urn:x"}, "ias", 400, "invalid_request", None, id="bad-subject-type"),
    ],
)
def test_ias_token_exchange(land: Landscape, extra: dict[str, str], subject_kind: str, status: int, error: str | None,
                            scheme: str | None) -> None:
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": land.user_token("alice", kind=subject_kind),
            "subject_token_type": ACCESS_TOKEN, **client_form(land, land.ias_client), **extra}
    answer = post(land, f"{land.origins.ias}/oauth2/token", form)
    assert answer.status == status
    body = answer.json()
    assert body.get("error") == error
    if scheme is not None:
        seen = backend(land, f"{scheme} {body['access_token']}")
        assert (seen.status, seen.json()["seenBy"]) == (200, "alice")
        assert body["issued_token_type"] == extra.get("requested_token_type", ACCESS_TOKEN)
    (exchange,) = land.exchanges
    assert exchange.grant == "token-exchange" and exchange.params.get("resource") == extra.get("resource")


# ============================================================================ Destination service
NO_USER = "No user token (JWT) has been provided. This is strictly necessary for '{}'."


@pytest.mark.parametrize(
    "name, user, token_type, error, seen_by",
    [
        pytest.param("BASIC", None, "Basic", None, "BASIC_COMM_USER", id="basic"),
        pytest.param("CC", None, "bearer", None, None, id="client-credentials"),
        pytest.param("PW", None, "bearer", None, "pw-technical", id="password"),
        pytest.param("JWT", "xsuaa", "bearer", None, "alice", id="jwt-bearer"),
        pytest.param("JWT", None, None, NO_USER.format("OAuth2JWTBearer"), None, id="jwt-bearer-no-user"),
        pytest.param("JWT", "ias", "bearer", None, "alice", id="jwt-bearer-ias-user"),
        pytest.param("JWT", "expired", None, "The user token is not valid: Token expired.", None, id="jwt-bearer-expired"),
        pytest.param("UTE", "xsuaa", "bearer", None, "alice", id="user-token-exchange"),
        pytest.param("TX", "subject", "bearer", None, "alice", id="token-exchange"),
        pytest.param("TX", "xsuaa", None, NO_USER.format("OAuth2TokenExchange"), None, id="token-exchange-needs-subject-headers"),
        pytest.param("SAML", "xsuaa", "bearer", None, "alice", id="saml"),
        pytest.param("SAML", None, None, NO_USER.format("OAuth2SAMLBearerAssertion"), None, id="saml-no-user"),
        pytest.param("SAMLSYS", None, "bearer", None, "SYS_USER", id="saml-system-user"),
    ],
)
def test_destination_service_auth_tokens(land: Landscape, name: str, user: str | None, token_type: str | None,
                                         error: str | None, seen_by: str | None) -> None:
    headers: dict[str, str] = {}
    if user == "subject":
        headers = {"X-Subject-Token": land.user_token("alice", kind="ias"), "X-Subject-Token-Type": ACCESS_TOKEN}
    elif user is not None:
        kind = "ias" if user == "ias" else "xsuaa"
        headers = {"X-user-token": land.user_token("alice", kind=kind, ttl=-5 if user == "expired" else 3600)}
    answer = find(land, name, headers)
    assert answer.status == 200
    body = answer.json()
    config = body["destinationConfiguration"]
    assert (config["Name"], config["Type"]) == (name, "HTTP")
    (auth_token,) = body["authTokens"]
    if error is not None:
        assert auth_token["error"] == error and not auth_token.get("http_header")
        return
    assert auth_token["type"] == token_type and "error" not in auth_token
    seen = backend(land, auth_token["http_header"]["value"])
    if seen_by is None:  # a technical token: S/4HANA says what is missing
        assert (seen.status, seen.json()["error"]["message"]) == (401, NO_USER_TOKEN_MESSAGE)
    else:
        assert (seen.status, seen.json()["seenBy"]) == (200, seen_by)
    service_exchanges = land.exchanges.where(via="destination-service")
    assert service_exchanges.values("user") == ([] if name == "BASIC" else [seen_by if name != "CC" else None])


@pytest.mark.parametrize(
    "name, authorization, status",
    [
        pytest.param("S4", "Bearer not-a-token", 401, id="garbage-bearer"),
        pytest.param("S4", "user-token", 401, id="user-token-as-service-token"),
        pytest.param("NOPE", None, 404, id="unknown-name"),
        pytest.param("ENVONLY", None, 404, id="env-destination-not-in-service"),
    ],
)
def test_destination_service_refusals(land: Landscape, name: str, authorization: str | None, status: int) -> None:
    bearer = None
    if authorization == "user-token":
        bearer = land.user_token("alice")
    elif authorization is not None:
        bearer = authorization.split()[1]
    answer = find(land, name, bearer=bearer)
    assert answer.status == status and "ErrorMessage" in answer.json()
    assert land.calls.values("status") == [status]


def test_destination_service_principal_propagation_has_no_auth_tokens(land: Landscape) -> None:
    body = find(land, "S4", {"X-user-token": land.user_token("bob")}).json()
    assert "authTokens" not in body
    assert body["destinationConfiguration"] == {"Name": "S4", "Type": "HTTP", "URL": land.origins.onprem,
                                                "Authentication": "PrincipalPropagation", "ProxyType": "OnPremise",
                                                "CloudConnectorLocationId": "LOC1"}
    assert land.calls.where(service="destination").values("user") == ["bob"]


# ============================================================================ Connectivity + on-premise
def onprem(land: Landscape, headers: dict[str, str], url: str | None = None) -> Any:
    return land.handle(Request("GET", url or land.origins.onprem + FL_PATH, headers, via_proxy=True))


@pytest.mark.parametrize(
    "case, status, seen_by, carried_by",
    [
        pytest.param("exchange", 200, "alice", "proxy-token", id="user-in-proxy-token"),
        pytest.param("header", 200, "alice", "connectivity-header", id="user-in-connectivity-header"),
        pytest.param("no-user", 401, None, None, id="technical-proxy-token"),
        pytest.param("no-proxy-auth", 407, None, None, id="no-proxy-authorization"),
        pytest.param("user-token-as-proxy-token", 407, None, None, id="proxy-token-of-another-client"),
        pytest.param("unknown-location", 503, None, None, id="no-cloud-connector-for-location"),
        pytest.param("unmapped-host", 403, None, None, id="host-not-mapped"),
        pytest.param("expired-header-user", 401, None, "connectivity-header", id="expired-user-header"),
    ],
)
def test_onprem_through_the_proxy(land: Landscape, case: str, status: int, seen_by: str | None,
                                  carried_by: str | None) -> None:
    user = land.user_token("alice")
    headers: dict[str, str] = {"SAP-Connectivity-SCC-Location_ID": "LOC1"}
    url = None
    if case == "exchange":
        headers["Proxy-Authorization"] = f"Bearer {proxy_token(land, user)}"
    elif case in ("header", "expired-header-user"):
        headers["Proxy-Authorization"] = f"Bearer {proxy_token(land, None)}"
        header_user = user if case == "header" else land.user_token("alice", ttl=-1)
        headers["SAP-Connectivity-Authentication"] = f"Bearer {header_user}"
    elif case in ("no-user", "unknown-location", "unmapped-host"):
        headers["Proxy-Authorization"] = f"Bearer {proxy_token(land, None)}"
        if case == "unknown-location":
            headers["SAP-Connectivity-SCC-Location_ID"] = "ELSEWHERE"
        if case == "unmapped-host":
            url = "http://other-virtual:8000/sap/x"
    elif case == "user-token-as-proxy-token":
        headers["Proxy-Authorization"] = f"Bearer {user}"
    request = Request("GET", url or land.origins.onprem + FL_PATH, headers, via_proxy=True)
    checked = land.check_proxy(request)
    answer = land.handle(request)
    assert answer.status == status
    if status in (407, 503):
        assert checked is not None and checked.status == status
        assert land.calls.where(service="connectivity-proxy").values("status") == [status] * 2
        if status == 407:
            assert answer.headers["Proxy-Authenticate"].startswith("Bearer")
        return
    assert checked is None
    (call,) = land.calls
    assert (call.service, call.status, call.user, call.carried_by, call.via_proxy) == (
        "onprem", status, seen_by, carried_by, True)
    if status == 200:
        body = answer.json()
        assert (body["seenBy"], body["location"]) == ("alice", "LOC1") and len(body["d"]["results"]) == 3
    if case == "no-user":
        assert answer.json()["error"]["message"] == NO_USER_TOKEN_MESSAGE


def test_handle_never_raises(land: Landscape) -> None:
    weird = [
        Request("POST", xsuaa_token_url(land), {"Authorization": "Basic %%%"}, b"grant_type=client_credentials"),
        Request("POST", xsuaa_token_url(land), {"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}, b""),
        Request("POST", xsuaa_token_url(land), {}, b"\xff\xfe"),
        Request("GET", xsuaa_token_url(land)),
        Request("POST", f"{land.origins.ias}/oauth2/token", {}, b"grant_type=" + JWT_BEARER.encode()),
        Request("GET", "https://unknown.example/x"),
        Request("GET", land.origins.backend + "/x", {"Authorization": "Bearer a.b.c"}),
        Request("GET", land.origins.backend + "/x", {"Authorization": "SAML2.0 nothing"}),
        Request("GET", land.origins.onprem + "/x"),  # not via the proxy: not reachable
        Request("GET", land.origins.onprem + "/x", {"Proxy-Authorization": "Bearer x"}, via_proxy=True),
        Request("DELETE", f"{land.origins.destination}/destination-configuration/v1/destinations/S4"),
    ]
    statuses = [land.handle(r).status for r in weird]
    assert statuses == [401, 401, 401, 405, 401, 404, 401, 401, 404, 407, 405]
    assert len(land.traffic) == len(weird)


def test_backend_answers_and_csrf(land: Landscape) -> None:
    token = f"Bearer {land.user_token('alice')}"
    fetch = land.handle(Request("HEAD", land.origins.backend + "/sap/opu/odata/sap/API_X/",
                                {"Authorization": token, "X-CSRF-Token": "Fetch"}))
    assert fetch.status == 200 and fetch.body == b"" and fetch.headers["X-CSRF-Token"]
    assert backend(land, None).json()["error"]["message"] == NO_USER_TOKEN_MESSAGE
    assert backend(land, f"Bearer {land.user_token('alice', ttl=-1)}").json()["error"]["message"] == "Token expired"
    assert backend(land, f"Bearer {land.technical_token()}").status == 401
    assert backend(land, basic("BASIC_COMM_USER", "wrong")).status == 401
    # the iFlow accepts only tokens of the it-rt client (or of destinations that target it)
    user_for_app = backend(land, token, land.origins.iflow + "/http/orders")
    assert user_for_app.status == 403
    assert land.calls.values("status") == [200, 401, 401, 401, 401, 403]
    assert land.calls.values("user") == ["alice", None, None, None, None, "alice"]


def test_records_reprs_and_requests_show_no_secret(land: Landscape) -> None:
    request = Request("POST", xsuaa_token_url(land) + "?x=1", {"Authorization": "Bearer SECRET"}, b"assertion=SECRET")
    assert "SECRET" not in repr(request) and "x=1" not in repr(request)
    destination = land.destinations["CC"]
    assert destination.properties["clientSecret"] not in repr(destination)
    assert land.client_secret(land.app_client) not in repr(land)


# ============================================================================ through the library
def _app(**options: Any) -> Flask:
    app = Flask(__name__)
    Propagation(app, public_paths=["/health"], **options)

    @app.get("/call/<name>")
    def call(name: str) -> Any:
        r = propagation.session(name).get(FL_PATH if name.startswith("S4") else "/data")
        return jsonify(status=r.status_code, body=r.json())

    @app.get("/me")
    def me() -> Any:
        user, xsuaa = propagation.current_token(), propagation.current_xsuaa_token()
        return jsonify(user=user.user if user else None, azp=user.claims.get("azp") if user else None,
                       xsuaa_scopes=list(xsuaa.claims["scope"]) if xsuaa else None)

    return app


def get(client: Any, path: str, token: str) -> Any:
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


def test_flask_onprem_exact_traffic(btp_landscape: Landscape) -> None:
    btp_landscape.destination("S4 OnPremise PrincipalPropagation location=LOC1 sap-client=100")
    client = _app().test_client()
    response = get(client, "/call/S4", btp_landscape.user_token("alice"))
    assert response.status_code == 200 and response.json["body"]["seenBy"] == "alice"
    o = btp_landscape.origins
    assert [(t.method, t.url, t.status, t.via_proxy) for t in btp_landscape.traffic] == [
        ("GET", f"https://{o.uaadomain}/token_keys", 200, False),  # sap-xssec (httpx) fetches the keys
        ("POST", f"{o.destination_token}/oauth/token", 200, False),  # Destination service token
        ("GET", f"{o.destination}/destination-configuration/v1/destinations/S4", 200, False),
        ("POST", f"{o.connectivity_token}/oauth/token", 200, False),  # jwt-bearer for the proxy token
        ("GET", f"{o.onprem}{FL_PATH}", 200, True),
    ]
    assert [(e.grant, e.client, e.user, e.params) for e in btp_landscape.exchanges] == [
        ("client_credentials", btp_landscape.destination_client, None, {}),
        ("jwt-bearer", btp_landscape.connectivity_client, "alice", {"token_format": "jwt", "response_type": "token"}),
    ]
    (onprem_call,) = btp_landscape.calls.where(service="onprem")
    assert (onprem_call.user, onprem_call.location, onprem_call.query, onprem_call.carried_by) == (
        "alice", "LOC1", {"sap-client": "100"}, "proxy-token")
    assert onprem_call.token == btp_landscape.exchanges[1].issued


def test_two_users_interleaved_get_their_own_exchanges(btp_landscape: Landscape) -> None:
    btp_landscape.destination("S4 OnPremise PrincipalPropagation")
    client = _app().test_client()
    tokens = {user: btp_landscape.user_token(user) for user in ("alice", "bob")}
    seen = [get(client, "/call/S4", tokens[user]).json["body"]["seenBy"] for user in ("alice", "bob", "alice", "bob")]
    assert seen == ["alice", "bob", "alice", "bob"]
    jwt_bearer = btp_landscape.exchanges.where(grant="jwt-bearer")
    assert jwt_bearer.values("user") == ["alice", "bob"]  # one exchange per user, then the cache
    onprem = btp_landscape.calls.where(service="onprem")
    assert onprem.values("user") == seen
    for user in ("alice", "bob"):  # every call carried that user's own proxy token, never the other's
        (exchange,) = jwt_bearer.for_user(user)
        assert set(onprem.for_user(user).values("token")) == {exchange.issued}
        assert exchange.assertion == propagation.UserToken.parse(tokens[user]).fingerprint


def test_onprem_without_user_sends_nothing(btp_landscape: Landscape) -> None:
    btp_landscape.destination("S4 OnPremise PrincipalPropagation")
    with pytest.raises(propagation.MissingUserTokenError):
        propagation.session("S4").get(FL_PATH)
    assert btp_landscape.calls.values("service") == ["destination"]  # the configuration lookup only
    assert btp_landscape.exchanges.values("grant") == ["client_credentials"]


def test_onprem_header_mode(btp_landscape: Landscape) -> None:
    btp_landscape.destination("S4 OnPremise PrincipalPropagation connectivityMode=header source=env")
    token = btp_landscape.user_token("bob")
    assert propagation.session("S4", user_token=token).get(FL_PATH).json()["carriedBy"] == "connectivity-header"
    assert btp_landscape.exchanges.values("grant") == ["client_credentials"]
    assert btp_landscape.calls.values("user") == ["bob"]


def test_onprem_is_unreachable_without_the_proxy(btp_landscape: Landscape) -> None:
    with pytest.raises(requests.ConnectionError, match="only through the Connectivity proxy"):
        requests.get(btp_landscape.origins.onprem + "/sap/x", timeout=5)
    assert btp_landscape.traffic == []


@pytest.mark.parametrize(
    "line, user, seen_by, grants",
    [
        pytest.param("D NoAuthentication forward", "xsuaa", "alice", [], id="forward-service"),
        pytest.param("D NoAuthentication forward source=env", "xsuaa", "alice", [], id="forward-env"),
        pytest.param("D BasicAuthentication", None, "D_COMM_USER", [], id="basic-service"),
        pytest.param("D BasicAuthentication source=env", None, "D_COMM_USER", [], id="basic-env"),
        pytest.param("D OAuth2Password", None, "d-technical", ["password"], id="password-service"),
        pytest.param("D OAuth2Password source=env", None, "d-technical", ["password"], id="password-env"),
        pytest.param("D OAuth2ClientCredentials", None, None, ["client_credentials"], id="client-credentials-service"),
        pytest.param("D OAuth2JWTBearer", "xsuaa", "alice", ["jwt-bearer"], id="jwt-bearer-service"),
        pytest.param("D OAuth2JWTBearer source=env", "xsuaa", "alice", ["jwt-bearer"], id="jwt-bearer-env"),
        pytest.param("D OAuth2JWTBearer", "ias", "alice", ["jwt-bearer"], id="jwt-bearer-service-ias-user"),
        pytest.param("D OAuth2UserTokenExchange", "xsuaa", "alice", ["jwt-bearer"], id="user-token-exchange-service"),
        pytest.param("D OAuth2TokenExchange", "ias", "alice", ["token-exchange"], id="token-exchange-service"),
        pytest.param("D OAuth2TokenExchange source=env tokenService.body.resource=hr-api", "ias", "alice",
                     ["token-exchange"], id="token-exchange-env-resource"),
        pytest.param("D OAuth2SAMLBearerAssertion", "xsuaa", "alice", ["saml2-bearer"], id="saml-service"),
    ],
)
def test_every_destination_type_through_the_library(line: str, user: str | None, seen_by: str | None,
                                                    grants: list[str]) -> None:
    with emulate(line, accept_technical=True) as emulation:
        land = emulation.landscape
        token = land.user_token("alice", kind=user) if user else land.user_token("bob")
        with propagation.use_token(token):
            response = propagation.session("D").get("/data")
        assert response.status_code == 200
        assert response.json()["seenBy"] == seen_by
        source = land.destinations["D"].source
        via = "destination-service" if source == "service" else "app"
        assert land.exchanges.where(via=via, grant=lambda g: g != "client_credentials" or "ClientCredentials" in line
                                    ).values("grant") == grants
        assert land.calls.where(service="backend").values("user") == [seen_by]
        if source == "env":
            assert land.calls.where(service="destination") == []


def test_iflow_through_its_it_rt_binding(btp_landscape: Landscape) -> None:
    token = btp_landscape.user_token("alice")
    body = propagation.session(btp_landscape.iflow_binding, user_token=token).get("/http/orders").json()
    assert (body["seenBy"], body["service"], body["client"]) == ("alice", "iflow", btp_landscape.iflow_client)
    assert btp_landscape.exchanges.values("client") == [btp_landscape.iflow_client]


def test_wrong_client_secret_is_invalid_client(btp_landscape: Landscape) -> None:
    btp_landscape.destination("CLOUD OAuth2ClientCredentials source=env clientId=sb-app!t1 clientSecret=wrong")
    with pytest.raises(propagation.TokenExchangeError) as caught:
        propagation.session("CLOUD").get("/data")
    assert (caught.value.status, caught.value.error) == (401, "invalid_client")
    assert "wrong" not in str(caught.value)
    assert btp_landscape.calls == [] and btp_landscape.exchanges.values("error") == ["invalid_client"]


def test_expired_user_token_is_401_at_the_middleware(btp_landscape: Landscape) -> None:
    btp_landscape.destination("S4 OnPremise PrincipalPropagation")
    response = get(_app().test_client(), "/call/S4", btp_landscape.user_token("alice", ttl=-120))  # past the 60 s leeway
    assert response.status_code == 401 and response.json["error"] == "invalid_token"
    assert btp_landscape.traffic == []  # refused before any key fetch, exchange or call


def test_ias_to_xsuaa_at_the_middleware(btp_landscape: Landscape) -> None:
    app = _app(ias_to_xsuaa=True, xsuaa_trust_client_id=btp_landscape.trust_client_id)
    response = get(app.test_client(), "/me", btp_landscape.user_token("alice", kind="ias", scopes=["Read"]))
    assert response.status_code == 200
    assert response.json["xsuaa_scopes"] == ["openid", f"{btp_landscape.xsappname}.Read"]
    (exchange,) = btp_landscape.exchanges
    assert (exchange.service, exchange.grant, exchange.client, exchange.user, exchange.subject) == (
        "xsuaa", "jwt-bearer", btp_landscape.app_client, "alice", "ias")
    refused = get(app.test_client(), "/me", btp_landscape.user_token("bob", kind="ias", cross_consumption=False))
    assert refused.status_code == 401 and "xsuaa-cross-consumption" in refused.json["error_description"]


def test_public_client_at_the_middleware(btp_landscape: Landscape) -> None:
    app = _app(public_clients=["mobile-app"])
    response = get(app.test_client(), "/me", btp_landscape.user_token("alice", kind="ias", public_client="mobile-app"))
    assert response.status_code == 200 and response.json["azp"] == btp_landscape.ias_client
    assert [(e.service, e.grant, e.client, e.user) for e in btp_landscape.exchanges] == [
        ("ias", "jwt-bearer", btp_landscape.ias_client, "alice")]


@pytest.mark.btp_landscape("S4 OnPremise PrincipalPropagation", tenants=("provider", "acme"))
def test_subscriber_tenant_in_process(btp_landscape: Landscape) -> None:
    token = btp_landscape.user_token("alice", tenant="acme")
    body = get(_app().test_client(), "/call/S4", token).json["body"]
    assert (body["seenBy"], body["tenant"]) == ("alice", "acme")
    assert btp_landscape.exchanges.values("tenant") == ["acme", "acme"]
    assert {e.url for e in btp_landscape.exchanges} == {"https://acme.authentication.sandbox.test/oauth/token"}
    assert btp_landscape.calls.values("tenant") == ["acme", "acme"]


def test_loopback_origins_validate_with_sap_xssec() -> None:
    origins = Origins(
        xsuaa="https://localhost:18443", uaadomain="localhost:18443", ias="https://127.0.0.1:19443",
        ias_domain="0.0.1:19443", destination="https://localhost:18444", destination_token="https://localhost:18443",
        connectivity_token="https://localhost:18443", proxy_host="127.0.0.1", proxy_port=18445,
        backend="https://localhost:18446", iflow="https://localhost:18447",
    )
    with emulate("S4 OnPremise PrincipalPropagation", origins=origins) as emulation:
        land = emulation.landscape
        engine = propagation.Propagator.from_env()
        xsuaa_user = engine.validate(land.user_token("alice"))
        ias_user = engine.validate(land.user_token("bob", kind="ias"))
        assert (xsuaa_user.kind, xsuaa_user.user, ias_user.kind, ias_user.claims["email"]) == (
            "xsuaa", "alice", "ias", "bob@example.com")
        assert engine.session("S4", user_token=xsuaa_user).get(FL_PATH).json()["seenBy"] == "alice"
        assert land.traffic.values("url")[:3] == [
            "https://localhost:18443/token_keys",
            "https://127.0.0.1:19443/.well-known/openid-configuration",
            "https://127.0.0.1:19443/oauth2/certs",
        ]


def test_records_never_hold_a_token(btp_landscape: Landscape, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: set[str] = set()
    handle = btp_landscape.handle

    def spy(request: Request) -> Any:
        for header in ("Authorization", "Proxy-Authorization", "X-user-token", "SAP-Connectivity-Authentication"):
            if request.headers.get(header):
                seen.add(request.headers[header].split()[-1])
        response = handle(request)
        text = response.body.decode("utf-8", "replace")
        seen.update(re.findall(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", text))
        return response

    monkeypatch.setattr(btp_landscape, "handle", spy)
    btp_landscape.destination("S4 OnPremise PrincipalPropagation connectivityMode=header")
    btp_landscape.destination("JWT OAuth2JWTBearer")
    client = _app().test_client()
    for user in ("alice", "bob"):
        token = btp_landscape.user_token(user)
        seen.add(token)
        assert get(client, "/call/S4", token).json["body"]["seenBy"] == user
        assert get(client, "/call/JWT", token).json["body"]["seenBy"] == user
    secrets_ = {btp_landscape.client_secret(c) for c in (btp_landscape.app_client, btp_landscape.destination_client,
                                                         btp_landscape.connectivity_client)}
    dumped = json.dumps([dataclasses.asdict(r) for r in (*btp_landscape.exchanges, *btp_landscape.calls,
                                                         *btp_landscape.traffic)])
    dumped += repr(btp_landscape.exchanges) + repr(btp_landscape.calls)
    assert len(seen) >= 6
    assert not [s for s in seen | secrets_ if len(s) > 8 and s in dumped]


def test_environment_and_engine_are_restored() -> None:
    before = dict(os.environ)
    os.environ["PROPAGATION_CACHE_URL"] = "redis://must-not-be-used:6379"
    try:
        with emulate("S4 OnPremise PrincipalPropagation") as emulation:
            assert "PROPAGATION_CACHE_URL" not in os.environ
            assert json.loads(os.environ["VCAP_SERVICES"]).keys() == {"xsuaa", "identity", "destination", "connectivity", "it-rt"}
            assert json.loads(os.environ["destinations"]) == []
            emulation.landscape.destination("E NoAuthentication source=env")
            assert [d["name"] for d in json.loads(os.environ["destinations"])] == ["E"]
            assert propagation.destination("E").url == emulation.landscape.origins.backend
        assert os.environ["PROPAGATION_CACHE_URL"] == "redis://must-not-be-used:6379"
    finally:
        os.environ.pop("PROPAGATION_CACHE_URL", None)
    assert dict(os.environ) == before


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_other_hosts_pass_through(btp_landscape: Landscape, local_server: str) -> None:
    assert requests.get(local_server, timeout=5).text == "hello"
    assert httpx.get(local_server, timeout=5).text == "hello"
    assert btp_landscape.traffic == []


# ============================================================================ the plugin
MYAPP = '''\
from flask import Flask, jsonify
import propagation
from propagation.flask import Propagation


def create_app() -> Flask:
    app = Flask(__name__)
    Propagation(app, public_paths=["/health"])

    @app.get("/functional-locations")
    def functional_locations():
        r = propagation.session("S4").get("/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation")
        return jsonify(r.json()), r.status_code

    return app
'''

TEST_MYAPP = '''\
from myapp import create_app


def test_s4_sees_the_calling_user(btp_landscape):
    btp_landscape.destination("S4 OnPremise PrincipalPropagation location=LOC1")
    client = create_app().test_client()
    for user in ("alice", "bob"):
        token = btp_landscape.user_token(user, scopes=["Read"])
        r = client.get("/functional-locations", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json["seenBy"] == user     # S/4HANA saw that user
    assert btp_landscape.calls.where(service="onprem").values("user") == ["alice", "bob"]
    assert btp_landscape.exchanges.where(grant="jwt-bearer").values("user") == ["alice", "bob"]
'''


def test_readme_example_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(myapp=MYAPP, test_myapp=TEST_MYAPP)
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=1)


def test_readme_shows_the_tested_example() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if "propagation.testing" not in readme or "## Testing your app" not in readme:
        pytest.skip("README.md has no 'Testing your app: propagation.testing' section yet")
    blocks = re.findall(r"```python\n(.*?)```", readme.split("## Testing your app", 1)[1], re.S)
    assert "# myapp.py\n" + MYAPP in blocks and "# test_myapp.py\n" + TEST_MYAPP in blocks


def test_marker_configures_the_landscape(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        '''
        import pytest

        @pytest.mark.btp_landscape("S4 OnPremise PrincipalPropagation", "X OAuth2JWTBearer", tenants=("provider", "acme"))
        def test_marked(btp_landscape):
            assert sorted(btp_landscape.destinations) == ["S4", "X"]
            assert list(btp_landscape.tenants) == ["provider", "acme"]

        def test_emulation_exposes_its_mocks(btp_emulation):
            import responses
            btp_emulation.responses.add(responses.GET, "https://mine.example/x", json={"mine": True})
            import requests
            assert requests.get("https://mine.example/x", timeout=5).json() == {"mine": True}
        '''
    )
    pytester.runpytest("-p", "no:cacheprovider", "--strict-markers").assert_outcomes(passed=2)


def test_plugin_defines_no_autouse_fixture_and_costs_nothing_unused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        '''
        import sys

        def test_untouched(request):
            assert not [n for n in request.fixturenames if n.startswith("btp_")]
            loaded = [m for m in ("responses", "propagation.testing.landscape", "propagation.testing._transport")
                      if m in sys.modules]
            assert loaded == []
        '''
    )
    # A fresh process: nothing of the emulation may be imported, nor any fixture of ours be active.
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    fixtures = pytester.runpytest("-p", "no:cacheprovider", "--fixtures")
    assert "btp_landscape" in fixtures.stdout.str() and "btp_emulation" in fixtures.stdout.str()


def test_importing_the_plugin_imports_nothing_heavy() -> None:
    code = (
        "import sys, propagation.testing.plugin as p\n"
        "heavy = ['responses', 'respx', 'jwt', 'cryptography', 'httpx', 'flask', 'sap.xssec',"
        " 'propagation.testing.landscape', 'propagation.testing._transport']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param("", "needs at least a name", id="empty"),
        pytest.param("S4 Frobnicate", "cannot read 'Frobnicate'", id="unknown-word"),
        pytest.param("S4 ClientCertificateAuthentication", "cannot read 'ClientCertificateAuthentication'", id="not-emulated-type"),
        pytest.param("S4 =x", "'=x' names no property", id="empty-property-name"),
        pytest.param("S4 target=nowhere", "target must be backend, iflow or onprem", id="unknown-target"),
        pytest.param("S4 source=cockpit", "source must be 'service' or 'env'", id="unknown-source"),
    ],
)
def test_bad_destination_lines_are_refused_with_the_culprit(line: str, message: str) -> None:
    landscape = Landscape()
    with pytest.raises(ValueError, match=re.escape(message)):
        landscape.destination(line)
