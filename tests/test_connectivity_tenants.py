"""Whose proxy token an on-premise call carries (issue 17 item 2): the calling user's tenant's,
formed as for the Destination service, or no call at all — never the provider's token for a
subscriber's user. Bindings are the SAP Cloud SDK for JavaScript's own test vectors
(``test-resources/test/test-util/environment-mocks.ts``: ``connectivityBindingMock`` has no
token URL and no ``uaadomain``; ``xsuaaBindingMock`` lends ``https://provider.example.com``),
and hand-written ones. Every test asserts the exact token requests (host, grant, client, X-zid)
and that nothing is sent where the call must fail."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses

from propagation import ConfigurationError, InvalidTokenError, Propagator
from propagation.bindings import Binding, Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.exchange.oauth import OAuthClient

import jwtkit

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ONPREM = "http://s4-virtual:44300/sap"
SDK_TENANT_ID = "a89ea924-d9c2-4eab-84fb-3ffcaadf5d24"  # xsuaaBindingMock's tenantid

#: cloud-sdk-js ``connectivityBindingMock`` (no token URL, no uaadomain).
SDK_CONNECTIVITY = {"clientid": "clientid", "clientsecret": "clientsecret", "onpremise_proxy_host": "proxy.example.com",
                    "onpremise_proxy_port": 12345, "onpremise_socks5_proxy_port": 54321}
#: cloud-sdk-js ``xsuaaBindingMock``.
SDK_XSUAA = {"url": "https://provider.example.com", "xsappname": "xsapp-myapp!123", "clientid": "clientid",
             "clientsecret": "clientsecret", "uaadomain": "authentication.sap.hana.ondemand.com",
             "subaccountid": SDK_TENANT_ID, "tenantid": SDK_TENANT_ID, "zoneid": SDK_TENANT_ID}
#: A hand-written binding: a token URL, no uaadomain, no tenant.
HAND_WRITTEN = {"clientid": "sb-conn!b1", "clientsecret": "conn-secret-VALUE",
                "token_service_url": "https://provider.authentication.eu10.hana.ondemand.com",
                "onpremise_proxy_host": "proxy.internal", "onpremise_proxy_http_port": "20003"}


def _engine(conn: dict[str, Any], *, xsuaa: dict[str, Any] | None = None, mode: str = "exchange") -> Propagator:
    bindings = [Binding("my-connectivity", "connectivity", conn)]
    if xsuaa is not None:
        bindings.append(Binding("my-xsuaa", "xsuaa", xsuaa))
    destinations = [{"name": "S4", "url": ONPREM, "Authentication": "PrincipalPropagation", "ProxyType": "OnPremise"}]
    return Propagator(environ={"destinations": json.dumps(destinations)}, bindings=Bindings(bindings),
                      cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, sleep=lambda s: None), connectivity_mode=mode)


def _token_requests(rsps: responses.RequestsMock) -> list[tuple[str, str, str, str | None]]:
    """(url, grant, client_id, X-zid) of every token request."""
    out = []
    for call in rsps.calls:
        if call.request.method == "POST":
            form = {k: v[0] for k, v in parse_qs(call.request.body).items()}
            out.append((call.request.url, form["grant_type"], form["client_id"], call.request.headers.get("X-zid")))
    return out


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def _subscriber_xsuaa(subdomain: str = "subscriber", zid: str = "subscriber-zid") -> str:
    return jwtkit.Xsuaa(subdomain=subdomain, uaadomain="example.com").token(zid=zid, subdomain=subdomain)


SDK_PROVIDER_USER = jwtkit.Xsuaa(subdomain="provider", uaadomain="example.com", zid=SDK_TENANT_ID)


@pytest.mark.parametrize("user, conn, xsuaa, mode, expected", [
    pytest.param(lambda: SDK_PROVIDER_USER.token(), SDK_CONNECTIVITY, SDK_XSUAA, "exchange",
                 ("https://provider.example.com/oauth/token", JWT_BEARER, "clientid", None), id="sdk-provider-user"),
    pytest.param(_subscriber_xsuaa, SDK_CONNECTIVITY, SDK_XSUAA, "exchange",
                 ("https://subscriber.example.com/oauth/token", JWT_BEARER, "clientid", None), id="sdk-subscriber-user"),
    pytest.param(_subscriber_xsuaa, SDK_CONNECTIVITY, SDK_XSUAA, "header",
                 ("https://subscriber.example.com/oauth/token", "client_credentials", "clientid", None),
                 id="sdk-subscriber-user-header-mode"),
    pytest.param(lambda: _subscriber_xsuaa("consumer"), HAND_WRITTEN, None, "exchange",
                 ("https://consumer.authentication.eu10.hana.ondemand.com/oauth/token", JWT_BEARER, "sb-conn!b1", None),
                 id="hand-written-subscriber-first-label-replaced"),
    pytest.param(lambda: jwtkit.Ias().token(app_tid="subscriber-zone"),
                 {**HAND_WRITTEN, "token_service_domain": "authentication.eu10.hana.ondemand.com"}, None, "exchange",
                 ("https://authentication.eu10.hana.ondemand.com/oauth/token", JWT_BEARER, "sb-conn!b1", "subscriber-zone"),
                 id="ias-subscriber-x-zid-at-token-service-domain"),
    pytest.param(lambda: jwtkit.Ias().token(app_tid="provider-zone"), {**HAND_WRITTEN, "tenantid": "provider-zone"},
                 None, "exchange",
                 ("https://provider.authentication.eu10.hana.ondemand.com/oauth/token", JWT_BEARER, "sb-conn!b1", None),
                 id="ias-provider-user-keeps-the-binding-url"),
    pytest.param(lambda: jwtkit.Xsuaa(subdomain="provider", zid="provider-zone").token(),
                 {**HAND_WRITTEN, "token_service_url": "https://conn.example.com"},
                 {"url": "https://provider.example.com", "tenantid": "provider-zone", "identityzone": "provider"},
                 "exchange", ("https://conn.example.com/oauth/token", JWT_BEARER, "sb-conn!b1", None),
                 id="provider-user-known-by-the-xsuaa-bindings-zone"),
    pytest.param(_subscriber_xsuaa, {**HAND_WRITTEN, "token_service_url": "http://127.0.0.1:8080"}, None, "exchange",
                 ("http://127.0.0.1:8080/oauth/token", JWT_BEARER, "sb-conn!b1", "subscriber-zid"),
                 id="ip-address-host-names-the-tenant-in-x-zid"),
])
def test_the_token_comes_from_the_users_tenant(rsps, user, conn, xsuaa, mode, expected):
    rsps.post(expected[0], json={"access_token": "px-1", "expires_in": 3600})
    rsps.get(f"{ONPREM}/Items", json={})
    response = _engine(conn, xsuaa=xsuaa, mode=mode).session("S4", user_token=user()).get("/Items")
    assert response.status_code == 200
    assert _token_requests(rsps) == [expected]
    assert rsps.calls[-1].request.headers["Proxy-Authorization"] == "Bearer px-1"


@pytest.mark.parametrize("user, conn", [
    pytest.param(lambda: jwtkit.Ias().token(app_tid="subscriber-zone"), HAND_WRITTEN, id="ias-subscriber-no-domain"),
    pytest.param(lambda: jwtkit.Ias().token(app_tid="subscriber-zone"), {**HAND_WRITTEN, "tenantid": "provider-zone"},
                 id="ias-subscriber-no-domain-provider-known"),
    pytest.param(lambda: jwtkit.Xsuaa().token(zid="subscriber-zid", extra={"ext_attr": {"enhancer": "XSUAA"}, "iss": ""}),
                 HAND_WRITTEN, id="xsuaa-without-subdomain-no-domain"),
])
@pytest.mark.parametrize("mode", ["exchange", "header"])
def test_no_url_of_the_users_tenant_fails_closed(rsps, user, conn, mode):
    with pytest.raises(ConfigurationError, match="cannot be formed") as info:
        _engine(conn, mode=mode).session("S4", user_token=user()).get("/Items")
    assert "Nothing was sent" in str(info.value)
    assert "conn-secret-VALUE" not in str(info.value)
    assert len(rsps.calls) == 0  # no token request, no proxy call


@pytest.mark.parametrize("zdn", ["attacker.example#", "evil.example.com", "a" * 64, "-dash", "sub domain", "ümlaut"])
def test_a_subdomain_that_is_no_host_label_is_refused_before_any_request(rsps, zdn):
    token = jwtkit.Xsuaa().token(zid="subscriber-zid", subdomain=zdn)
    with pytest.raises(InvalidTokenError, match="RFC 1123") as info:
        _engine(HAND_WRITTEN).session("S4", user_token=token).get("/Items")
    assert zdn not in str(info.value)
    assert len(rsps.calls) == 0
