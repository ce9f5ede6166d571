"""The SAP BTP Destination service (DESIGN §3 step 3, §5 "Destination binding").

A ``destination`` binding (``clientid``, ``clientsecret`` or ``certificate``/``key``,
``url``/``certurl`` = XSUAA token server, ``uri`` = the API) lets the library *find* a
destination by name: ``GET {uri}/destination-configuration/v1/destinations/{name}`` with a
service token (client_credentials, one per tenant) as bearer. For Basic, OAuth2* and SAML
types the service runs the token flow itself and answers ``authTokens``: their
``http_header`` is what the target call carries — the library does no second exchange.

Lookup in two steps, because the Authentication type is unknown before the first answer:

1. *Configuration* lookup without any user header, cached per (tenant, name) for
   ``config_ttl`` seconds (default 300 s, the SAP Cloud SDK's destination cache time; shorter
   when an ``authTokens`` entry expires sooner). Resolving a name needs only this one.
2. For a type that needs the user: a *user* lookup with ``X-user-token: <user JWT>``
   (``OAuth2TokenExchange``: ``X-Subject-Token`` + ``X-Subject-Token-Type``), cached per
   (user fingerprint, tenant, name) until the smallest ``expires_in`` of its ``authTokens``
   (the token cache subtracts its skew). It is made only after the authorizer has checked
   that a user is known, so without a user the service is asked once (step 1) and the
   target never. Non-user types send no user header at all, so one cached answer serves
   every user of a tenant.

This is the ``X-user-token`` variant. The SAP Cloud SDK for JS uses, for a *provider*-tenant
XSUAA user, a jwt-bearer token of the binding's client as the find call's bearer instead;
that variant is not implemented here.

Tenants: a user whose XSUAA tenant (``zid``) differs from the binding's (``tenantid`` /
``identityzoneid``) is a subscriber: the service token comes from the binding's token URL
with the user's subdomain (``ext_attr.zdn``) as first host label, and every cache key
carries that tenant. IAS user tokens use the binding's (provider) token URL.

Answers live in the engine's :class:`~propagation.cache.TokenCache` (as a
:class:`TokenResponse` whose ``access_token`` is the answer's JSON, so a cache that
encrypts tokens encrypts them too); :attr:`OutboundAuth.cache_key` is the answer's key, so
the 401 handler of :mod:`propagation.http` drops a rejected answer and retries once.
Nothing logged or raised here contains a token, secret or key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlsplit

from .._log import logger
from ..bindings import Bindings
from ..cache import CacheKey, TokenCache
from ..errors import ConfigurationError, DestinationNotFoundError, TokenExchangeError
from ..oauth import (
    GRANT_CLIENT_CREDENTIALS,
    OAuthClient,
    TokenResponse,
    _expires_in,
    _safe_url,

    expand_token_type,
)
from ..redaction import sanitize as _sanitize
from ..resilience import resilient_flow
from ..flow import Answer, Cached, ClientCertFiles, Flow, HttpCall, Invalidate, TransportFailure, run_sync
from ..tokens import UserToken
from . import keystores
from .service_config import DestinationServiceConfig, _Tenant
from .model import PROXY_TYPES, Destination, Properties, canonical_authentication

__all__ = [
    "DestinationService",
    "DestinationServiceConfig",
    "ServiceLink",
    "DEFAULT_CONFIG_TTL",
    "TTL_ENV",
    "FIND_PATH",
    "client_certificate",
]

#: Seconds a configuration answer (no user) is reused; the SAP Cloud SDK caches 5 minutes.
DEFAULT_CONFIG_TTL = 300.0
#: Environment variable overriding :data:`DEFAULT_CONFIG_TTL` (seconds).
TTL_ENV = "PROPAGATION_DESTINATION_CACHE_TTL"
FIND_PATH = "/destination-configuration/v1/destinations/"

#: ``CacheKey.destination`` of the service token (no destination name can contain "<").
_SERVICE_TOKEN_KEY = "<destination-service>"
_GRANT_CONFIG = "destination-service:find"
_GRANT_USER = "destination-service:find-user"


def _digest(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


@dataclass(frozen=True, repr=False)
class ServiceLink:
    """Attached to a :class:`Destination` found by the service (``Destination.service``):
    how the authorizer gets its ``authTokens`` for a user, and its client certificate."""

    service: "DestinationService"
    name: str
    certificate: tuple[str, str] | None = None  # (PEM chain, PEM key) for ClientCertificateAuthentication
    trust: str | None = None  # PEM CA bundle of ``TrustStoreLocation``: the target's TLS trusts only these

    def auth_headers_flow(self, destination: Destination, user: UserToken | None) -> Flow[tuple[dict[str, str], CacheKey]]:
        return self.service.auth_headers_flow(destination, user)

    def __repr__(self) -> str:
        return f"ServiceLink(binding={self.service.config.binding_name!r}, name={self.name!r})"


class DestinationService:
    """Client of one Destination service instance; shares the engine's OAuth client and cache."""

    def __init__(
        self,
        config: DestinationServiceConfig,
        oauth: OAuthClient,
        cache: TokenCache,
        *,
        config_ttl: float = DEFAULT_CONFIG_TTL,
    ) -> None:
        if config_ttl < 0:
            raise ValueError("config_ttl must be >= 0")
        self.config = config
        self.oauth = oauth
        self.cache = cache
        self.config_ttl = config_ttl

    @classmethod
    def from_bindings(
        cls, bindings: Bindings, oauth: OAuthClient, cache: TokenCache, *, config_ttl: float = DEFAULT_CONFIG_TTL
    ) -> "DestinationService | None":
        binding = bindings.find(label="destination")
        if binding is None:
            return None
        return cls(DestinationServiceConfig.from_binding(binding), oauth, cache, config_ttl=config_ttl)

    def __repr__(self) -> str:
        return f"DestinationService(binding={self.config.binding_name!r}, config_ttl={self.config_ttl!r})"

    @property
    def source(self) -> str:
        return f"Destination service ({self.config.binding_name})"

    def searched(self, name: str, user: UserToken | None) -> str:
        """How a failed step 3 is named in :class:`DestinationNotFoundError`."""
        tenant = self.config.tenant_for(user)
        return f"the Destination service (binding '{self.config.binding_name}', tenant '{tenant.id}'): not found"

    # -- step 3 of the resolver ---------------------------------------------------------
    def find_flow(self, name: str, user: UserToken | None) -> Flow[Destination | None]:
        """The destination ``name`` from its configuration lookup, or ``None`` (404)."""
        answer, _, _ = yield from self._config_answer(name, user)
        if answer is None:
            return None
        return self._destination(name, answer)

    def find(self, name: str, user: UserToken | None) -> Destination | None:
        """:meth:`find_flow`, blocking."""
        return run_sync(self.find_flow(name, user), self.oauth.io)

    def _destination(self, name: str, answer: Mapping[str, Any]) -> Destination:
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
        certificate = None
        if authentication == "ClientCertificateAuthentication":
            certificate = keystores.client_certificate(where, props, answer.get("certificates"))
        trust = keystores.trust_store(where, props, answer.get("certificates"))
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
            service=ServiceLink(self, name, certificate, trust),
        )

    # -- the authorizer's part -----------------------------------------------------------
    def auth_headers_flow(self, destination: Destination, user: UserToken | None) -> Flow[tuple[dict[str, str], CacheKey]]:
        """The target call's headers from ``authTokens`` and the key of the answer they came
        from. A user type makes the user lookup (the caller has checked ``user`` is set)."""
        name = destination.name
        if destination.needs_user:
            assert user is not None, "the authorizer raises MissingUserTokenError first"
            answer, key = yield from self._user_answer(destination, user)
        else:
            config_answer, key, _ = yield from self._config_answer(name, user)
            if config_answer is None:
                raise DestinationNotFoundError(name, [self.searched(name, user)])
            answer = config_answer
        try:
            headers = self._headers(name, destination.authentication, answer, user)
        except TokenExchangeError:
            yield Invalidate(self.cache, key)  # never serve an answer with an error again
            raise
        return headers, key

    def _headers(self, name: str, authentication: str, answer: Mapping[str, Any], user: UserToken | None) -> dict[str, str]:
        where = f"Destination '{name}' ({self.source}, {authentication})"
        tokens = answer.get("authTokens")
        if not isinstance(tokens, list) or not tokens:
            raise TokenExchangeError(f"{where}: the Destination service returned no authTokens; nothing was sent.")
        secrets = tuple(s for s in (user.raw if user else None,) if s)
        headers: dict[str, str] = {}
        for index, token in enumerate(tokens):
            if not isinstance(token, Mapping):
                raise TokenExchangeError(f"{where}: authTokens[{index}] is not an object; nothing was sent.")
            values = tuple(str(v) for v in (token.get("value"), (token.get("http_header") or {}).get("value")) if v)
            error = token.get("error")
            if error:
                text = _sanitize(str(error), secrets + values) or "error"
                raise TokenExchangeError(
                    f"{where}: the Destination service could not get a token: {text}. Nothing was sent.",
                    error=text,
                )
            header = token.get("http_header")
            if isinstance(header, Mapping) and isinstance(header.get("key"), str) and isinstance(header.get("value"), str):
                headers[header["key"]] = header["value"]
            elif isinstance(token.get("type"), str) and isinstance(token.get("value"), str):
                headers["Authorization"] = f"{token['type']} {token['value']}"
            else:
                raise TokenExchangeError(f"{where}: authTokens[{index}] has no http_header; nothing was sent.")
        return headers

    # -- lookups (cached) ----------------------------------------------------------------
    def _config_answer(
        self, name: str, user: UserToken | None
    ) -> Flow[tuple[dict[str, Any] | None, CacheKey, bool]]:
        tenant = self.config.tenant_for(user)
        key = CacheKey(
            destination=name,
            grant=_GRANT_CONFIG,
            client=self.config.client.client_id,
            tenant=tenant.id,
            extra=_digest(self.config.uri, tenant.token_url),
        )

        def fetch() -> Flow[TokenResponse]:
            return self._fetch(name, tenant, {}, user=None, authentication=None)

        try:
            cached, hit = yield Cached(self.cache, key, fetch)
        except _NotFound:
            return None, key, False
        return json.loads(cached.access_token), key, hit

    def _user_answer(self, destination: Destination, user: UserToken) -> Flow[tuple[dict[str, Any], CacheKey]]:
        tenant = self.config.tenant_for(user)
        if destination.authentication == "OAuth2TokenExchange":
            token_type = expand_token_type(destination.properties.text("tokenService.body.subject_token_type") or "access_token")
            if ":" not in token_type:
                token_type = f"urn:ietf:params:oauth:token-type:{token_type}"
            user_headers = {"X-Subject-Token": user.raw, "X-Subject-Token-Type": token_type}
        else:
            user_headers = {"X-user-token": user.raw}
        key = CacheKey(
            destination=destination.name,
            grant=_GRANT_USER,
            client=self.config.client.client_id,
            tenant=tenant.id,
            user=user.fingerprint,
            extra=_digest(self.config.uri, tenant.token_url, *sorted(k for k in user_headers), user_headers.get("X-Subject-Token-Type", "")),
        )

        def fetch() -> Flow[TokenResponse]:
            return self._fetch(destination.name, tenant, user_headers, user=user, authentication=destination.authentication)

        try:
            cached, hit = yield Cached(self.cache, key, fetch, user.expires_at)
        except _NotFound:
            raise DestinationNotFoundError(destination.name, [self.searched(destination.name, user)]) from None
        answer = json.loads(cached.access_token)
        logger.debug(
            "destination=%s destination-service user lookup cache=%s user=%s tenant=%s",
            destination.name, "hit" if hit else "miss", user.fingerprint, tenant.id,
        )
        return answer, key

    def _service_token(self, tenant: _Tenant) -> Flow[tuple[TokenResponse, CacheKey, bool]]:
        key = CacheKey(
            destination=_SERVICE_TOKEN_KEY,
            grant=GRANT_CLIENT_CREDENTIALS,
            client=self.config.client.client_id,
            tenant=tenant.id,
            extra=_digest(tenant.token_url),
        )
        token, hit = yield Cached(
            self.cache, key, lambda: self.oauth.token_flow(tenant.token_url, self.config.client, GRANT_CLIENT_CREDENTIALS, {})
        )
        return token, key, hit

    def _fetch(
        self,
        name: str,
        tenant: _Tenant,
        user_headers: dict[str, str],
        *,
        user: UserToken | None,
        authentication: str | None,
    ) -> Flow[TokenResponse]:
        """One find call (with a fresh service token once if the cached one is refused).
        ``authentication`` is set for a user lookup, whose answer must carry usable tokens."""
        url = self.config.uri + FIND_PATH + quote(name, safe="")
        started = self.oauth.clock()
        for second_try in (False, True):
            token, token_key, hit = yield from self._service_token(tenant)
            headers = {"Accept": "application/json", "Authorization": f"Bearer {token.access_token}", **user_headers}
            response = yield from self._get(url, headers, name, tenant, user)
            status = response.status
            if status in (401, 403) and hit and not second_try:
                logger.info("destination=%s destination-service refused a cached service token (%d): fetching a new one",
                            name, status)
                yield Invalidate(self.cache, token_key)
                continue
            break
        secrets = (token.access_token,) + tuple(user_headers.values())
        where = f"Destination service binding '{self.config.binding_name}' (tenant '{tenant.id}')"
        if status == 404:
            raise _NotFound()
        if status in (401, 403):
            raise ConfigurationError(
                f"{where} refused the lookup of destination '{name}' with {status}: check the binding's client "
                f"(clientid/secret or certificate) and that it belongs to this subaccount{' (subscriber tenant)' if tenant.subscriber else ''}."
            )
        if not 200 <= status < 300:
            detail = _error_text(response, secrets)
            raise TokenExchangeError(
                f"{where}: the lookup of destination '{name}' failed with {status}" + (f": {detail}" if detail else "") + ".",
                status=status, url=_safe_url(url),
            )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("destinationConfiguration"), dict):
            raise TokenExchangeError(
                f"{where}: the answer for destination '{name}' is not a find-destination object.", status=status,
                url=_safe_url(url),
            )
        if authentication is not None:
            self._headers(name, authentication, answer, user)  # an error answer is never cached
        lifetime = self._lifetime(answer, user_bound=authentication is not None)
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

    def _get(self, url: str, headers: dict[str, str], name: str, tenant: _Tenant, user: UserToken | None) -> Flow[Answer]:
        """GET under the OAuth client's policy (:mod:`propagation.resilience`: timeout, deadline,
        retries of 5xx and connection errors, breaker per host and tenant)."""
        safe = _safe_url(url)
        logger.debug("destination=%s destination-service find tenant=%s user=%s", name, tenant.id,
                     user.fingerprint if user else None)
        oauth = self.oauth
        try:
            response, _ = yield from resilient_flow(
                HttpCall("GET", url, headers, timeout=oauth.timeout), retries=oauth.retries, backoff=oauth.backoff,
                deadline=oauth.deadline, breakers=oauth.breakers, key=(urlsplit(url).hostname, tenant.id),
                what=f"Destination service lookup of '{name}' at {safe}",
            )
        except TransportFailure as exc:
            if exc.kind == "tls":
                raise TokenExchangeError(
                    f"Destination service lookup of '{name}' at {safe}: TLS error ({exc.cause}).", url=safe
                ) from exc.__cause__
            tries = getattr(exc, "attempts", 1)
            suffix = f" after {tries} attempt(s)" if exc.kind in ("connect", "timeout") else ""
            raise TokenExchangeError(
                f"Destination service lookup of '{name}' at {safe} failed: {exc.cause}{suffix}.", url=safe
            ) from exc.__cause__
        logger.debug("destination=%s destination-service find status=%d", name, response.status)
        return response


class _NotFound(Exception):
    """404 from the find call (never cached)."""


def _error_text(response: Answer, secrets: tuple[str, ...]) -> str | None:
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
    return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


@contextlib.contextmanager
def client_certificate(destination: Destination, url: str) -> Iterator[tuple[str, str] | None]:
    """``requests``' ``cert=`` for a call to ``url`` of a ClientCertificateAuthentication
    destination from the service: files in a private temp dir (0700/0600) that exist only
    for this call; ``None`` for any other destination or another host."""
    link = destination.service
    if (
        link is None
        or link.certificate is None
        or destination.authentication != "ClientCertificateAuthentication"
        or _origin(url) != _origin(destination.url)
    ):
        yield None
        return
    with ClientCertFiles(*link.certificate) as files:
        yield files
