"""The outbound core on all three transports — ``session()`` (requests), ``client()`` (httpx)
and ``async_client()`` (httpx async): one plan per request (tenant-correct reuse of a client
made once), origin rules, fail closed, 401 re-exchange, CSRF and cookies from the engine,
single-flight across coroutines. Mocked traffic goes through ``responses`` (requests) and
``respx`` (httpx) with one handler, so every transport is held to the same exchange."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests
import responses
import respx

import propagation
from propagation import MissingUserTokenError, PathOutsideDestinationError, Propagator
from propagation.bindings import Binding, Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.exchange.oauth import OAuthClient

import jwtkit

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


# -- one handler for both mocking libraries -----------------------------------------------------
@dataclass
class Req:
    method: str
    url: str
    headers: dict[str, str]
    body: str
    via: str  # "requests" or "httpx"

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == low), None)

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body).items()}

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}


Handler = Callable[[Req], tuple[int, dict[str, str], Any]]


class Web:
    """Routes by URL prefix; answers ``requests`` through ``responses`` and ``httpx`` through ``respx``."""

    def __init__(self, rsps: responses.RequestsMock, router: respx.MockRouter) -> None:
        self.rsps, self.router = rsps, router
        self.seen: list[Req] = []

    def on(self, method: str, prefix: str, handler: Handler) -> None:
        def answer(req: Req) -> tuple[int, dict[str, str], bytes]:
            self.seen.append(req)
            status, headers, body = handler(req)
            payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
            return status, {"Content-Type": "application/json", **headers}, payload.encode() if isinstance(payload, str) else payload

        def via_requests(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
            body = request.body or ""
            return answer(Req(request.method or "", request.url or "", dict(request.headers),
                              body.decode() if isinstance(body, bytes) else body, "requests"))

        def via_httpx(request: httpx.Request) -> httpx.Response:
            status, headers, body = answer(Req(request.method, str(request.url), dict(request.headers),
                                               request.content.decode(), "httpx"))
            return httpx.Response(status, headers=headers, content=body)

        self.rsps.add_callback(method, re.compile(re.escape(prefix) + ".*"), callback=via_requests)
        self.router.route(method=method, url__startswith=prefix).mock(side_effect=via_httpx)

    def to(self, prefix: str) -> list[Req]:
        return [r for r in self.seen if r.url.startswith(prefix)]


@pytest.fixture
def web() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps, respx.mock(assert_all_called=False) as router:
        yield Web(rsps, router)


# -- the three transports -------------------------------------------------------------------------
class Transport:
    name = ""

    def make(self, engine: Propagator, dest: str, **kw: Any) -> Any:
        raise NotImplementedError

    def call(self, obj: Any, method: str, url: str, **kw: Any) -> Any:
        raise NotImplementedError


class SessionTransport(Transport):
    name = "session"

    def make(self, engine: Propagator, dest: str, **kw: Any) -> Any:
        return engine.session(dest, **kw)

    def call(self, obj: Any, method: str, url: str, follow: bool = False, **kw: Any) -> Any:
        return obj.request(method, url, allow_redirects=follow, **kw)


class ClientTransport(Transport):
    name = "client"

    def make(self, engine: Propagator, dest: str, **kw: Any) -> Any:
        return engine.client(dest, **kw)

    def call(self, obj: Any, method: str, url: str, follow: bool = False, **kw: Any) -> Any:
        return obj.request(method, url, follow_redirects=follow, **kw)


class AsyncTransport(Transport):
    name = "async_client"

    def make(self, engine: Propagator, dest: str, **kw: Any) -> Any:
        return engine.async_client(dest, **kw)

    def call(self, obj: Any, method: str, url: str, follow: bool = False, **kw: Any) -> Any:
        return asyncio.run(obj.request(method, url, follow_redirects=follow, **kw))


TRANSPORTS = [pytest.param(t(), id=t.name) for t in (SessionTransport, ClientTransport, AsyncTransport)]


def user(name: str, tenant: str = "provider", **claims: Any) -> str:
    return jwtkit.unsigned({
        "user_name": name, "zid": f"{tenant}-zid", "ext_attr": {"zdn": tenant}, "grant_type": "password",
        "iss": f"https://{tenant}.auth.example.com/oauth/token", "exp": int(time.time()) + 3600, **claims,
    })


def env_engine(destinations: list[dict[str, Any]], bindings: list[Binding] = ()) -> Propagator:
    return Propagator(environ={"destinations": json.dumps(destinations)}, bindings=Bindings(list(bindings)),
                      cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, sleep=lambda s: None))


# -- tenants: one client made at import, each tenant's own destination -------------------------------
DEST_URI = "https://destination.example.com"


def destination_service(web: Web) -> Propagator:
    """A Destination service whose destination S4 differs per tenant (URL and Basic password)."""
    for tenant in ("provider", "acme"):
        web.on("POST", f"https://{tenant}.auth.example.com/oauth/token",
               lambda r, t=tenant: (200, {}, {"access_token": f"svc-{t}", "expires_in": 3600}))

    def find(req: Req) -> tuple[int, dict[str, str], Any]:
        tenant = (req.header("Authorization") or "").removeprefix("Bearer svc-")
        basic = "Basic " + base64.b64encode(f"S4USER:{tenant}-password".encode()).decode()
        return 200, {}, {
            "destinationConfiguration": {"Name": "S4", "Type": "HTTP", "URL": f"https://{tenant}-s4.example.com/odata",
                                         "Authentication": "BasicAuthentication", "ProxyType": "Internet"},
            "authTokens": [{"type": "Basic", "value": basic.split()[1], "http_header": {"key": "Authorization", "value": basic}}],
        }

    web.on("GET", f"{DEST_URI}/destination-configuration/v1/destinations/", find)
    for tenant in ("provider", "acme"):
        web.on("GET", f"https://{tenant}-s4.example.com/", lambda r: (200, {}, {"ok": True}))
    binding = Binding(name="dest", label="destination", credentials={
        "clientid": "dest-client", "clientsecret": "dest-secret", "url": "https://provider.auth.example.com",
        "uri": DEST_URI, "tenantid": "provider-zid"})
    return Propagator(environ={}, bindings=Bindings([binding]), cache=MemoryTokenCache(),
                      oauth=OAuthClient(retries=0, sleep=lambda s: None))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_made_once_calls_each_tenants_own_destination_with_its_credentials(web: Web, transport: Transport) -> None:
    engine = destination_service(web)
    s4 = transport.make(engine, "S4")  # made at "import": no user, no tenant yet
    for who, tenant in [("alice", "provider"), ("carol", "acme"), ("alice", "provider"), ("carol", "acme")]:
        with propagation.use_token(user(who, tenant)):
            assert transport.call(s4, "GET", "/Items").status_code == 200
    calls = web.to("https://provider-s4.example.com/") + web.to("https://acme-s4.example.com/")
    assert len(calls) == 4
    for call in calls:
        tenant = urlsplit(call.url).hostname.split("-s4.")[0]  # type: ignore[union-attr]
        expected = "Basic " + base64.b64encode(f"S4USER:{tenant}-password".encode()).decode()
        assert call.header("Authorization") == expected, (call.url, transport.name)
        assert urlsplit(call.url).path == "/odata/Items"


# -- fail closed -----------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_user_destination_without_a_user_sends_nothing(web: Web, transport: Transport) -> None:
    engine = env_engine([{"name": "S4", "url": "https://s4.example.com", "Authentication": "OAuth2JWTBearer",
                          "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c", "clientSecret": "s"}])
    web.on("POST", "https://idp.example.com/", lambda r: (200, {}, {"access_token": "never"}))
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    with pytest.raises(MissingUserTokenError):
        transport.call(transport.make(engine, "S4"), "GET", "/x")
    assert web.seen == []


# -- origins ---------------------------------------------------------------------------------------
ORIGIN_DEST = {"name": "API", "url": "https://api.example.com/sap/opu/odata/sap/SRV", "Authentication": "BasicAuthentication",
               "User": "u", "Password": "p-SECRET", "URL.headers.X-Api-Key": "key-SECRET",
               "URL.queries.apikey": "q-SECRET", "sap-client": "100"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_credentials_headers_and_queries_only_go_to_the_destination_origin(web: Web, transport: Transport) -> None:
    engine = env_engine([ORIGIN_DEST])
    web.on("GET", "https://api.example.com/", lambda r: (200, {}, {}))
    web.on("GET", "https://elsewhere.example.com/", lambda r: (200, {}, {}))
    api = transport.make(engine, "API")
    transport.call(api, "GET", "Items")
    transport.call(api, "GET", "https://api.example.com/sap/opu/odata/sap/SRV/Items?$skiptoken=5")  # __next link
    transport.call(api, "GET", "https://elsewhere.example.com/next?page=2")
    own, own_absolute, other = web.seen
    for call in (own, own_absolute):
        assert call.header("Authorization", ) == "Basic " + base64.b64encode(b"u:p-SECRET").decode()
        assert call.header("X-Api-Key") == "key-SECRET"
        assert call.query["apikey"] == "q-SECRET" and call.query["sap-client"] == "100"
    assert own.url.startswith("https://api.example.com/sap/opu/odata/sap/SRV/Items?")
    assert other.url == "https://elsewhere.example.com/next?page=2"
    assert "SECRET" not in json.dumps(other.headers) and other.header("Authorization") is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_redirect_to_another_origin_carries_nothing_of_the_destination(web: Web, transport: Transport) -> None:
    engine = env_engine([ORIGIN_DEST])
    web.on("GET", "https://api.example.com/", lambda r: (302, {"Location": "https://evil.example.com/collect"}, ""))
    web.on("GET", "https://evil.example.com/", lambda r: (200, {}, {}))
    response = transport.call(transport.make(engine, "API"), "GET", "Items", follow=True)
    assert response.status_code == 200
    first, second = web.seen
    assert first.header("X-Api-Key") == "key-SECRET"
    assert second.url == "https://evil.example.com/collect"
    assert "SECRET" not in json.dumps(second.headers) and second.header("Authorization") is None


@pytest.mark.parametrize("path", [
    pytest.param("../../admin", id="dot-dot"),
    pytest.param("Items/../../../../admin", id="nested"),
    pytest.param("%2e%2e/%2E%2E/admin", id="percent-encoded"),
    pytest.param("/../admin", id="leading-slash"),
])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dot_segments_above_the_destination_path_are_refused_before_sending(web: Web, transport: Transport, path: str) -> None:
    engine = env_engine([ORIGIN_DEST])
    web.on("GET", "https://api.example.com/", lambda r: (200, {}, {}))
    with pytest.raises(PathOutsideDestinationError) as info:
        transport.call(transport.make(engine, "API"), "GET", path)
    assert path in str(info.value) and "/sap/opu/odata/sap/SRV" in str(info.value)
    assert web.seen == []


@pytest.mark.parametrize("path,expected", [
    pytest.param("Items/../Orders", "/sap/opu/odata/sap/SRV/Orders", id="inside"),
    pytest.param("./Items", "/sap/opu/odata/sap/SRV/Items", id="dot"),
    pytest.param("", "/sap/opu/odata/sap/SRV/", id="root"),
])
def test_dot_segments_that_stay_inside_the_destination_path_are_resolved(web: Web, path: str, expected: str) -> None:
    engine = env_engine([ORIGIN_DEST])
    web.on("GET", "https://api.example.com/", lambda r: (200, {}, {}))
    engine.session("API").get(path)
    assert urlsplit(web.seen[0].url).path == expected


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_application_set_proxy_headers_are_replaced_never_passed_through(web: Web, transport: Transport) -> None:
    engine = env_engine([ORIGIN_DEST])
    web.on("GET", "https://api.example.com/", lambda r: (200, {}, {}))
    transport.call(transport.make(engine, "API"), "GET", "Items",
                   headers={"Proxy-Authorization": "Bearer stolen", "SAP-Connectivity-Authentication": "Bearer x"})
    assert web.seen[0].header("Proxy-Authorization") is None
    assert web.seen[0].header("SAP-Connectivity-Authentication") is None


# -- 401: drop, re-exchange, resend once ------------------------------------------------------------
JWT_DEST = {"name": "S4", "url": "https://s4.example.com/api", "Authentication": "OAuth2JWTBearer",
            "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c", "clientSecret": "s"}


def counting_idp(web: Web) -> list[Req]:
    issued: list[Req] = []

    def token(req: Req) -> tuple[int, dict[str, str], Any]:
        issued.append(req)
        who = jwtkit_user(req.form["assertion"])
        return 200, {}, {"access_token": f"at-{who}-{len(issued)}", "expires_in": 3600}

    web.on("POST", "https://idp.example.com/oauth/token", token)
    return issued


def jwtkit_user(raw: str) -> str:
    body = raw.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["user_name"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_401_drops_the_token_re_exchanges_and_resends_once(web: Web, transport: Transport) -> None:
    engine = env_engine([JWT_DEST])
    issued = counting_idp(web)
    web.on("POST", "https://s4.example.com/", lambda r: (401 if r.header("Authorization") == "Bearer at-alice-1" else 201, {}, {}))
    with propagation.use_token(user("alice")):
        response = transport.call(transport.make(engine, "S4", csrf=False), "POST", "Orders", json={"a": 1})
    assert response.status_code == 201
    assert [r.form["grant_type"] for r in issued] == [JWT_BEARER, JWT_BEARER]
    sent = web.to("https://s4.example.com/")
    assert [r.header("Authorization") for r in sent] == ["Bearer at-alice-1", "Bearer at-alice-2"]
    assert [json.loads(r.body) for r in sent] == [{"a": 1}, {"a": 1}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_second_401_is_returned_not_retried_again(web: Web, transport: Transport) -> None:
    engine = env_engine([JWT_DEST])
    issued = counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (401, {}, {}))
    with propagation.use_token(user("alice")):
        assert transport.call(transport.make(engine, "S4"), "GET", "x").status_code == 401
    assert len(issued) == 2 and len(web.to("https://s4.example.com/")) == 2


# -- CSRF and cookies are the engine's: a session per request fetches once -----------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_new_session_per_request_reuses_the_engines_csrf_token_and_cookies(web: Web, transport: Transport) -> None:
    engine = env_engine([{**JWT_DEST, "url": "https://s4.example.com/sap/opu/odata/sap/API_SRV"}])
    counting_idp(web)

    def backend(req: Req) -> tuple[int, dict[str, str], Any]:
        if (req.header("X-CSRF-Token") or "").lower() == "fetch":
            who = (req.header("Authorization") or "").split("-")[1]
            return 200, {"X-CSRF-Token": f"csrf-{who}", "Set-Cookie": f"SAP_SESSIONID=s-{who}; Path=/"}, {}
        ok = req.header("X-CSRF-Token") == "csrf-" + (req.header("Authorization") or "").split("-")[1]
        ok = ok and (req.header("Cookie") or "").endswith("s-" + (req.header("Authorization") or "").split("-")[1])
        return (201 if ok else 403), ({} if ok else {"X-CSRF-Token": "Required"}), {}

    for method in ("HEAD", "GET", "POST"):
        web.on(method, "https://s4.example.com/", backend)
    tokens = {who: user(who) for who in ("alice", "bob")}  # the same token per user across calls
    for who in ("alice", "bob", "alice", "bob"):
        with propagation.use_token(tokens[who]):
            assert transport.call(transport.make(engine, "S4"), "POST", "Orders", json={}).status_code == 201
    fetches = [r for r in web.seen if r.method == "HEAD"]
    assert len(fetches) == 2  # one per user, not one per session
    assert [r.header("X-CSRF-Token") for r in web.seen if r.method == "POST" and "oauth" not in r.url] == [
        "csrf-alice", "csrf-bob", "csrf-alice", "csrf-bob"]


# -- coroutines ---------------------------------------------------------------------------------------
def test_100_interleaved_coroutines_of_two_users_each_carry_their_own_token(web: Web) -> None:
    engine = env_engine([JWT_DEST])
    issued = counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {"auth": r.header("Authorization")}))
    tokens = {"alice": user("alice"), "bob": user("bob")}
    s4 = engine.async_client("S4")

    async def one(i: int) -> tuple[str, str]:
        who = "alice" if i % 2 else "bob"
        with propagation.use_token(tokens[who]):
            await asyncio.sleep(0)
            response = await s4.get("Items")
        return who, response.json()["auth"]

    async def main() -> list[tuple[str, str]]:
        return await asyncio.gather(*(one(i) for i in range(100)))

    results = asyncio.run(main())
    assert all(auth.startswith(f"Bearer at-{who}-") for who, auth in results)
    assert sorted(jwtkit_user(r.form["assertion"]) for r in issued) == ["alice", "bob"]


def test_50_cold_coroutines_make_one_exchange(web: Web) -> None:
    engine = env_engine([JWT_DEST])
    issued = counting_idp(web)
    web.on("GET", "https://s4.example.com/", lambda r: (200, {}, {}))
    token = user("alice")

    async def main() -> None:
        async with engine.async_client("S4", user_token=token) as s4:
            answers = await asyncio.gather(*(s4.get("Items") for _ in range(50)))
        assert {a.status_code for a in answers} == {200}

    asyncio.run(main())
    assert len(issued) == 1 and len(web.to("https://s4.example.com/")) == 50


def test_async_headers_awaits_the_exchange(web: Web) -> None:
    engine = env_engine([JWT_DEST])
    issued = counting_idp(web)
    headers = asyncio.run(engine.async_headers("S4", user_token=user("alice")))
    assert headers == {"Authorization": "Bearer at-alice-1"} and issued[0].via == "httpx"
