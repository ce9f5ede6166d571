"""The SAP BTP Destination service (DESIGN §3 step 3, §5 "Destination binding" and
"Destination service, more").

A ``destination`` binding (``clientid``, ``clientsecret`` or ``certificate``/``key``,
``url``/``certurl`` = XSUAA token server, ``uri`` = the API) lets the library *find* a
destination by name: ``GET {uri}/destination-configuration/v1/destinations/{name}`` — or, for
``name@level``, ``GET {uri}/destination-configuration/v2/destinations/{name}@{level}`` — with
a service token (client_credentials, one per tenant) as bearer. For Basic, OAuth2* and SAML
types the service runs the token flow itself and answers ``authTokens``: their
``http_header`` is what the target call carries — the library does no second exchange.

Lookup in two steps, because the Authentication type is unknown before the first answer:

1. *Configuration* lookup with ``?$skipTokenRetrieval=true`` (the service runs no token flow)
   and no user header, cached per (tenant, name, level, fragment) for ``config_ttl`` seconds
   (default 300 s, the SAP Cloud SDK's destination cache time). Resolving a name needs only
   this one. Which tenant is asked follows the *selection* (:mod:`.lookup`):
   ``subscriberFirst`` asks the user's tenant, then — on 404, remembered for ``config_ttl`` —
   the provider's; ``alwaysProvider`` / ``alwaysSubscriber`` ask one tenant only.
2. The *token* lookup (without ``$skipTokenRetrieval``), only for types whose headers come from
   the service, with the service token of the tenant whose destination was selected:

   * types that need the user: ``X-user-token: <user JWT>`` (``OAuth2TokenExchange``:
     ``X-Subject-Token`` + ``X-Subject-Token-Type``), cached per (user fingerprint, tenant,
     name…) until the smallest ``expires_in`` of its ``authTokens``. It is made only after the
     authorizer has checked that a user is known. A non-XSUAA (IAS) user token needs the
     destination property ``x_user_token.jwks_uri`` or ``x_user_token.jwks``: checked first.
   * the others without user header (one answer serves every user of a tenant), plus
     ``X-tenant`` (``OAuth2ClientCredentials`` with ``tokenServiceURLType: Common``),
     ``X-refresh-token`` (``OAuth2RefreshToken``) or ``X-samlAssertion``
     (``OAuth2SAMLBearerAssertion`` with ``SAMLAssertionProvider: ClientProvided``) — the
     latter two given per call, their SHA-256 in the cache key.

   Fragment (``X-fragment-*``) and chain (``X-chain-*``) headers go with every lookup they
   shape. ``NoAuthentication``, ``PrincipalPropagation`` and ``ClientCertificateAuthentication``
   need no token lookup (the certificate comes with the configuration; when an answer without
   tokens lacks it, one token lookup fetches it).

This is the ``X-user-token`` variant. The SAP Cloud SDK for JS uses, for a *provider*-tenant
XSUAA user, a jwt-bearer token of the binding's client as the find call's bearer instead;
that variant is not implemented here.

Tenants: a user whose XSUAA tenant (``zid``) differs from the binding's (``tenantid`` /
``identityzoneid``) is a subscriber: the service token comes from the binding's token URL
with the user's subdomain (``ext_attr.zdn``) as first host label, and every cache key
carries the tenant whose destination was used. IAS user tokens use the binding's (provider)
token URL.

Answers live in the engine's :class:`~propagation.caches.memory.TokenCache` (as a
:class:`TokenResponse` whose ``access_token`` is the answer's JSON, so a cache that
encrypts tokens encrypts them too); :attr:`OutboundAuth.cache_key` is the answer's key, so
the 401 handler drops a rejected answer and retries once.
Nothing logged or raised here contains a token, secret or key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

from .._log import logger
from ..bindings import Bindings
from ..caches.memory import CacheKey, TokenCache
from ..errors import ConfigurationError, DestinationNotFoundError, TokenExchangeError
from ..events.instrument import traced_lookup_flow
from ..exchange.flow import Cached, Flow, Invalidate, run_sync
from ..exchange.oauth import OAuthClient, TokenResponse, _expires_in
from ..tokens import UserToken
from . import keystores
from .lookup import (
    ALWAYS_PROVIDER,
    ALWAYS_SUBSCRIBER,
    DEFAULT_SELECTION,
    NO_OPTIONS,
    LookupOptions,
    digest,
    split_level,
)
from .model import PROXY_TYPES, Destination, Properties, canonical_authentication
from .service_config import DestinationServiceConfig, _Tenant
from .service_http import NotFound, auth_headers, call, technical_lookup_headers, user_lookup_headers

__all__ = [
    "DestinationService",
    "DestinationServiceConfig",
    "ServiceLink",
    "DEFAULT_CONFIG_TTL",
    "TTL_ENV",
    "FIND_PATH",
    "FIND_PATH_V2",
    "SKIP_TOKEN_RETRIEVAL",
]

#: Seconds a configuration answer (no user) is reused; the SAP Cloud SDK caches 5 minutes.
DEFAULT_CONFIG_TTL = 300.0
#: Environment variable overriding :data:`DEFAULT_CONFIG_TTL` (seconds).
TTL_ENV = "PROPAGATION_DESTINATION_CACHE_TTL"
FIND_PATH = "/destination-configuration/v1/destinations/"
FIND_PATH_V2 = "/destination-configuration/v2/destinations/"
#: The query of the configuration lookup: the service runs no token flow for it.
SKIP_TOKEN_RETRIEVAL = "$skipTokenRetrieval=true"

_GRANT_CONFIG = "destination-service:find"
_GRANT_TOKENS = "destination-service:find-tokens"
_GRANT_USER = "destination-service:find-user"

#: Types without ``authTokens``: the configuration lookup is all they need.
_NO_TOKEN_TYPES = frozenset({"NoAuthentication", "PrincipalPropagation", "ClientCertificateAuthentication"})


@dataclass(frozen=True, repr=False)
class ServiceLink:
    """Attached to a :class:`Destination` found by the service (``Destination.service``):
    where it was found (tenant, level), the call's lookup options, how the authorizer gets
    its ``authTokens`` for a user, and its client certificate."""

    service: "DestinationService"
    name: str  # the name without "@level"
    certificate: tuple[str, str] | None = None  # (PEM chain, PEM key) for ClientCertificateAuthentication
    trust: str | None = None  # PEM CA bundle of ``TrustStoreLocation``: the target's TLS trusts only these
    tenant: _Tenant | None = None  # whose destination this is (the service token of its lookups)
    level: str | None = None
    options: LookupOptions = NO_OPTIONS

    def auth_headers_flow(self, destination: Destination, user: UserToken | None) -> Flow[tuple[dict[str, str], CacheKey]]:
        return self.service.auth_headers_flow(destination, user)

    def __repr__(self) -> str:
        tenant = self.tenant.id if self.tenant is not None else None
        return f"ServiceLink(binding={self.service.config.binding_name!r}, name={self.name!r}, tenant={tenant!r}, level={self.level!r})"


class DestinationService:
    """Client of one Destination service instance; shares the engine's OAuth client and cache."""

    def __init__(
        self,
        config: DestinationServiceConfig,
        oauth: OAuthClient,
        cache: TokenCache,
        *,
        config_ttl: float = DEFAULT_CONFIG_TTL,
        selection: str = DEFAULT_SELECTION,
    ) -> None:
        if config_ttl < 0:
            raise ValueError("config_ttl must be >= 0")
        self.config = config
        self.oauth = oauth
        self.cache = cache
        self.config_ttl = config_ttl
        self.selection = selection

    @classmethod
    def from_bindings(
        cls, bindings: Bindings, oauth: OAuthClient, cache: TokenCache, *, config_ttl: float = DEFAULT_CONFIG_TTL,
        selection: str = DEFAULT_SELECTION,
    ) -> "DestinationService | None":
        binding = bindings.find(label="destination")
        if binding is None:
            return None
        return cls(DestinationServiceConfig.from_binding(binding), oauth, cache, config_ttl=config_ttl, selection=selection)

    def __repr__(self) -> str:
        return f"DestinationService(binding={self.config.binding_name!r}, config_ttl={self.config_ttl!r}, selection={self.selection!r})"

    @property
    def source(self) -> str:
        return f"Destination service ({self.config.binding_name})"

    # -- which tenants are asked ------------------------------------------------------------
    def tenants(self, user: UserToken | None, options: LookupOptions = NO_OPTIONS) -> list[_Tenant]:
        """The tenants whose destinations are looked at, in order (the selection strategy)."""
        selection = options.selection or self.selection
        provider = self.config.tenant_for(None)
        own = self.config.tenant_for(user) if user is not None else None
        if selection == ALWAYS_PROVIDER:
            return [provider]
        if selection == ALWAYS_SUBSCRIBER:
            return [own] if own is not None else []
        return [own, provider] if own is not None and own.id != provider.id else [provider]

    def searched(self, name: str, user: UserToken | None, options: LookupOptions = NO_OPTIONS) -> str:
        """How a failed step 3 is named in :class:`DestinationNotFoundError`."""
        selection = options.selection or self.selection
        tenants = self.tenants(user, options)
        asked = ", ".join(f"'{t.id}'" for t in tenants) or "none: alwaysSubscriber needs a user's tenant"
        return f"the Destination service (binding '{self.config.binding_name}', {selection}, tenants {asked}): not found"

    # -- step 3 of the resolver ---------------------------------------------------------
    def find_flow(self, name: str, user: UserToken | None, options: LookupOptions | None = None) -> Flow[Destination | None]:
        """The destination ``name`` (``name@level``) from the configuration lookups the
        selection asks for, or ``None`` when no tenant has it."""
        options = options or NO_OPTIONS
        base, level = split_level(name)
        tenants = self.tenants(user, options)
        for index, tenant in enumerate(tenants):
            answer = yield from self._config_answer(base, level, tenant, options, remember_absence=index + 1 < len(tenants))
            if answer is not None:
                logger.debug("destination=%s destination-service found tenant=%s level=%s", name, tenant.id, level)
                return (yield from self._destination(name, base, level, tenant, options, answer))
        return None

    def find(self, name: str, user: UserToken | None, options: LookupOptions | None = None) -> Destination | None:
        """:meth:`find_flow`, blocking."""
        return run_sync(self.find_flow(name, user, options), self.oauth.io)

    def _destination(self, name: str, base: str, level: str | None, tenant: _Tenant, options: LookupOptions,
                     answer: Mapping[str, Any]) -> Flow[Destination]:
        where = f"Destination '{name}' ({self.source})"
        configuration = answer.get("destinationConfiguration")
        if not isinstance(configuration, Mapping):
            raise TokenExchangeError(f"{where}: the answer has no 'destinationConfiguration' object.")
        props = Properties(configuration)
        kind = props.text("Type")
        if kind is not None and kind.upper() != "HTTP":
            raise ConfigurationError(f"{where} has Type {kind[:20]!r}: only HTTP destinations can be called.")
        url = props.text("URL")
        parts = urlsplit(url or "")
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"{where} has no absolute http(s) 'URL'.")
        raw_auth = props.text("Authentication") or "NoAuthentication"
        authentication = canonical_authentication(raw_auth)
        if authentication is None:
            raise ConfigurationError(f"{where}: Authentication {raw_auth[:40]!r} is not supported.")
        proxy_type = PROXY_TYPES.get((props.text("ProxyType") or "Internet").lower())
        if proxy_type is None:
            raise ConfigurationError(f"{where}: ProxyType {str(props.text('ProxyType'))[:20]!r} is not supported.")
        certificates = answer.get("certificates")
        wants_certificates = authentication == "ClientCertificateAuthentication" or props.text("TrustStoreLocation")
        if wants_certificates and not certificates:
            # An answer without token retrieval may leave the key/trust store out: one token lookup has it.
            full, _ = yield from self._token_answer(base, level, tenant, options, {}, name=name)
            certificates = full.get("certificates")
        certificate = None
        if authentication == "ClientCertificateAuthentication":
            certificate = keystores.client_certificate(where, props, certificates)
        trust = keystores.trust_store(where, props, certificates)
        assert url is not None
        return Destination(
            name=name,
            url=url,
            authentication=authentication,
            proxy_type=proxy_type,
            properties=props,
            source=self.source,
            forward_auth_token=props.flag("forwardAuthToken", False),
            strict_ssl=not props.flag("TrustAll", False),
            service=ServiceLink(self, base, certificate, trust, tenant, level, options),
        )

    # -- the authorizer's part -----------------------------------------------------------
    def auth_headers_flow(self, destination: Destination, user: UserToken | None) -> Flow[tuple[dict[str, str], CacheKey]]:
        """The target call's headers from ``authTokens`` and the key of the answer they came
        from. A user type makes the user lookup (the caller has checked ``user`` is set)."""
        link: ServiceLink = destination.service
        tenant = link.tenant or self.config.tenant_for(user)
        options = link.options
        authentication = destination.authentication
        if authentication in _NO_TOKEN_TYPES:
            raise ConfigurationError(f"Destination '{destination.name}' ({self.source}): {authentication} has no authTokens.")
        if destination.needs_user:
            assert user is not None, "the authorizer raises MissingUserTokenError first"
            user_headers = user_lookup_headers(destination, user, self.source)
            answer, key = yield from self._user_answer(destination, link, tenant, user, user_headers)
        else:
            extra = technical_lookup_headers(destination, user, options, self.config.identityzone, self.source)
            answer, key = yield from self._token_answer(link.name, link.level, tenant, options, extra, name=destination.name,
                                                         authentication=authentication)
        try:
            headers = auth_headers(f"Destination '{destination.name}' ({self.source}, {authentication})", answer, user,
                                   options.secrets)
        except TokenExchangeError:
            yield Invalidate(self.cache, key)  # never serve an answer with an error again
            raise
        return headers, key

    # -- lookups (cached) ----------------------------------------------------------------
    def _url(self, base: str, level: str | None, skip: bool) -> str:
        if level is not None:
            url = self.config.uri + FIND_PATH_V2 + quote(base, safe="") + "@" + level
        else:
            url = self.config.uri + FIND_PATH + quote(base, safe="")
        return url + ("?" + SKIP_TOKEN_RETRIEVAL if skip else "")

    def _key(self, grant: str, base: str, level: str | None, tenant: _Tenant, options: LookupOptions,
             headers: Mapping[str, str], user: UserToken | None = None) -> CacheKey:
        return CacheKey(
            destination=base,
            grant=grant,
            client=self.config.client.client_id,
            tenant=tenant.id,  # whose destination (and service token) the answer is
            user=user.fingerprint if user is not None else None,
            # Headers by value digest: X-tenant, X-refresh-token, X-samlAssertion, X-chain-var-*…
            extra=digest(self.config.uri, tenant.token_url, level, options.fragment_headers(), options.chain_digest(),
                         sorted((k, v if k.lower() not in ("x-user-token", "x-subject-token") else "") for k, v in headers.items())),
        )

    def _config_answer(self, base: str, level: str | None, tenant: _Tenant, options: LookupOptions, *,
                       remember_absence: bool = False) -> Flow[dict[str, Any] | None]:
        """Step 1 (``$skipTokenRetrieval``); ``None`` for 404. ``remember_absence``: a 404 is
        cached for ``config_ttl`` too (the subscriber step of ``subscriberFirst``, so a
        subscriber's calls to a provider destination do not ask twice each time)."""
        key = self._key(_GRANT_CONFIG, base, level, tenant, options, {})

        def fetch() -> Flow[TokenResponse]:
            return self._fetch(base, level, tenant, options.fragment_headers(), user=None, authentication=None,
                               skip=True, remember_absence=remember_absence, secrets=options.secrets)

        try:
            cached, hit = yield Cached(self.cache, key, fetch)
        except NotFound:
            return None
        logger.debug("destination=%s destination-service configuration cache=%s tenant=%s", base,
                     "hit" if hit else "miss", tenant.id)
        answer = json.loads(cached.access_token)
        return answer if isinstance(answer, dict) else None

    def _token_answer(self, base: str, level: str | None, tenant: _Tenant, options: LookupOptions,
                      extra: dict[str, str], *, name: str, authentication: str | None = None
                      ) -> Flow[tuple[dict[str, Any], CacheKey]]:
        """Step 2 without user: the service's token flow for a technical type."""
        headers = {**options.fragment_headers(), **extra, **options.chain_headers()}
        key = self._key(_GRANT_TOKENS, base, level, tenant, options, headers)
        per_caller = bool(set(extra) & {"X-refresh-token", "X-samlAssertion"}) or bool(options.chain)

        def fetch() -> Flow[TokenResponse]:
            return self._fetch(base, level, tenant, headers, user=None, authentication=authentication,
                               secrets=options.secrets, user_bound=per_caller)

        try:
            cached, _ = yield Cached(self.cache, key, fetch)
        except NotFound:
            raise DestinationNotFoundError(name, [self.searched(name, None, options)]) from None
        return json.loads(cached.access_token), key

    def _user_answer(self, destination: Destination, link: ServiceLink, tenant: _Tenant, user: UserToken,
                     user_headers: dict[str, str]) -> Flow[tuple[dict[str, Any], CacheKey]]:
        options = link.options
        headers = {**options.fragment_headers(), **user_headers, **options.chain_headers()}
        key = self._key(_GRANT_USER, link.name, link.level, tenant, options, headers, user)

        def fetch() -> Flow[TokenResponse]:
            return self._fetch(link.name, link.level, tenant, headers, user=user, authentication=destination.authentication,
                               secrets=options.secrets, user_bound=True)

        try:
            cached, hit = yield Cached(self.cache, key, fetch, user.expires_at)
        except NotFound:
            raise DestinationNotFoundError(destination.name, [self.searched(destination.name, user, options)]) from None
        logger.debug(
            "destination=%s destination-service user lookup cache=%s user=%s tenant=%s",
            destination.name, "hit" if hit else "miss", user.fingerprint, tenant.id,
        )
        return json.loads(cached.access_token), key

    @traced_lookup_flow
    def _fetch(
        self,
        base: str,
        level: str | None,
        tenant: _Tenant,
        headers: dict[str, str],
        *,
        user: UserToken | None,
        authentication: str | None,
        skip: bool = False,
        remember_absence: bool = False,
        secrets: tuple[str, ...] = (),
        user_bound: bool = False,
    ) -> Flow[TokenResponse]:
        """One find call. ``authentication`` is set for a token lookup, whose answer must
        carry usable tokens (an error answer is never cached)."""
        url = self._url(base, level, skip)
        name = base + (f"@{level}" if level else "")
        started = self.oauth.clock()
        try:
            answer = yield from call(self, url, tenant, headers, what=f"the lookup of destination '{name}'", user=user,
                                     secrets=secrets)
        except NotFound:
            if not remember_absence:
                raise
            return TokenResponse(access_token="null", token_type="destination-service", expires_at=started + self.config_ttl)
        if not isinstance(answer, dict) or not isinstance(answer.get("destinationConfiguration"), dict):
            raise TokenExchangeError(
                f"Destination service binding '{self.config.binding_name}' (tenant '{tenant.id}'): the answer for "
                f"destination '{name}' is not a find-destination object."
            )
        if authentication is not None:
            auth_headers(f"Destination '{name}' ({self.source}, {authentication})", answer, user, secrets)  # never cache an error
        lifetime = self.config_ttl if skip else self._lifetime(answer, user_bound=user_bound)
        return TokenResponse(
            access_token=json.dumps(answer, separators=(",", ":")),
            token_type="destination-service",
            expires_at=started + lifetime,
        )

    def _lifetime(self, answer: Mapping[str, Any], user_bound: bool) -> float:
        lifetimes = [
            value
            for token in (answer.get("authTokens") or [])
            if isinstance(token, Mapping) and not token.get("error")
            for value in (_expires_in(token.get("expires_in")),)
            if value is not None
        ]
        if user_bound:
            return min(lifetimes) if lifetimes else self.config_ttl
        return min([self.config_ttl, *lifetimes])
