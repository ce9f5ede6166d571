"""On-premise calls through the Connectivity proxy: the exact traffic to the connectivity
token endpoint, to the proxy (headers of the forwarded request) and what the target gets;
both user modes, fail-closed cases, caching per user, 407 retry, redirects and logs."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses

import propagation
from propagation import ConfigurationError, MissingUserTokenError, Propagator
from propagation.bindings import Binding, Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.outbound.connectivity import ConnectivityConfig
from propagation.exchange.oauth import OAuthClient
from propagation.tokens import UserToken

UAADOMAIN = "authentication.eu10.hana.ondemand.com"
CONN_BASE = f"https://provider.{UAADOMAIN}"
CONN_TOKEN_URL = f"{CONN_BASE}/oauth/token"
PROXY = "http://connectivityproxy.internal.example.com:20003"
ONPREM = "http://s4-virtual:44300/sap/opu/odata"
CONN_SECRET = "conn-secret-VALUE"
DEST_TOKEN_URL = "https://idp.example.com/oauth/token"
DEST_SECRET = "dest-secret-VALUE"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PROXY_HEADERS = {"proxy-authorization", "sap-connectivity-authentication", "sap-connectivity-scc-location_id"}


def connectivity_binding(**extra: Any) -> Binding:
    return Binding(name="my-connectivity", label="connectivity", credentials={
        "clientid": "sb-conn!b1", "clientsecret": CONN_SECRET, "token_service_url": CONN_BASE, "url": CONN_BASE,
        "uaadomain": UAADOMAIN, "onpremise_proxy_host": "connectivityproxy.internal.example.com",
        "onpremise_proxy_http_port": "20003", "onpremise_proxy_port": "20003", **extra})


def form(call: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def onprem(authentication: str = "PrincipalPropagation", **extra: Any) -> dict[str, Any]:
    return {"name": "S4", "url": ONPREM, "Authentication": authentication, "ProxyType": "OnPremise", **extra}


def engine(destinations: list[dict[str, Any]], bindings: Any = None, **kw: Any) -> Propagator:
    return Propagator(
        environ={"destinations": json.dumps(destinations), **kw.pop("environ", {})},
        bindings=Bindings([connectivity_binding()] if bindings is None else bindings),
        cache=MemoryTokenCache(),
        oauth=OAuthClient(retries=0, sleep=lambda s: None),
        **kw,
    )


class IdP:
    """A token endpoint: ``<prefix>-<user or technical>-<n>`` per call; records grants."""

    def __init__(self, rsps: responses.RequestsMock, url: str = CONN_TOKEN_URL, prefix: str = "px") -> None:
        self.count = 0
        self.prefix = prefix
        rsps.add_callback(responses.POST, url, callback=self, content_type="application/json")

    def __call__(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.count += 1
        fields = {k: v[0] for k, v in parse_qs(request.body).items()}
        who = UserToken.parse(fields["assertion"]).user if "assertion" in fields else "technical"
        body = {"access_token": f"{self.prefix}-{who}-{self.count}", "token_type": "bearer", "expires_in": 3600}
        return 200, {}, json.dumps(body)


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def target_calls(rsps: responses.RequestsMock) -> list[Any]:
    return [c for c in rsps.calls if c.request.url.startswith("http://s4-virtual")]


# -- principal propagation: exact traffic per mode ----------------------------------------------
@pytest.mark.parametrize(
    "mode_kw, expected_form, expected_headers",
    [
        pytest.param({}, {"grant_type": JWT_BEARER, "assertion": "<user>", "token_format": "jwt",
                          "response_type": "token", "client_id": "sb-conn!b1", "client_secret": CONN_SECRET},
                     {"Proxy-Authorization": "Bearer px-alice@example.com-1"}, id="exchange-default"),
        pytest.param({"connectivity_mode": "exchange"}, {"grant_type": JWT_BEARER, "assertion": "<user>",
                     "token_format": "jwt", "response_type": "token", "client_id": "sb-conn!b1",
                     "client_secret": CONN_SECRET}, {"Proxy-Authorization": "Bearer px-alice@example.com-1"},
                     id="exchange-explicit"),
        pytest.param({"connectivity_mode": "header"}, {"grant_type": "client_credentials", "client_id": "sb-conn!b1",
                     "client_secret": CONN_SECRET},
                     {"Proxy-Authorization": "Bearer px-technical-1", "SAP-Connectivity-Authentication": "Bearer <user>"},
                     id="header-engine"),
        pytest.param({"environ": {"PROPAGATION_CONNECTIVITY_MODE": "header"}}, {"grant_type": "client_credentials",
                     "client_id": "sb-conn!b1", "client_secret": CONN_SECRET},
                     {"Proxy-Authorization": "Bearer px-technical-1", "SAP-Connectivity-Authentication": "Bearer <user>"},
                     id="header-env"),
        pytest.param({"destination": {"connectivityMode": "Header"}}, {"grant_type": "client_credentials",
                     "client_id": "sb-conn!b1", "client_secret": CONN_SECRET},
                     {"Proxy-Authorization": "Bearer px-technical-1", "SAP-Connectivity-Authentication": "Bearer <user>"},
                     id="header-destination-property"),
        pytest.param({"connectivity_mode": "header", "destination": {"connectivityMode": "exchange"}},
                     {"grant_type": JWT_BEARER, "assertion": "<user>", "token_format": "jwt", "response_type": "token",
                      "client_id": "sb-conn!b1", "client_secret": CONN_SECRET},
                     {"Proxy-Authorization": "Bearer px-alice@example.com-1"}, id="destination-overrides-engine"),
    ],
)
def test_principal_propagation_exact_traffic(rsps, xsuaa, mode_kw, expected_form, expected_headers):
    idp = IdP(rsps)
    rsps.get(f"{ONPREM}/Items", json={"value": []})
    user = xsuaa.token("alice@example.com")
    extra = mode_kw.pop("destination", {})
    with propagation.use_token(user):
        r = engine([onprem(**extra)], **mode_kw).session("S4").get("/Items")
    assert r.status_code == 200
    assert [c.request.url for c in rsps.calls] == [CONN_TOKEN_URL, f"{ONPREM}/Items"]
    assert form(rsps.calls[0]) == {k: (user if v == "<user>" else v) for k, v in expected_form.items()}
    sent = rsps.calls[1].request
    assert sent.req_kwargs["proxies"] == {"http": PROXY, "https": PROXY}
    mine = {h: v for h, v in sent.headers.items() if h.lower() in PROXY_HEADERS | {"authorization"}}
    assert mine == {k: v.replace("<user>", user) for k, v in expected_headers.items()}  # no Authorization
    assert idp.count == 1


def test_location_id_header(rsps, xsuaa):
    IdP(rsps)
    rsps.get(f"{ONPREM}/Items", json={})
    with propagation.use_token(xsuaa.token()):
        engine([onprem(CloudConnectorLocationId="LOC-1")]).session("S4").get("/Items")
    headers = target_calls(rsps)[0].request.headers
    assert headers["SAP-Connectivity-SCC-Location_ID"] == "LOC-1"
    assert headers["Proxy-Authorization"] == "Bearer px-alice@example.com-1"


def test_no_location_id_no_header(rsps, xsuaa):
    IdP(rsps)
    rsps.get(f"{ONPREM}/Items", json={})
    with propagation.use_token(xsuaa.token()):
        engine([onprem()]).session("S4").get("/Items")
    assert "SAP-Connectivity-SCC-Location_ID" not in target_calls(rsps)[0].request.headers


# -- fail closed ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exchange", "header"])
def test_no_user_raises_before_any_request(rsps, xsuaa, mode):
    s = engine([onprem()], connectivity_mode=mode).session("S4")
    with pytest.raises(MissingUserTokenError, match="strictly necessary"):
        s.get("/Items")
    with propagation.use_token(xsuaa.token(grant_type="client_credentials")), pytest.raises(MissingUserTokenError):
        s.get("/Items")
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("authentication", ["PrincipalPropagation", "NoAuthentication", "BasicAuthentication"])
def test_no_connectivity_binding_is_a_configuration_error(rsps, xsuaa, authentication):
    entry = onprem(authentication, User="u", Password="p-VALUE")
    with propagation.use_token(xsuaa.token()), pytest.raises(ConfigurationError) as info:
        engine([entry], bindings=[]).session("S4").get("/Items")
    assert "'S4'" in str(info.value) and "'connectivity' service binding" in str(info.value)
    assert len(rsps.calls) == 0


def test_principal_propagation_on_internet_is_a_configuration_error(rsps, xsuaa):
    entry = {"name": "S4", "url": "https://s4.example.com", "Authentication": "PrincipalPropagation"}
    with propagation.use_token(xsuaa.token()), pytest.raises(ConfigurationError, match="needs ProxyType OnPremise"):
        engine([entry]).session("S4").get("/Items")
    assert len(rsps.calls) == 0


def test_https_on_premise_url_is_refused(rsps, xsuaa):
    """Through an HTTP proxy an https request is tunnelled: proxy headers would reach the target."""
    entry = onprem(url="https://s4-virtual:44300")
    with propagation.use_token(xsuaa.token()), pytest.raises(ConfigurationError, match="http:// virtual host"):
        engine([entry]).session("S4").get("/Items")
    assert len(rsps.calls) == 0


@pytest.mark.parametrize(
    "binding, message",
    [
        pytest.param(connectivity_binding(onpremise_proxy_host=None), "onpremise_proxy_host", id="no-proxy-host"),
        pytest.param(connectivity_binding(onpremise_proxy_http_port="x", onpremise_proxy_port=None),
                     "onpremise_proxy_http_port", id="bad-port"),
        pytest.param(connectivity_binding(clientsecret=None), "clientsecret", id="no-secret"),
        pytest.param(connectivity_binding(token_service_url=None, url=None), "token_service_url", id="no-token-url"),
    ],
)
def test_incomplete_connectivity_binding(rsps, xsuaa, binding, message):
    with propagation.use_token(xsuaa.token()), pytest.raises(ConfigurationError, match=message) as info:
        engine([onprem()], bindings=[binding]).session("S4").get("/Items")
    assert CONN_SECRET not in str(info.value)
    assert len(rsps.calls) == 0


def test_unknown_mode_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="not one of exchange, header"):
        engine([], connectivity_mode="forward")


def test_binding_token_url_and_port_fallbacks():
    c = ConnectivityConfig.from_binding(connectivity_binding(
        token_service_url=f"{CONN_BASE}/oauth/token/", onpremise_proxy_http_port=None, onpremise_proxy_port=20004))
    assert (c.token_url, c.proxy_url) == (CONN_TOKEN_URL, "http://connectivityproxy.internal.example.com:20004")
    assert CONN_SECRET not in repr(c)


# -- other Authentication types over OnPremise ---------------------------------------------------
def test_basic_over_on_premise(rsps, xsuaa):
    idp = IdP(rsps)
    rsps.get(f"{ONPREM}/Items", json={})
    e = engine([onprem("BasicAuthentication", User="u", Password="p-VALUE", CloudConnectorLocationId="LOC-1")])
    with propagation.use_token(xsuaa.token()):
        e.session("S4").get("/Items")
    assert form(rsps.calls[0]) == {"grant_type": "client_credentials", "client_id": "sb-conn!b1",
                                   "client_secret": CONN_SECRET}
    headers = target_calls(rsps)[0].request.headers
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"u:p-VALUE").decode()
    assert headers["Proxy-Authorization"] == "Bearer px-technical-1"
    assert headers["SAP-Connectivity-SCC-Location_ID"] == "LOC-1"
    assert "SAP-Connectivity-Authentication" not in headers
    assert idp.count == 1


def test_no_authentication_over_on_premise_without_user(rsps):
    IdP(rsps)
    rsps.get(f"{ONPREM}/Items", json={})
    engine([onprem("NoAuthentication")]).session("S4").get("/Items")
    sent = target_calls(rsps)[0].request
    assert sent.req_kwargs["proxies"]["http"] == PROXY
    assert sent.headers["Proxy-Authorization"] == "Bearer px-technical-1"
    assert "Authorization" not in sent.headers and "SAP-Connectivity-Authentication" not in sent.headers


def test_oauth2_jwt_bearer_over_on_premise(rsps, xsuaa):
    IdP(rsps)
    IdP(rsps, DEST_TOKEN_URL, prefix="dt")
    rsps.get(f"{ONPREM}/Items", json={})
    entry = onprem("OAuth2JWTBearer", tokenServiceURL=DEST_TOKEN_URL, clientId="dest-client", clientSecret=DEST_SECRET)
    with propagation.use_token(xsuaa.token()):
        engine([entry]).session("S4").get("/Items")
    headers = target_calls(rsps)[0].request.headers
    assert headers["Authorization"] == "Bearer dt-alice@example.com-1"
    assert headers["Proxy-Authorization"] == "Bearer px-technical-1"


# -- headers owned by the library ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exchange", "header"])
def test_app_set_proxy_headers_are_replaced(rsps, xsuaa, mode):
    IdP(rsps)
    rsps.get(f"{ONPREM}/Items", json={})
    user = xsuaa.token()
    entry = onprem(**{"URL.headers.SAP-Connectivity-SCC-Location_ID": "EVIL", "URL.headers.X-Ok": "1"})
    s = engine([entry], connectivity_mode=mode).session("S4", user_token=user)
    s.get("/Items", headers={"SAP-Connectivity-Authentication": "Bearer forged", "Proxy-Authorization": "Bearer forged",
                             "sap-connectivity-scc-location_id": "EVIL2", "Authorization": "Bearer app"})
    headers = target_calls(rsps)[0].request.headers
    assert "forged" not in headers["Proxy-Authorization"]
    assert headers.get("SAP-Connectivity-Authentication") == (f"Bearer {user}" if mode == "header" else None)
    assert "SAP-Connectivity-SCC-Location_ID" not in headers
    assert "Authorization" not in headers
    assert headers["X-Ok"] == "1"


# -- caching and isolation -------------------------------------------------------------------------
def test_two_users_two_exchanges_and_cache_hits(rsps, xsuaa):
    idp = IdP(rsps)
    rsps.get(f"{ONPREM}/Items", json={})
    e = engine([onprem()])
    users = {n: xsuaa.token(n) for n in ("alice@example.com", "bob@example.com")}
    sent = []
    for i in range(6):
        name = "alice@example.com" if i % 2 == 0 else "bob@example.com"
        with propagation.use_token(users[name]):
            e.session("S4").get("/Items")
        sent.append((name, target_calls(rsps)[-1].request.headers["Proxy-Authorization"]))
    assert idp.count == 2
    assert [form(c)["assertion"] for c in rsps.calls if c.request.url == CONN_TOKEN_URL] == list(users.values())
    for name, header in sent:
        assert header.startswith(f"Bearer px-{name}-")


def test_header_mode_one_client_credentials_token_for_all_users_of_a_tenant(rsps, xsuaa):
    idp = IdP(rsps)
    rsps.get(f"{ONPREM}/Items", json={})
    e = engine([onprem()], connectivity_mode="header")
    for user in ("a@example.com", "b@example.com", "a@example.com"):
        with propagation.use_token(xsuaa.token(user)):
            e.session("S4").get("/Items")
    assert idp.count == 1
    assert [UserToken.parse(c.request.headers["SAP-Connectivity-Authentication"][7:]).user
            for c in target_calls(rsps)] == ["a@example.com", "b@example.com", "a@example.com"]


def test_subscriber_user_exchanges_at_subscriber_token_url(rsps, xsuaa):
    sub_url = f"https://consumer.{UAADOMAIN}/oauth/token"
    idp = IdP(rsps, sub_url)
    rsps.get(f"{ONPREM}/Items", json={})
    with propagation.use_token(xsuaa.token(zid="tenant-consumer", subdomain="consumer")):
        engine([onprem()]).session("S4").get("/Items")
    assert rsps.calls[0].request.url == sub_url
    assert idp.count == 1


# -- 407 / 401 retry ---------------------------------------------------------------------------------
def test_407_drops_proxy_token_and_retries_once(rsps, xsuaa):
    idp = IdP(rsps)
    rsps.get(f"{ONPREM}/Items", status=407)
    rsps.get(f"{ONPREM}/Items", json={"ok": True})
    r = engine([onprem()]).session("S4", user_token=xsuaa.token()).get("/Items")
    assert r.status_code == 200
    assert idp.count == 2
    assert [c.request.headers["Proxy-Authorization"] for c in target_calls(rsps)] == [
        "Bearer px-alice@example.com-1", "Bearer px-alice@example.com-2"]
    assert [c.request.req_kwargs["proxies"]["http"] for c in target_calls(rsps)] == [PROXY, PROXY]
    assert [h.status_code for h in r.history] == [407]


def test_407_twice_is_returned_after_one_retry(rsps, xsuaa):
    idp = IdP(rsps)
    rsps.get(f"{ONPREM}/Items", status=407)
    r = engine([onprem()]).session("S4", user_token=xsuaa.token()).get("/Items")
    assert r.status_code == 407
    assert idp.count == 2
    assert len(target_calls(rsps)) == 2


def test_401_reexchanges_destination_token_not_proxy_token(rsps, xsuaa):
    px = IdP(rsps)
    dt = IdP(rsps, DEST_TOKEN_URL, prefix="dt")
    rsps.get(f"{ONPREM}/Items", status=401)
    rsps.get(f"{ONPREM}/Items", json={})
    entry = onprem("OAuth2JWTBearer", tokenServiceURL=DEST_TOKEN_URL, clientId="dest-client", clientSecret=DEST_SECRET)
    r = engine([entry]).session("S4", user_token=xsuaa.token()).get("/Items")
    assert r.status_code == 200
    assert (dt.count, px.count) == (2, 1)
    assert [c.request.headers["Authorization"] for c in target_calls(rsps)] == [
        "Bearer dt-alice@example.com-1", "Bearer dt-alice@example.com-2"]
    assert {c.request.headers["Proxy-Authorization"] for c in target_calls(rsps)} == {"Bearer px-technical-1"}


# -- redirects -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exchange", "header"])
def test_same_host_redirect_keeps_proxy_headers(rsps, xsuaa, mode):
    idp = IdP(rsps)
    rsps.get(f"{ONPREM}/Items", status=302, headers={"Location": f"{ONPREM}/Items2"})
    rsps.get(f"{ONPREM}/Items2", json={})
    user = xsuaa.token()
    engine([onprem(CloudConnectorLocationId="LOC-1")], connectivity_mode=mode).session("S4", user_token=user).get("/Items")
    first, second = (c.request for c in target_calls(rsps))
    assert second.url == f"{ONPREM}/Items2"
    mine = lambda r: {h: v for h, v in r.headers.items() if h.lower() in PROXY_HEADERS}  # noqa: E731
    assert mine(second) == mine(first) and "Proxy-Authorization" in mine(second)
    assert idp.count == 1  # from the cache


def test_other_host_redirect_carries_no_proxy_or_user_headers(rsps, xsuaa):
    IdP(rsps)
    rsps.get(f"{ONPREM}/Items", status=302, headers={"Location": "http://other-virtual:8000/x"})
    rsps.get("http://other-virtual:8000/x", json={})
    user = xsuaa.token()
    s = engine([onprem(CloudConnectorLocationId="LOC-1")], connectivity_mode="header").session("S4", user_token=user)
    s.get("/Items")
    second = rsps.calls[-1].request
    assert second.url == "http://other-virtual:8000/x"
    assert not {h.lower() for h in second.headers} & (PROXY_HEADERS | {"authorization"})


# -- logs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exchange", "header"])
def test_logs_contain_no_token_or_secret(rsps, xsuaa, caplog, mode):
    IdP(rsps)
    rsps.get(f"{ONPREM}/Items", status=407)
    caplog.set_level(logging.DEBUG)
    user = xsuaa.token()
    engine([onprem()], connectivity_mode=mode).session("S4", user_token=user).get("/Items")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "destination=S4" in text and UserToken.parse(user).fingerprint in text
    for secret in (user, CONN_SECRET, "px-alice@example.com-1", "px-alice@example.com-2", "px-technical-1",
                   "px-technical-2"):
        assert secret not in text
