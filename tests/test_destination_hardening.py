"""Destinations under ordinary mistakes and hostile input (issue 17 item 6, issue 20 item 3):
caller input checked before any request and never counted against the Destination service's
breaker; tenant subdomains from tokens that are not host labels refused before any URL is
built; header values from destination properties that a transport would refuse (quoting the
value) refused by name; secrets out of ``repr``/``str`` and out of ``authTokens[].error``
texts; the listing's 404 a PropagationError; a "did you mean" for a destination name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from propagation import ConfigurationError, DestinationNotFoundError, InvalidTokenError, Propagator, TokenExchangeError
from propagation.bindings import Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.errors import InvalidArgumentError, PropagationError
from propagation.exchange.oauth import OAuthClient
from test_outbound_core import TRANSPORTS, Transport, Web, web  # noqa: F401  (fixture)
from dsv2 import DEST_URI, TARGET, StandIn, binding, cfg, xsuaa_user


def engine(threshold: int = 5, environ: dict[str, str] | None = None) -> Propagator:
    return Propagator(environ=environ or {}, bindings=Bindings([binding()], ["VCAP_SERVICES"]), cache=MemoryTokenCache(),
                      oauth=OAuthClient(retries=0, sleep=lambda s: None, breaker_threshold=threshold))


def call(transport: Transport, e: Propagator, name: str, **options: Any) -> Any:
    return transport.call(transport.make(e, name, **options), "GET", "/Items")


# -- caller input: checked first, never a breaker failure -------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("options, field", [
    pytest.param({"fragment": "eu\r\nX-Injected: 1"}, "fragment=", id="fragment-crlf"),
    pytest.param({"fragment": "eu€"}, "fragment=", id="fragment-not-latin-1"),
    pytest.param({"fragment": "eu\n"}, "fragment=", id="fragment-lf"),
    pytest.param({"chain": "c", "chain_vars": {"audience": "a€"}}, "chain_vars", id="chain-var-not-ascii"),
    pytest.param({"chain": "c", "chain_vars": {"audience": "a\r\nb"}}, "chain_vars", id="chain-var-crlf"),
    pytest.param({"refresh_token": "rt\r\nX: y"}, "refresh_token=", id="refresh-token-crlf"),
])
def test_invalid_lookup_options_never_open_the_breaker(web: Web, transport: Transport, options: dict[str, Any],
                                                       field: str) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("BasicAuthentication"))
    svc.add("provider", cfg("NoAuthentication", name="OTHER"))
    e = engine(threshold=3)
    for _ in range(3):
        with pytest.raises(InvalidArgumentError, match=field) as info:
            call(transport, e, "S4", **options)
        assert "€" not in str(info.value) and "X-Injected" not in str(info.value)
    assert svc.finds == [] and svc.token_urls == []  # nothing reached the service or its IdP
    assert call(transport, e, "OTHER").status_code == 200  # the tenant's breaker is closed


def test_an_unknown_level_and_a_bad_name_are_argument_errors(web: Web) -> None:
    svc = StandIn(web).install()
    e = engine()
    with pytest.raises(InvalidArgumentError, match="is not a level"):
        e.destination("S4@galaxy")
    with pytest.raises(InvalidArgumentError, match="destination name"):
        e.destination("")
    assert svc.finds == []


# -- header values from destination properties -------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("prop", ["URL.headers.X-Api-Key", "tokenServiceURL.headers.X-Api-Key"])
def test_a_header_property_a_transport_would_refuse_is_named_not_quoted(web: Web, transport: Transport, prop: str) -> None:
    destinations = [{"name": "ENV", "url": TARGET, "Authentication": "OAuth2ClientCredentials", "clientId": "c",
                     "clientSecret": "s-VALUE", "tokenServiceURL": "https://idp.example.com/oauth/token",
                     prop: "API-KEY-VALUE\r\nX-Injected: 1"}]
    web.on("POST", "https://idp.example.com/", lambda r: (200, {}, {"access_token": "t", "expires_in": 60}))
    web.on("GET", TARGET + "/", lambda r: (200, {}, {}))
    e = engine(environ={"destinations": json.dumps(destinations)})
    with pytest.raises(ConfigurationError, match=f"property '{prop}'") as info:  # found when the entries are read
        call(transport, e, "ENV")
    assert "API-KEY-VALUE" not in str(info.value)
    assert web.seen == []  # no token request, no call


def test_a_header_property_from_the_service_is_checked_too(web: Web) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("NoAuthentication", **{"URL.headers.X-Api-Key": "API-KEY-VALUE\nX: y"}))
    with pytest.raises(InvalidArgumentError, match="URL.headers.X-Api-Key") as info:
        engine().session("S4").get("/Items")
    assert "API-KEY-VALUE" not in str(info.value)
    assert web.to(TARGET) == []


# -- tenant subdomains from tokens ----------------------------------------------------------------------------
@pytest.mark.parametrize("zdn", ["attacker.example#", "evil.example.com", "a/b", "-x"])
def test_a_subdomain_that_is_no_host_label_sends_nothing(web: Web, zdn: str) -> None:
    svc = StandIn(web).install()
    svc.add("sub1", cfg("OAuth2JWTBearer"))
    user = xsuaa_user("mallory", tenant="sub1").split(".")
    import base64

    claims = {"user_name": "mallory", "zid": "sub1-zid", "ext_attr": {"zdn": zdn, "enhancer": "XSUAA"},
              "grant_type": "password", "exp": 4102444800}
    user[1] = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidTokenError, match="RFC 1123"):
        engine().session("S4", user_token=".".join(user)).get("/Items")
    assert web.seen == []  # no service token request, no lookup, no call


# -- secrets out of repr/str and out of authTokens errors ------------------------------------------------------
def test_url_user_info_is_in_no_repr(web: Web) -> None:
    svc = StandIn(web).install()
    svc.add("provider", cfg("NoAuthentication", URL="https://svc-user:URL-PASSWORD-VALUE@target.example.com/s4"))
    e = engine()
    destination = e.destination("S4")
    plan = e.plan("S4", "GET", "/x?q=1")
    for text in (repr(destination), str(destination), repr(plan)):
        assert "URL-PASSWORD-VALUE" not in text
        assert "target.example.com" in text


class EchoingService(StandIn):
    """authTokens[0].error quotes the destination's own credentials back (as some IdP errors do)."""

    def _auth_token(self, auth: str, owner: str, req: Any) -> dict[str, Any]:
        return {"type": "", "value": "", "error": "invalid_client: client 'c' with secret CLIENT-SECRET-VALUE and "
                "password PASSWORD-VALUE / tokenServicePassword TS-PASSWORD-VALUE refused"}


@pytest.mark.parametrize("auth", ["BasicAuthentication", "OAuth2ClientCredentials", "OAuth2Password"])
def test_an_auth_token_error_echoing_the_destinations_secrets_is_redacted(web: Web, auth: str) -> None:
    svc = EchoingService(web).install()
    svc.add("provider", cfg(auth, User="u", Password="PASSWORD-VALUE", clientId="c", clientSecret="CLIENT-SECRET-VALUE",
                            tokenServicePassword="TS-PASSWORD-VALUE", tokenServiceURL="https://idp.example.com/oauth/token"))
    with pytest.raises(TokenExchangeError) as info:
        engine().session("S4").get("/Items")
    text = f"{info.value} {info.value.error}"
    for secret in ("CLIENT-SECRET-VALUE", "PASSWORD-VALUE", "TS-PASSWORD-VALUE"):
        assert secret not in text
    assert "invalid_client" in text
    assert web.to(TARGET) == []


# -- the listing ------------------------------------------------------------------------------------------------
def test_a_listing_404_is_a_propagation_error(web: Web) -> None:
    web.on("POST", "https://provider.auth.example.com/", lambda r: (200, {}, {"access_token": "svc", "expires_in": 60}))
    web.on("GET", DEST_URI + "/", lambda r: (404, {}, {"ErrorMessage": "Not found"}))
    with pytest.raises(PropagationError, match="instanceDestinations.*404|404.*instanceDestinations") as info:
        engine().destinations()
    assert isinstance(info.value, TokenExchangeError)


# -- did you mean -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("asked, hint", [
    pytest.param("s4_cloud", "Did you mean 'S4_CLOUD'?", id="wrong-case"),
    pytest.param("S4_CLUOD", "Did you mean 'S4_CLOUD'?", id="typo"),
    pytest.param("my-cpi", "Did you mean 'MY-CPI'?", id="wrong-case-other"),
    pytest.param("ERP", None, id="nothing-close"),
])
def test_destination_not_found_says_what_was_meant(asked: str, hint: str | None) -> None:
    environ = {"destinations": json.dumps([{"name": "S4_CLOUD", "url": TARGET}, {"name": "MY-CPI", "url": TARGET}])}
    e = Propagator(environ=environ, bindings=Bindings([]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0))
    with pytest.raises(DestinationNotFoundError) as info:
        e.destination(asked)
    message = str(info.value)
    assert message.startswith(f"Destination '{asked}' not found. Looked in:")
    if hint is None:
        assert "Did you mean" not in message
    else:
        assert message.endswith(f"{hint} (destination names are case-sensitive)")


def test_configuration_error_is_still_the_base(web: Web) -> None:
    StandIn(web).install()
    with pytest.raises(ConfigurationError):
        engine().destination("S4", fragment="eu\n")


def test_a_header_property_of_an_env_entry_is_refused_at_start_up() -> None:
    from propagation.destinations.env_entries import destinations_from_env

    entry = {"name": "ENV", "url": TARGET, "URL.headers.X-Api-Key": "API-KEY-VALUE\r\nX: y"}
    with pytest.raises(ConfigurationError, match=r"destinations\[0\] \('ENV'\).*property 'URL.headers.X-Api-Key'") as info:
        destinations_from_env({"destinations": json.dumps([entry])}, Bindings([]))
    assert "API-KEY-VALUE" not in str(info.value)


def test_an_x509_attested_destination_binding_without_key_says_what_it_is(web: Web) -> None:
    from propagation.bindings import Binding

    attested = Binding(name="dest", label="destination", source="SERVICE_BINDING_ROOT (/b/dest)", credentials={
        "clientid": "dest-client", "credential-type": "x509_attested", "url": "https://provider.auth.example.com",
        "uri": DEST_URI})
    e = Propagator(environ={}, bindings=Bindings([attested]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0))
    with pytest.raises(ConfigurationError, match="x509_attested.*SPIRE.*does not read.*'certificate' and 'key'"):
        e.destination("S4")
    assert web.seen == []


def test_a_common_token_url_never_takes_a_subdomain_that_is_no_host_label(web: Web) -> None:
    import base64

    entry = {"name": "ENV", "url": TARGET, "Authentication": "OAuth2JWTBearer", "clientId": "c", "clientSecret": "s",
             "tokenServiceURL": "https://provider.auth.example.com/oauth/token", "tokenServiceURLType": "Common"}
    claims = {"user_name": "mallory", "zid": "sub1-zid", "ext_attr": {"zdn": "attacker.example#", "enhancer": "XSUAA"},
              "grant_type": "password", "exp": 4102444800}
    token = "e30." + base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode() + ".sig"
    e = Propagator(environ={"destinations": json.dumps([entry])}, bindings=Bindings([]), cache=MemoryTokenCache(),
                   oauth=OAuthClient(retries=0))
    with pytest.raises(InvalidTokenError, match="RFC 1123"):
        e.session("ENV", user_token=token).get("/Items")
    assert web.seen == []
