"""Outbound calls per Authentication type: the exact traffic to the token endpoint and the
target, fail-closed behaviour, caching per user, 401 retry and redirect stripping."""

from __future__ import annotations

import base64
import json
import logging
import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

import propagation
from propagation import MissingUserTokenError, Propagator, TokenExchangeError, ConfigurationError
from propagation.bindings import Binding, Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.exchange.oauth import OAuthClient
from propagation.tokens import UserToken


TOKEN_URL = "https://idp.example.com/oauth/token"
TARGET = "https://backend.example.com/odata/v4"
SECRET = "dest-secret-VALUE"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def form(call: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def engine(destinations: list[dict[str, Any]], bindings: list[Binding] = (), clock: Any = None) -> Propagator:
    cache = MemoryTokenCache(clock=clock) if clock else MemoryTokenCache()
    return Propagator(
        environ={"destinations": json.dumps(destinations)},
        bindings=Bindings(bindings),
        cache=cache,
        oauth=OAuthClient(retries=0, sleep=lambda s: None),
    )


class IdP:
    """A token endpoint stand-in: issues a distinct token per (grant, user, call)."""

    def __init__(self, rsps: responses.RequestsMock, url: str = TOKEN_URL) -> None:
        self.count = 0
        rsps.add_callback(responses.POST, url, callback=self, content_type="application/json")

    def __call__(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.count += 1
        fields = {k: v[0] for k, v in parse_qs(request.body).items()}
        subject = fields.get("assertion") or fields.get("subject_token")
        who = UserToken.parse(subject).user if subject else fields.get("username", "technical")
        return 200, {}, json.dumps({"access_token": f"at-{who}-{self.count}", "token_type": "bearer", "expires_in": 3600})


def dest(authentication: str, **extra: Any) -> dict[str, Any]:
    return {"name": "S4", "url": TARGET, "Authentication": authentication, "tokenServiceURL": TOKEN_URL,
            "clientId": "dest-client", "clientSecret": SECRET, **extra}


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# -- every type: exact traffic -------------------------------------------------------------
@pytest.mark.parametrize(
    "destination, expected_form, expected_auth",
    [
        pytest.param(dest("OAuth2JWTBearer"), {"grant_type": JWT_BEARER, "assertion": "<user>",
                     "client_id": "dest-client", "client_secret": SECRET}, "Bearer at-alice@example.com-1", id="jwt-bearer"),
        pytest.param(dest("OAuth2UserTokenExchange"), {"grant_type": JWT_BEARER, "assertion": "<user>",
                     "client_id": "dest-client", "client_secret": SECRET}, "Bearer at-alice@example.com-1", id="user-token-exchange"),
        pytest.param(dest("OAuth2TokenExchange", **{"tokenService.body.requested_token_type": "access_token",
                                                    "tokenService.body.resource": "urn:sap:identity:application:provider:name:s4"}),
                     {"grant_type": TOKEN_EXCHANGE, "subject_token": "<user>",
                      "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                      "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
                      "resource": "urn:sap:identity:application:provider:name:s4",
                      "client_id": "dest-client", "client_secret": SECRET}, "Bearer at-alice@example.com-1", id="rfc8693"),
        pytest.param(dest("OAuth2ClientCredentials", scope="read write"), {"grant_type": "client_credentials", "scope": "read write",
                     "client_id": "dest-client", "client_secret": SECRET}, "Bearer at-technical-1", id="client-credentials"),
        pytest.param(dest("OAuth2Password", User="svc", Password="pw-VALUE"), {"grant_type": "password", "username": "svc",
                     "password": "pw-VALUE", "client_id": "dest-client", "client_secret": SECRET}, "Bearer at-svc-1", id="password"),
    ],
)
def test_oauth_types_exact_traffic(rsps, xsuaa, destination, expected_form, expected_auth):
    idp = IdP(rsps)
    rsps.get(f"{TARGET}/Items", json={"value": []})
    user = xsuaa.token("alice@example.com")
    with propagation.use_token(user):
        r = engine([destination]).session("S4").get("/Items")
    assert r.status_code == 200
    assert [c.request.url for c in rsps.calls] == [TOKEN_URL, f"{TARGET}/Items"]
    expected = {k: (user if v == "<user>" else v) for k, v in expected_form.items()}
    assert form(rsps.calls[0]) == expected
    assert "Authorization" not in rsps.calls[0].request.headers  # credentials in body by default
    assert rsps.calls[1].request.headers["Authorization"] == expected_auth
    assert idp.count == 1


def test_credentials_by_http_basic_and_token_request_shaping(rsps, xsuaa):
    IdP(rsps, TOKEN_URL)
    rsps.get(f"{TARGET}/Items", json={})
    d = dest("OAuth2JWTBearer", **{"tokenService.addClientCredentialsInBody": "false",
                                    "tokenServiceURL.headers.X-Tenant": "t1",
                                    "tokenServiceURL.queries.foo": "bar"})
    with propagation.use_token(xsuaa.token()):
        engine([d]).session("S4").get("Items")
    call = rsps.calls[0]
    assert urlsplit(call.request.url).query == "foo=bar"
    assert call.request.headers["X-Tenant"] == "t1"
    assert call.request.headers["Authorization"] == "Basic " + base64.b64encode(f"dest-client:{SECRET}".encode()).decode()
    assert "client_secret" not in form(call)


def test_forward_auth_token_and_basic(rsps, xsuaa):
    rsps.get(f"{TARGET}/a", json={})
    rsps.get("https://basic.example.com/b", json={})
    user = xsuaa.token()
    e = engine([{"name": "FWD", "url": TARGET, "forwardAuthToken": True},
                {"name": "BASIC", "url": "https://basic.example.com", "Authentication": "BasicAuthentication",
                 "User": "u", "Password": "p-VALUE"}])
    with propagation.use_token(user):
        e.session("FWD").get("a")
        e.session("BASIC").get("b")
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {user}"
    assert rsps.calls[1].request.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p-VALUE").decode()


# -- fail closed ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(dest("OAuth2JWTBearer"), id="jwt-bearer"),
        pytest.param(dest("OAuth2UserTokenExchange"), id="user-token-exchange"),
        pytest.param(dest("OAuth2TokenExchange"), id="token-exchange"),
        pytest.param(dest("OAuth2SAMLBearerAssertion"), id="saml-bearer"),
        pytest.param(dest("PrincipalPropagation", ProxyType="OnPremise"), id="principal-propagation"),
        pytest.param({"name": "S4", "url": TARGET, "forwardAuthToken": True}, id="forward-auth-token"),
        pytest.param({"name": "S4", "serviceBinding": "my-cpi"}, id="service-binding"),
    ],
)
def test_no_user_raises_before_any_request(rsps, entry, xsuaa):
    cpi = Binding(name="my-cpi", label="it-rt", credentials={"oauth": {
        "url": TARGET, "tokenurl": TOKEN_URL, "clientid": "cpi", "clientsecret": SECRET}})
    e = engine([entry], [cpi])
    s = e.session("S4")
    with pytest.raises(MissingUserTokenError, match="strictly necessary") as info:
        s.get("/Items")
    assert info.value.destination == "S4"
    assert len(rsps.calls) == 0  # neither the token endpoint nor the target saw anything
    # A technical (client_credentials) token is no user either.
    with propagation.use_token(xsuaa.token(grant_type="client_credentials")), pytest.raises(MissingUserTokenError):
        s.get("/Items")
    assert len(rsps.calls) == 0


def test_binding_destination_jwt_bearer_for_user(rsps, xsuaa):
    IdP(rsps)
    rsps.post("https://cpi.example.com/http/iflow", json={})
    cpi = Binding(name="my-cpi", label="it-rt", credentials={"oauth": {
        "url": "https://cpi.example.com", "tokenurl": TOKEN_URL, "clientid": "cpi", "clientsecret": SECRET}})
    e = Propagator(environ={}, bindings=Bindings([cpi]))
    user = xsuaa.token("carol@example.com")
    r = e.session("my-cpi", user_token=user, csrf=False).post("/http/iflow", json={"x": 1})
    assert r.status_code == 200
    assert form(rsps.calls[0])["grant_type"] == JWT_BEARER
    assert form(rsps.calls[0])["assertion"] == user
    assert rsps.calls[1].request.headers["Authorization"] == "Bearer at-carol@example.com-1"


# -- caching and isolation -----------------------------------------------------------------
def test_two_users_interleaved_exchange_once_each_and_never_mix(rsps, xsuaa):
    idp = IdP(rsps)
    rsps.get(f"{TARGET}/Items", json={})
    e = engine([dest("OAuth2JWTBearer")])
    users = {"alice@example.com": xsuaa.token("alice@example.com"), "bob@example.com": xsuaa.token("bob@example.com")}
    sent: list[tuple[str, str]] = []
    for i in range(20):
        name = "alice@example.com" if i % 2 == 0 else "bob@example.com"
        with propagation.use_token(users[name]):
            e.session("S4").get("/Items")
        sent.append((name, rsps.calls[-1].request.headers["Authorization"]))
    assert idp.count == 2
    for name, header in sent:
        assert header.startswith(f"Bearer at-{name}-")
    assert len({h for _, h in sent}) == 2


def test_expired_exchanged_token_is_exchanged_again(rsps, xsuaa):
    now = [1_000_000.0]
    idp = IdP(rsps)
    rsps.get(f"{TARGET}/Items", json={})
    e = Propagator(environ={"destinations": json.dumps([dest("OAuth2JWTBearer")])}, bindings=Bindings([]),
                   cache=MemoryTokenCache(clock=lambda: now[0]), oauth=OAuthClient(clock=lambda: now[0]))
    user = xsuaa.token()
    s = e.session("S4", user_token=user)
    s.get("/Items")
    s.get("/Items")
    assert idp.count == 1
    now[0] += 3600  # past expires_in
    s.get("/Items")
    assert idp.count == 2
    assert rsps.calls[-1].request.headers["Authorization"] == "Bearer at-alice@example.com-2"


def test_client_credentials_cached_per_tenant(rsps, xsuaa):
    idp = IdP(rsps)
    rsps.get(f"{TARGET}/Items", json={})
    e = engine([dest("OAuth2ClientCredentials")])
    for zid in ("t1", "t2", "t1", "t2"):
        with propagation.use_token(xsuaa.token(zid=zid)):
            e.session("S4").get("/Items")
    assert idp.count == 2


def test_refused_exchange_raises_and_target_sees_nothing(rsps, xsuaa):
    rsps.post(TOKEN_URL, status=400, json={"error": "invalid_grant", "error_description": "user not found"})
    target = rsps.get(f"{TARGET}/Items", json={})
    with propagation.use_token(xsuaa.token()), pytest.raises(TokenExchangeError) as info:
        engine([dest("OAuth2JWTBearer")]).session("S4").get("/Items")
    assert (info.value.status, info.value.error) == (400, "invalid_grant")
    assert target.call_count == 0


# -- 401 retry -----------------------------------------------------------------------------
def test_401_drops_cached_token_reexchanges_and_retries_once(rsps, xsuaa):
    idp = IdP(rsps)
    rsps.get(f"{TARGET}/Items", status=401)
    rsps.get(f"{TARGET}/Items", json={"ok": True})
    user = xsuaa.token()
    r = engine([dest("OAuth2JWTBearer")]).session("S4", user_token=user).get("/Items")
    assert r.status_code == 200
    assert idp.count == 2
    target_calls = [c for c in rsps.calls if c.request.url.startswith(TARGET)]
    assert [c.request.headers["Authorization"] for c in target_calls] == [
        "Bearer at-alice@example.com-1", "Bearer at-alice@example.com-2"]
    assert [h.status_code for h in r.history] == [401]


def test_401_twice_is_returned_after_one_retry(rsps, xsuaa):
    idp = IdP(rsps)
    rsps.get(f"{TARGET}/Items", status=401)
    r = engine([dest("OAuth2JWTBearer")]).session("S4", user_token=xsuaa.token()).get("/Items")
    assert r.status_code == 401
    assert idp.count == 2
    assert len([c for c in rsps.calls if c.request.url.startswith(TARGET)]) == 2


def test_401_for_forwarded_token_is_not_retried(rsps, xsuaa):
    rsps.get(f"{TARGET}/Items", status=401)
    r = engine([{"name": "S4", "url": TARGET, "forwardAuthToken": True}]).session("S4", user_token=xsuaa.token()).get("/Items")
    assert r.status_code == 401
    assert len(rsps.calls) == 1


# -- redirects and protected headers ---------------------------------------------------------
def test_redirect_to_other_host_carries_no_credentials(rsps, xsuaa):
    IdP(rsps)
    rsps.get(f"{TARGET}/Items", status=302, headers={"Location": "https://evil.example.net/steal"})
    rsps.get("https://evil.example.net/steal", json={})
    s = engine([dest("OAuth2JWTBearer", **{"URL.headers.X-Custom": "c"})]).session("S4", user_token=xsuaa.token())
    r = s.get("/Items", headers={"SAP-Connectivity-Authentication": "Bearer x", "Proxy-Authorization": "Bearer y"})
    assert r.status_code == 200
    first, second = rsps.calls[1].request, rsps.calls[2].request
    assert first.headers["Authorization"].startswith("Bearer at-")
    assert "SAP-Connectivity-Authentication" not in first.headers and "Proxy-Authorization" not in first.headers
    assert second.url == "https://evil.example.net/steal"
    assert not {h.lower() for h in second.headers} & {"authorization", "proxy-authorization", "sap-connectivity-authentication"}


def test_redirect_on_same_host_keeps_credentials(rsps, xsuaa):
    IdP(rsps)
    rsps.get(f"{TARGET}/Items", status=302, headers={"Location": f"{TARGET}/Items2"})
    rsps.get(f"{TARGET}/Items2", json={})
    engine([dest("OAuth2JWTBearer")]).session("S4", user_token=xsuaa.token()).get("/Items")
    assert rsps.calls[2].request.headers["Authorization"].startswith("Bearer at-")


def test_absolute_url_to_other_host_gets_no_credentials(rsps, xsuaa):
    rsps.get("https://other.example.org/x", json={})
    engine([dest("OAuth2JWTBearer")]).session("S4", user_token=xsuaa.token()).get("https://other.example.org/x")
    assert len(rsps.calls) == 1
    assert "Authorization" not in rsps.calls[0].request.headers


# -- URL shaping ---------------------------------------------------------------------------
def test_url_join_queries_headers_sap_client_and_timeout(rsps, xsuaa):
    rsps.get("https://s4.example.com/sap/opu/odata/sap/API_X/Items", json={})
    e = engine([{"name": "S4", "url": "https://s4.example.com/sap/opu/odata/sap", "timeout": 1500,
                 "sap-client": "100", "URL.queries.$format": "json", "URL.headers.X-Requested-With": "propagation"}])
    s = e.session("S4")
    sent: dict[str, Any] = {}
    original = requests.Session.send

    def spy(self: requests.Session, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        sent.update(kw)
        return original(self, request, **kw)

    requests.Session.send = spy  # type: ignore[method-assign]
    try:
        s.get("/API_X/Items", params={"$top": "5"})
    finally:
        requests.Session.send = original  # type: ignore[method-assign]
    req = rsps.calls[0].request
    assert urlsplit(req.url).path == "/sap/opu/odata/sap/API_X/Items"
    assert parse_qs(urlsplit(req.url).query) == {"sap-client": ["100"], "$format": ["json"], "$top": ["5"]}
    assert req.headers["X-Requested-With"] == "propagation"
    assert sent["timeout"] == 1.5


def test_missing_client_is_a_configuration_error(rsps, xsuaa):
    with propagation.use_token(xsuaa.token()), pytest.raises(ConfigurationError, match="tokenServiceURL"):
        engine([{"name": "S4", "url": TARGET, "Authentication": "OAuth2JWTBearer"}]).session("S4").get("/x")
    assert len(rsps.calls) == 0


def test_logs_contain_no_token_or_secret(rsps, xsuaa, caplog):
    IdP(rsps)
    rsps.get(f"{TARGET}/Items", status=401)
    caplog.set_level(logging.DEBUG)
    user = xsuaa.token()
    engine([dest("OAuth2JWTBearer")]).session("S4", user_token=user).get("/Items")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "destination=S4" in text
    for secret in (user, SECRET, "at-alice@example.com-1", "at-alice@example.com-2", xsuaa.clientsecret):
        assert secret not in text


@pytest.mark.parametrize(
    "entry, message",
    [
        pytest.param({"name": "S4", "url": TARGET, "Authentication": "BasicAuthentication", "User": "u"},
                     "BasicAuthentication needs 'User' and 'Password'", id="basic-without-password"),
        pytest.param(dest("OAuth2Password", Password="pw-VALUE"), "OAuth2Password needs 'User' and 'Password'",
                     id="password-grant-without-user"),
        pytest.param(dest("ClientCertificateAuthentication"), "needs the Destination service", id="client-certificate"),
    ],
)
def test_incomplete_destination_is_a_configuration_error(rsps, xsuaa, entry, message):
    with propagation.use_token(xsuaa.token()), pytest.raises(ConfigurationError, match=message) as info:
        engine([entry]).session("S4").get("/x")
    assert "pw-VALUE" not in str(info.value) and SECRET not in str(info.value)
    assert len(rsps.calls) == 0


def test_binding_destination_with_x509_client_uses_mtls_and_leaves_no_key_file(rsps, xsuaa):
    from test_oauth import self_signed

    cert_pem, key_pem = self_signed()
    seen: dict[str, Any] = {}

    def token_endpoint(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        certfile, keyfile = request.req_kwargs["cert"]
        with open(certfile) as c, open(keyfile) as k:
            seen.update(cert=c.read(), key=k.read(), paths=(certfile, keyfile), form=parse_qs(request.body))
        return 200, {}, json.dumps({"access_token": "at-mtls", "expires_in": 600})

    rsps.add_callback(responses.POST, TOKEN_URL, callback=token_endpoint, content_type="application/json")
    rsps.post("https://cpi.example.com/http/iflow", json={})
    cpi = Binding(name="my-cpi", label="it-rt", credentials={"oauth": {
        "url": "https://cpi.example.com", "tokenurl": TOKEN_URL, "clientid": "cpi", "certificate": cert_pem, "key": key_pem}})
    user = xsuaa.token()
    Propagator(environ={}, bindings=Bindings([cpi])).session("my-cpi", user_token=user, csrf=False).post("/http/iflow")
    assert (seen["cert"], seen["key"]) == (cert_pem, key_pem)
    assert seen["form"]["client_id"] == ["cpi"] and "client_secret" not in seen["form"]
    assert seen["form"]["assertion"] == [user]
    assert rsps.calls[1].request.headers["Authorization"] == "Bearer at-mtls"
    assert not any(os.path.exists(p) for p in seen["paths"])


@pytest.mark.parametrize(
    "body, expected_form, issued, expected_scheme",
    [
        pytest.param({"subject_token_type": "id_token", "requested_token_type": "access_token"},
                     {"subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
                      "requested_token_type": "urn:ietf:params:oauth:token-type:access_token"},
                     "urn:ietf:params:oauth:token-type:access_token", "Bearer", id="short-names"),
        pytest.param({"subject_token_type": "jwt", "requested_token_type": "saml2-header", "resource": "S4HANA_PROVIDER",
                      "token_format": "jwt"},
                     {"subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                      "requested_token_type": "urn:sap:identity:oauth:token-type:saml2-header",
                      "resource": "urn:sap:identity:application:provider:name:S4HANA_PROVIDER", "token_format": "jwt"},
                     "urn:sap:identity:oauth:token-type:saml2-header", "SAML2.0", id="saml2-header-to-provider"),
        pytest.param({"requested_token_type": "saml2-header"},
                     {"subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                      "requested_token_type": "urn:sap:identity:oauth:token-type:saml2-header"},
                     None, "SAML2.0", id="saml2-header-without-issued-type"),
        pytest.param({"subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                      "resource": "urn:sap:identity:application:provider:clientid:abc"},
                     {"subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                      "resource": "urn:sap:identity:application:provider:clientid:abc"},
                     None, "Bearer", id="urns-pass-through"),
    ],
)
def test_rfc8693_at_ias_token_types_resource_and_result_header(rsps, xsuaa, body, expected_form, issued, expected_scheme):
    ias_token_url = "https://mytenant.accounts.ondemand.com/oauth2/token"
    answer: dict[str, Any] = {"access_token": "issued-VALUE", "expires_in": 900, "token_type": "Bearer"}
    if issued:
        answer["issued_token_type"] = issued
    rsps.post(ias_token_url, json=answer)
    rsps.get(f"{TARGET}/x", json={})
    entry = dest("OAuth2TokenExchange", tokenServiceURL=ias_token_url,
                 **{f"tokenService.body.{k}": v for k, v in body.items()})
    user = xsuaa.token()
    engine([entry]).session("S4", user_token=user).get("/x")
    sent = form(rsps.calls[0])
    assert sent["grant_type"] == TOKEN_EXCHANGE and sent["subject_token"] == user
    assert {k: sent[k] for k in expected_form} == expected_form
    assert rsps.calls[1].request.headers["Authorization"] == f"{expected_scheme} issued-VALUE"
