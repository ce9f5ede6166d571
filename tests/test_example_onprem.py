"""examples/flask_odata: the on-premise S/4HANA example, driven through its Flask
API with real XSUAA tokens, against a Connectivity token endpoint and an S/4HANA virtual
host stood in by ``responses``.

Asserted on the exact traffic: the jwt-bearer exchange for the calling user at the
connectivity token endpoint, the proxy used, the proxy headers on every backend call and
no ``Authorization`` to S/4HANA, OData key quoting, the CSRF fetch before writes, the
whitelisted write bodies, and the failure answers (no call without a user, no token in
an error answer or the log).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
import responses

import propagation
from propagation.tokens import UserToken

APP_FILE = Path(__file__).resolve().parent.parent / "examples" / "flask_odata" / "app.py"
_spec = importlib.util.spec_from_file_location("flask_odata_app", APP_FILE)
assert _spec is not None and _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

UAADOMAIN = "authentication.eu10.hana.ondemand.com"  # the xsuaa fixture's
CONN_TOKEN_URL = f"https://provider.{UAADOMAIN}/oauth/token"
CONN_SECRET = "conn-secret-VALUE"
PROXY_HOST = "connectivityproxy.internal.example.com"
PROXY = f"http://{PROXY_HOST}:20003"
VHOST = "http://s4-virtual:44300"
SERVICE = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION_SRV"
ENTITY_SET = f"{VHOST}{SERVICE}/A_FunctionalLocation"
LOCATION_ID = "LOC-1"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CSRF_TOKEN = "abc"
SESSION_COOKIE = "SAP_SESSIONID_S4H_100"

DESTINATION = {
    "name": "S4", "url": VHOST, "ProxyType": "OnPremise", "Authentication": "PrincipalPropagation",
    "CloudConnectorLocationId": LOCATION_ID, "sap-client": "100",
}
CONNECTIVITY = {
    "name": "my-connectivity", "instance_name": "my-connectivity", "label": "connectivity",
    "plan": "connectivity_proxy", "tags": ["connectivity"],
    "credentials": {
        "clientid": "sb-conn!b1", "clientsecret": CONN_SECRET, "token_service_url": f"https://provider.{UAADOMAIN}",
        "url": f"https://provider.{UAADOMAIN}", "uaadomain": UAADOMAIN, "onpremise_proxy_host": PROXY_HOST,
        "onpremise_proxy_http_port": "20003", "onpremise_proxy_port": "20003",
    },
}
PROXY_HEADERS = {"proxy-authorization", "sap-connectivity-authentication", "sap-connectivity-scc-location_id"}


class Landscape:
    """The connectivity token endpoint and the S/4HANA virtual host behind the proxy.

    The token endpoint answers ``px-<user>-<n>``; S/4HANA answers OData V2 JSON, issues
    a CSRF token with a session cookie on ``X-CSRF-Token: Fetch`` and refuses a write
    without that token (``403 X-CSRF-Token: Required``, as SAP Gateway does).
    ``fail = (status, body)`` makes every non-fetch backend call fail.
    """

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.rsps = rsps
        self.issued = 0
        self.token_error: tuple[int, dict[str, str]] | None = None
        self.fail: tuple[int, str] | None = None
        rsps.add_callback(responses.POST, CONN_TOKEN_URL, callback=self.token, content_type="application/json")
        backend = re.compile(re.escape(VHOST) + r"/.*")
        for method in (responses.HEAD, responses.GET, responses.PATCH, responses.POST):
            rsps.add_callback(method, backend, callback=self.backend)

    def token(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        if self.token_error is not None:
            return self.token_error[0], {}, json.dumps(self.token_error[1])
        self.issued += 1
        user = UserToken.parse(form(request)["assertion"]).user
        return 200, {}, json.dumps({"access_token": f"px-{user}-{self.issued}", "token_type": "bearer",
                                    "expires_in": 3600})

    def backend(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        json_type = {"Content-Type": "application/json"}
        if request.headers.get("X-CSRF-Token") == "Fetch":
            return 200, {"X-CSRF-Token": CSRF_TOKEN, "Set-Cookie": f"{SESSION_COOKIE}=s1; path=/"}, ""
        if self.fail is not None:
            return self.fail[0], json_type, self.fail[1]
        if request.method in ("PATCH", "POST") and request.headers.get("X-CSRF-Token") != CSRF_TOKEN:
            return 403, {"X-CSRF-Token": "Required"}, "CSRF token validation failed"
        if request.method == "PATCH":
            return 204, {}, ""
        if request.method == "POST":
            return 201, json_type, json.dumps({"d": {**json.loads(request.body or b"{}"), "__metadata": {}}})
        path = urlsplit(request.url or "").path
        if path.endswith("/A_FunctionalLocation"):
            return 200, json_type, json.dumps({"d": {"results": [{"FunctionalLocation": "1010-FL01"}]}})
        return 200, {**json_type, "ETag": 'W/"datetimeoffset\'2024\'"'}, json.dumps({"d": {"FunctionalLocation": "x"}})

    # -- what was sent ------------------------------------------------------------------------
    def urls(self) -> list[str]:
        return [f"{c.request.method} {c.request.url}" for c in self.rsps.calls]

    def backend_calls(self) -> list[requests.PreparedRequest]:
        return [c.request for c in self.rsps.calls if (c.request.url or "").startswith(VHOST)]


def form(request: requests.PreparedRequest) -> dict[str, str]:
    body = request.body.decode() if isinstance(request.body, bytes) else request.body or ""
    return {k: v[0] for k, v in parse_qs(body).items()}


def query(request: requests.PreparedRequest) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.url or "").query).items()}


def assert_carries_user(request: Any, user: str, n: int = 1) -> None:
    """Through the proxy, the user inside ``Proxy-Authorization``, and nothing for S/4HANA itself."""
    assert request.req_kwargs["proxies"] == {"http": PROXY, "https": PROXY}
    mine = {h.lower(): v for h, v in request.headers.items() if h.lower() in PROXY_HEADERS | {"authorization"}}
    assert mine == {"proxy-authorization": f"Bearer px-{user}-{n}", "sap-connectivity-scc-location_id": LOCATION_ID}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- fixtures ------------------------------------------------------------------------------------
def environ(vcap_env: Any, destinations: list[dict[str, Any]] | None = None, connectivity: bool = True) -> dict[str, str]:
    """xsuaa (the conftest fixture's) + connectivity bindings, and the on-premise destination."""
    return {
        "VCAP_SERVICES": vcap_env(ias=None, **({"connectivity": [CONNECTIVITY]} if connectivity else {})),
        "destinations": json.dumps([DESTINATION] if destinations is None else destinations),
    }


@pytest.fixture
def landscape(idp_keys: Any) -> Iterator[Landscape]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield Landscape(rsps)


@pytest.fixture
def client(vcap_env: Any) -> Any:
    return example.create_app(propagation.Propagator(environ=environ(vcap_env))).test_client()


# -- reads ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, sent",
    [
        pytest.param({}, {"$top": "50"}, id="default-top"),
        pytest.param({"$top": "5"}, {"$top": "5"}, id="top"),
        pytest.param({"$top": "100000"}, {"$top": "500"}, id="top-capped"),
        pytest.param({"$top": "0"}, {"$top": "1"}, id="top-at-least-one"),
        pytest.param({"$filter": "FunctionalLocationName eq 'Pump & Co'&$format=xml"},
                     {"$top": "50", "$filter": "FunctionalLocationName eq 'Pump & Co'&$format=xml"},
                     id="filter-stays-one-parameter"),
    ],
)
def test_list_exact_traffic(client: Any, landscape: Landscape, xsuaa: Any, args: dict[str, str],
                            sent: dict[str, str]) -> None:
    alice = xsuaa.token("alice@example.com")
    r = client.get("/functional-locations", query_string=args, headers=bearer(alice))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json() == [{"FunctionalLocation": "1010-FL01"}]
    assert [c.request.url for c in landscape.rsps.calls][0] == CONN_TOKEN_URL
    assert form(landscape.rsps.calls[0].request) == {
        "grant_type": JWT_BEARER, "assertion": alice, "token_format": "jwt", "response_type": "token",
        "client_id": "sb-conn!b1", "client_secret": CONN_SECRET,
    }
    (call,) = landscape.backend_calls()
    assert call.method == "GET" and call.url.split("?")[0] == ENTITY_SET
    assert query(call) == {**sent, "sap-client": "100"}
    assert call.headers["Accept"] == "application/json"
    assert_carries_user(call, "alice@example.com")


def test_bad_top_is_refused_before_any_call(client: Any, landscape: Landscape, xsuaa: Any) -> None:
    r = client.get("/functional-locations?$top=ten", headers=bearer(xsuaa.token()))
    assert r.status_code == 400
    assert len(landscape.rsps.calls) == 0


def test_each_user_is_exchanged_once_and_carried(client: Any, landscape: Landscape, xsuaa: Any) -> None:
    tokens = {u: xsuaa.token(u) for u in ("alice@example.com", "bob@example.com")}
    for user in ("alice@example.com", "bob@example.com", "alice@example.com"):
        assert client.get("/functional-locations", headers=bearer(tokens[user])).status_code == 200
    exchanges = [form(c.request) for c in landscape.rsps.calls if c.request.url == CONN_TOKEN_URL]
    assert [e["assertion"] for e in exchanges] == [tokens["alice@example.com"], tokens["bob@example.com"]]
    sent = [c.headers["Proxy-Authorization"] for c in landscape.backend_calls()]
    assert sent == ["Bearer px-alice@example.com-1", "Bearer px-bob@example.com-2", "Bearer px-alice@example.com-1"]


@pytest.mark.parametrize(
    "location, key",
    [
        pytest.param("1010-FL01", "'1010-FL01'", id="plain"),
        pytest.param("O'Brien", "'O%27%27Brien'", id="quote-doubled"),
        pytest.param("A/B C", "'A%2FB%20C'", id="slash-and-space"),
        pytest.param("x')?$format=xml&$top=1#", "'x%27%27%29%3F%24format%3Dxml%26%24top%3D1%23'", id="injection"),
    ],
)
def test_get_by_key_quoting(client: Any, landscape: Landscape, xsuaa: Any, location: str, key: str) -> None:
    r = client.get("/functional-locations/" + quote(location, safe=""), headers=bearer(xsuaa.token()))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json() == {"FunctionalLocation": "x"}
    assert r.headers["ETag"] == 'W/"datetimeoffset\'2024\'"'
    (call,) = landscape.backend_calls()
    assert call.url == f"{ENTITY_SET}({key})?sap-client=100"
    assert_carries_user(call, "alice@example.com")


# -- writes: CSRF token fetched first, whitelisted bodies -----------------------------------------
def assert_csrf_fetch(request: Any) -> None:
    assert request.method == "HEAD"
    assert request.url == f"{VHOST}{SERVICE}/?sap-client=100"
    assert request.headers["X-CSRF-Token"] == "Fetch"
    assert_carries_user(request, "alice@example.com")


def test_patch_fetches_csrf_and_sends_only_whitelisted_fields(client: Any, landscape: Landscape, xsuaa: Any) -> None:
    r = client.patch("/functional-locations/1010-FL01", json={"FunctionalLocationName": "Pump 2"},
                     headers={**bearer(xsuaa.token()), "If-Match": 'W/"etag-1"'})
    assert r.status_code == 204, r.get_data(as_text=True)
    assert landscape.urls() == [
        f"POST {CONN_TOKEN_URL}",
        f"HEAD {VHOST}{SERVICE}/?sap-client=100",
        f"PATCH {ENTITY_SET}('1010-FL01')?sap-client=100",
    ]
    fetch, write = landscape.backend_calls()
    assert_csrf_fetch(fetch)
    assert write.headers["X-CSRF-Token"] == CSRF_TOKEN
    assert f"{SESSION_COOKIE}=s1" in write.headers["Cookie"]  # the token's own backend session
    assert write.headers["If-Match"] == 'W/"etag-1"'
    assert json.loads(write.body) == {"FunctionalLocationName": "Pump 2"}
    assert_carries_user(write, "alice@example.com")
    assert landscape.issued == 1  # one exchange, reused for the fetch and the write


def test_post_fetches_csrf_and_creates(client: Any, landscape: Landscape, xsuaa: Any) -> None:
    body = {"FunctionalLocation": "1010-FL02", "FunctionalLocationName": "Pump 3", "FunctionalLocationCategory": "M"}
    r = client.post("/functional-locations", json=body, headers=bearer(xsuaa.token()))
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.get_json() == {**body, "__metadata": {}}
    fetch, write = landscape.backend_calls()
    assert_csrf_fetch(fetch)
    assert (write.method, write.url) == ("POST", f"{ENTITY_SET}?sap-client=100")
    assert write.headers["X-CSRF-Token"] == CSRF_TOKEN
    assert json.loads(write.body) == body
    assert_carries_user(write, "alice@example.com")


@pytest.mark.parametrize(
    "method, path, kwargs",
    [
        pytest.param("patch", "/functional-locations/1010-FL01",
                     {"json": {"FunctionalLocationName": "x", "MaintenancePlant": "1010"}}, id="patch-not-whitelisted"),
        pytest.param("patch", "/functional-locations/1010-FL01", {"json": {}}, id="patch-empty"),
        pytest.param("patch", "/functional-locations/1010-FL01", {"json": ["FunctionalLocationName"]}, id="patch-list"),
        pytest.param("patch", "/functional-locations/1010-FL01", {"data": "FunctionalLocationName=x"}, id="patch-no-json"),
        pytest.param("post", "/functional-locations", {"json": {"FunctionalLocation": "x", "CreatedByUser": "ADMIN"}},
                     id="post-not-whitelisted"),
    ],
)
def test_bad_write_bodies_send_nothing(client: Any, landscape: Landscape, xsuaa: Any, method: str, path: str,
                                       kwargs: dict[str, Any]) -> None:
    r = getattr(client, method)(path, headers=bearer(xsuaa.token()), **kwargs)
    assert r.status_code == 400
    assert r.get_json()["error"] == "bad_request"
    assert len(landscape.rsps.calls) == 0


# -- failures ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, path",
    [
        pytest.param("get", "/functional-locations", id="list"),
        pytest.param("get", "/functional-locations/1010-FL01", id="read"),
        pytest.param("patch", "/functional-locations/1010-FL01", id="update"),
        pytest.param("post", "/functional-locations", id="create"),
    ],
)
def test_without_token_401_and_nothing_sent(client: Any, landscape: Landscape, method: str, path: str) -> None:
    r = getattr(client, method)(path, json={"FunctionalLocationName": "x"})
    assert r.status_code == 401
    assert len(landscape.rsps.calls) == 0


def test_health_is_public(client: Any, landscape: Landscape) -> None:
    assert client.get("/health").get_json() == {"status": "UP"}
    assert len(landscape.rsps.calls) == 0


@pytest.mark.parametrize(
    "status, body, answer, message",
    [
        pytest.param(500, json.dumps({"error": {"code": "/IWBEP/CM_MGW_RT/020",
                                                "message": {"lang": "en", "value": "Internal error in the backend"}}}),
                     502, "Internal error in the backend", id="odata-500"),
        pytest.param(503, "<html>Cloud Connector: echo of Proxy-Authorization: Bearer px-alice@example.com-1</html>",
                     502, "S/4HANA answered HTTP 503", id="non-odata-body-not-relayed"),
        pytest.param(401, "", 502, "S/4HANA answered HTTP 401", id="backend-refused-the-user"),
        pytest.param(404, json.dumps({"error": {"message": {"value": "Resource not found"}}}), 404,
                     "Resource not found", id="not-found-passed-through"),
        pytest.param(403, json.dumps({"error": {"message": {"value": "No authorization"}}}), 403,
                     "No authorization", id="s4-authorization-passed-through"),
    ],
)
def test_backend_errors_mapped_without_tokens(client: Any, landscape: Landscape, xsuaa: Any,
                                              caplog: pytest.LogCaptureFixture, status: int, body: str, answer: int,
                                              message: str) -> None:
    caplog.set_level(logging.DEBUG)
    landscape.fail = (status, body)
    alice = xsuaa.token()
    r = client.get("/functional-locations/1010-FL01", headers=bearer(alice))
    assert r.status_code == answer
    assert r.get_json() == {"error": "backend_error", "backend_status": status, "message": message}
    text = r.get_data(as_text=True) + "\n".join(rec.getMessage() for rec in caplog.records)
    for secret in (alice, "px-alice", CONN_SECRET):
        assert secret not in text


def test_refused_exchange_is_502_and_s4_never_called(client: Any, landscape: Landscape, xsuaa: Any) -> None:
    landscape.token_error = (400, {"error": "invalid_grant", "error_description": "user not known in the subaccount"})
    alice = xsuaa.token()
    r = client.get("/functional-locations", headers=bearer(alice))
    assert r.status_code == 502
    assert r.get_json()["idp_error"] == "invalid_grant"
    assert alice not in r.get_data(as_text=True)
    assert landscape.backend_calls() == []


@pytest.mark.parametrize(
    "destinations, connectivity",
    [
        pytest.param([], True, id="destination-not-found"),
        pytest.param(None, False, id="no-connectivity-binding"),
    ],
)
def test_misconfiguration_is_500_with_a_safe_message(vcap_env: Any, landscape: Landscape, xsuaa: Any,
                                                    destinations: Any, connectivity: bool) -> None:
    env = {**environ(vcap_env, destinations, connectivity), "PROPAGATION_STRICT": "false"}  # start despite it: fails on use
    client = example.create_app(propagation.Propagator(environ=env)).test_client()
    r = client.get("/functional-locations", headers=bearer(xsuaa.token()))
    assert r.status_code == 500
    assert r.get_json() == {"error": "server_error",
                            "error_description": "The S/4HANA connection is not configured; see the log."}
    assert len(landscape.rsps.calls) == 0
