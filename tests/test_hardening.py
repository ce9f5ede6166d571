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
from propagation.caches.memory import MemoryTokenCache
from propagation.exchange.oauth import ClientCredentials, OAuthClient, TokenResponse
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


# -- 6. echoed secrets, in every encoding ------------------------------------------------------------
SECRET = "cl$ient+se/cret=VALUE"
ASSERTION = jwtkit.unsigned({"user_name": "alice", "exp": int(time.time()) + 3600})


def _echo(request: Any) -> tuple[int, dict[str, str], str]:
    """An IdP that echoes the whole request back in its error description."""
    echoed = f"body={request.body} auth={request.headers.get('Authorization')} json={json.dumps(request.body)}"
    return 400, {}, json.dumps({"error": "invalid_request", "error_description": echoed})


@pytest.mark.parametrize("in_body", [pytest.param(True, id="secret-in-body"), pytest.param(False, id="basic-header")])
def test_an_idp_echoing_the_request_puts_no_secret_in_any_encoding_into_the_error_or_logs(in_body: bool, caplog: Any) -> None:
    oauth = OAuthClient(retries=0)
    caplog.set_level("DEBUG", logger="propagation")
    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, "https://idp.example.com/oauth/token", callback=_echo)
        with pytest.raises(TokenExchangeError) as info:
            oauth.request_token("https://idp.example.com/oauth/token", ClientCredentials("my-client", SECRET),
                                "urn:ietf:params:oauth:grant-type:jwt-bearer", {"assertion": ASSERTION},
                                credentials_in_body=in_body)
        sent = rsps.calls[0].request
    text = f"{info.value} {info.value.error_description} {caplog.text}"
    basic = (sent.headers.get("Authorization") or " ").split(" ", 1)[1]
    forms = [SECRET, quote_plus(SECRET), quote_plus(SECRET).lower(), json.dumps(SECRET)[1:-1], ASSERTION]
    if not in_body:
        forms.append(basic)
    else:
        assert quote_plus(SECRET) in sent.body  # the echo really carried the form-encoded secret
    for secret in forms:
        assert secret not in text, secret
    assert "[redacted]" in str(info.value)


# -- 3. lifetimes ------------------------------------------------------------------------------------
def _jwt_token(exp: float) -> str:
    return jwtkit.unsigned({"sub": "svc", "exp": int(exp)})


def test_an_answer_without_expires_in_lives_no_longer_than_the_tokens_own_exp() -> None:
    now = time.time()
    oauth = OAuthClient(retries=0)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, "https://idp.example.com/oauth/token", json={"access_token": _jwt_token(now + 90)})
        token = oauth.request_token("https://idp.example.com/oauth/token", ClientCredentials("c", "s"), "client_credentials")
    assert token.expires_at is not None and abs(token.expires_at - (now + 90)) < 2
    cache = MemoryTokenCache(default_ttl=300)
    assert cache.usable_until(token, now) <= now + 90  # not the default 300 s


def test_an_exchanged_token_is_never_used_past_the_user_token_it_was_made_from() -> None:
    clock = [time.time()]
    engine = Propagator(
        environ={"destinations": json.dumps([{"name": "API", "url": "https://api.example.com", "Authentication": "OAuth2JWTBearer",
                                              "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c", "clientSecret": "s"}])},
        bindings=Bindings([]), cache=MemoryTokenCache(clock=lambda: clock[0]), oauth=OAuthClient(retries=0))
    user = jwtkit.unsigned({"user_name": "alice", "zid": "z", "exp": int(clock[0]) + 120, "grant_type": "password",
                            "iss": f"https://provider.{UAADOMAIN}/oauth/token"})
    with responses.RequestsMock() as rsps:
        issued = iter(["first", "second"])
        rsps.add_callback(responses.POST, "https://idp.example.com/oauth/token",
                          callback=lambda r: (200, {}, json.dumps({"access_token": next(issued), "expires_in": 43200})))
        assert engine.headers("API", user_token=user) == {"Authorization": "Bearer first"}
        clock[0] += 30
        assert engine.headers("API", user_token=user) == {"Authorization": "Bearer first"}  # cached while the user's token lives
        clock[0] += 130  # the user's token has expired: its 12-hour exchange must not outlive it
        assert engine.headers("API", user_token=user) == {"Authorization": "Bearer second"}
        assert len([c for c in rsps.calls if "oauth" in c.request.url]) == 2


# -- 1. time is bounded ------------------------------------------------------------------------------
from loopback import Loopback  # noqa: E402


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_idp_dripping_its_answer_cannot_stretch_the_deadline(mode: str) -> None:
    """Per-read timeouts of 1 s never fire when a byte comes every 0.2 s: the deadline does."""
    import asyncio

    with Loopback(drip=0.2) as idp:
        oauth = OAuthClient(timeout=(1, 1), retries=0, deadline=1.0)
        started = time.monotonic()
        with pytest.raises(TokenExchangeError) as info:
            if mode == "sync":
                oauth.request_token(f"{idp.base}/oauth/token", ClientCredentials("c", "s"), "client_credentials")
            else:
                asyncio.run(oauth.arequest_token(f"{idp.base}/oauth/token", ClientCredentials("c", "s"), "client_credentials"))
        elapsed = time.monotonic() - started
        oauth.close()
    assert elapsed < 1.6, elapsed  # the drip would have taken ~8 s
    assert "DeadlineExceeded" in str(info.value)


def test_waiters_of_a_single_flight_give_up_at_the_deadline() -> None:
    import threading

    cache = MemoryTokenCache(wait_timeout=0.3)
    release = threading.Event()
    key = __import__("propagation.caches.memory", fromlist=["CacheKey"]).CacheKey("S4", "jwt-bearer", "c", user="fp")

    def slow() -> TokenResponse:
        release.wait(5)
        return TokenResponse("late", expires_at=time.time() + 60)

    leader = threading.Thread(target=lambda: cache.get_or_fetch(key, slow))
    leader.start()
    time.sleep(0.05)  # the leader is fetching
    started = time.monotonic()
    with pytest.raises(TokenExchangeError, match="deadline passed"):
        cache.get_or_fetch(key, lambda: pytest.fail("a waiter never fetches"))
    assert 0.25 < time.monotonic() - started < 1.0
    release.set()
    leader.join()


# -- 2. breakers ---------------------------------------------------------------------------------------
def test_a_failing_idp_trips_the_breaker_64_threads_fail_fast_and_it_recovers() -> None:
    from concurrent.futures import ThreadPoolExecutor

    now = [0.0]
    with Loopback(fail=503) as idp:
        oauth = OAuthClient(retries=0, breaker_threshold=5, breaker_cooldown=30.0)
        oauth.breakers.clock = lambda: now[0]
        url = f"{idp.base}/oauth/token"

        def call(_: int) -> tuple[str, float]:
            started = time.monotonic()
            try:
                oauth.request_token(url, ClientCredentials("c", "s"), "client_credentials")
                return "ok", time.monotonic() - started
            except TokenExchangeError as exc:
                return type(exc).__name__ + (" open" if "circuit breaker open" in str(exc) else ""), time.monotonic() - started

        for _ in range(5):  # five consecutive failures open it
            assert call(0)[0] == "TokenExchangeError"
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(call, range(64)))
        assert {r for r, _ in results} == {"CircuitOpenError open"}
        assert max(t for _, t in results) < 0.5
        assert len(idp.exchanges) == 5  # nothing reached the IdP while open
        idp.fail = 0  # the IdP comes back
        now[0] += 31  # after the cool-down one probe goes through and closes it
        assert call(0)[0] == "ok"
        with ThreadPoolExecutor(8) as pool:
            assert set(r for r, _ in pool.map(call, range(16))) == {"ok"}
        oauth.close()


def test_4xx_answers_never_open_the_breaker() -> None:
    oauth = OAuthClient(retries=0, breaker_threshold=2)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, "https://idp.example.com/oauth/token", status=401, json={"error": "invalid_client"})
        for _ in range(5):
            with pytest.raises(TokenExchangeError) as info:
                oauth.request_token("https://idp.example.com/oauth/token", ClientCredentials("c", "s"), "client_credentials")
            assert info.value.error == "invalid_client"
        assert len(rsps.calls) == 5


@pytest.mark.parametrize("kwargs,message", [
    pytest.param({"deadline": 0}, "deadline", id="zero-deadline"),
    pytest.param({"deadline": -5}, "deadline", id="negative-deadline"),
    pytest.param({"retries": -1}, "retries", id="negative-retries"),
])
def test_unusable_oauth_client_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OAuthClient(**kwargs)


def test_breakers_can_be_turned_off() -> None:
    oauth = OAuthClient(retries=0, breaker_threshold=0)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, "https://idp.example.com/oauth/token", status=503)
        for _ in range(8):
            with pytest.raises(TokenExchangeError) as info:
                oauth.request_token("https://idp.example.com/oauth/token", ClientCredentials("c", "s"), "client_credentials")
            assert info.value.status == 503
        assert len(rsps.calls) == 8  # every call reached the IdP: no breaker
