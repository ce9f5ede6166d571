"""Destination service, issue 13: cheaper lookups (``$skipTokenRetrieval``), selection
strategies, levels and fragments, the IAS-token check, the missing types and headers
(``OAuth2RefreshToken``, ``SAMLAssertion``, client-provided SAML, ``X-tenant``, chains).
Every case runs on the three transports and asserts the exact exchange with the service:
paths, query, headers, and whose service token (tenant) each request carried."""

from __future__ import annotations

from typing import Any

import pytest

import propagation
from propagation import ConfigurationError, DestinationNotFoundError, MissingUserTokenError
from test_outbound_core import TRANSPORTS, Transport, Web, web  # noqa: F401  (fixture)
from dsv2 import DEST_URI, TARGET, V1, V2, StandIn, cfg, engine, ias_user, xsuaa_user

SKIP = True
TOKENS = False


def call(transport: Transport, e: propagation.Propagator, name: str, user: str | None, **options: Any) -> Any:
    obj = transport.make(e, name, **({"user_token": user} if user else {}), **options)
    return transport.call(obj, "GET", "/Items")


def sent(web: Web) -> list[Any]:
    return web.to(TARGET + "/")


# -- 3. cheaper lookups --------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "auth, token_lookup, with_user",
    [
        pytest.param("NoAuthentication", False, False, id="no-auth:config-only"),
        pytest.param("OAuth2ClientCredentials", True, False, id="client-credentials:technical-token-lookup"),
        pytest.param("BasicAuthentication", True, False, id="basic:technical-token-lookup"),
        pytest.param("OAuth2JWTBearer", True, True, id="jwt-bearer:user-lookup"),
    ],
)
def test_type_only_lookup_skips_token_retrieval(web: Web, transport: Transport, auth: str, token_lookup: bool,
                                                 with_user: bool) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg(auth))
    alice = xsuaa_user("alice")
    e = engine()
    for _ in range(2):  # the second call is served from the cache
        assert call(transport, e, "S4", alice).status_code == 200
    expected = [(V1 + "S4", "provider", SKIP, {})]
    if token_lookup:
        expected.append((V1 + "S4", "provider", TOKENS, {}))
    assert svc.seen() == expected
    assert svc.finds[0].query == {"$skipTokenRetrieval": "true"}
    user_headers = [f.headers.get("X-user-token") for f in svc.finds]
    assert user_headers == [None, alice if with_user else None][: len(expected)]
    auth_header = sent(web)[0].header("Authorization")
    if token_lookup:
        who = "alice" if with_user else "technical"
        assert auth_header == f"Bearer {auth}|provider|{who}|1"
    else:
        assert auth_header is None
    assert svc.token_urls == ["https://provider.auth.example.com/oauth/token"]


# -- 1. selection strategies ------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "selection, env, stored_in, expected_lookups, expected_header",
    [
        pytest.param(None, None, ("provider",), [("sub1", SKIP), ("provider", SKIP), ("provider", TOKENS)],
                     "OAuth2JWTBearer|provider|carol|1", id="subscriberFirst:falls-back-to-provider"),
        pytest.param(None, None, ("provider", "sub1"), [("sub1", SKIP), ("sub1", TOKENS)],
                     "OAuth2JWTBearer|sub1|carol|1", id="subscriberFirst:own-tenant-first"),
        pytest.param("alwaysProvider", None, ("provider", "sub1"), [("provider", SKIP), ("provider", TOKENS)],
                     "OAuth2JWTBearer|provider|carol|1", id="alwaysProvider"),
        pytest.param(None, "alwaysProvider", ("provider", "sub1"), [("provider", SKIP), ("provider", TOKENS)],
                     "OAuth2JWTBearer|provider|carol|1", id="alwaysProvider:from-env"),
        pytest.param("alwaysSubscriber", "alwaysProvider", ("provider", "sub1"), [("sub1", SKIP), ("sub1", TOKENS)],
                     "OAuth2JWTBearer|sub1|carol|1", id="alwaysSubscriber:per-call-beats-env"),
        pytest.param("alwaysSubscriber", None, ("provider",), [("sub1", SKIP)], None,
                     id="alwaysSubscriber:no-fallback"),
    ],
)
def test_selection_strategies(web: Web, transport: Transport, selection: str | None, env: str | None,
                              stored_in: tuple[str, ...], expected_lookups: list[tuple[str, bool]],
                              expected_header: str | None) -> None:
    svc = StandIn(web).install()
    for tenant in stored_in:
        svc.add(tenant, cfg("OAuth2JWTBearer"))
    carol = xsuaa_user("carol", "sub1")
    e = engine({"PROPAGATION_DESTINATION_SELECTION": env} if env else {})
    options = {"selection": selection} if selection else {}
    if expected_header is None:
        with pytest.raises(DestinationNotFoundError) as info:
            call(transport, e, "S4", carol, **options)
        assert "alwaysSubscriber, tenants 'sub1-zid'" in str(info.value)
        assert not sent(web)
    else:
        assert call(transport, e, "S4", carol, **options).status_code == 200
        assert sent(web)[0].header("Authorization") == f"Bearer {expected_header}"
        # The user lookup of a provider destination: the provider's service token, the subscriber user.
        assert svc.finds[-1].headers["X-user-token"] == carol
    assert [(f.tenant, f.skip) for f in svc.finds] == expected_lookups
    assert all(f.path == V1 + "S4" for f in svc.finds)
    tenants = {t for t, _ in expected_lookups}
    assert sorted(svc.token_urls) == sorted(f"https://{t}.auth.example.com/oauth/token" for t in tenants)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_subscriber_absence_is_remembered_and_provider_answers_are_keyed_by_provider(web: Web, transport: Transport) -> None:
    """A subscriber's calls to a provider destination ask the subscriber's tenant once (its 404
    is remembered for the configuration TTL); the technical token answer used is the provider's
    (one per provider tenant, shared with the provider's own users), while X-tenant (Common
    token service URL) makes one per subscriber."""
    svc = StandIn(web).install()
    svc.add("provider", cfg("OAuth2ClientCredentials"))
    svc.add("provider", cfg("OAuth2ClientCredentials", name="COMMON", tokenServiceURLType="Common"))
    e = engine()
    carol, alice = xsuaa_user("carol", "sub1"), xsuaa_user("alice", "provider")
    for who in (carol, carol, alice, alice):
        for name in ("S4", "COMMON"):
            assert call(transport, e, name, who).status_code == 200
    headers = [c.header("Authorization") for c in sent(web)]
    assert headers[0] == headers[2] == headers[4] == headers[6] == "Bearer OAuth2ClientCredentials|provider|technical|1"
    assert headers[1] == headers[3] == "Bearer OAuth2ClientCredentials|provider|technical|X-tenant=sub1|2"
    assert headers[5] == headers[7] == "Bearer OAuth2ClientCredentials|provider|technical|X-tenant=provider|3"
    assert svc.seen() == [
        (V1 + "S4", "sub1", SKIP, {}),
        (V1 + "S4", "provider", SKIP, {}),
        (V1 + "S4", "provider", TOKENS, {}),
        (V1 + "COMMON", "sub1", SKIP, {}),
        (V1 + "COMMON", "provider", SKIP, {}),
        (V1 + "COMMON", "provider", TOKENS, {"X-tenant": "sub1"}),
        (V1 + "COMMON", "provider", TOKENS, {"X-tenant": "provider"}),
    ]


def test_selection_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="unknown destination selection 'nearest'"):
        engine().session("S4", selection="nearest")
    with pytest.raises(ConfigurationError, match="PROPAGATION_DESTINATION_SELECTION"):
        engine({"PROPAGATION_DESTINATION_SELECTION": "nearest"}).destination("S4")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        engine().session("S4", selektion="alwaysProvider")


# -- 2. levels and fragments ---------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "name, user_tenant, path, owner",
    [
        pytest.param("S4@instance", "provider", V2 + "S4@instance", "provider", id="instance"),
        pytest.param("S4@subaccount", "provider", V2 + "S4@subaccount", "provider", id="subaccount"),
        pytest.param("S4@provider_subaccount", "sub1", V2 + "S4@provider_subaccount", "provider",
                     id="provider_subaccount-from-a-subscriber"),
        pytest.param("S4@provider_instance", "sub1", V2 + "S4@provider_instance", "provider",
                     id="provider_instance-from-a-subscriber"),
    ],
)
def test_levels_use_the_v2_find_api(web: Web, transport: Transport, name: str, user_tenant: str, path: str,
                                    owner: str) -> None:
    svc = StandIn(web).install()
    level = name.split("@")[1].removeprefix("provider_")
    svc.add("provider", cfg("OAuth2ClientCredentials", URL=f"{TARGET}/{level}"), level=level)
    svc.add("sub1", cfg("OAuth2ClientCredentials", URL=f"{TARGET}/wrong"), level=level)
    assert call(transport, engine(), name, xsuaa_user("u", user_tenant)).status_code == 200
    assert sent(web)[0].url == f"{TARGET}/{level}/Items"
    # The subscriber's own token asks for the provider's level: one tenant, the v2 path, skip first.
    assert svc.seen() == [(path, user_tenant, SKIP, {}), (path, user_tenant, TOKENS, {})]
    assert sent(web)[0].header("Authorization") == f"Bearer OAuth2ClientCredentials|{owner}|technical|1"


def test_unknown_level_is_refused_before_any_request(web: Web) -> None:
    svc = StandIn(web).install()
    with pytest.raises(ConfigurationError, match="'@tenant' is not a level"):
        engine().destination("S4@tenant")
    assert svc.finds == [] and svc.token_urls == []


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "fragment, optional, stored, expected_url, expected_headers",
    [
        pytest.param("eu", False, True, f"{TARGET}/eu", {"X-fragment-name": "eu"}, id="fragment-merged"),
        pytest.param("eu", True, True, f"{TARGET}/eu", {"X-fragment-name": "eu", "X-fragment-optional": "true"},
                     id="optional-present"),
        pytest.param("eu", True, False, f"{TARGET}/s4", {"X-fragment-name": "eu", "X-fragment-optional": "true"},
                     id="optional-absent"),
    ],
)
def test_fragments(web: Web, transport: Transport, fragment: str, optional: bool, stored: bool, expected_url: str,
                   expected_headers: dict[str, str]) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("BasicAuthentication"))
    if stored:
        svc.fragment("provider", "eu", {"URL": f"{TARGET}/eu"})
    options: dict[str, Any] = {"fragment": fragment}
    if optional:
        options["fragment_optional"] = True
    assert call(transport, engine(), "S4", None, **options).status_code == 200
    assert sent(web)[0].url == f"{expected_url}/Items"
    assert svc.seen() == [(V1 + "S4", "provider", SKIP, expected_headers),
                          (V1 + "S4", "provider", TOKENS, expected_headers)]


def test_a_fragment_is_its_own_cache_entry(web: Web) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg())
    svc.fragment("provider", "eu", {"URL": f"{TARGET}/eu"})
    e = engine()
    assert e.destination("S4").url == f"{TARGET}/s4"
    assert e.destination("S4", fragment="eu").url == f"{TARGET}/eu"
    assert e.destination("S4", fragment="eu").url == f"{TARGET}/eu"
    assert e.destination("S4").url == f"{TARGET}/s4"
    assert [f.headers for f in svc.finds] == [{}, {"X-fragment-name": "eu"}]


def test_missing_mandatory_fragment_is_not_found(web: Web) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg())
    with pytest.raises(DestinationNotFoundError):
        engine().destination("S4", fragment="nope")
    assert [f.headers for f in svc.finds] == [{"X-fragment-name": "nope"}]


# -- 5. IAS user tokens --------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "auth, props, refused",
    [
        pytest.param("OAuth2JWTBearer", {}, True, id="jwt-bearer:no-jwks"),
        pytest.param("OAuth2SAMLBearerAssertion", {}, True, id="saml-bearer:no-jwks"),
        pytest.param("OAuth2UserTokenExchange", {}, True, id="user-token-exchange:no-jwks"),
        pytest.param("OAuth2JWTBearer", {"x_user_token.jwks_uri": "https://acme.accounts.ondemand.com/oauth2/certs"},
                     False, id="jwks_uri"),
        pytest.param("OAuth2JWTBearer", {"x_user_token.jwks": "eyJrZXlzIjpbXX0="}, False, id="jwks"),
        pytest.param("OAuth2TokenExchange", {}, False, id="token-exchange:no-check"),
    ],
)
def test_ias_user_token_needs_the_jwks_properties(web: Web, transport: Transport, auth: str, props: dict[str, str],
                                                   refused: bool) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg(auth, **props))
    dora = ias_user("dora@example.com")
    if refused:
        with pytest.raises(ConfigurationError) as info:
            call(transport, engine(), "S4", dora)
        text = str(info.value)
        assert "x_user_token.jwks_uri" in text and "x_user_token.jwks'" in text and "acme.accounts.ondemand.com" in text
        assert dora not in text
        assert [(f.tenant, f.skip) for f in svc.finds] == [("provider", SKIP)]  # the user lookup was never made
        assert not sent(web)
    else:
        assert call(transport, engine(), "S4", dora).status_code == 200
        user_header = "X-Subject-Token" if auth == "OAuth2TokenExchange" else "X-user-token"
        assert svc.finds[1].headers[user_header] == dora and svc.finds[1].tenant == "provider"


# -- 4. missing types and headers ----------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refresh_token_per_call(web: Web, transport: Transport) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("OAuth2RefreshToken"))
    e = engine()
    with pytest.raises(ConfigurationError, match=r"refresh_token="):
        call(transport, e, "S4", None)
    assert [(f.tenant, f.skip) for f in svc.finds] == [("provider", SKIP)]
    for token in ("rt-ONE", "rt-ONE", "rt-TWO"):
        assert call(transport, e, "S4", None, refresh_token=token).status_code == 200
    assert [c.header("Authorization") for c in sent(web)] == [
        "Bearer OAuth2RefreshToken|provider|technical|X-refresh-token=rt-ONE|1",
        "Bearer OAuth2RefreshToken|provider|technical|X-refresh-token=rt-ONE|1",
        "Bearer OAuth2RefreshToken|provider|technical|X-refresh-token=rt-TWO|2",
    ]
    assert svc.seen()[1:] == [(V1 + "S4", "provider", TOKENS, {"X-refresh-token": "rt-ONE"}),
                              (V1 + "S4", "provider", TOKENS, {"X-refresh-token": "rt-TWO"})]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_saml_assertion_type_carries_the_user(web: Web, transport: Transport) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("SAMLAssertion"))
    e = engine()
    with pytest.raises(MissingUserTokenError):
        call(transport, e, "S4", None)
    alice = xsuaa_user("alice")
    assert call(transport, e, "S4", alice).status_code == 200
    assert sent(web)[0].header("Authorization") == "Bearer SAMLAssertion|provider|alice|1"
    assert svc.finds[-1].headers == {"X-user-token": alice}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_provided_saml_assertion(web: Web, transport: Transport) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("OAuth2SAMLBearerAssertion", SAMLAssertionProvider="ClientProvided"))
    e = engine()
    with pytest.raises(ConfigurationError, match=r"saml_assertion="):
        call(transport, e, "S4", None)
    assert call(transport, e, "S4", None, saml_assertion="PHNhbWw+VALUE").status_code == 200
    assert sent(web)[0].header("Authorization") == (
        "Bearer OAuth2SAMLBearerAssertion|provider|technical|X-samlAssertion=PHNhbWw+VALUE|1")
    assert svc.seen()[-1] == (V1 + "S4", "provider", TOKENS, {"X-samlAssertion": "PHNhbWw+VALUE"})
    assert "X-user-token" not in svc.finds[-1].headers


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "user_tenant, expected_tenant",
    [pytest.param(None, "provider", id="no-user:binding-identityzone"),
     pytest.param("sub1", "sub1", id="subscriber-user:its-subdomain")],
)
def test_x_tenant_for_common_token_service_url(web: Web, transport: Transport, user_tenant: str | None,
                                               expected_tenant: str) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("OAuth2ClientCredentials", tokenServiceURLType="Common"))
    svc.add("provider", cfg("OAuth2ClientCredentials", name="DEDICATED", tokenServiceURLType="Dedicated"))
    user = xsuaa_user("u", user_tenant) if user_tenant else None
    e = engine()
    assert call(transport, e, "S4", user, selection="alwaysProvider").status_code == 200
    assert call(transport, e, "DEDICATED", user, selection="alwaysProvider").status_code == 200
    assert [(f.path, f.skip, f.headers) for f in svc.finds] == [
        (V1 + "S4", SKIP, {}), (V1 + "S4", TOKENS, {"X-tenant": expected_tenant}),
        (V1 + "DEDICATED", SKIP, {}), (V1 + "DEDICATED", TOKENS, {}),
    ]
    assert all(f.tenant == "provider" for f in svc.finds)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_destination_chain_headers_go_with_the_token_lookup(web: Web, transport: Transport) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("OAuth2JWTBearer"))
    alice = xsuaa_user("alice")
    options = {"chain": "sap-chain-1", "chain_vars": {"subject_token": "st-VALUE", "audience": "aud"}}
    assert call(transport, engine(), "S4", alice, **options).status_code == 200
    chain = {"X-chain-name": "sap-chain-1", "X-chain-var-audience": "aud", "X-chain-var-subject_token": "st-VALUE"}
    assert svc.seen() == [(V1 + "S4", "provider", SKIP, {}), (V1 + "S4", "provider", TOKENS, chain)]
    assert sent(web)[0].header("Authorization") == "Bearer OAuth2JWTBearer|provider|alice|X-chain-name=sap-chain-1|1"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "auth, props, option",
    [pytest.param("OAuth2RefreshToken", {}, "refresh_token", id="refresh-token"),
     pytest.param("OAuth2SAMLBearerAssertion", {"SAMLAssertionProvider": "ClientProvided"}, "saml_assertion",
                  id="saml-assertion")],
)
def test_client_provided_values_never_in_errors_or_logs(web: Web, transport: Transport, caplog: Any, auth: str,
                                                        props: dict[str, str], option: str) -> None:
    import logging

    from propagation import TokenExchangeError

    svc = StandIn(web, echo_error=True).install()
    svc.add("provider", cfg(auth, **props))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TokenExchangeError) as info:
        call(transport, engine(), "S4", None, **{option: "VERY-SECRET-VALUE"})
    assert "invalid_grant" in str(info.value) and "VERY-SECRET-VALUE" not in str(info.value)
    assert "VERY-SECRET-VALUE" not in caplog.text
    assert not sent(web)


def test_option_values_never_in_reprs(web: Web) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("OAuth2RefreshToken"))
    s = engine().session("S4", refresh_token="rt-SECRET", chain="c", chain_vars={"v": "cv-SECRET"})
    plan = s.plan("GET", "/x")
    for text in (repr(s.lookup), repr(plan), repr(plan.destination), repr(plan.destination.service)):
        assert "SECRET" not in text
    assert "refresh_token=<set>" in repr(s.lookup)
    assert DEST_URI  # the stand-in answered


# -- 8. listing --------------------------------------------------------------------------------------------
LISTS = ("/destination-configuration/v1/instanceDestinations", "/destination-configuration/v1/subaccountDestinations")


@pytest.mark.parametrize(
    "user_tenant, expected_tenants",
    [pytest.param(None, ["provider"], id="no-user:provider"),
     pytest.param("sub1", ["sub1", "provider"], id="subscriber:own-then-provider")],
)
def test_destinations_lists_env_bindings_and_service_without_secrets(web: Web, user_tenant: str | None,
                                                                     expected_tenants: list[str]) -> None:
    import json

    from propagation.destinations.listing import DestinationInfo

    svc = StandIn(web).install()
    svc.add("provider", cfg("BasicAuthentication", name="S4", User="u", Password="pw-SECRET"), level="instance")
    svc.add("provider", cfg("OAuth2JWTBearer", name="JWT", clientSecret="cs-SECRET"))
    svc.add("provider", cfg("OAuth2ClientCredentials", name="ENV1"))  # hidden by the env entry
    svc.add("provider", {"Name": "RFC1", "Type": "RFC", "Authentication": "BasicAuthentication"})
    svc.add("provider", cfg("SAMLBearerFancy", name="ODD"))
    svc.add("sub1", cfg("OAuth2SAMLBearerAssertion", name="JWT", SAMLAssertionProvider="ClientProvided"))
    environ = {"destinations": json.dumps([{"name": "ENV1", "url": "https://env.example.com"}])}
    e = engine(environ)
    user = xsuaa_user("u", user_tenant) if user_tenant else None
    listed = e.destinations(user_token=user)
    source = "Destination service (dest)"
    first_jwt = (
        DestinationInfo("JWT", f"{source}, subaccount level", "service", "OAuth2SAMLBearerAssertion", False, "Internet",
                        TARGET, "sub1-zid", "subaccount")
        if user_tenant else
        DestinationInfo("JWT", f"{source}, subaccount level", "service", "OAuth2JWTBearer", True, "Internet", TARGET,
                        "provider-zid", "subaccount")
    )
    assert listed[0] == DestinationInfo("ENV1", "destinations environment variable", "environment", "NoAuthentication",
                                        False, "Internet", "https://env.example.com")
    expected = [first_jwt] if user_tenant else []
    expected += [
        DestinationInfo("S4", f"{source}, instance level", "service", "BasicAuthentication", False, "Internet", TARGET,
                        "provider-zid", "instance"),
        *([] if user_tenant else [first_jwt]),
        DestinationInfo("RFC1", f"{source}, subaccount level", "service", "BasicAuthentication", False, "Internet", "",
                        "provider-zid", "subaccount", "Type RFC: only HTTP destinations can be called"),
        DestinationInfo("ODD", f"{source}, subaccount level", "service", "SAMLBearerFancy", False, "Internet", TARGET,
                        "provider-zid", "subaccount", "Authentication SAMLBearerFancy is not supported"),
    ]
    assert listed[1:] == expected
    assert "SECRET" not in repr(listed)
    assert [(f.path, f.tenant, f.query) for f in svc.finds] == [
        (path, tenant, {}) for tenant in expected_tenants for path in LISTS]
    assert e.destinations(service=False) == listed[:1]


def test_module_level_destinations_uses_the_default_engine(web: Web) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg(name="S4"))
    propagation.set_default_propagator(engine())
    try:
        assert [d.name for d in propagation.destinations()] == ["S4"]
    finally:
        propagation.set_default_propagator(None)
    assert [f.path for f in svc.finds] == list(LISTS)


def test_headers_and_async_headers_take_the_lookup_options(web: Web) -> None:
    import asyncio

    svc = StandIn(web).install()
    svc.add("provider", cfg("OAuth2RefreshToken"), level="instance")
    e = engine()
    assert e.headers("S4@instance", refresh_token="rt-A") == {
        "Authorization": "Bearer OAuth2RefreshToken|provider|technical|X-refresh-token=rt-A|1"}
    assert asyncio.run(e.async_headers("S4@instance", refresh_token="rt-B")) == {
        "Authorization": "Bearer OAuth2RefreshToken|provider|technical|X-refresh-token=rt-B|2"}
    assert [(f.path, f.skip, f.via) for f in svc.finds] == [
        (V2 + "S4@instance", SKIP, "requests"), (V2 + "S4@instance", TOKENS, "requests"),
        (V2 + "S4@instance", TOKENS, "httpx")]
