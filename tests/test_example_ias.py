"""examples/ias_iflow and examples/pkce_public_client, driven through their Flask APIs with
real signed IAS/XSUAA tokens (jwtkit). sap-xssec's key calls go to ``idp_keys`` (respx);
the token endpoints, Cloud Integration and the backend are stood in by ``responses``.

Asserted on the exact chain of traffic: IAS token → XSUAA token (jwt-bearer at XSUAA, by the
middleware) → jwt-bearer with that XSUAA token at the it-rt token URL → the iFlow with the
user's it-rt token; and public (PKCE) token → private IAS token (jwt-bearer at IAS) → the
backend as that user. Plus the failures: missing trust audience (401 with the
cross-consumption hint), missing scope (403), expired public token (401, no exchange).
"""

from __future__ import annotations

import importlib.util
import json
import urllib.parse
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
import requests
import responses

import jwtkit
import propagation
from propagation.exchange.oauth import GRANT_JWT_BEARER, OAuthClient
from propagation.tokens import UserToken

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(folder: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{folder}_app", EXAMPLES / folder / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


iflow_example = load("ias_iflow")
pkce_example = load("pkce_public_client")

TRUST = "xsuaa-trust-ias-client-id"  # the IAS client of the subaccount's XSUAA trust
SPA = "orders-mobile-public-client"

CPI_URL = "https://mytenant.it-cpi018-rt.cfapps.eu10-003.hana.ondemand.com"
CPI_CLIENT = "sb-6f1e!b1234|it-rt-mytenant!b196"
CPI_SECRET = "cpi-secret-VALUE"
IFLOW_URL = f"{CPI_URL}/http/orders"

BACKEND = "https://orders-backend.cfapps.eu10.hana.ondemand.com"
BACKEND_CLIENT = "backend-ias-client"
BACKEND_SECRET = "backend-secret-VALUE"


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def form(call: Any) -> dict[str, str]:
    body = call.request.body
    return dict(urllib.parse.parse_qsl(body.decode() if isinstance(body, bytes) else body or ""))


def email(raw: str) -> str:
    """The user's e-mail (XSUAA and IAS tokens both carry it; IAS's ``sub`` is a UUID)."""
    return str(UserToken.parse(raw).claims.get("email"))


def engine(environ: dict[str, str]) -> propagation.Propagator:
    return propagation.Propagator(environ=environ, oauth=OAuthClient(sleep=lambda s: None, retries=0))


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        for part in (secret, *secret.split(".")):
            if len(part) >= 8:
                assert part not in text


@pytest.fixture
def rsps(idp_keys: Any) -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# == ias_iflow ====================================================================================
class Subaccount:
    """The subaccount's XSUAA token endpoint, used by two clients: the app's XSUAA client
    (IAS→XSUAA, answers an XSUAA token of the user with the scopes given) and the it-rt
    client (answers ``cpi-<user>-<n>``); and the iFlow, answering ``{"orderId": "4711"}``."""

    def __init__(self, rsps: responses.RequestsMock, xsuaa: jwtkit.Xsuaa) -> None:
        self.rsps, self.xsuaa = rsps, xsuaa
        self.scopes: tuple[str, ...] = ("openid", f"{xsuaa.xsappname}.Order")
        self.issued: list[str] = []
        self.iflow_status = 200
        rsps.add_callback(responses.POST, xsuaa.token_url, callback=self.token, content_type="application/json")
        rsps.add_callback(responses.POST, IFLOW_URL, callback=self.iflow, content_type="application/json")

    def token(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        fields = dict(urllib.parse.parse_qsl(str(request.body)))
        user = email(fields["assertion"])
        if fields["client_id"] == self.xsuaa.clientid:
            token = self.xsuaa.token(user, scopes=self.scopes)
        else:
            token = f"cpi-{user}-{len(self.issued) + 1}"
        self.issued.append(token)
        return 200, {}, json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 3600})

    def iflow(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        return self.iflow_status, {}, json.dumps({"orderId": "4711"})


@pytest.fixture
def subaccount(rsps: responses.RequestsMock, xsuaa: jwtkit.Xsuaa) -> Subaccount:
    return Subaccount(rsps, xsuaa)


def iflow_environ(vcap_env: Any, xsuaa: jwtkit.Xsuaa, **env: str) -> dict[str, str]:
    it_rt = {"name": "order-iflow", "instance_name": "order-iflow", "label": "it-rt", "plan": "integration-flow",
             "tags": [], "credentials": {"oauth": {"url": CPI_URL, "tokenurl": xsuaa.token_url,
                                                  "clientid": CPI_CLIENT, "clientsecret": CPI_SECRET}}}
    return {"VCAP_SERVICES": vcap_env(**{"it-rt": [it_rt]}), "PROPAGATION_XSUAA_TRUST_CLIENT_ID": TRUST, **env}


@pytest.fixture
def iflow_client(vcap_env: Any, xsuaa: jwtkit.Xsuaa) -> Any:
    return iflow_example.create_app(engine(iflow_environ(vcap_env, xsuaa))).test_client()


def test_order_goes_to_the_iflow_as_the_user(iflow_client: Any, subaccount: Subaccount, ias: jwtkit.Ias,
                                             xsuaa: jwtkit.Xsuaa) -> None:
    inbound = ias.token("bob@example.com", aud=[ias.clientid, TRUST])
    order = {"customer": "C-100", "items": [{"material": "M-1", "quantity": 2}]}

    r = iflow_client.post("/orders", json=order, headers=bearer(inbound))

    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.get_json() == {"orderId": "4711"}
    exchange, cpi_exchange, call = subaccount.rsps.calls
    # 1. the middleware: IAS token → XSUAA token, with the app's XSUAA client
    assert exchange.request.url == xsuaa.token_url
    assert form(exchange) == {"grant_type": GRANT_JWT_BEARER, "assertion": inbound,
                              "client_id": xsuaa.clientid, "client_secret": xsuaa.clientsecret}
    xsuaa_token = subaccount.issued[0]
    # 2. the it-rt binding: jwt-bearer with the user's XSUAA token at the binding's token URL
    assert cpi_exchange.request.url == xsuaa.token_url
    assert form(cpi_exchange) == {"grant_type": GRANT_JWT_BEARER, "assertion": xsuaa_token,
                                  "client_id": CPI_CLIENT, "client_secret": CPI_SECRET}
    # 3. the iFlow, as the user, with the order unchanged
    assert (call.request.method, call.request.url) == ("POST", IFLOW_URL)
    assert call.request.headers["Authorization"] == "Bearer cpi-bob@example.com-2"
    assert json.loads(call.request.body) == order
    assert "X-CSRF-Token" not in call.request.headers


def test_each_user_is_exchanged_once(iflow_client: Any, subaccount: Subaccount, ias: jwtkit.Ias) -> None:
    tokens = {u: ias.token(u, aud=[ias.clientid, TRUST]) for u in ("alice@example.com", "bob@example.com")}
    for user in ("alice@example.com", "bob@example.com", "alice@example.com"):
        assert iflow_client.post("/orders", json={"n": 1}, headers=bearer(tokens[user])).status_code == 201
    sent = [c.request.headers["Authorization"] for c in subaccount.rsps.calls if c.request.url == IFLOW_URL]
    assert sent == ["Bearer cpi-alice@example.com-2", "Bearer cpi-bob@example.com-4", "Bearer cpi-alice@example.com-2"]
    assert len(subaccount.issued) == 4  # two per user: XSUAA, then it-rt; none for the repeat


def test_me_shows_ias_user_and_xsuaa_scopes(iflow_client: Any, subaccount: Subaccount, ias: jwtkit.Ias,
                                            xsuaa: jwtkit.Xsuaa) -> None:
    inbound = ias.token("bob@example.com", aud=[ias.clientid, TRUST])
    body = iflow_client.get("/me", headers=bearer(inbound)).get_json()
    assert body["user"]["kind"] == "ias"
    assert body["user"]["email"] == "bob@example.com"
    assert body["user"]["issuer"] == ias.url
    assert body["xsuaa"] == {"user": "bob@example.com",
                             "scopes": ["openid", f"{xsuaa.xsappname}.Order", f"{xsuaa.xsappname}.Read"],
                             "app_scopes": ["Order", "Read"]}
    assert body["can_order"] is True
    assert [c.request.url for c in subaccount.rsps.calls] == [xsuaa.token_url]  # no iFlow call for /me


def test_missing_scope_is_403_and_nothing_sent_to_cloud_integration(iflow_client: Any, subaccount: Subaccount,
                                                                   ias: jwtkit.Ias, xsuaa: jwtkit.Xsuaa) -> None:
    subaccount.scopes = ("openid",)
    inbound = ias.token("carol@example.com", aud=[ias.clientid, TRUST])
    assert iflow_client.get("/me", headers=bearer(inbound)).get_json()["can_order"] is False
    r = iflow_client.post("/orders", json={"n": 1}, headers=bearer(inbound))
    assert r.status_code == 403
    scope = f"{xsuaa.xsappname}.Order"
    assert r.get_json() == {"error": "insufficient_scope", "error_description": f"The scope '{scope}' is required.",
                            "scope": scope}
    assert r.headers["WWW-Authenticate"] == f'Bearer error="insufficient_scope", scope="{scope}"'
    # Only the middleware's IAS→XSUAA exchange (once, cached): no it-rt exchange, no iFlow call.
    assert [form(c)["client_id"] for c in subaccount.rsps.calls] == [xsuaa.clientid]


def test_token_without_trust_audience_is_401_with_the_cross_consumption_hint(
    iflow_client: Any, subaccount: Subaccount, ias: jwtkit.Ias
) -> None:
    inbound = ias.token(aud=[ias.clientid])  # the identity binding lacks xsuaa-cross-consumption
    r = iflow_client.post("/orders", json={"n": 1}, headers=bearer(inbound))
    assert r.status_code == 401
    body = r.get_json()
    assert body["error"] == "invalid_token"
    assert body["error_description"].startswith(
        f"The IAS token's 'aud' lacks the XSUAA trust client id ({TRUST}): enable 'xsuaa-cross-consumption: true' "
        "in the binding parameters of the calling app's IAS service instance binding")
    assert "xsuaa-cross-consumption" in r.headers["WWW-Authenticate"]
    assert_no_secret(r.get_data(as_text=True) + r.headers["WWW-Authenticate"], inbound)
    assert len(subaccount.rsps.calls) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"json": ["not", "an", "object"]}, id="list"),
        pytest.param({"json": {}}, id="empty"),
        pytest.param({"data": "customer=C-100"}, id="not-json"),
    ],
)
def test_bad_order_is_400_and_the_iflow_never_called(iflow_client: Any, subaccount: Subaccount, ias: jwtkit.Ias,
                                                     kwargs: dict[str, Any]) -> None:
    r = iflow_client.post("/orders", headers=bearer(ias.token(aud=[ias.clientid, TRUST])), **kwargs)
    assert r.status_code == 400
    assert not [c for c in subaccount.rsps.calls if c.request.url == IFLOW_URL]


def test_iflow_refusal_is_502(iflow_client: Any, subaccount: Subaccount, ias: jwtkit.Ias) -> None:
    subaccount.iflow_status = 403  # e.g. the user's token lacks the sender adapter's role
    r = iflow_client.post("/orders", json={"n": 1}, headers=bearer(ias.token(aud=[ias.clientid, TRUST])))
    assert (r.status_code, r.get_json()) == (502, {"error": "iflow_error", "iflow_status": 403})


def test_refused_it_rt_exchange_is_502_and_the_iflow_never_called(vcap_env: Any, rsps: responses.RequestsMock,
                                                                  xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias) -> None:
    def token(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        fields = dict(urllib.parse.parse_qsl(str(request.body)))
        if fields["client_id"] == xsuaa.clientid:
            return 200, {}, json.dumps({"access_token": xsuaa.token(scopes=(f"{xsuaa.xsappname}.Order",)),
                                        "expires_in": 3600})
        return 401, {}, json.dumps({"error": "unauthorized", "error_description": "grant type not allowed"})

    rsps.add_callback(responses.POST, xsuaa.token_url, callback=token, content_type="application/json")
    client = iflow_example.create_app(engine(iflow_environ(vcap_env, xsuaa))).test_client()
    r = client.post("/orders", json={"n": 1}, headers=bearer(ias.token(aud=[ias.clientid, TRUST])))
    assert r.status_code == 502
    assert r.get_json()["idp_error"] == "unauthorized"
    assert [c.request.url for c in rsps.calls] == [xsuaa.token_url, xsuaa.token_url]


def test_without_token_401_and_health_public(iflow_client: Any, subaccount: Subaccount) -> None:
    assert iflow_client.post("/orders", json={"n": 1}).status_code == 401
    assert iflow_client.get("/health").get_json() == {"status": "UP"}
    assert len(subaccount.rsps.calls) == 0


def test_startup_needs_the_xsuaa_binding(vcap_env: Any, xsuaa: jwtkit.Xsuaa) -> None:
    env = {"VCAP_SERVICES": vcap_env(xsuaa=None)}
    with pytest.raises(propagation.ConfigurationError, match="needs an 'xsuaa' binding"):
        iflow_example.create_app(engine(env))


# == pkce_public_client ===========================================================================
def public_token(ias: jwtkit.Ias, user: str = "dana@example.com", **kw: Any) -> str:
    """What IAS issues to the mobile app after the PKCE login: ``aud`` and ``azp`` = the public client."""
    return ias.token(user, aud=[SPA], extra={"azp": SPA}, **kw)


class Landscape:
    """IAS's token endpoint (answers a private token of the user for whichever client asks:
    this API's client with ``aud=[API]``, the backend's client with ``aud=[backend]``) and the
    backend, answering with the Authorization it saw."""

    def __init__(self, rsps: responses.RequestsMock, ias: jwtkit.Ias) -> None:
        self.rsps, self.ias = rsps, ias
        self.issued: list[str] = []
        rsps.add_callback(responses.POST, jwtkit.ias_token_url(ias), callback=self.token,
                          content_type="application/json")
        rsps.add_callback(responses.GET, f"{BACKEND}/api/orders", callback=self.backend,
                          content_type="application/json")

    def token(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        fields = dict(urllib.parse.parse_qsl(str(request.body)))
        user = email(fields["assertion"])
        token = self.ias.token(user, aud=[fields["client_id"]], extra={"azp": fields["client_id"]})
        self.issued.append(token)
        return 200, {}, json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 3600})

    def backend(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        return 200, {}, json.dumps([{"id": "O-1", "seen_as": email(request.headers["Authorization"].split()[1])}])


@pytest.fixture
def landscape(rsps: responses.RequestsMock, ias: jwtkit.Ias) -> Landscape:
    return Landscape(rsps, ias)


FORWARD = {"name": "BACKEND", "url": BACKEND, "forwardAuthToken": True}


def jwt_bearer_destination(ias: jwtkit.Ias) -> dict[str, Any]:
    return {"name": "BACKEND", "url": BACKEND, "Authentication": "OAuth2JWTBearer",
            "tokenServiceURL": jwtkit.ias_token_url(ias), "clientId": BACKEND_CLIENT, "clientSecret": BACKEND_SECRET}


def pkce_client(vcap_env: Any, destination: dict[str, Any]) -> Any:
    env = {"VCAP_SERVICES": vcap_env(xsuaa=None), "PROPAGATION_PUBLIC_CLIENTS": f"{SPA}, other-public-client",
           "destinations": json.dumps([destination])}
    return pkce_example.create_app(engine(env)).test_client()


def test_public_token_is_exchanged_then_forwarded(vcap_env: Any, landscape: Landscape, ias: jwtkit.Ias) -> None:
    public = public_token(ias)
    client = pkce_client(vcap_env, FORWARD)

    r = client.get("/orders?top=5", headers=bearer(public))

    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json() == [{"id": "O-1", "seen_as": "dana@example.com"}]
    exchange, call = landscape.rsps.calls
    assert exchange.request.url == jwtkit.ias_token_url(ias)
    assert form(exchange) == {"grant_type": GRANT_JWT_BEARER, "assertion": public,
                              "client_id": ias.clientid, "client_secret": ias.clientsecret}
    private = landscape.issued[0]
    assert UserToken.parse(private).audiences == (ias.clientid,)
    assert call.request.url == f"{BACKEND}/api/orders?top=5"
    assert call.request.headers["Authorization"] == f"Bearer {private}"  # the API's token, never the public one


def test_public_token_exchanged_then_jwt_bearer_for_the_backend(vcap_env: Any, landscape: Landscape,
                                                               ias: jwtkit.Ias) -> None:
    public = public_token(ias)
    client = pkce_client(vcap_env, jwt_bearer_destination(ias))

    for _ in range(2):  # the second request reuses both exchanges
        assert client.get("/orders", headers=bearer(public)).status_code == 200

    inbound_exchange, backend_exchange, first, second = landscape.rsps.calls
    assert form(inbound_exchange) == {"grant_type": GRANT_JWT_BEARER, "assertion": public,
                                      "client_id": ias.clientid, "client_secret": ias.clientsecret}
    private, backend_token = landscape.issued
    assert backend_exchange.request.url == jwtkit.ias_token_url(ias)
    assert form(backend_exchange) == {"grant_type": GRANT_JWT_BEARER, "assertion": private,
                                      "client_id": BACKEND_CLIENT, "client_secret": BACKEND_SECRET}
    for call in (first, second):
        assert call.request.url == f"{BACKEND}/api/orders?top=20"
        assert call.request.headers["Authorization"] == f"Bearer {backend_token}"


def test_me_names_the_public_client(vcap_env: Any, landscape: Landscape, ias: jwtkit.Ias) -> None:
    public = public_token(ias)
    body = pkce_client(vcap_env, FORWARD).get("/me", headers=bearer(public)).get_json()
    assert body["email"] == "dana@example.com"
    assert body["user"] == UserToken.parse(public).user  # for IAS: the user's sub
    assert body["public_client"] == SPA
    assert body["client"] == ias.clientid
    assert [c.request.url for c in landscape.rsps.calls] == [jwtkit.ias_token_url(ias)]


def test_own_token_is_not_exchanged(vcap_env: Any, landscape: Landscape, ias: jwtkit.Ias) -> None:
    own = ias.token("erin@example.com", aud=[ias.clientid])
    client = pkce_client(vcap_env, FORWARD)
    assert client.get("/me", headers=bearer(own)).get_json()["public_client"] is None
    assert client.get("/orders", headers=bearer(own)).status_code == 200
    [call] = landscape.rsps.calls
    assert call.request.headers["Authorization"] == f"Bearer {own}"


def test_expired_public_token_is_401_with_no_exchange(vcap_env: Any, landscape: Landscape, ias: jwtkit.Ias,
                                                      idp_keys: Any) -> None:
    public = public_token(ias, ttl=-120)  # past exp and the 60 s clock-skew leeway
    r = pkce_client(vcap_env, FORWARD).get("/orders", headers=bearer(public))
    assert r.status_code == 401
    assert r.get_json() == {"error": "invalid_token", "error_description": "Token expired."}
    assert_no_secret(r.get_data(as_text=True), public)
    assert len(landscape.rsps.calls) == 0
    assert idp_keys["ias_jwks"].call_count == 0


def test_unlisted_public_client_is_401_with_no_exchange(vcap_env: Any, landscape: Landscape, ias: jwtkit.Ias) -> None:
    raw = ias.token(aud=["unlisted-spa"], extra={"azp": "unlisted-spa"})
    r = pkce_client(vcap_env, FORWARD).get("/orders", headers=bearer(raw))
    assert r.status_code == 401
    assert len(landscape.rsps.calls) == 0


def test_ias_refusing_the_exchange_is_401_and_the_backend_never_called(vcap_env: Any, rsps: responses.RequestsMock,
                                                                      ias: jwtkit.Ias) -> None:
    rsps.post(jwtkit.ias_token_url(ias), status=400, json={"error": "invalid_grant"})
    r = pkce_client(vcap_env, FORWARD).get("/orders", headers=bearer(public_token(ias)))
    assert r.status_code == 401
    assert f"IAS refused to exchange the token of public client '{SPA}'" in r.get_json()["error_description"]
    assert [c.request.url for c in rsps.calls] == [jwtkit.ias_token_url(ias)]
