"""One call to the Destination service's REST API, as a flow: the tenant's service token
(renewed once when a cached one is refused), the GET with the OAuth client's timeout and
retry policy (5xx, connection errors), and the mapping of its answers to errors that name
the binding and tenant — never a token, secret or client-provided credential."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol
from urllib.parse import urlsplit

from .._log import logger
from ..caches.memory import CacheKey
from ..errors import ConfigurationError, TokenExchangeError
from ..exchange.flow import Answer, Cached, Flow, HttpCall, Invalidate, TransportFailure
from ..exchange.oauth import GRANT_CLIENT_CREDENTIALS, TokenResponse, _safe_url, expand_token_type
from ..exchange.redaction import sanitize as _sanitize
from ..exchange.resilience import resilient_flow
from ..tokens import UserToken
from .lookup import LookupOptions, digest
from .model import header_problem, secret_values
from .service_config import _Tenant

if TYPE_CHECKING:
    from ..caches.memory import TokenCache
    from ..exchange.oauth import OAuthClient
    from .model import Destination
    from .service_config import DestinationServiceConfig

__all__ = ["NotFound", "service_token", "call", "error_text", "user_lookup_headers", "technical_lookup_headers", "auth_headers"]

#: ``CacheKey.destination`` of the service token (no destination name can contain "<").
_SERVICE_TOKEN_KEY = "<destination-service>"


class DestinationService(Protocol):
    """What a call needs of :class:`~propagation.destinations.service.DestinationService`."""

    config: "DestinationServiceConfig"
    oauth: "OAuthClient"
    cache: "TokenCache"


class NotFound(Exception):
    """404 from a find call."""


def service_token(svc: DestinationService, tenant: _Tenant) -> Flow[tuple[TokenResponse, CacheKey, bool]]:
    """The tenant's client_credentials token for the service (cached per tenant)."""
    key = CacheKey(
        destination=_SERVICE_TOKEN_KEY,
        grant=GRANT_CLIENT_CREDENTIALS,
        client=svc.config.client.client_id,
        tenant=tenant.id,
        extra=digest(tenant.token_url),
    )
    token, hit = yield Cached(
        svc.cache, key, lambda: svc.oauth.token_flow(tenant.token_url, svc.config.client, GRANT_CLIENT_CREDENTIALS, {})
    )
    return token, key, hit


def call(
    svc: DestinationService,
    url: str,
    tenant: _Tenant,
    headers: Mapping[str, str],
    *,
    what: str,
    user: UserToken | None,
    secrets: tuple[str, ...] = (),
) -> Flow[Any]:
    """GET ``url`` as ``tenant`` with ``headers``; the JSON answer. 404 raises :class:`NotFound`;
    401/403 a :class:`ConfigurationError` (the binding's client); other errors a
    :class:`TokenExchangeError`. ``what`` names the call in messages ("the lookup of destination 'x'")."""
    for second_try in (False, True):
        token, token_key, hit = yield from service_token(svc, tenant)
        sent = {"Accept": "application/json", "Authorization": f"Bearer {token.access_token}", **headers}
        response = yield from _get(svc, url, sent, what, tenant, user)
        status = response.status
        if status in (401, 403) and hit and not second_try:
            logger.info("destination-service refused a cached service token (%d) for %s: fetching a new one", status, what)
            yield Invalidate(svc.cache, token_key)
            continue
        break
    secrets = (token.access_token, *headers.values(), *secrets)
    where = f"Destination service binding '{svc.config.binding_name}' (tenant '{tenant.id}')"
    if status == 404:
        raise NotFound()
    if status in (401, 403):
        raise ConfigurationError(
            f"{where} refused {what} with {status}: check the binding's client "
            f"(clientid/secret or certificate) and that it belongs to this subaccount"
            f"{' (subscriber tenant)' if tenant.subscriber else ''}."
        )
    if not 200 <= status < 300:
        detail = error_text(response, secrets)
        raise TokenExchangeError(
            f"{where}: {what} failed with {status}" + (f": {detail}" if detail else "") + ".",
            status=status, url=_safe_url(url),
        )
    try:
        return response.json()
    except ValueError:
        raise TokenExchangeError(f"{where}: the answer to {what} is not JSON.", status=status, url=_safe_url(url)) from None


def _get(svc: DestinationService, url: str, headers: dict[str, str], what: str, tenant: _Tenant,
         user: UserToken | None) -> Flow[Answer]:
    """GET under the OAuth client's policy (:mod:`propagation.exchange.resilience`: timeout, total
    deadline, retries of 5xx and connection errors, breaker per host and tenant)."""
    safe = _safe_url(url)
    oauth = svc.oauth
    logger.debug("destination-service %s tenant=%s user=%s", what, tenant.id, user.fingerprint if user else None)
    try:
        response, _ = yield from resilient_flow(
            HttpCall("GET", url, headers, timeout=oauth.timeout), retries=oauth.retries, backoff=oauth.backoff,
            deadline=oauth.deadline, breakers=oauth.breakers, key=(urlsplit(url).hostname, tenant.id),
            what=f"Destination service: {what} at {safe}",
        )
    except TransportFailure as exc:
        if exc.kind == "tls":
            raise TokenExchangeError(f"Destination service: {what} at {safe}: TLS error ({exc.cause}).", url=safe) from exc.__cause__
        tries = getattr(exc, "attempts", 1)
        suffix = f" after {tries} attempt(s)" if exc.kind in ("connect", "timeout") else ""
        raise TokenExchangeError(f"Destination service: {what} at {safe} failed: {exc.cause}{suffix}.", url=safe) from exc.__cause__
    logger.debug("destination-service %s status=%d", what, response.status)
    return response


def error_text(response: Answer, secrets: tuple[str, ...]) -> str | None:
    """The service's error text (``ErrorMessage`` …), secrets removed."""
    try:
        data = response.json()
    except ValueError:
        return None
    if isinstance(data, Mapping):
        for field_name in ("ErrorMessage", "error_description", "message", "error"):
            value = data.get(field_name)
            if isinstance(value, Mapping):
                value = value.get("message")
            text = _sanitize(value, secrets)
            if text:
                return text
    elif isinstance(data, str):
        return _sanitize(data, secrets)
    return None


# -- what a token lookup sends, and what its answer means ---------------------------------------
#: Types whose token lookup carries the user in ``X-user-token`` (the service checks it).
X_USER_TOKEN_TYPES = frozenset({"OAuth2JWTBearer", "OAuth2UserTokenExchange", "OAuth2SAMLBearerAssertion", "SAMLAssertion"})
JWKS_PROPERTIES = ("x_user_token.jwks_uri", "x_user_token.jwks")


def user_lookup_headers(destination: "Destination", user: UserToken, source: str) -> dict[str, str]:
    """``X-user-token`` (``OAuth2TokenExchange``: the subject token pair), after the check the
    service would fail cryptically: a non-XSUAA user token needs ``x_user_token.jwks(_uri)``."""
    authentication = destination.authentication
    if authentication == "OAuth2TokenExchange":
        token_type = expand_token_type(destination.properties.text("tokenService.body.subject_token_type") or "access_token")
        if ":" not in token_type:
            token_type = f"urn:ietf:params:oauth:token-type:{token_type}"
        return {"X-Subject-Token": user.raw, "X-Subject-Token-Type": token_type}
    if authentication in X_USER_TOKEN_TYPES and user.kind != "xsuaa":
        if not any(destination.properties.text(p) for p in JWKS_PROPERTIES):
            issuer = urlsplit(user.issuer or "").hostname or "unknown issuer"
            raise ConfigurationError(
                f"Destination '{destination.name}' ({source}, {authentication}): the calling user's token is not an "
                f"XSUAA token (issuer {issuer}). The Destination service accepts such a token in X-user-token only "
                f"when the destination names the keys to verify it: add the property 'x_user_token.jwks_uri' (the "
                f"issuer's JWKS URL, e.g. https://{issuer}/oauth2/certs) or 'x_user_token.jwks' (the JWKS, "
                f"base64-encoded) to the destination. Nothing was sent."
            )
    return {"X-user-token": user.raw}


def technical_lookup_headers(destination: "Destination", user: UserToken | None, options: LookupOptions,
                             identityzone: str | None, source: str) -> dict[str, str]:
    """Headers of a token lookup without user: ``X-tenant`` (``OAuth2ClientCredentials`` with
    ``tokenServiceURLType: Common``: the user's subdomain, else the provider's),
    ``X-refresh-token`` or ``X-samlAssertion`` (given per call; required by their types)."""
    props = destination.properties
    authentication = destination.authentication
    where = f"Destination '{destination.name}' ({source}, {authentication})"
    if authentication == "OAuth2ClientCredentials" and (props.text("tokenServiceURLType") or "").lower() == "common":
        # Never an IAS issuer's host label (DESIGN §5): only XSUAA's zdn, else the binding's zone.
        subdomain = (user.tenant_subdomain if user is not None and user.kind == "xsuaa" else None) or identityzone
        if not subdomain:
            raise ConfigurationError(
                f"{where}: tokenServiceURLType Common needs the tenant's subdomain (X-tenant): call as an XSUAA "
                f"user or give the destination binding an 'identityzone'."
            )
        return {"X-tenant": subdomain}
    if authentication == "OAuth2RefreshToken":
        if not options.refresh_token:
            raise ConfigurationError(f"{where}: pass the user's refresh token per call (refresh_token=...): the "
                                     f"Destination service needs it in X-refresh-token. Nothing was sent.")
        return {"X-refresh-token": options.refresh_token}
    if authentication == "OAuth2SAMLBearerAssertion" and client_provided_saml(props):
        if not options.saml_assertion:
            raise ConfigurationError(f"{where}: SAMLAssertionProvider is ClientProvided: pass the assertion per call "
                                     f"(saml_assertion=...) for X-samlAssertion. Nothing was sent.")
        return {"X-samlAssertion": options.saml_assertion}
    return {}


def client_provided_saml(props: Mapping[str, Any]) -> bool:
    value = props.get("SAMLAssertionProvider")
    return str(value or "").strip().lower() == "clientprovided"


def auth_headers(where: str, answer: Mapping[str, Any], user: UserToken | None, extra_secrets: tuple[str, ...] = ()) -> dict[str, str]:
    """The target call's headers from an answer's ``authTokens``; an ``error`` entry (or none
    at all) is a :class:`TokenExchangeError` whose text names no secret."""
    tokens = answer.get("authTokens")
    if not isinstance(tokens, list) or not tokens:
        raise TokenExchangeError(f"{where}: the Destination service returned no authTokens; nothing was sent.")
    configuration = answer.get("destinationConfiguration")
    held = secret_values(configuration) if isinstance(configuration, Mapping) else ()  # Password, clientSecret…
    secrets = tuple(s for s in (user.raw if user else None,) if s) + extra_secrets + held
    headers: dict[str, str] = {}
    for index, token in enumerate(tokens):
        if not isinstance(token, Mapping):
            raise TokenExchangeError(f"{where}: authTokens[{index}] is not an object; nothing was sent.")
        values = tuple(str(v) for v in (token.get("value"), (token.get("http_header") or {}).get("value")) if v)
        error = token.get("error")
        if error:
            text = _sanitize(str(error), secrets + values) or "error"
            raise TokenExchangeError(f"{where}: the Destination service could not get a token: {text}. Nothing was sent.",
                                     error=text)
        header = token.get("http_header")
        if isinstance(header, Mapping) and isinstance(header.get("key"), str) and isinstance(header.get("value"), str):
            key, value = header["key"], header["value"]
        elif isinstance(token.get("type"), str) and isinstance(token.get("value"), str):
            key, value = "Authorization", f"{token['type']} {token['value']}"
        else:
            raise TokenExchangeError(f"{where}: authTokens[{index}] has no http_header; nothing was sent.")
        problem = header_problem(key, value)
        if problem is not None:  # a transport would quote the token in its error
            raise TokenExchangeError(f"{where}: authTokens[{index}] header {problem}; nothing was sent.")
        headers[key] = value
    return headers
