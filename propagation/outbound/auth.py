"""Per destination Authentication type: which headers the outbound call carries, and
whether it needs the calling user (fail closed: never a silent technical user).

One :class:`Authorizer` per engine; it owns no state but the OAuth client and the cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from .._log import logger
from ..caches.memory import CacheKey, TokenCache
from ..destinations.model import SERVICE_TOKEN_AUTHENTICATIONS, Destination, header_problem
from ..errors import ConfigurationError, InvalidArgumentError, MissingUserTokenError
from ..exchange.flow import Cached, Flow
from ..exchange.oauth import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    GRANT_PASSWORD,
    GRANT_TOKEN_EXCHANGE,
    ClientCredentials,
    OAuthClient,
    TOKEN_TYPE_URNS,
    TokenResponse,
    expand_token_type,
)
from ..exchange.tenant_urls import tenant_token_endpoint
from ..tokens import UserToken

if TYPE_CHECKING:
    from .connectivity import Connectivity

__all__ = ["OutboundAuth", "Authorizer", "TOKEN_TYPE_URNS", "expand_token_type"]

#: ``resource`` given as a bare provider name expands to this URN (IAS "consumed APIs").
RESOURCE_PROVIDER_PREFIX = "urn:sap:identity:application:provider:name:"

#: Header scheme of a ``saml2-header`` result: SAP Note 2043039, "SAML 2.0 Authentication
#: via HTTP Request Header" (AS ABAP reads ``Authorization: SAML2.0 <base64url assertion>``).
SAML2_HEADER_SCHEME = "SAML2.0"




@dataclass
class OutboundAuth:
    """What one outbound call carries. ``cache_key`` is set when a token came from an exchange.

    On-premise calls also set ``proxy_url`` (the Connectivity proxy) and ``proxy_cache_key``
    (the proxy token's key); their proxy headers are part of ``headers``.
    """

    strategy: str
    headers: dict[str, str] = field(default_factory=dict)
    cache_key: CacheKey | None = None
    user: UserToken | None = None
    proxy_url: str | None = None
    proxy_cache_key: CacheKey | None = None

    def __repr__(self) -> str:  # headers hold secrets
        return f"OutboundAuth(strategy={self.strategy!r}, headers={sorted(self.headers)!r})"


def _is_proxy_header(header: str) -> bool:
    """``Proxy-Authorization`` and ``SAP-Connectivity-*`` are set by the library only."""
    low = header.strip().lower()
    return low == "proxy-authorization" or low.startswith("sap-connectivity-")


#: Form fields that carry the user's token or a password: never part of a cache key.
_USER_SECRET_FIELDS = frozenset({"assertion", "subject_token", "password"})


@lru_cache(maxsize=1024)
def _shape_digest(shape: tuple[Any, ...]) -> str:
    """A stable hash of a token request's shape (URL, form without secrets, headers, query)."""
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode("utf-8")).hexdigest()


def _property_headers(destination: Destination, prefix: str) -> dict[str, str]:
    """The ``<prefix><header>`` properties as headers, each checked to be sendable: requests
    and httpx would raise with the value (often an API key) in their message, and after a
    token request had been made. :class:`InvalidArgumentError` names the property only."""
    memo_key = ("property-headers", prefix)
    headers = destination.memo.get(memo_key)
    if headers is None:
        headers = destination.properties.prefixed(prefix)
        for header, value in headers.items():
            problem = header_problem(header, value)
            if problem is not None:
                raise InvalidArgumentError(
                    f"Destination '{destination.name}' ({destination.source}): property '{prefix}{header[:60]}' "
                    f"{problem}; it cannot be sent as a header. Nothing was sent."
                )
        headers = {header: value.strip(" \t") for header, value in headers.items()}  # as requests/httpx send them
        destination.memo[memo_key] = headers
    return dict(headers)


def _user_and_password(destination: Destination) -> tuple[str, str]:
    """``User``/``Password`` of a Basic or OAuth2Password destination, or a clear error."""
    name = destination.properties.text("User")
    password = destination.properties.get("Password")
    if not name or password is None:
        raise ConfigurationError(
            f"Destination '{destination.name}' ({destination.source}): {destination.authentication} needs 'User' and 'Password'."
        )
    return name, str(password)


@dataclass(frozen=True)
class _TokenRequestShape:
    """What a destination's token request always carries (memoized per destination object):
    ``tokenService.body.*`` (token types and resource expanded), ``scope``, the token URL's
    headers and queries, where the client credentials go, and the digest of all that."""

    body: dict[str, str]
    headers: dict[str, str]
    query: dict[str, str]
    in_body: bool
    digest: str

    @classmethod
    def of(cls, destination: Destination, token_url: str, extra: str, zone_headers: dict[str, str]) -> "_TokenRequestShape":
        props = destination.properties
        body: dict[str, str] = {}
        for param, value in props.prefixed("tokenService.body.").items():
            if param in ("subject_token_type", "requested_token_type", "actor_token_type"):
                value = expand_token_type(value)
            elif param == "resource" and ":" not in value:
                value = RESOURCE_PROVIDER_PREFIX + value.strip()
            body[param] = value
        scope = props.text("scope")
        if scope:
            body.setdefault("scope", scope)
        headers = {**_property_headers(destination, "tokenServiceURL.headers."), **zone_headers}
        query = props.prefixed("tokenServiceURL.queries.")
        in_body = props.flag("tokenService.addClientCredentialsInBody", True)
        shape = (
            token_url,
            tuple(sorted((k, v) for k, v in body.items() if k not in _USER_SECRET_FIELDS)),
            tuple(sorted(headers.items())),
            tuple(sorted(query.items())),
            in_body,
            extra,
        )
        return cls(body, headers, query, in_body, _shape_digest(shape))


class Authorizer:
    """Turns (destination, user) into the headers of the outbound call."""

    def __init__(self, oauth: OAuthClient, cache: TokenCache, connectivity: "Connectivity | None" = None) -> None:
        self.oauth = oauth
        self.cache = cache
        self.connectivity = connectivity
        self._strategies: dict[str, Callable[[Destination, UserToken | None], Flow[OutboundAuth]]] = {
            "NoAuthentication": self._no_authentication,
            "BasicAuthentication": self._basic,
            "OAuth2ClientCredentials": self._client_credentials,
            "OAuth2Password": self._password,
            "OAuth2JWTBearer": self._jwt_bearer,
            "OAuth2UserTokenExchange": self._jwt_bearer,
            "OAuth2TokenExchange": self._token_exchange,
            "PrincipalPropagation": self._principal_propagation,
        }

    def authorize_flow(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        """Headers for one call to ``destination`` as ``user``.

        Raises :class:`MissingUserTokenError` *before any request* when the destination
        needs a user and none is known, :class:`ConfigurationError` when the destination
        lacks what its type needs.
        """
        if user is not None and not user.is_user:
            # A technical token carries no principal: treat it as "no user" for user types.
            logger.debug("token %s is a client_credentials token: no user to propagate", user.fingerprint)
            user = None if destination.needs_user else user
        if destination.needs_user and user is None:
            raise MissingUserTokenError(
                destination.name,
                destination.authentication
                if destination.authentication != "NoAuthentication"
                else "NoAuthentication with forwardAuthToken",
                hint="Run the call inside a request validated by PropagationMiddleware, "
                "inside `with propagation.use_token(jwt):`, or pass user_token=.",
            )
        strategy = self._strategies.get(destination.authentication)
        if destination.service is not None and destination.authentication in SERVICE_TOKEN_AUTHENTICATIONS:
            strategy = self._service_tokens  # the Destination service did the exchange
        elif destination.service is not None and destination.authentication == "ClientCertificateAuthentication":
            strategy = self._client_certificate
        if strategy is None:
            raise ConfigurationError(
                f"Destination '{destination.name}' ({destination.source}): Authentication "
                f"'{destination.authentication}' needs the Destination service; it cannot be "
                f"served from this configuration source."
            )
        if destination.on_premise:
            if self.connectivity is None:
                raise ConfigurationError(
                    f"Destination '{destination.name}' ({destination.source}) has ProxyType OnPremise: "
                    f"it needs a 'connectivity' service binding (the Connectivity proxy)."
                )
            if urlsplit(destination.url).scheme.lower() == "https":
                # Through an HTTP proxy an https:// request is a CONNECT tunnel: the proxy headers
                # would travel inside the tunnel to the target instead of to the proxy.
                raise ConfigurationError(
                    f"Destination '{destination.name}' ({destination.source}) has ProxyType OnPremise and an "
                    f"https:// URL: use the Cloud Connector's http:// virtual host (the Cloud Connector speaks "
                    f"https to the backend); the Connectivity proxy headers must never reach the target."
                )
            self.connectivity.config(destination)  # no binding: fail before any token request
        extra_headers = _property_headers(destination, "URL.headers.")  # checked before any token request
        result = yield from strategy(destination, user)
        for header, value in extra_headers.items():
            if not _is_proxy_header(header):
                result.headers.setdefault(header, value)
        if destination.on_premise:
            assert self.connectivity is not None
            proxy = yield from self.connectivity.authorize_flow(
                destination, user, propagate_user=destination.authentication == "PrincipalPropagation"
            )
            result.headers.update(proxy.headers)
            result.proxy_url = proxy.proxy_url
            result.proxy_cache_key = proxy.cache_key
        logger.debug(
            "destination=%s strategy=%s user=%s",
            destination.name,
            result.strategy,
            user.fingerprint if user else None,
        )
        return result

    # -- strategies -----------------------------------------------------------------
    def _service_tokens(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        # The Destination service's authTokens are the headers; cache_key is its answer's key,
        # so a 401 from the target drops that answer and the retry looks it up again.
        assert destination.service is not None
        headers, key = yield from destination.service.auth_headers_flow(destination, user)
        return OutboundAuth("destination-service", headers, cache_key=key, user=user)

    def _client_certificate(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        yield from ()  # a flow without I/O
        # No header: DestinationSession presents the service's certificate (mTLS).
        return OutboundAuth("client-certificate")

    def _principal_propagation(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        yield from ()  # a flow without I/O
        # No Authorization for the target: the Cloud Connector maps the user carried to the
        # Connectivity proxy (added by authorize() for on-premise destinations).
        if not destination.on_premise:
            raise ConfigurationError(
                f"Destination '{destination.name}' ({destination.source}): Authentication PrincipalPropagation "
                f"needs ProxyType OnPremise (it is carried by the Connectivity proxy), not {destination.proxy_type}."
            )
        return OutboundAuth("principal-propagation", user=user)

    def _no_authentication(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        yield from ()  # a flow without I/O
        if destination.forward_auth_token and user is not None:
            return OutboundAuth("forward", {"Authorization": f"Bearer {user.raw}"}, user=user)
        return OutboundAuth("none")

    def _basic(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        yield from ()  # a flow without I/O
        name, password = _user_and_password(destination)
        raw = f"{name}:{password}".encode("utf-8")
        return OutboundAuth("basic", {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")})

    def _client_credentials(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        tenant = user.tenant if user is not None else None
        return (yield from self._exchange(destination, None, tenant, GRANT_CLIENT_CREDENTIALS, {}, "client_credentials"))

    def _password(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        name, password = _user_and_password(destination)
        form = {"username": name, "password": password}
        tenant = user.tenant if user is not None else None
        return (yield from self._exchange(destination, None, tenant, GRANT_PASSWORD, form, "password", extra=name))

    def _jwt_bearer(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        assert user is not None
        return (yield from self._exchange(destination, user, user.tenant, GRANT_JWT_BEARER, {"assertion": user.raw}, "jwt-bearer"))

    def _token_exchange(self, destination: Destination, user: UserToken | None) -> Flow[OutboundAuth]:
        assert user is not None
        form = {
            "subject_token": user.raw,
            "subject_token_type": TOKEN_TYPE_URNS["access_token"],
        }
        return (yield from self._exchange(destination, user, user.tenant, GRANT_TOKEN_EXCHANGE, form, "token-exchange"))

    # -- shared OAuth path ---------------------------------------------------------
    def _exchange(
        self,
        destination: Destination,
        user: UserToken | None,
        tenant: str | None,
        grant: str,
        form: dict[str, str],
        strategy: str,
        *,
        extra: str = "",
    ) -> Flow[OutboundAuth]:
        client, token_url, zone_headers = self._client(destination, user)
        memo_key = ("token-request", token_url, extra, tuple(zone_headers.items()))
        shape = destination.memo.get(memo_key)
        if shape is None:
            shape = destination.memo[memo_key] = _TokenRequestShape.of(destination, token_url, extra, zone_headers)
        body = {**form, **shape.body} if form else shape.body
        headers, query, in_body = shape.headers, shape.query, shape.in_body
        key = CacheKey(
            destination=destination.name,
            grant=grant,
            client=client.client_id,
            tenant=tenant,
            user=user.fingerprint if user is not None else None,
            extra=shape.digest,
        )

        def fetch() -> Flow[TokenResponse]:
            return self.oauth.token_flow(
                token_url, client, grant, body, headers=headers, query=query, credentials_in_body=in_body, tenant=tenant
            )

        token, hit = yield Cached(self.cache, key, fetch, user.expires_at if user is not None else None)
        logger.debug(
            "destination=%s grant=%s cache=%s user=%s",
            destination.name,
            strategy,
            "hit" if hit else "miss",
            user.fingerprint if user is not None else None,
        )
        issued = token.issued_token_type or body.get("requested_token_type")
        scheme = SAML2_HEADER_SCHEME if issued == TOKEN_TYPE_URNS["saml2-header"] else "Bearer"
        return OutboundAuth(strategy, {"Authorization": f"{scheme} {token.access_token}"}, cache_key=key, user=user)

    def _client(self, destination: Destination, user: UserToken | None) -> tuple[ClientCredentials, str, dict[str, str]]:
        """The destination's OAuth client, token URL and extra headers. ``tokenServiceURLType:
        Common``: the user's tenant's endpoint (subdomain, or ``X-zid`` for an IAS user)."""
        if destination.client is None or not destination.token_service_url:
            raise ConfigurationError(
                f"Destination '{destination.name}' ({destination.source}): {destination.authentication} needs "
                f"'tokenServiceURL' and 'clientId' with 'clientSecret' (or a service binding's OAuth client)."
            )
        token_url = destination.token_service_url
        if user is not None and (destination.properties.text("tokenServiceURLType") or "").lower() == "common":
            host = urlsplit(token_url).hostname or ""
            found = tenant_token_endpoint(token_url, host.split(".", 1)[1] if "." in host else None, user)
            if found is None:
                raise ConfigurationError(
                    f"Destination '{destination.name}' ({destination.source}): tokenServiceURLType Common needs the "
                    f"calling user's tenant (subdomain or zone id), and the user token names neither. Nothing was sent."
                )
            return destination.client, found[0], found[1]
        return destination.client, token_url, {}
