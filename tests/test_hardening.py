"""Regression tests of the adversarial review (tenants of IAS tokens, lifetimes, redaction,
breakers, deadlines): each reproduces the failure the review found."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import pytest
import responses

from propagation import Propagator, TokenExchangeError
from propagation.bindings import Binding, Bindings
from propagation.cache import MemoryTokenCache
from propagation.oauth import ClientCredentials, OAuthClient, TokenResponse
from propagation.tokens import UserToken

import jwtkit

UAADOMAIN = "authentication.eu10.hana.ondemand.com"
PROVIDER_TOKEN_URL = f"https://provider.{UAADOMAIN}/oauth/token"


def form(call: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def ias_user(name: str = "bob", app_tid: str = "subscriber-zone-id", **claims: Any) -> str:
    """An IAS user token of tenant ``app_tid``; its issuer's first label is the IAS tenant."""
    return jwtkit.unsigned({"sub": name, "user_uuid": name, "app_tid": app_tid, "zone_uuid": app_tid,
                            "iss": "https://mytenant.accounts.ondemand.com", "aud": ["ias-client"],
                            "exp": int(time.time()) + 3600, **claims})


def xsuaa_user(name: str = "alice", tenant: str = "provider", **claims: Any) -> str:
    return jwtkit.unsigned({"user_name": name, "zid": f"{tenant}-zid", "ext_attr": {"zdn": tenant},
                            "grant_type": "password", "iss": f"https://{tenant}.{UAADOMAIN}/oauth/token",
                            "exp": int(time.time()) + 3600, **claims})


def onprem_engine() -> Propagator:
    connectivity = Binding(name="conn", label="connectivity", credentials={
        "clientid": "conn-client", "clientsecret": "conn-secret", "token_service_url": f"https://provider.{UAADOMAIN}",
        "uaadomain": UAADOMAIN, "onpremise_proxy_host": "proxy.internal", "onpremise_proxy_http_port": "20003"})
    return Propagator(
        environ={"destinations": json.dumps([{"name": "S4", "url": "http://s4-virtual:44300", "ProxyType": "OnPremise",
                                              "Authentication": "PrincipalPropagation"}])},
        bindings=Bindings([connectivity]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, sleep=lambda s: None))


# -- 4. IAS users and tenants -----------------------------------------------------------------------
def test_an_ias_token_has_no_subdomain_from_its_issuer() -> None:
    assert UserToken.parse(ias_user()).subdomain is None
    assert UserToken.parse(xsuaa_user(tenant="acme")).subdomain == "acme"


@pytest.mark.parametrize("token,url,zone", [
    pytest.param(ias_user(), f"https://{UAADOMAIN}/oauth/token", "subscriber-zone-id", id="ias-user-by-zone-id"),
    pytest.param(xsuaa_user(tenant="acme"), f"https://acme.{UAADOMAIN}/oauth/token", None, id="xsuaa-user-by-subdomain"),
    pytest.param(xsuaa_user(tenant="provider"), PROVIDER_TOKEN_URL, None, id="xsuaa-provider-user"),
])
def test_the_connectivity_token_of_a_user_comes_from_the_users_tenant(token: str, url: str, zone: str | None) -> None:
    engine = onprem_engine()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, url, json={"access_token": "px", "expires_in": 3600})
        rsps.add(responses.GET, "http://s4-virtual:44300/x", json={})
        assert engine.session("S4", user_token=token).get("x").status_code == 200
        exchange = rsps.calls[0]
        assert exchange.request.url == url
        assert exchange.request.headers.get("X-zid") == zone
        assert form(exchange)["assertion"] == token
        # never the IAS tenant's label as an XSUAA host (mytenant.<uaadomain> belongs to somebody else)
        assert "mytenant" not in exchange.request.url


def test_a_common_token_url_serves_an_ias_user_by_zone_id() -> None:
    engine = Propagator(environ={"destinations": json.dumps([{
        "name": "API", "url": "https://api.example.com", "Authentication": "OAuth2JWTBearer",
        "tokenServiceURL": PROVIDER_TOKEN_URL, "tokenServiceURLType": "Common", "clientId": "c", "clientSecret": "s"}])},
        bindings=Bindings([]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0))
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"https://{UAADOMAIN}/oauth/token", json={"access_token": "at", "expires_in": 3600})
        rsps.add(responses.GET, "https://api.example.com/x", json={})
        engine.session("API", user_token=ias_user()).get("x")
        assert rsps.calls[0].request.headers["X-zid"] == "subscriber-zone-id"
