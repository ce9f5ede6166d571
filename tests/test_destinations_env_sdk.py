"""``destinations`` entries in the SAP Cloud SDK's own form (issue 17 item 3), with the SDK's
spec vectors (cloud-sdk-js ``destination-from-env.spec.ts``): lower-case ``username`` /
``password`` and the other camelCase keys read case-insensitively as the Destination-service
properties they stand for, and ``BasicAuthentication`` inferred from credentials when no
``Authentication`` is given (``sanitizeDestination`` → ``getAuthenticationType``). Asserted on
the exact request the target and the token endpoint see."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses

from propagation import ConfigurationError, Propagator
from propagation.bindings import Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.destinations.env import unknown_keys
from propagation.destinations.env_entries import destinations_from_env
from propagation.exchange.oauth import OAuthClient

import jwtkit

TARGET = "https://mys4hana.com"
TOKEN_URL = "https://idp.example.com/oauth/token"


def engine(*entries: dict[str, Any]) -> Propagator:
    return Propagator(environ={"destinations": json.dumps(list(entries))}, bindings=Bindings([]),
                      cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, sleep=lambda s: None))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# -- the SDK's spec vectors ---------------------------------------------------------------------------
@pytest.mark.parametrize("entry, authentication, inferred", [
    pytest.param({"name": "FINAL-DESTINATION", "url": TARGET, "username": "myuser", "password": "mypw"},
                 "BasicAuthentication", True, id="environmentDestination"),
    pytest.param({"Name": "TESTINATION", "URL": TARGET}, "NoAuthentication", True, id="environmentDestinationConfig"),
    pytest.param({"forwardAuthToken": True, "url": TARGET, "name": "FORWARD-TOKEN-DESTINATION"}, "NoAuthentication",
                 True, id="destinationWithForwarding"),
    pytest.param({"name": "MockedDestination", "url": "https://example.com"}, "NoAuthentication", True,
                 id="registerDestination-mockDestination"),
    pytest.param({"name": "FINAL-DESTINATION", "url": TARGET, "username": "myuser", "password": "mypw",
                  "authentication": "NoAuthentication"}, "NoAuthentication", False, id="explicit-authentication-wins"),
])
def test_sdk_spec_vectors(entry, authentication, inferred):
    (destination,) = destinations_from_env({"destinations": json.dumps([entry])}, Bindings([])).values()
    assert (destination.authentication, destination.authentication_inferred) == (authentication, inferred)
    assert unknown_keys({"destinations": json.dumps([entry])}) == []


@pytest.mark.parametrize("entry, header", [
    pytest.param({"name": "S4", "url": TARGET, "username": "myuser", "password": "mypw"}, basic("myuser", "mypw"),
                 id="sdk-username-password"),
    pytest.param({"name": "S4", "url": TARGET, "USERNAME": "myuser", "Password": "mypw"}, basic("myuser", "mypw"),
                 id="keys-case-insensitive"),
    pytest.param({"name": "S4", "url": TARGET, "User": "myuser", "Password": "mypw"}, basic("myuser", "mypw"),
                 id="own-User-Password-without-Authentication"),
    pytest.param({"name": "S4", "url": TARGET, "username": "myuser", "password": "mypw",
                  "authentication": "basicauthentication"}, basic("myuser", "mypw"), id="lower-case-authentication"),
    pytest.param({"name": "S4", "url": TARGET, "username": "myuser"}, None, id="user-without-password-no-auth"),
])
def test_the_target_gets_the_credentials(rsps, entry, header):
    rsps.get(f"{TARGET}/Items", json={})
    assert engine(entry).session("S4").get("/Items").status_code == 200
    (call,) = rsps.calls
    assert call.request.headers.get("Authorization") == header


def test_sdk_oauth_keys_drive_the_token_request(rsps):
    entry = {"name": "S4", "url": TARGET, "authentication": "OAuth2ClientCredentials", "tokenServiceUrl": TOKEN_URL,
             "clientId": "sdk-client", "clientSecret": "sdk-secret-VALUE", "type": "HTTP", "proxyType": "Internet"}
    rsps.post(TOKEN_URL, json={"access_token": "tok-1", "expires_in": 3600})
    rsps.get(f"{TARGET}/Items", json={})
    engine(entry).session("S4").get("/Items")
    token_call, target_call = rsps.calls
    assert {k: v[0] for k, v in parse_qs(token_call.request.body).items()} == {
        "grant_type": "client_credentials", "client_id": "sdk-client", "client_secret": "sdk-secret-VALUE"}
    assert target_call.request.headers["Authorization"] == "Bearer tok-1"


def test_sdk_headers_query_parameters_sap_client_and_trust(rsps):
    entry = {"name": "S4", "url": TARGET, "headers": {"X-Api-Key": "key-VALUE"}, "queryParameters": {"lang": "en"},
             "sapClient": "100", "isTrustingAllCertificates": True}
    rsps.get(f"{TARGET}/Items", json={})
    e = engine(entry)
    assert e.destination("S4").strict_ssl is False
    e.session("S4").get("/Items")
    (call,) = rsps.calls
    assert call.request.headers["X-Api-Key"] == "key-VALUE"
    assert parse_qs(call.request.url.split("?", 1)[1]) == {"lang": ["en"], "sap-client": ["100"]}


def test_forward_auth_token_vector_forwards_the_user(rsps, xsuaa):
    rsps.get(f"{TARGET}/Items", json={})
    user = xsuaa.token()
    engine({"forwardAuthToken": True, "url": TARGET, "name": "FWD"}).session("FWD", user_token=user).get("/Items")
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {user}"


@pytest.mark.parametrize("entry, message", [
    pytest.param({"name": "S4", "url": TARGET, "username": "a", "User": "b", "password": "pw-VALUE"},
                 "has both 'username' and 'User'", id="username-and-User"),
    pytest.param({"name": "S4", "url": TARGET, "headers": {"X-A": "1"}, "URL.headers.X-A": "2"},
                 "has both 'headers.X-A' and 'URL.headers.X-A'", id="headers-and-URL.headers"),
    pytest.param({"name": "S4", "url": TARGET, "headers": ["X-A"]}, "'headers' must be an object", id="headers-not-object"),
    pytest.param({"name": "S4", "url": TARGET, "type": "MAIL"}, "only HTTP destinations", id="type-mail"),
])
def test_sdk_form_mistakes_are_refused(entry, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        destinations_from_env({"destinations": json.dumps([entry])}, Bindings([]))
    assert "pw-VALUE" not in str(info.value)


@pytest.fixture
def xsuaa() -> jwtkit.Xsuaa:
    return jwtkit.Xsuaa()
