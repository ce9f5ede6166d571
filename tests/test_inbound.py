"""TokenValidator: sap-xssec validation of XSUAA and IAS tokens, refusals with useful
descriptions, and the fingerprint cache of validated tokens."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable

import httpx
import jwt
import pytest
import respx

import jwtkit
from conftest import make_bindings
from propagation.bindings import Bindings
from propagation.engine import Propagator
from propagation.errors import ConfigurationError, InvalidTokenError
from propagation.inbound import KeyFetchLimiter, KeysUnavailableError, PublicPaths, TokenValidator, bearer_token

Make = Callable[[jwtkit.Xsuaa, jwtkit.Ias], str]


@pytest.fixture
def validator(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias) -> TokenValidator:
    return TokenValidator(xsuaa=xsuaa.credentials(), ias=ias.credentials())


def hs256(xsuaa: jwtkit.Xsuaa) -> str:
    claims = jwt.decode(xsuaa.token(), options={"verify_signature": False})
    return jwt.encode(claims, "a-shared-secret-of-sufficient-length!", algorithm="HS256", headers={"kid": xsuaa.kid})


def without_exp(xsuaa: jwtkit.Xsuaa) -> str:
    claims = jwt.decode(xsuaa.token(), options={"verify_signature": False})
    del claims["exp"]
    return jwt.encode(claims, xsuaa.key, algorithm="RS256", headers={"kid": xsuaa.kid})


def with_kid(raw: str, kid: str, key: Any) -> str:
    claims = jwt.decode(raw, options={"verify_signature": False})
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


# -- valid tokens ----------------------------------------------------------------------------
def test_valid_xsuaa_token(validator: TokenValidator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    raw = xsuaa.token("alice@example.com")
    token = validator.validate(raw)
    assert (token.raw, token.kind, token.user, token.tenant) == (raw, "xsuaa", "alice@example.com", xsuaa.zid)
    assert token.claims["cid"] == xsuaa.clientid
    [call] = idp_keys["xsuaa_token_keys"].calls
    assert str(call.request.url) == f"{xsuaa.keys_url}?zid={xsuaa.zid}"


def test_valid_ias_token(validator: TokenValidator, ias: jwtkit.Ias, idp_keys: respx.MockRouter) -> None:
    raw = ias.token("bob@example.com")
    token = validator.validate(raw)
    assert (token.raw, token.kind, token.tenant, token.claims["email"]) == (raw, "ias", ias.app_tid, "bob@example.com")
    assert idp_keys["ias_openid_configuration"].call_count == 1
    assert idp_keys["ias_jwks"].call_count == 1


def test_subscriber_tenant_xsuaa_token_fetches_its_zone_keys(
    validator: TokenValidator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter
) -> None:
    token = validator.validate(xsuaa.token(zid="subscriber-zid", subdomain="subscriber"))
    assert token.tenant == "subscriber-zid"
    assert idp_keys["xsuaa_token_keys"].calls.last.request.url.params["zid"] == "subscriber-zid"


# -- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, description",
    [
        pytest.param(lambda x, i: "", "Empty token.", id="empty"),
        pytest.param(lambda x, i: "a.b", "expected three dot-separated segments", id="two-segments"),
        pytest.param(lambda x, i: "abc.def.ghi", "not base64url-encoded JSON", id="garbage"),
        pytest.param(lambda x, i: "a" * 20_000, "Token longer than", id="20kB"),
        pytest.param(lambda x, i: jwtkit.unsigned(jwt.decode(x.token(), options={"verify_signature": False})),
                     "Token algorithm 'none' is not accepted", id="alg-none"),
        pytest.param(lambda x, i: hs256(x), "Token algorithm 'HS256' is not accepted", id="hs256"),
        pytest.param(lambda x, i: without_exp(x), "no 'exp' claim", id="no-exp"),
        pytest.param(lambda x, i: x.token(ttl=-120), "Token expired.", id="xsuaa-expired"),
        pytest.param(lambda x, i: i.token(ttl=-120), "Token expired.", id="ias-expired"),
        pytest.param(lambda x, i: x.token(key=jwtkit.rsa_key("attacker")), "Token signature verification failed.",
                     id="xsuaa-forged-same-kid"),
        pytest.param(lambda x, i: i.token(key=jwtkit.rsa_key("attacker")), "Token signature verification failed.",
                     id="ias-forged-same-kid"),
        pytest.param(lambda x, i: with_kid(x.token(), "unknown-kid", jwtkit.rsa_key("attacker")),
                     "Token signing key 'unknown-kid' is not published by issuer 'https://provider.authentication."
                     "eu10.hana.ondemand.com/oauth/token' (keys read from authentication.eu10.hana.ondemand.com): "
                     "likely a token of another landscape (another subaccount or identity tenant, or a restarted "
                     "sandbox).", id="xsuaa-forged-unknown-kid"),
        pytest.param(lambda x, i: with_kid(i.token(), "unknown-kid", jwtkit.rsa_key("attacker")),
                     "Token signing key 'unknown-kid' is not published by issuer 'https://mytenant.accounts.ondemand."
                     "com' (keys read from mytenant.accounts.ondemand.com): likely a token of another landscape "
                     "(another subaccount or identity tenant, or a restarted sandbox).", id="ias-forged-unknown-kid"),
        pytest.param(lambda x, i: x.token(cid="sb-other!t9", extra={"aud": ["sb-other!t9"], "scope": ["other!t9.Read"]}),
                     "Token audience does not match this application's OAuth client.", id="xsuaa-wrong-audience"),
        pytest.param(lambda x, i: i.token(aud=["another-app"]),
                     "Token audience does not match this application's OAuth client.", id="ias-wrong-audience"),
        pytest.param(lambda x, i: i.token(issuer="https://evil.example.com"),
                     "Token issuer is not trusted: its host is not a subdomain of the identity binding's domains "
                     "(accounts.ondemand.com).", id="ias-issuer-outside-domains"),
        pytest.param(lambda x, i: i.token(issuer="https://mytenant.accounts.ondemand.com.evil.com"),
                     "Token issuer is not trusted", id="ias-issuer-lookalike"),
        pytest.param(lambda x, i: i.token(issuer="http://mytenant.accounts.ondemand.com"),
                     "Token issuer is not trusted", id="ias-issuer-http"),
    ],
)
def test_refusals(validator: TokenValidator, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                  make: Make, description: str) -> None:
    raw = make(xsuaa, ias)
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(raw)
    assert description in info.value.error_description
    assert info.value.error == "invalid_token"
    if raw:
        for secret in (raw, *[p for p in raw.split(".") if len(p) >= 8]):
            assert secret not in str(info.value)
    assert len(validator._cache) == 0


@pytest.mark.parametrize(
    "bound, make, description",
    [
        pytest.param("ias", lambda x, i: x.token(),
                     "Token was issued by XSUAA, but this application has no 'xsuaa' binding to validate it against. "
                     "Bind an XSUAA instance, or send a token issued by the bound IAS.", id="xsuaa-token-ias-only"),
        pytest.param("xsuaa", lambda x, i: i.token(),
                     "Token was issued by IAS, but this application has no 'identity' binding to validate it against.",
                     id="ias-token-xsuaa-only"),
    ],
)
def test_token_kind_without_binding(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                    xssec_calls: Counter[str], bound: str, make: Make, description: str) -> None:
    validator = TokenValidator(**{bound: (xsuaa if bound == "xsuaa" else ias).credentials()})
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(make(xsuaa, ias))
    assert description in info.value.error_description
    assert not xssec_calls and not idp_keys.calls


def test_alg_none_refused_before_any_io(validator: TokenValidator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter,
                                        xssec_calls: Counter[str]) -> None:
    raw = jwtkit.unsigned(jwt.decode(xsuaa.token(), options={"verify_signature": False}))
    with pytest.raises(InvalidTokenError):
        validator.validate(raw)
    assert not xssec_calls and not idp_keys.calls


# -- IdP key endpoint failures -----------------------------------------------------------------
@pytest.mark.parametrize(
    "route, side_effect, make, why, calls",
    [
        pytest.param("xsuaa_token_keys", httpx.Response(500), lambda x, i: x.token(), "HTTP 500", 1, id="xsuaa-500"),
        pytest.param("xsuaa_token_keys", httpx.Response(503), lambda x, i: x.token(), "HTTP 503", 4,
                     id="xsuaa-503-after-retries"),
        pytest.param("xsuaa_token_keys", httpx.ConnectError("refused"), lambda x, i: x.token(), "ConnectError", 1,
                     id="xsuaa-unreachable"),
        pytest.param("ias_openid_configuration", httpx.Response(503), lambda x, i: i.token(), "HTTP 503", 1,
                     id="ias-openid-503"),
        pytest.param("ias_jwks", httpx.ReadTimeout("slow"), lambda x, i: i.token(), "ReadTimeout", 1,
                     id="ias-jwks-timeout"),
    ],
)
def test_keys_unavailable(validator: TokenValidator, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                          route: str, side_effect: Any, make: Make, why: str, calls: int) -> None:
    good = idp_keys[route].side_effect, idp_keys[route].return_value
    idp_keys[route].side_effect = side_effect
    raw = make(xsuaa, ias)
    with pytest.raises(KeysUnavailableError) as info:
        validator.validate(raw)
    assert "signing keys could not be fetched" in info.value.error_description
    assert why in info.value.error_description
    assert isinstance(info.value, InvalidTokenError)
    assert idp_keys[route].call_count == calls
    # The failure was not cached: once the IdP is back, the same token is accepted.
    idp_keys[route].side_effect = None
    assert validator.validate(raw).raw == raw


# -- the cache of validated tokens -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["xsuaa", "ias"])
def test_repeated_token_is_validated_once(validator: TokenValidator, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                          idp_keys: respx.MockRouter, xssec_calls: Counter[str], kind: str) -> None:
    raw = xsuaa.token() if kind == "xsuaa" else ias.token()
    tokens = {validator.validate(raw) for _ in range(50)}
    assert len(tokens) == 1
    assert xssec_calls == Counter({kind: 1})
    assert len(idp_keys.calls) == (1 if kind == "xsuaa" else 2)


def test_different_tokens_are_validated_separately(validator: TokenValidator, xsuaa: jwtkit.Xsuaa,
                                                   idp_keys: respx.MockRouter, xssec_calls: Counter[str]) -> None:
    alice, bob = xsuaa.token("alice@example.com"), xsuaa.token("bob@example.com")
    assert validator.validate(alice).user == "alice@example.com"
    assert validator.validate(bob).user == "bob@example.com"
    assert validator.validate(alice).user == "alice@example.com"
    assert xssec_calls["xsuaa"] == 2
    assert idp_keys["xsuaa_token_keys"].call_count == 1  # sap-xssec's own key cache


def test_failures_are_not_cached(validator: TokenValidator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter,
                                 xssec_calls: Counter[str]) -> None:
    forged = xsuaa.token(key=jwtkit.rsa_key("attacker"))
    for _ in range(3):
        with pytest.raises(InvalidTokenError):
            validator.validate(forged)
    assert xssec_calls["xsuaa"] == 3


def test_cached_token_expires_with_the_token(xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter,
                                             xssec_calls: Counter[str]) -> None:
    now = [time.time()]
    validator = TokenValidator(xsuaa=xsuaa.credentials(), clock=lambda: now[0])
    raw = xsuaa.token(ttl=600)
    validator.validate(raw)
    now[0] += 599
    assert validator.cached(raw) is not None
    validator.validate(raw)
    assert xssec_calls["xsuaa"] == 1
    now[0] += 2 + 60  # past exp and the default clock-skew leeway
    assert validator.cached(raw) is None
    assert len(validator._cache) == 0  # the expired entry was dropped
    with pytest.raises(InvalidTokenError, match="Token expired."):
        validator.validate(raw)
    assert xssec_calls["xsuaa"] == 1


def test_cache_is_bounded_lru(xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter, xssec_calls: Counter[str]) -> None:
    validator = TokenValidator(xsuaa=xsuaa.credentials(), cache_size=2)
    a, b, c = (xsuaa.token(u) for u in ("a@x", "b@x", "c@x"))
    for raw in (a, b, a, c):  # c evicts b, the least recently used
        validator.validate(raw)
    assert xssec_calls["xsuaa"] == 3
    assert validator.cached(a) is not None and validator.cached(c) is not None and validator.cached(b) is None


def test_cache_disabled(xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter, xssec_calls: Counter[str]) -> None:
    validator = TokenValidator(xsuaa=xsuaa.credentials(), cache_size=0)
    raw = xsuaa.token()
    validator.validate(raw)
    validator.validate(raw)
    assert xssec_calls["xsuaa"] == 2


def test_concurrent_validation_of_one_token(validator: TokenValidator, xsuaa: jwtkit.Xsuaa,
                                            idp_keys: respx.MockRouter) -> None:
    raw = xsuaa.token()
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(20):
            results.append(validator.validate(raw).fingerprint)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [results[0]] * 160
    assert idp_keys["xsuaa_token_keys"].call_count == 1


# -- configuration -------------------------------------------------------------------------
def test_from_bindings(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter) -> None:
    validator = TokenValidator.from_bindings(make_bindings(xsuaa, ias))
    assert validator.kinds == ("xsuaa", "ias")
    assert validator.validate(xsuaa.token()).kind == "xsuaa"
    assert validator.validate(ias.token()).kind == "ias"
    assert TokenValidator.from_bindings(make_bindings(ias=ias)).kinds == ("ias",)


def test_from_bindings_without_any_binding_fails_at_startup() -> None:
    with pytest.raises(ConfigurationError, match=r"No 'xsuaa' or 'identity' service binding.*looked in: VCAP_SERVICES"):
        TokenValidator.from_bindings(Bindings([], sources=["VCAP_SERVICES"]))


@pytest.mark.parametrize(
    "kind, drop, message",
    [
        pytest.param("xsuaa", "xsappname", "The 'xsuaa' binding credentials lack xsappname", id="xsuaa-xsappname"),
        pytest.param("xsuaa", "clientid", "The 'xsuaa' binding credentials lack clientid", id="xsuaa-clientid"),
        pytest.param("ias", "domains", "The 'identity' binding credentials lack domains", id="ias-domains"),
    ],
)
def test_unusable_credentials_fail_at_construction(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, kind: str, drop: str,
                                                   message: str) -> None:
    credentials = (xsuaa if kind == "xsuaa" else ias).credentials()
    del credentials[drop]
    with pytest.raises(ConfigurationError, match=message):
        TokenValidator(**{kind: credentials})


def test_propagator_validate_uses_the_bindings(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                               idp_keys: respx.MockRouter) -> None:
    assert isinstance(propagator.validator, TokenValidator)
    assert propagator.validate(xsuaa.token()).user == "alice@example.com"


# -- Authorization header and public paths -------------------------------------------------------
@pytest.mark.parametrize(
    "header, expected",
    [
        pytest.param("Bearer abc.def.ghi", "abc.def.ghi", id="bearer"),
        pytest.param("bearer abc.def.ghi", "abc.def.ghi", id="lowercase-scheme"),
        pytest.param("BEARER abc.def.ghi", "abc.def.ghi", id="uppercase-scheme"),
        pytest.param("  Bearer abc.def.ghi  ", "abc.def.ghi", id="surrounding-space"),
        pytest.param(None, "Missing Authorization header", id="missing"),
        pytest.param("", "Empty Authorization header", id="empty"),
        pytest.param("Bearer", "Bearer scheme but no token", id="bearer-only"),
        pytest.param("Bearer ", "Bearer scheme but no token", id="bearer-space"),
        pytest.param("Basic YWxpY2U6c2VjcmV0", "Authorization scheme is not Bearer", id="basic"),
        pytest.param("Bearer a.b.c d.e.f", "Malformed Authorization header", id="two-tokens"),
        pytest.param("Bearer\ta.b.c", "Malformed Authorization header", id="tab"),
        pytest.param("Bearer \xe9\xe9.\xe9.\xe9", "Malformed Authorization header", id="latin-1"),
        pytest.param("Bearer a,b.c", "characters outside the token alphabet", id="comma"),
        pytest.param("Bearer " + "a" * 20_000, "Authorization header too long", id="20kB"),
    ],
)
def test_bearer_token(header: str | None, expected: str) -> None:
    if expected.count(".") == 2 and " " not in expected:
        assert bearer_token(header) == expected
    else:
        with pytest.raises(InvalidTokenError, match=expected):
            bearer_token(header)


@pytest.mark.parametrize(
    "path, public",
    [
        pytest.param("/health", True, id="exact"),
        pytest.param("/health/", False, id="exact-not-prefix"),
        pytest.param("/healthz", False, id="exact-not-startswith"),
        pytest.param("/static/app.js", True, id="slash-prefix"),
        pytest.param("/static", False, id="slash-prefix-needs-slash"),
        pytest.param("/live", True, id="star-bare"),
        pytest.param("/liveness/deep", True, id="star-prefix"),
        pytest.param("/static/../admin", False, id="dot-dot"),
        pytest.param("/static/./x", False, id="dot"),
        pytest.param("/static/..", False, id="trailing-dot-dot"),
        pytest.param("/api", False, id="other"),
        pytest.param("", False, id="empty"),
    ],
)
def test_public_paths(path: str, public: bool) -> None:
    assert (path in PublicPaths(["/health", "/static/", "/live*"])) is public


def test_public_paths_must_be_absolute() -> None:
    with pytest.raises(ConfigurationError, match="must be a string starting with '/'"):
        PublicPaths(["health"])


@pytest.mark.parametrize("bogus, most", [
    pytest.param(lambda x, n: with_kid(x.token(), f"bogus-{n}", x.key), 3, id="unknown-kid-one-zone"),
    pytest.param(lambda x, n: x.token(zid=f"zone-{n}", key=jwtkit.rsa_key("attacker")), 20, id="unknown-zid-each-time"),
])
def test_bogus_keys_do_not_cost_a_key_fetch_each(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                 idp_keys: respx.MockRouter, bogus: Callable[..., str],
                                                 most: int) -> None:
    """Issue 11, finding 8: 40 unauthenticated requests with made-up kid/zid made sap-xssec
    fetch keys 40 times. Now a few fetches, then 401 without a fetch (tests/test_key_fetch_limit.py).

    The limiter's clock stands still (issue 20, item 7): on the real clock a loaded machine
    took long enough between requests for the process bucket to refill one fetch (21 > 20)."""
    validator = TokenValidator(xsuaa=xsuaa.credentials(), ias=ias.credentials(),
                               key_fetches=KeyFetchLimiter(clock=lambda: 1000.0))
    descriptions = []
    for n in range(40):
        with pytest.raises(InvalidTokenError) as caught:
            validator.validate(bogus(xsuaa, n))
        descriptions.append(caught.value.error_description)
    # a burst of 3 per zone, of 20 for the process (a new zone per request hits that one)
    assert 1 <= idp_keys["xsuaa_token_keys"].call_count <= most
    assert sum("rate-limited" in d for d in descriptions) == 40 - idp_keys["xsuaa_token_keys"].call_count
