"""Inbound IAS flows: IAS→XSUAA (hybrid) and IAS public (PKCE) clients (DESIGN §5)."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol
from urllib.parse import urlsplit

from .._log import logger
from ..errors import ConfigurationError, InvalidTokenError
from ..rotation import Derived
from ..tokens import UserToken
from .options import IasFlowOptions
from .result import Authenticated
from .validator import TokenValidator, _ValidatedTokens

if TYPE_CHECKING:
    from ..bindings import Bindings
    from ..caches.memory import TokenCache
    from ..exchange.oauth import ClientCredentials, OAuthClient, TokenResponse

__all__ = ["IasFlows", "FlowsEngine"]

#: OAuth errors with which a token endpoint says "this assertion is not for me": for
#: IAS→XSUAA that is, in practice, an IAS token without the XSUAA trust client in ``aud``.
_REFUSAL_ERRORS = frozenset({"invalid_grant", "unauthorized", "unauthorized_client", "access_denied", "invalid_token"})

_MISSING_TRUST_AUD = (
    "The IAS token's 'aud' lacks the XSUAA trust client id{which}: enable 'xsuaa-cross-consumption: true' "
    "in the binding parameters of the calling app's IAS service instance binding, so IAS issues tokens "
    "XSUAA accepts{answer}."
)



class FlowsEngine(Protocol):
    """What :meth:`IasFlows.from_propagator` takes from the engine (``Propagator`` has it);
    a protocol, so this package never imports the engine."""

    bindings: "Bindings"
    oauth: "OAuthClient"
    cache: "TokenCache"

    @property
    def validator(self) -> Any: ...


def _client(credentials: Mapping[str, Any]) -> "ClientCredentials":
    from ..exchange.oauth import ClientCredentials

    certificate, key = credentials.get("certificate"), credentials.get("key")
    mtls = isinstance(certificate, str) and isinstance(key, str) and bool(certificate and key)
    secret = credentials.get("clientsecret")
    return ClientCredentials(
        client_id=str(credentials["clientid"]),
        client_secret=None if mtls or not isinstance(secret, str) else secret,
        certificate=certificate if mtls else None,
        key=key if mtls else None,
    )


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _host(url: str) -> str:
    """``host[:port]`` of an https URL, lower-case, the default port 443 left out — the form
    sap-xssec matches an IAS issuer against the binding's ``domains`` in; "" when malformed."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    try:
        port = parts.port
    except ValueError:
        return ""
    host = (parts.hostname or "").lower()
    return host if port in (None, 443) or not host else f"{host}:{port}"


class IasFlows:
    """Inbound IAS flows on top of a :class:`TokenValidator` (DESIGN §5).

    *Hybrid* (``ias_to_xsuaa``): a validated IAS token is exchanged (jwt-bearer,
    ``assertion=<IAS token>``) at ``{xsuaa url}/oauth/token`` — ``{certurl}/oauth/token``
    with mTLS when the XSUAA binding has ``certificate``/``key`` — with the XSUAA binding's
    client; the answer is validated with sap-xssec against the XSUAA binding.

    *Public clients*: an IAS token whose ``azp``/``aud`` is a listed public (PKCE) client
    and whose issuer is the bound IAS tenant is verified with sap-xssec (signature with the
    tenant's keys, issuer, expiry; its audience is the public client, not ours), then
    exchanged (jwt-bearer) at ``{ias url}/oauth2/token`` with the IAS binding's secret or
    X.509 certificate; the answer is validated like any IAS token and, in hybrid mode,
    exchanged for XSUAA as above.

    Results are remembered per inbound token until the earliest expiry of the tokens
    involved; the exchanges themselves go through the engine's token cache
    (single-flight: a burst of one user's requests makes one exchange).
    """

    def __init__(
        self,
        *,
        validator: TokenValidator,
        oauth: "OAuthClient",
        cache: "TokenCache",
        options: IasFlowOptions,
        xsuaa: Mapping[str, Any] | None = None,
        ias: Mapping[str, Any] | None = None,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        bindings: "Bindings | None" = None,
    ) -> None:
        self.validator = validator
        self.oauth = oauth
        self.cache = cache
        self.options = options
        self._fixed = (dict(xsuaa) if xsuaa is not None else None, dict(ias) if ias is not None else None)
        # With ``bindings``: the clients follow a rotated binding (a new clientsecret or
        # certificate is used for the next exchange, as the outbound clients do).
        self._derived: Derived[tuple[dict[str, Any] | None, dict[str, Any] | None]] | None = (
            Derived(bindings, _flow_credentials) if bindings is not None else None
        )
        self._clock = clock
        self._results = _ValidatedTokens(cache_size)
        self._public = _ValidatedTokens(cache_size)
        self._check()

    @classmethod
    def from_propagator(cls, propagator: FlowsEngine, options: IasFlowOptions) -> "IasFlows":
        xsuaa, ias = _flow_credentials(propagator.bindings)
        return cls(
            validator=propagator.validator,
            oauth=propagator.oauth,
            cache=propagator.cache,
            options=options,
            xsuaa=xsuaa,
            ias=ias,
            bindings=propagator.bindings,
        )

    @property
    def xsuaa(self) -> dict[str, Any] | None:
        """The ``xsuaa`` binding credentials of the current bindings generation."""
        return (self._derived.get() if self._derived is not None else self._fixed)[0]

    @property
    def ias(self) -> dict[str, Any] | None:
        """The ``identity`` binding credentials of the current bindings generation."""
        return (self._derived.get() if self._derived is not None else self._fixed)[1]

    def _check(self) -> None:
        if self.ias is None:
            what = "ias_to_xsuaa" if self.options.ias_to_xsuaa else "public_clients"
            raise ConfigurationError(f"Option '{what}' needs an 'identity' (SAP Cloud Identity Services) binding.")
        for field_ in ("clientid", "url"):
            if not self.ias.get(field_):
                raise ConfigurationError(f"The 'identity' binding credentials lack {field_}: IAS tokens cannot be exchanged.")
        if self.options.ias_to_xsuaa:
            if self.xsuaa is None:
                raise ConfigurationError(
                    "Option 'ias_to_xsuaa' needs an 'xsuaa' binding to exchange IAS tokens at; bind an XSUAA instance."
                )
            if not self.xsuaa.get("clientid") or not (self.xsuaa.get("url") or self.xsuaa.get("certurl")):
                raise ConfigurationError("The 'xsuaa' binding credentials lack clientid or url: IAS tokens cannot be exchanged.")

    # -- URLs ------------------------------------------------------------------------------
    @property
    def xsuaa_token_url(self) -> str:
        assert self.xsuaa is not None
        return _xsuaa_token_url(self.xsuaa)

    @property
    def ias_token_url(self) -> str:
        assert self.ias is not None
        return _join(str(self.ias["url"]), "/oauth2/token")

    # -- public ----------------------------------------------------------------------------
    def cached(self, raw: str) -> Authenticated | None:
        """The result for ``raw`` if still remembered (no I/O, never raises)."""
        return self._results.get(raw, self._clock()) if isinstance(raw, str) else None

    def clear_cache(self) -> None:
        self._results.clear()
        self._public.clear()

    def authenticate(self, raw: str) -> Authenticated:
        if not isinstance(raw, str):
            raise InvalidTokenError("Token is not a string.")
        hit = self.cached(raw)
        if hit is not None:
            return hit
        public: UserToken | None = None
        client = None
        if self.options.public_clients:
            parsed = UserToken.parse(raw)
            client = self._public_client(parsed)
            if client is not None and parsed.is_user:
                public = self._verify_public(parsed, client)
        user = self._exchange_public(public, client) if public is not None and client is not None else self.validator.validate(raw)
        # A technical IAS token (a client's, not a user's) is never exchanged as if it were a user.
        exchange = self.options.ias_to_xsuaa and user.kind == "ias" and user.is_user
        xsuaa_token = self._to_xsuaa(user) if exchange else None
        result = Authenticated(user, xsuaa_token, public)
        self._results.put(raw, result, result.expires_at)
        return result

    # -- public (PKCE) clients ---------------------------------------------------------------
    def _public_client(self, token: UserToken) -> str | None:
        """The listed public client this token was issued to, if it is not (also) ours."""
        assert self.ias is not None
        if token.kind != "ias" or self.ias["clientid"] in token.audiences:
            return None
        azp = token.claims.get("azp")
        for candidate in ([azp] if isinstance(azp, str) else []) + list(token.audiences):
            if candidate in self.options.public_clients:
                return candidate
        return None

    def _issuer_is_bound_tenant(self, issuer: str | None) -> bool:
        """Only the bound tenant's own issuer (the binding's ``url``) or a host of a custom
        domain the binding lists — never another tenant of the shared IAS domain, whose
        tokens would otherwise be sent to *our* tenant for exchange. A listed domain the
        tenant's host lies under (``accounts.ondemand.com``) is that shared domain; any other
        listed domain is a custom one, matched as sap-xssec does (``<label>.<domain>``) or
        as the whole host. (A token of a tenant reached through a custom domain also names
        its tenant host in ``ias_iss``, which :attr:`UserToken.issuer` reads first.)"""
        assert self.ias is not None
        if not issuer:
            return False
        parts = urlsplit(issuer if "://" in issuer else f"https://{issuer}")
        if parts.scheme != "https" or parts.query or parts.fragment or parts.path.strip("/"):
            return False
        host = _host(issuer)  # with a non-default port, as sap-xssec's issuer rule reads it
        tenant = _host(str(self.ias["url"]))
        if not host or not tenant:
            return False
        if host == tenant:
            return True
        domains = self.ias.get("domains") or ([self.ias["domain"]] if self.ias.get("domain") else [])
        custom = {d.lower().strip(".") for d in domains if isinstance(d, str) and d.strip(".")}
        custom = {d for d in custom if not tenant.endswith("." + d)}
        label, _, rest = host.partition(".")
        return host in custom or (bool(re.fullmatch(r"[a-z0-9-]{1,63}", label)) and rest in custom)

    def _verify_public(self, token: UserToken, client: str) -> UserToken:
        now = self._clock()
        TokenValidator._check_algorithm(token)
        expires_at = self.validator.check_lifetime(token, now)
        hit = self._public.get(token.raw, now)
        if hit is not None:
            return hit
        if not self._issuer_is_bound_tenant(token.issuer):
            raise InvalidTokenError(
                f"Token of public client '{_safe(client)}' was not issued by the bound IAS tenant "
                f"({_host(str(self.ias['url'])) if self.ias else '?'}): only tokens of that tenant are exchanged."
            )
        assert self.ias is not None
        # sap-xssec checks issuer (domains), expiry and signature (the tenant's JWKS); its
        # audience check is pointed at the public client, the audience such a token has.
        credentials = {**self.ias, "clientid": client}
        self.validator.verify(token, "ias", credentials)  # with the validator's key-fetch limit and leeway
        self._public.put(token.raw, token, expires_at)
        logger.debug("inbound public-client token %s verified (client %s)", token.fingerprint, _safe(client))
        return token

    def _exchange_public(self, public: UserToken, client: str) -> UserToken:
        assert self.ias is not None
        from ..caches.memory import CacheKey
        from ..errors import TokenExchangeError
        from ..exchange.oauth import GRANT_JWT_BEARER

        ias = self.ias  # one generation of the binding for the whole exchange
        url = _join(str(ias["url"]), "/oauth2/token")
        key = CacheKey("inbound:ias-public-client", GRANT_JWT_BEARER, str(ias["clientid"]), public.tenant,
                       public.fingerprint, url)
        try:
            response, _ = self.cache.get_or_fetch(key, lambda: self._fetch(url, _client(ias), public))
        except TokenExchangeError as exc:
            code = _safe(exc.error or (f"HTTP {exc.status}" if exc.status else "no answer"))
            logger.info("inbound public-client token %s: IAS refused the exchange (%s)", public.fingerprint, code)
            raise InvalidTokenError(
                f"IAS refused to exchange the token of public client '{_safe(client)}' for this application's "
                f"token ({code}). Check that the app's IAS application may consume tokens of that client."
            ) from None
        return self._validate_issued(response.access_token, key, "IAS issued for the public client's token")

    # -- IAS → XSUAA -----------------------------------------------------------------------
    def _to_xsuaa(self, user: UserToken) -> UserToken:
        assert self.ias is not None
        from ..caches.memory import CacheKey
        from ..errors import TokenExchangeError
        from ..exchange.oauth import GRANT_JWT_BEARER

        trust = self.options.xsuaa_trust_client_id
        ours = self.ias["clientid"]
        if trust is not None and trust not in user.audiences:
            raise InvalidTokenError(_MISSING_TRUST_AUD.format(which=f" ({_safe(trust)})", answer=""))
        if trust is None and not any(a != ours for a in user.audiences):
            raise InvalidTokenError(_MISSING_TRUST_AUD.format(which="", answer=""))
        xsuaa = self.xsuaa  # one generation of the binding for the whole exchange (rotation: the newest)
        if xsuaa is None:
            raise InvalidTokenError("The IAS token cannot be exchanged for an XSUAA token: no 'xsuaa' binding is bound.")
        url = _xsuaa_token_url(xsuaa)
        key = CacheKey("inbound:ias-to-xsuaa", GRANT_JWT_BEARER, str(xsuaa["clientid"]), user.tenant,
                       user.fingerprint, url)
        try:
            response, _ = self.cache.get_or_fetch(key, lambda: self._fetch(url, _client(xsuaa), user))
        except TokenExchangeError as exc:
            code = _safe(exc.error or (f"HTTP {exc.status}" if exc.status else "no answer"))
            logger.info("inbound IAS token %s: XSUAA refused the exchange (%s)", user.fingerprint, code)
            refused = exc.status is not None and 400 <= exc.status < 500
            if refused and (trust is None or exc.error in _REFUSAL_ERRORS):
                which = f" ({_safe(trust)})" if trust else " (or XSUAA does not trust this IAS tenant)"
                raise InvalidTokenError(_MISSING_TRUST_AUD.format(which=which, answer=f"; XSUAA answered {code}")) from None
            raise InvalidTokenError(
                f"The IAS token could not be exchanged for an XSUAA token: XSUAA answered {code}."
            ) from None
        return self._validate_issued(response.access_token, key, "XSUAA issued for the IAS token")

    # -- shared ----------------------------------------------------------------------------
    def _fetch(self, url: str, client: "ClientCredentials", assertion: UserToken) -> "TokenResponse":
        """jwt-bearer with ``assertion``; the answer is kept no longer than the assertion lives."""
        response = self.oauth.jwt_bearer(url, client, assertion.raw)
        ends = [e for e in (response.expires_at, assertion.expires_at) if e is not None]
        try:
            issued = UserToken.parse(response.access_token).expires_at
        except InvalidTokenError:
            issued = None
        if issued is not None:
            ends.append(issued)
        return replace(response, expires_at=min(ends)) if ends else response

    def _validate_issued(self, raw: str, key: Any, what: str) -> UserToken:
        try:
            return self.validator.validate(raw)
        except InvalidTokenError as exc:
            self.cache.invalidate(key)
            raise InvalidTokenError(f"The token {what} is not valid for this application: {exc.error_description}") from None


def _xsuaa_token_url(xsuaa: Mapping[str, Any]) -> str:
    """``{url}/oauth/token``, or ``{certurl}/oauth/token`` for an X.509 client."""
    base = xsuaa.get("certurl") if _client(xsuaa).uses_mtls and xsuaa.get("certurl") else xsuaa["url"]
    return _join(str(base), "/oauth/token")


def _flow_credentials(bindings: "Bindings") -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    xsuaa, ias = bindings.find(label="xsuaa"), bindings.find(label="identity")
    return (dict(xsuaa.credentials) if xsuaa is not None else None, dict(ias.credentials) if ias is not None else None)


def _safe(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))[:80]

