"""The Destination service (DESIGN §3 step 3, §5): a stand-in service and token endpoint
record every call; per Authentication type the exact headers on the target; fail closed;
errors; caching per tenant and per user; multitenancy; client certificates; logs."""

from __future__ import annotations

import base64
import datetime
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

import jwtkit
import propagation
from propagation import (
    ConfigurationError,
    DestinationNotFoundError,
    MissingUserTokenError,
    Propagator,
    TokenExchangeError,
)
from propagation.bindings import Binding, Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.destinations.service import FIND_PATH, DestinationService
from propagation.exchange.oauth import OAuthClient
from propagation.tokens import UserToken

UAADOMAIN = "authentication.eu10.hana.ondemand.com"
DEST_URI = "https://destination-configuration.cfapps.eu10.hana.ondemand.com"
DEST_SECRET = "dest-svc-secret-VALUE"
TARGET = "https://backend.example.com/odata"
PROVIDER_ZID = "tenant-provider-zid"
TOKEN_RE = re.compile(rf"https://([a-z0-9-]+)\.{re.escape(UAADOMAIN)}/oauth/token")
FIND_RE = re.compile(re.escape(DEST_URI + FIND_PATH) + r".+")
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
USER_TYPES = {"OAuth2JWTBearer", "OAuth2UserTokenExchange", "OAuth2TokenExchange", "OAuth2SAMLBearerAssertion"}


def destination_binding(**extra: Any) -> Binding:
    return Binding(name="my-destination", label="destination", source="VCAP_SERVICES", credentials={
        "clientid": "sb-dest!b1", "clientsecret": DEST_SECRET, "url": f"https://provider.{UAADOMAIN}",
        "uri": DEST_URI, "uaadomain": UAADOMAIN, "identityzone": "provider", "tenantid": PROVIDER_ZID, **extra})


class DestinationServiceStandIn:
    """Token endpoint (any subdomain) + find-destination API. Destinations are configured per
    subdomain; a service token is bound to the subdomain it was issued for. ``authTokens``
    values name the type, user, tenant and a counter, so every header can be checked exactly."""

    def __init__(self, rsps: responses.RequestsMock, destinations: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.destinations = destinations
        self.token_calls: list[str] = []  # subdomain per token request
        self.finds: list[dict[str, Any]] = []
        self.tokens: dict[str, str] = {}  # service token -> subdomain
        self.status: list[int] = []  # statuses to answer next find calls with
        self.expires_in: Any = 3600
        self.error: str | None = None
        self.skip_omits_certificates = False  # an answer without token retrieval may leave them out
        self.count = 0
        rsps.add_callback(responses.POST, TOKEN_RE, callback=self.token, content_type="application/json")
        rsps.add_callback(responses.GET, FIND_RE, callback=self.find, content_type="application/json")

    def token(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        fields = {k: v[0] for k, v in parse_qs(request.body).items()}
        assert fields == {"grant_type": "client_credentials", "client_id": "sb-dest!b1", "client_secret": DEST_SECRET}
        match = TOKEN_RE.fullmatch(request.url or "")
        assert match
        sub = match.group(1)
        self.token_calls.append(sub)
        token = f"svc-{sub}-{len(self.token_calls)}"
        self.tokens[token] = sub
        return 200, {}, json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 43199})

    def find(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        name = unquote(urlsplit(request.url).path[len(urlsplit(DEST_URI + FIND_PATH).path):])  # no query
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        sub = self.tokens.get(bearer)
        user_jwt = request.headers.get("X-user-token") or request.headers.get("X-Subject-Token")
        user = UserToken.parse(user_jwt) if user_jwt else None
        skip = parse_qs(urlsplit(request.url).query).get("$skipTokenRetrieval") == ["true"]
        self.finds.append({"name": name, "tenant": sub, "user": user.user if user else None, "skip": skip,
                           "headers": {k: v for k, v in request.headers.items() if k.lower().startswith("x-")}})
        if self.status:
            status = self.status.pop(0)
            return status, {}, json.dumps({"ErrorMessage": f"stand-in answers {status}"})
        if sub is None:
            return 401, {}, json.dumps({"ErrorMessage": "Unauthorized"})
        config = self.destinations.get(sub, {}).get(name)
        if config is None:
            return 404, {}, json.dumps({"ErrorMessage": "Configuration with the specified name was not found"})
        answer: dict[str, Any] = {"owner": {"SubaccountId": sub}, "destinationConfiguration": config}
        auth = config.get("Authentication", "NoAuthentication")
        if auth == "ClientCertificateAuthentication" and not (skip and self.skip_omits_certificates):
            answer["certificates"] = self.destinations[sub].get("<certificates>", [])
        elif auth not in ("NoAuthentication", "PrincipalPropagation") and not skip:
            answer["authTokens"] = [self.auth_token(auth, user, sub, request)]
        return 200, {}, json.dumps(answer)

    def auth_token(self, auth: str, user: UserToken | None, sub: str, request: requests.PreparedRequest) -> dict[str, Any]:
        if self.error:
            return {"type": "", "value": "", "error": self.error}
        if auth in USER_TYPES and user is None:
            return {"type": "", "value": "", "error": "No user token (JWT) has been provided. This is strictly "
                                                      f"necessary for '{auth}'."}
        if auth == "OAuth2TokenExchange":
            assert request.headers["X-Subject-Token-Type"] == ACCESS_TOKEN_TYPE
            assert "X-user-token" not in request.headers
        self.count += 1
        if auth == "BasicAuthentication":
            value = base64.b64encode(b"svc-user:basic-pw-VALUE").decode()
            return {"type": "Basic", "value": value, "http_header": {"key": "Authorization", "value": f"Basic {value}"}}
        who = user.user if user is not None and auth in USER_TYPES else "technical"
        value = f"{auth}-{who}-{sub}-{self.count}"
        kind = "SAML2.0" if auth == "OAuth2SAMLBearerAssertion" else "Bearer"
        return {"type": kind, "value": value, "expires_in": self.expires_in,
                "http_header": {"key": "Authorization", "value": f"{kind} {value}"}}

    def user_finds(self) -> list[dict[str, Any]]:
        return [f for f in self.finds if f["user"] is not None]


def cfg(auth: str = "NoAuthentication", name: str = "S4", **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Type": "HTTP", "URL": TARGET, "Authentication": auth, "ProxyType": "Internet", **extra}


def engine(*bindings: Binding, clock: Any = None, retries: int = 0, environ: dict[str, str] | None = None) -> Propagator:
    kw = {"clock": clock} if clock else {}
    return Propagator(
        environ=environ or {},
        bindings=Bindings(list(bindings) or [destination_binding()], sources=["VCAP_SERVICES"]),
        cache=MemoryTokenCache(**kw),
        oauth=OAuthClient(retries=retries, sleep=lambda s: None, **kw),
    )


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def service(rsps: responses.RequestsMock, *configs: dict[str, Any], tenant: str = "provider") -> DestinationServiceStandIn:
    return DestinationServiceStandIn(rsps, {tenant: {c["Name"]: c for c in configs}})


def target_calls(rsps: responses.RequestsMock) -> list[Any]:
    return [c for c in rsps.calls if c.request.url.startswith(TARGET)]


# -- every type: exact headers on the target -------------------------------------------------
@pytest.mark.parametrize(
    "auth, expected, user_lookup",
    [
        pytest.param("BasicAuthentication", "Basic " + base64.b64encode(b"svc-user:basic-pw-VALUE").decode(), False,
                     id="basic"),
        pytest.param("OAuth2ClientCredentials", "Bearer OAuth2ClientCredentials-technical-provider-1", False,
                     id="client-credentials"),
        pytest.param("OAuth2Password", "Bearer OAuth2Password-technical-provider-1", False, id="password"),
        pytest.param("OAuth2JWTBearer", "Bearer OAuth2JWTBearer-alice@example.com-provider-1", True, id="jwt-bearer"),
        pytest.param("OAuth2UserTokenExchange", "Bearer OAuth2UserTokenExchange-alice@example.com-provider-1", True,
                     id="user-token-exchange"),
        pytest.param("OAuth2TokenExchange", "Bearer OAuth2TokenExchange-alice@example.com-provider-1", True,
                     id="token-exchange"),
        pytest.param("OAuth2SAMLBearerAssertion", "SAML2.0 OAuth2SAMLBearerAssertion-alice@example.com-provider-1", True,
                     id="saml-bearer"),
        pytest.param("NoAuthentication", None, False, id="no-authentication"),
    ],
)
def test_each_type_through_the_service(rsps, xsuaa, auth, expected, user_lookup):
    svc = service(rsps, cfg(auth, **{"URL.headers.X-Custom": "c"}))
    rsps.get(f"{TARGET}/Items", json={"value": []})
    user = xsuaa.token("alice@example.com")
    with propagation.use_token(user):
        r = engine().session("S4").get("/Items")
    assert r.status_code == 200
    sent = target_calls(rsps)[0].request.headers
    assert sent.get("Authorization") == expected
    assert sent["X-Custom"] == "c"
    assert not {h.lower() for h in sent} & {"x-user-token", "x-subject-token"}
    # Configuration lookup without any user header and without token retrieval; then one token
    # lookup for the types whose headers come from the service — with the user only for user types.
    assert svc.finds[0]["user"] is None and svc.finds[0]["headers"] == {} and svc.finds[0]["skip"]
    assert len(svc.finds) == (1 if auth == "NoAuthentication" else 2)
    assert [f["skip"] for f in svc.finds[1:]] == [False] * (len(svc.finds) - 1)
    if not user_lookup and len(svc.finds) == 2:
        assert svc.finds[1]["headers"] == {} and svc.finds[1]["user"] is None
    if user_lookup:
        expected_headers = ({"X-Subject-Token": user, "X-Subject-Token-Type": ACCESS_TOKEN_TYPE}
                            if auth == "OAuth2TokenExchange" else {"X-user-token": user})
        assert svc.finds[1]["headers"] == expected_headers
    assert svc.token_calls == ["provider"]
    # The bearer of the find call is the service token.
    finds = [c for c in rsps.calls if c.request.url.startswith(DEST_URI)]
    assert all(c.request.headers["Authorization"] == "Bearer svc-provider-1" for c in finds)
    assert [c.request.url for c in finds] == [f"{DEST_URI}{FIND_PATH}S4?$skipTokenRetrieval=true"] + [
        f"{DEST_URI}{FIND_PATH}S4"] * (len(finds) - 1)


def test_destination_fields_and_source(rsps, xsuaa):
    service(rsps, cfg("OAuth2JWTBearer", CloudConnectorLocationId="loc1", **{"sap-client": "100"}))
    d = engine().destination("S4", user_token=xsuaa.token())
    assert (d.name, d.url, d.authentication, d.proxy_type) == ("S4", TARGET, "OAuth2JWTBearer", "Internet")
    assert d.source == "Destination service (my-destination)"
    assert d.properties["sap-client"] == "100" and d.location_id == "loc1"
    assert d.needs_user


def test_name_is_url_quoted(rsps):
    svc = service(rsps, cfg(name="my dest/1"))
    engine().destination("my dest/1")
    assert rsps.calls[1].request.url == f"{DEST_URI}{FIND_PATH}my%20dest%2F1?$skipTokenRetrieval=true"
    assert svc.finds[0]["name"] == "my dest/1"


def test_env_destination_wins_over_the_service(rsps):
    service(rsps, cfg())
    e = Propagator(environ={"destinations": json.dumps([{"name": "S4", "url": "https://env.example.com"}])},
                   bindings=Bindings([destination_binding()]))
    assert e.destination("S4").url == "https://env.example.com"
    assert len(rsps.calls) == 0


# -- fail closed ----------------------------------------------------------------------------
@pytest.mark.parametrize("auth", sorted(USER_TYPES))
def test_user_type_without_user_asks_once_and_never_the_target(rsps, xsuaa, auth):
    svc = service(rsps, cfg(auth))
    target = rsps.get(f"{TARGET}/Items", json={})
    e = engine()
    with pytest.raises(MissingUserTokenError, match="strictly necessary") as info:
        e.session("S4").get("/Items")
    assert info.value.destination == "S4" and info.value.authentication == auth
    assert [f["user"] for f in svc.finds] == [None]  # one lookup, no user header
    assert target.call_count == 0
    with propagation.use_token(xsuaa.token(grant_type="client_credentials")), pytest.raises(MissingUserTokenError):
        e.session("S4").get("/Items")
    assert svc.user_finds() == [] and target.call_count == 0


def test_auth_tokens_error_raises_and_nothing_is_sent(rsps, xsuaa):
    svc = service(rsps, cfg("OAuth2SAMLBearerAssertion"))
    target = rsps.get(f"{TARGET}/Items", json={})
    svc.error = "Retrieval of OAuthToken failed due to: invalid_grant"
    user = xsuaa.token()
    s = engine().session("S4", user_token=user)
    with pytest.raises(TokenExchangeError) as info:
        s.get("/Items")
    message = str(info.value)
    assert "'S4'" in message and "Retrieval of OAuthToken failed due to: invalid_grant" in message
    assert user not in message
    assert target.call_count == 0
    # Errors are not cached: the next call asks again and succeeds.
    svc.error = None
    assert s.get("/Items").status_code == 200
    assert len(svc.user_finds()) == 2


def test_auth_tokens_error_for_technical_type(rsps):
    svc = service(rsps, cfg("OAuth2ClientCredentials"))
    target = rsps.get(f"{TARGET}/Items", json={})
    svc.error = "invalid_client"
    with pytest.raises(TokenExchangeError, match="Destination 'S4'.*invalid_client"):
        engine().session("S4").get("/Items")
    assert target.call_count == 0


def test_not_found_lists_every_place(rsps, xsuaa):
    service(rsps, cfg(name="OTHER"))
    with pytest.raises(DestinationNotFoundError) as info:
        engine().destination("S4", user_token=xsuaa.token())
    assert info.value.name == "S4"
    assert "destinations' environment variable" in str(info.value)
    assert ("the Destination service (binding 'my-destination', subscriberFirst, tenants 'tenant-provider-zid'): "
            "not found") in str(info.value)


@pytest.mark.parametrize("status", [401, 403])
def test_service_refusal_is_a_configuration_error(rsps, status):
    svc = service(rsps, cfg())
    svc.status = [status]
    with pytest.raises(ConfigurationError, match=f"my-destination.*destination 'S4' with {status}") as info:
        engine().destination("S4")
    assert "svc-provider" not in str(info.value) and DEST_SECRET not in str(info.value)


def test_cached_service_token_refused_is_renewed_once(rsps):
    svc = service(rsps, cfg(), cfg(name="S5"))
    e = engine()
    e.destination("S4")
    svc.status = [401]
    assert e.destination("S5").name == "S5"
    assert svc.token_calls == ["provider", "provider"]


def test_5xx_retries_then_succeeds_and_then_fails(rsps):
    svc = service(rsps, cfg(), cfg(name="S5"))
    e = engine(retries=1)
    svc.status = [503]
    assert e.destination("S4").url == TARGET
    assert len(svc.finds) == 2
    svc.status = [502, 502]
    with pytest.raises(TokenExchangeError, match="destination 'S5' failed with 502") as info:
        e.destination("S5")
    assert info.value.status == 502


def test_connection_error_retries_then_raises(rsps):
    rsps.add_callback(responses.POST, TOKEN_RE, callback=lambda r: (200, {}, json.dumps({"access_token": "svc-x"})))
    rsps.get(FIND_RE, body=requests.exceptions.ConnectionError("down"))
    with pytest.raises(TokenExchangeError, match="ConnectionError after 3 attempt"):
        engine(retries=2).destination("S4")


# -- caching -----------------------------------------------------------------------------------
def test_cache_hits_no_second_find(rsps, xsuaa):
    svc = service(rsps, cfg("OAuth2JWTBearer"), cfg("BasicAuthentication", name="B"))
    rsps.get(f"{TARGET}/Items", json={})
    e = engine()
    user = xsuaa.token()
    for _ in range(3):
        with propagation.use_token(user):
            e.session("S4").get("/Items")
            e.session("B").get("/Items")
    assert len(svc.finds) == 4  # S4 config + S4 user + B config + B tokens
    assert svc.token_calls == ["provider"]
    assert len(target_calls(rsps)) == 6


def test_user_bound_tokens_expire(rsps, xsuaa):
    now = [1_000_000.0]
    svc = service(rsps, cfg("OAuth2JWTBearer"))
    svc.expires_in = "600"
    rsps.get(f"{TARGET}/Items", json={})
    s = engine(clock=lambda: now[0]).session("S4", user_token=xsuaa.token())
    s.get("/Items")
    now[0] += 500  # 600 s token, 60 s skew: still used
    s.get("/Items")
    assert len(svc.user_finds()) == 1
    now[0] += 50  # inside the skew: looked up again
    s.get("/Items")
    assert len(svc.user_finds()) == 2
    assert [c.request.headers["Authorization"] for c in target_calls(rsps)][-1].endswith("-2")


def test_configuration_ttl(rsps):
    now = [1_000_000.0]
    svc = service(rsps, cfg())
    e = engine(clock=lambda: now[0], environ={"PROPAGATION_DESTINATION_CACHE_TTL": "600"})
    e.destination("S4")
    now[0] += 500
    e.destination("S4")
    assert len(svc.finds) == 1
    now[0] += 100
    e.destination("S4")
    assert len(svc.finds) == 2


def test_401_from_target_drops_the_answer_and_retries_once(rsps, xsuaa):
    svc = service(rsps, cfg("OAuth2JWTBearer"))
    rsps.get(f"{TARGET}/Items", status=401)
    rsps.get(f"{TARGET}/Items", json={"ok": True})
    r = engine().session("S4", user_token=xsuaa.token()).get("/Items")
    assert r.status_code == 200 and [h.status_code for h in r.history] == [401]
    assert [c.request.headers["Authorization"] for c in target_calls(rsps)] == [
        "Bearer OAuth2JWTBearer-alice@example.com-provider-1", "Bearer OAuth2JWTBearer-alice@example.com-provider-2"]
    assert len(svc.user_finds()) == 2


# -- multitenancy ------------------------------------------------------------------------------
def test_two_tenants_two_users_interleaved(rsps, xsuaa):
    svc = DestinationServiceStandIn(rsps, {
        "provider": {"S4": cfg("OAuth2JWTBearer"), "B": cfg("OAuth2ClientCredentials", name="B")},
        "sub1": {"S4": cfg("OAuth2JWTBearer"), "B": cfg("OAuth2ClientCredentials", name="B")},
        "sub2": {"S4": cfg("OAuth2JWTBearer"), "B": cfg("OAuth2ClientCredentials", name="B")},
    })
    rsps.get(f"{TARGET}/Items", json={})
    e = engine()
    users = {
        ("alice", "sub1"): xsuaa.token("alice@example.com", zid="zid-1", subdomain="sub1"),
        ("bob", "sub1"): xsuaa.token("bob@example.com", zid="zid-1", subdomain="sub1"),
        ("alice", "sub2"): xsuaa.token("alice@example.com", zid="zid-2", subdomain="sub2"),
        ("carol", "sub2"): xsuaa.token("carol@example.com", zid="zid-2", subdomain="sub2"),
    }
    seen: list[tuple[tuple[str, str], str, str]] = []
    for _ in range(3):
        for who, token in users.items():
            with propagation.use_token(token):
                for name in ("S4", "B"):
                    e.session(name).get("/Items")
                    seen.append((who, name, target_calls(rsps)[-1].request.headers["Authorization"]))
    # One service token per tenant, each from the tenant's own token URL.
    assert sorted(svc.token_calls) == ["sub1", "sub2"]
    token_urls = {c.request.url for c in rsps.calls if c.request.method == "POST"}
    assert token_urls == {f"https://sub1.{UAADOMAIN}/oauth/token", f"https://sub2.{UAADOMAIN}/oauth/token"}
    # Lookups per tenant with that tenant's service token.
    assert all(f["tenant"] in ("sub1", "sub2") for f in svc.finds)
    # Config per (tenant, name): 4; technical token lookups per tenant (B): 2; user lookups per (user, tenant): 4.
    assert len([f for f in svc.finds if f["user"] is None and f["skip"]]) == 4
    assert sorted(f["tenant"] for f in svc.finds if f["user"] is None and not f["skip"]) == ["sub1", "sub2"]
    assert sorted((f["user"], f["tenant"]) for f in svc.user_finds()) == [
        ("alice@example.com", "sub1"), ("alice@example.com", "sub2"), ("bob@example.com", "sub1"),
        ("carol@example.com", "sub2")]
    for (user, tenant), name, header in seen:
        if name == "S4":
            assert header.startswith(f"Bearer OAuth2JWTBearer-{user}@example.com-{tenant}-")
        else:
            assert header.startswith(f"Bearer OAuth2ClientCredentials-technical-{tenant}-")
    # Never shared: one distinct header per (user, tenant) for S4, per tenant for B.
    assert len({h for w, n, h in seen if n == "S4"}) == 4
    assert len({h for w, n, h in seen if n == "B"}) == 2


def test_subscriber_destination_not_in_provider(rsps, xsuaa):
    DestinationServiceStandIn(rsps, {"sub1": {"S4": cfg()}})
    e = engine()
    assert e.destination("S4", user_token=xsuaa.token(zid="zid-1", subdomain="sub1")).url == TARGET
    with pytest.raises(DestinationNotFoundError):
        e.destination("S4", user_token=xsuaa.token())  # provider user


# -- on-premise: handed to the Connectivity path -----------------------------------------------------
def test_principal_propagation_from_service_goes_through_connectivity(rsps, xsuaa):
    onprem = "http://s4-virtual:44300/sap"
    svc = service(rsps, cfg("PrincipalPropagation", URL=onprem, ProxyType="OnPremise", CloudConnectorLocationId="loc1"))
    conn = Binding(name="my-connectivity", label="connectivity", credentials={
        "clientid": "sb-conn!b1", "clientsecret": "conn-secret-VALUE", "token_service_url": "https://conn.example.com",
        "onpremise_proxy_host": "proxy.internal", "onpremise_proxy_http_port": "20003", "tenantid": xsuaa.zid})
    conn_token = rsps.post("https://conn.example.com/oauth/token", json={"access_token": "px-1", "expires_in": 3600})
    rsps.get(f"{onprem}/Items", json={})
    user = xsuaa.token()
    r = engine(destination_binding(), conn).session("S4", user_token=user).get("/Items")
    assert r.status_code == 200
    sent = rsps.calls[-1].request
    assert sent.headers["SAP-Connectivity-SCC-Location_ID"] == "loc1"
    assert sent.headers["Proxy-Authorization"] == "Bearer px-1"
    assert parse_qs(conn_token.calls[0].request.body)["assertion"] == [user]  # the user, by jwt-bearer
    assert "Authorization" not in sent.headers
    assert sent.req_kwargs["proxies"]["http"] == "http://proxy.internal:20003"
    assert svc.user_finds() == []  # PrincipalPropagation has no authTokens: no user lookup


# -- client certificates ----------------------------------------------------------------------
def _self_signed() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = jwtkit.rsa_key("client-cert")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem_store() -> bytes:
    key, cert = _self_signed()
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _p12_store(password: bytes) -> bytes:
    key, cert = _self_signed()
    return pkcs12.serialize_key_and_certificates(b"client", key, cert, None,
                                                 serialization.BestAvailableEncryption(password))


@pytest.mark.parametrize(
    "store_name, content, props",
    [
        pytest.param("client.pem", _pem_store(), {}, id="pem"),
        pytest.param("client.p12", _p12_store(b"p12-pw-VALUE"), {"KeyStorePassword": "p12-pw-VALUE"}, id="p12"),
        pytest.param("client.pfx", _p12_store(b"p12-pw-VALUE"), {"KeyStorePassword": "p12-pw-VALUE"}, id="pfx"),
    ],
)
def test_client_certificate_is_used_for_the_call_only(rsps, store_name, content, props):
    svc = service(rsps, cfg("ClientCertificateAuthentication", KeyStoreLocation=store_name, **props))
    svc.destinations["provider"]["<certificates>"] = [
        {"Name": store_name, "Type": "CERTIFICATE", "Content": base64.b64encode(content).decode()}]
    seen: dict[str, Any] = {}

    def target(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        seen["cert"] = request.req_kwargs.get("cert")  # type: ignore[attr-defined]
        return 200, {}, "{}"

    rsps.add_callback(responses.GET, f"{TARGET}/Items", callback=target)
    e = engine()
    r = e.session("S4").get("/Items")
    assert r.status_code == 200
    assert seen["cert"] is None  # no key files per call: the pool's TLS context holds the certificate
    plan = e.plan("S4", "GET", "/Items")
    assert "BEGIN CERTIFICATE" in plan.client_cert[0] and "PRIVATE KEY" in plan.client_cert[1]
    from propagation.exchange.flow import ssl_context

    contexts = [a.ssl_context for a, _ in e.pools._adapters._items.values() if hasattr(a, "ssl_context")]
    assert contexts == [ssl_context(plan.client_cert, plan.verify, plan.trust)]  # loaded once, shared
    assert "Authorization" not in target_calls(rsps)[0].request.headers


@pytest.mark.parametrize("omitted", [pytest.param(False, id="certificates-with-configuration"),
                                     pytest.param(True, id="certificates-only-with-token-retrieval")])
def test_client_certificate_from_the_configuration_or_one_token_lookup(rsps, omitted):
    svc = service(rsps, cfg("ClientCertificateAuthentication", KeyStoreLocation="client.pem"))
    svc.destinations["provider"]["<certificates>"] = [
        {"Name": "client.pem", "Type": "CERTIFICATE", "Content": base64.b64encode(_pem_store()).decode()}]
    svc.skip_omits_certificates = omitted
    rsps.get(f"{TARGET}/Items", json={})
    e = engine()
    for _ in range(2):
        assert e.session("S4").get("/Items").status_code == 200
    assert [f["skip"] for f in svc.finds] == ([True, False] if omitted else [True])
    assert all(f["headers"] == {} for f in svc.finds)
    assert e.destination("S4").service.certificate[0].startswith("-----BEGIN CERTIFICATE")


def test_client_certificate_wrong_password_and_other_host(rsps):
    svc = service(rsps, cfg("ClientCertificateAuthentication", KeyStoreLocation="c.p12", KeyStorePassword="wrong"))
    svc.destinations["provider"]["<certificates>"] = [
        {"Name": "c.p12", "Content": base64.b64encode(_p12_store(b"right-VALUE")).decode()}]
    with pytest.raises(ConfigurationError, match="cannot be read as PKCS#12") as info:
        engine().destination("S4")
    assert "wrong" not in str(info.value).replace("(wrong 'KeyStorePassword'?)", "")


def test_client_certificate_not_sent_to_another_host(rsps):
    svc = service(rsps, cfg("ClientCertificateAuthentication", KeyStoreLocation="c.pem"))
    svc.destinations["provider"]["<certificates>"] = [{"Name": "c.pem", "Content": base64.b64encode(_pem_store()).decode()}]
    rsps.get("https://other.example.org/x", json={})
    engine().session("S4").get("https://other.example.org/x")
    assert rsps.calls[-1].request.req_kwargs.get("cert") is None


# -- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "credentials, message",
    [
        pytest.param({"clientsecret": None}, "needs 'clientid' with 'clientsecret'", id="no-secret"),
        pytest.param({"uri": None}, "needs 'uri'", id="no-uri"),
    ],
)
def test_bad_binding(rsps, credentials, message):
    b = destination_binding(**credentials)
    with pytest.raises(ConfigurationError, match=message) as info:
        engine(b).destination("S4")
    assert DEST_SECRET not in str(info.value)
    assert len(rsps.calls) == 0


def test_certificate_binding_uses_certurl(rsps):
    svc = DestinationServiceStandIn(rsps, {"provider": {"S4": cfg()}})
    b = destination_binding(clientsecret=None, certificate="-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----",
                            key="-----BEGIN PRIVATE KEY-----\nK-VALUE\n-----END PRIVATE KEY-----",
                            certurl=f"https://provider.{UAADOMAIN}")
    svc_cfg = DestinationService.from_bindings(Bindings([b]), OAuthClient(), MemoryTokenCache())
    assert svc_cfg is not None and svc_cfg.config.client.uses_mtls
    assert svc_cfg.config.token_url == f"https://provider.{UAADOMAIN}/oauth/token"
    assert "K-VALUE" not in repr(svc_cfg) and DEST_SECRET not in repr(svc_cfg.config)


# -- logs -------------------------------------------------------------------------------------
def test_logs_contain_no_token_or_secret(rsps, xsuaa, caplog):
    svc = service(rsps, cfg("OAuth2JWTBearer"), cfg("BasicAuthentication", name="B"))
    rsps.get(f"{TARGET}/Items", status=401)
    caplog.set_level(logging.DEBUG)
    user = xsuaa.token()
    e = engine()
    e.session("S4", user_token=user).get("/Items")
    e.session("B", user_token=user).get("/Items")
    svc.error = "failed for " + user
    with pytest.raises(TokenExchangeError) as info:
        e.session("S4", user_token=xsuaa.token("bob@example.com")).get("/Items")
    text = "\n".join(r.getMessage() for r in caplog.records) + str(info.value)
    assert "destination=S4" in text
    for secret in (user, DEST_SECRET, "svc-provider-1", "OAuth2JWTBearer-alice", "basic-pw-VALUE",
                   base64.b64encode(b"svc-user:basic-pw-VALUE").decode()):
        assert secret not in text


def test_headers_for_other_clients_and_ias_user_uses_provider_tenant(rsps, ias):
    # An IAS token in X-user-token needs the destination to name its keys (item 5, test_destination_service_v2).
    svc = service(rsps, cfg("OAuth2JWTBearer", **{"x_user_token.jwks_uri": "https://ias.example/oauth2/certs"}))
    user = ias.token("dora@example.com")
    headers = engine().headers("S4", user_token=user)
    assert headers == {"Authorization": f"Bearer OAuth2JWTBearer-{UserToken.parse(user).user}-provider-1"}
    assert svc.token_calls == ["provider"]  # IAS tokens: the binding's (provider) token URL
    assert svc.finds[1]["headers"] == {"X-user-token": user}
