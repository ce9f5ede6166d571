"""Breakers are keyed by (host, tenant) also where the tenant travels in ``X-zid`` or only in
the user's token (a fixed token URL shared by tenants): one tenant's IdP failures never fail
another tenant fast (issue 17)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses

from propagation import Propagator
from propagation.bindings import Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.errors import TokenExchangeError
from propagation.exchange.oauth import GRANT_CLIENT_CREDENTIALS, ClientCredentials, OAuthClient
from propagation.exchange.resilience import CircuitOpenError

from loopback import user_of
from test_outbound_core import user

TOKEN_URL = "https://authentication.eu10.example.com/oauth/token"  # fixed: no tenant subdomain


@pytest.mark.parametrize("header", ["X-zid", "x-zid", "X-ZID"])
def test_the_zone_header_keys_the_breaker_whatever_its_case(header: str) -> None:
    oauth = OAuthClient(retries=0, breaker_threshold=1)
    client = ClientCredentials("c", "s")

    def idp(request: Any) -> tuple[int, dict[str, str], str]:
        zone = next(v for k, v in request.headers.items() if k.lower() == "x-zid")
        if zone == "zone-a":
            return 503, {}, ""
        return 200, {"Content-Type": "application/json"}, json.dumps({"access_token": f"for-{zone}", "expires_in": 60})

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, TOKEN_URL, callback=idp)
        with pytest.raises(TokenExchangeError, match="503"):
            oauth.request_token(TOKEN_URL, client, GRANT_CLIENT_CREDENTIALS, headers={header: "zone-a"})
        with pytest.raises(CircuitOpenError):
            oauth.request_token(TOKEN_URL, client, GRANT_CLIENT_CREDENTIALS, headers={header: "zone-a"})
        token = oauth.request_token(TOKEN_URL, client, GRANT_CLIENT_CREDENTIALS, headers={header: "zone-b"})
    assert token.access_token == "for-zone-b"
    assert oauth.breakers.open_keys() == [("authentication.eu10.example.com", "zone-a")]


def test_one_tenants_idp_failures_never_fail_another_tenant_fast() -> None:
    """A destination with a fixed token URL, used by users of two tenants: acme's exchanges fail
    (503) and open acme's breaker; a provider user's exchange still reaches the IdP."""
    engine = Propagator(
        environ={"destinations": json.dumps([{
            "name": "S4", "url": "https://s4.example.com/api", "Authentication": "OAuth2JWTBearer",
            "tokenServiceURL": TOKEN_URL, "clientId": "c", "clientSecret": "s"}])},
        bindings=Bindings([]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, breaker_threshold=1))
    acme, provider = user("mallory", tenant="acme"), user("alice", tenant="provider")

    def idp(request: Any) -> tuple[int, dict[str, str], str]:
        fields = dict(pair.split("=", 1) for pair in request.body.split("&"))
        if user_of(fields["assertion"]) == "mallory":
            return 503, {}, ""
        return 200, {"Content-Type": "application/json"}, json.dumps({"access_token": "alice-token", "expires_in": 600})

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, TOKEN_URL, callback=idp)
        rsps.add(responses.GET, "https://s4.example.com/api/Items", json={"ok": True})
        with pytest.raises(TokenExchangeError, match="503"):
            engine.session("S4", user_token=acme).get("Items")
        with pytest.raises(CircuitOpenError):
            engine.session("S4", user_token=acme).get("Items")
        assert engine.session("S4", user_token=provider).get("Items").status_code == 200
    engine.close()
