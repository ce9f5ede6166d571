"""Inbound: is the bearer JWT of this request genuine, unexpired and meant for us?

Validation itself is sap-xssec's (signature with the IdP's published keys, audience,
issuer domain for IAS); this module decides *which* binding a token is checked against,
refuses what sap-xssec would not even look at (``alg: none``, HMAC), turns every failure
into one :class:`~propagation.errors.InvalidTokenError` with a description an operator can
act on, and remembers successes (keyed by the whole token) until the token expires, so a
busy user costs one RSA verification, not one per request.

It also holds the framework-neutral half of the middlewares (``wsgi``, ``asgi``): reading
the ``Authorization`` header, matching public paths and shaping the 401 answer, so the
integrations stay thin and behave identically.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import httpx
import sap.xssec

from ._log import logger
from .errors import ConfigurationError, InvalidTokenError
from .tokens import MAX_TOKEN_LENGTH, TokenKind, UserToken

if TYPE_CHECKING:
    from .bindings import Bindings
    from .cache import TokenCache
    from .engine import Propagator
    from .oauth import ClientCredentials, OAuthClient, TokenResponse

__all__ = [
    "TokenValidator",
    "KeysUnavailableError",
    "ALLOWED_ALGORITHMS",
    "Authenticated",
    "IasFlowOptions",
    "IasFlows",
    "ENV_IAS_TO_XSUAA",
    "ENV_XSUAA_TRUST_CLIENT_ID",
    "ENV_PUBLIC_CLIENTS",
]

#: Signature algorithms accepted (asymmetric only, the set sap-xssec verifies). A token
#: signed with HS256 would be "verified" with a *public* key as the HMAC secret by a naive
#: verifier; ``none`` is not signed at all. Both are refused before any other work.
ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})

_LABELS: dict[TokenKind, str] = {"xsuaa": "xsuaa", "ias": "identity"}
_MAX_DESCRIPTION = 300


class KeysUnavailableError(InvalidTokenError):
    """The IdP's signing keys could not be fetched (IdP down, 5xx, timeout, TLS).

    Not the caller's fault, but the token is still unverified, so the request is refused
    like any invalid token (401, not 500); it is logged at warning for the operator.
    """


class _ValidatedTokens:
    """Bounded, thread-safe LRU of validated tokens (or flow results), keyed by the raw
    inbound token itself.

    Only successes go in; an entry is dropped once it expires. Why the raw token is a safe
    key: a dict hit needs ``==`` of the *whole* string (the hash only picks the slot), so
    no collision can ever return another user's entry — the guarantee the former
    SHA-256-plus-compare gave, for one string hash instead of a SHA-256 and a second pass.
    The ``==`` is not constant-time, but it only ever runs against a stored token whose
    64-bit string hash (SipHash, keyed per process) equals the presented one's, which a
    caller can neither choose nor observe, so it is no oracle for a stored token. Entries
    held the raw token before as well (for that compare; the validator's key is the very
    string its ``UserToken.raw`` holds), so nothing more is kept, and this table never
    leaves the process (unlike the exchanged-token cache, whose keys are hashes because
    they may live in Redis).

    Reads take no lock (each dict operation is atomic under the GIL; a concurrent eviction
    only makes ``move_to_end`` miss); writes and evictions do.
    """

    __slots__ = ("maxsize", "_data", "_lock")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, raw: str, now: float) -> Any:
        entry = self._data.get(raw)
        if entry is None:
            return None
        if now >= entry[1]:  # expiry is enforced on every hit, not only at eviction
            with self._lock:
                if self._data.get(raw) is entry:
                    del self._data[raw]
            return None
        try:
            self._data.move_to_end(raw)
        except KeyError:  # evicted by another thread since the get: the result is still valid
            pass
        return entry[0]

    def put(self, raw: str, value: Any, expires_at: float) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._data[raw] = (value, expires_at)
            self._data.move_to_end(raw)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class TokenValidator:
    """Validate inbound JWTs against the app's XSUAA and/or IAS binding with sap-xssec.

    ``xsuaa`` / ``ias`` are the binding credentials (passed to sap-xssec unchanged); a
    token of a kind with no binding is refused with a description naming the missing
    binding. ``clock`` drives the expiry check and the cache (tests inject it).
    """

    def __init__(
        self,
        *,
        xsuaa: Mapping[str, Any] | None = None,
        ias: Mapping[str, Any] | None = None,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials: dict[TokenKind, dict[str, Any] | None] = {
            "xsuaa": dict(xsuaa) if xsuaa is not None else None,
            "ias": dict(ias) if ias is not None else None,
        }
        self._check_credentials()
        self._clock = clock
        self._cache = _ValidatedTokens(cache_size)

    @classmethod
    def from_bindings(cls, bindings: "Bindings", **kwargs: Any) -> "TokenValidator":
        """From the ``xsuaa`` and ``identity`` bindings; raises ``ConfigurationError`` if neither
        is bound, so a middleware that can never accept a token fails at startup."""
        xsuaa = bindings.find(label="xsuaa")
        ias = bindings.find(label="identity")
        if xsuaa is None and ias is None:
            sources = ", ".join(getattr(bindings, "sources", ()) or ()) or "no binding source found"
            raise ConfigurationError(
                "No 'xsuaa' or 'identity' service binding: inbound tokens cannot be validated. "
                f"Bind an XSUAA or SAP Cloud Identity Services instance to the app (looked in: {sources})."
            )
        return cls(
            xsuaa=xsuaa.credentials if xsuaa is not None else None,
            ias=ias.credentials if ias is not None else None,
            **kwargs,
        )

    def _check_credentials(self) -> None:
        """Fail at construction on credentials sap-xssec would reject on every request."""
        xsuaa, ias = self._credentials["xsuaa"], self._credentials["ias"]
        if xsuaa is not None:
            missing = [k for k in ("clientid", "xsappname") if not xsuaa.get(k)]
            if not (xsuaa.get("uaadomain") or xsuaa.get("url")):
                missing.append("uaadomain")
            if missing:
                raise ConfigurationError(
                    f"The 'xsuaa' binding credentials lack {', '.join(missing)}: inbound XSUAA tokens cannot be validated."
                )
        if ias is not None:
            missing = [] if ias.get("clientid") else ["clientid"]
            if not (ias.get("domains") or ias.get("domain")):
                missing.append("domains")
            if missing:
                raise ConfigurationError(
                    f"The 'identity' binding credentials lack {', '.join(missing)}: inbound IAS tokens cannot be validated."
                )

    # -- public -----------------------------------------------------------------------
    def validate(self, raw: str) -> UserToken:
        """The :class:`UserToken` of a genuine, unexpired token meant for this app.

        Raises :class:`InvalidTokenError` (or its :class:`KeysUnavailableError`) otherwise.
        """
        if not isinstance(raw, str):
            raise InvalidTokenError("Token is not a string.")
        now = self._clock()
        hit = self._cache.get(raw, now)
        if hit is not None:
            return hit.token
        token = UserToken.parse(raw)
        self._check_algorithm(token)
        expires_at = self._check_expiry(token, now)
        kind = token.kind
        credentials = self._credentials[kind]
        if credentials is None:
            other = "ias" if kind == "xsuaa" else "xsuaa"
            hint = (
                f" Bind an {'XSUAA' if kind == 'xsuaa' else 'SAP Cloud Identity Services'} instance, "
                f"or send a token issued by the bound {other.upper()}."
                if self._credentials[other] is not None else ""
            )
            raise InvalidTokenError(
                f"Token was issued by {kind.upper()}, but this application has no '{_LABELS[kind]}' "
                f"binding to validate it against.{hint}"
            )
        self._verify(token, kind, credentials)
        # Stored as the middlewares' result type, so their hot path needs no wrapping per hit.
        self._cache.put(token.raw, Authenticated(token), expires_at)
        logger.debug("inbound %s token %s validated (tenant %s)", kind, token.fingerprint, token.tenant)
        return token

    def cached(self, raw: str) -> UserToken | None:
        """The already-validated token for ``raw`` if still cached (no I/O, never raises)."""
        hit = self.cached_result(raw)
        return hit.token if hit is not None else None

    def cached_result(self, raw: str) -> "Authenticated | None":
        """:meth:`cached` as the middlewares want it (no I/O, never raises, expiry checked)."""
        return self._cache.get(raw, self._clock()) if isinstance(raw, str) else None

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def kinds(self) -> tuple[TokenKind, ...]:
        """The token kinds this validator has a binding for."""
        return tuple(k for k, v in self._credentials.items() if v is not None)

    # -- steps ------------------------------------------------------------------------
    @staticmethod
    def _check_algorithm(token: UserToken) -> None:
        alg = token.header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            shown = alg if isinstance(alg, str) and len(alg) <= 16 and alg.isprintable() else "unsupported"
            raise InvalidTokenError(
                f"Token algorithm '{shown}' is not accepted: tokens must be signed with an "
                f"asymmetric key ({', '.join(sorted(ALLOWED_ALGORITHMS))})."
            )

    @staticmethod
    def _check_expiry(token: UserToken, now: float) -> float:
        expires_at = token.expires_at
        if expires_at is None:
            raise InvalidTokenError("Token has no 'exp' claim: tokens without an expiry are not accepted.")
        if now >= expires_at:
            raise InvalidTokenError("Token expired.")
        return expires_at

    def _verify(self, token: UserToken, kind: TokenKind, credentials: dict[str, Any]) -> None:
        _xssec_verify(token, kind, credentials)

    @staticmethod
    def _keys_unavailable(token: UserToken, host: str, why: str) -> KeysUnavailableError:
        return _keys_unavailable(token, host, why)


def _xssec_verify(token: UserToken, kind: TokenKind, credentials: Mapping[str, Any]) -> None:
    """Check ``token`` with sap-xssec against ``credentials``; every failure becomes an
    :class:`InvalidTokenError` with a safe description (a key fetch failure a
    :class:`KeysUnavailableError`)."""
    # Looked up on the module at call time so tests can spy on sap-xssec.
    create = sap.xssec.create_security_context_xsuaa if kind == "xsuaa" else sap.xssec.create_security_context_ias
    try:
        create(token.raw, dict(credentials))
    except httpx.HTTPStatusError as exc:
        raise _keys_unavailable(token, exc.request.url.host, f"HTTP {exc.response.status_code}") from None
    except httpx.HTTPError as exc:
        host = exc.request.url.host if _has_request(exc) else "the identity provider"
        raise _keys_unavailable(token, host, type(exc).__name__) from None
    except Exception as exc:  # noqa: BLE001 - every sap-xssec failure is an invalid token
        raise InvalidTokenError(_describe(exc, token.raw)) from None


def _keys_unavailable(token: UserToken, host: str, why: str) -> KeysUnavailableError:
    logger.warning("inbound token %s: signing keys could not be fetched from %s (%s)", token.fingerprint, host, why)
    return KeysUnavailableError(
        f"The token's signing keys could not be fetched from {host} ({why}), so the token could not be verified."
    )


def _has_request(exc: httpx.HTTPError) -> bool:
    try:
        exc.request  # noqa: B018 - raises RuntimeError when unset
    except RuntimeError:
        return False
    return True


_KNOWN_FAILURES: tuple[tuple[str, str], ...] = (
    ("Audience Validation Failed", "Token audience does not match this application's OAuth client."),
    ("Signature verification failed", "Token signature verification failed."),
    ("Token has expired", "Token expired."),
    ("Signature has expired", "Token expired."),
    ("Failed to decode provided token", "Malformed JWT."),
    ("Could not find key with kid", "Token signing key (kid) is not published by the issuer."),
)


def _describe(exc: BaseException, raw: str) -> str:
    """A safe, short description of a sap-xssec failure: known messages rewritten, others
    passed on with the token (and each of its segments) removed."""
    message = str(exc)
    if message.startswith("Token's issuer is not found in domain list"):
        domains = _scrub(message.rpartition(" list ")[2], raw)
        return f"Token issuer is not trusted: its host is not a subdomain of the identity binding's domains ({domains})."
    for needle, description in _KNOWN_FAILURES:
        if needle in message:
            return description
    if isinstance(exc, KeyError):
        return f"Token validation failed: missing field {_scrub(message, raw)}."
    detail = _scrub(message, raw)
    return f"Token validation failed: {detail}" if detail else f"Token validation failed ({type(exc).__name__})."


def _scrub(text: str, raw: str) -> str:
    for secret in (raw, *[part for part in raw.split(".") if len(part) >= 8]):
        text = text.replace(secret, "<token>")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:_MAX_DESCRIPTION].strip()


# -- IAS flows: IAS→XSUAA (hybrid) and IAS public (PKCE) clients -----------------------
#: Environment variables read when the corresponding option is not given.
ENV_IAS_TO_XSUAA = "PROPAGATION_IAS_TO_XSUAA"
ENV_XSUAA_TRUST_CLIENT_ID = "PROPAGATION_XSUAA_TRUST_CLIENT_ID"
ENV_PUBLIC_CLIENTS = "PROPAGATION_PUBLIC_CLIENTS"

#: OAuth errors with which a token endpoint says "this assertion is not for me": for
#: IAS→XSUAA that is, in practice, an IAS token without the XSUAA trust client in ``aud``.
_REFUSAL_ERRORS = frozenset({"invalid_grant", "unauthorized", "unauthorized_client", "access_denied", "invalid_token"})

_MISSING_TRUST_AUD = (
    "The IAS token's 'aud' lacks the XSUAA trust client id{which}: enable 'xsuaa-cross-consumption: true' "
    "in the binding parameters of the calling app's IAS service instance binding, so IAS issues tokens "
    "XSUAA accepts{answer}."
)


@dataclass(frozen=True)
class Authenticated:
    """What the inbound side established for one request.

    ``token`` is the user (``environ["propagation.token"]``, :func:`current_token`): the
    validated inbound token, or for a public (PKCE) client the IAS token it was exchanged
    for. ``xsuaa_token`` is the XSUAA token obtained for an IAS token in hybrid mode
    (``environ["propagation.xsuaa_token"]``, :func:`current_xsuaa_token`); ``public_token``
    the caller's original public-client token (``environ["propagation.public_token"]``).
    """

    token: UserToken
    xsuaa_token: UserToken | None = None
    public_token: UserToken | None = None

    @property
    def expires_at(self) -> float:
        ends = [t.expires_at for t in (self.token, self.xsuaa_token, self.public_token) if t is not None]
        return min(e for e in ends if e is not None) if any(e is not None for e in ends) else 0.0


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be a boolean (true/false), not {str(value)[:40]!r}.")


def _client_ids(value: Any, name: str) -> frozenset[str]:
    if isinstance(value, str):
        items = value.split(",")
    else:
        try:
            items = list(value)
        except TypeError:
            raise ConfigurationError(f"{name} must be a list of client ids or a comma-separated string.") from None
    ids = set()
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(f"{name} must contain client ids (strings), not {type(item).__name__}.")
        if item.strip():
            ids.add(item.strip())
    return frozenset(ids)


@dataclass(frozen=True)
class IasFlowOptions:
    """The opt-in IAS flows. Each option: explicit value, else its environment variable.

    * ``ias_to_xsuaa`` (``PROPAGATION_IAS_TO_XSUAA``): exchange every IAS token for an XSUAA token.
    * ``xsuaa_trust_client_id`` (``PROPAGATION_XSUAA_TRUST_CLIENT_ID``): the IAS client id of the
      subaccount's XSUAA trust, which ``xsuaa-cross-consumption`` puts into ``aud``. Not in any
      binding (the XSUAA binding's ``clientid`` is another client). Unset: the exchange is tried
      whenever ``aud`` names anything besides the IAS binding's own client id, and an XSUAA
      refusal is reported as the missing ``aud`` entry.
    * ``public_clients`` (``PROPAGATION_PUBLIC_CLIENTS``, comma-separated): IAS public (PKCE)
      client ids whose tokens are exchanged at IAS for this app's token.
    """

    ias_to_xsuaa: bool = False
    xsuaa_trust_client_id: str | None = None
    public_clients: frozenset[str] = frozenset()

    @property
    def enabled(self) -> bool:
        return self.ias_to_xsuaa or bool(self.public_clients)

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str],
        *,
        ias_to_xsuaa: bool | str | None = None,
        xsuaa_trust_client_id: str | None = None,
        public_clients: Iterable[str] | str | None = None,
    ) -> "IasFlowOptions":
        """Options from the arguments, falling back to ``environ``; raises ``ConfigurationError``."""
        hybrid = _flag(ias_to_xsuaa if ias_to_xsuaa is not None else environ.get(ENV_IAS_TO_XSUAA, ""),
                       "ias_to_xsuaa" if ias_to_xsuaa is not None else ENV_IAS_TO_XSUAA)
        trust = xsuaa_trust_client_id if xsuaa_trust_client_id is not None else environ.get(ENV_XSUAA_TRUST_CLIENT_ID)
        if trust is not None and not isinstance(trust, str):
            raise ConfigurationError("xsuaa_trust_client_id must be a string.")
        clients = _client_ids(public_clients if public_clients is not None else environ.get(ENV_PUBLIC_CLIENTS, ""),
                              "public_clients" if public_clients is not None else ENV_PUBLIC_CLIENTS)
        return cls(hybrid, (trust or "").strip() or None, clients)


def _client(credentials: Mapping[str, Any]) -> "ClientCredentials":
    from .oauth import ClientCredentials

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
    ) -> None:
        self.validator = validator
        self.oauth = oauth
        self.cache = cache
        self.options = options
        self.xsuaa = dict(xsuaa) if xsuaa is not None else None
        self.ias = dict(ias) if ias is not None else None
        self._clock = clock
        self._results = _ValidatedTokens(cache_size)
        self._public = _ValidatedTokens(cache_size)
        self._check()

    @classmethod
    def from_propagator(cls, propagator: "Propagator", options: IasFlowOptions) -> "IasFlows":
        xsuaa = propagator.bindings.find(label="xsuaa")
        ias = propagator.bindings.find(label="identity")
        return cls(
            validator=propagator.validator,
            oauth=propagator.oauth,
            cache=propagator.cache,
            options=options,
            xsuaa=xsuaa.credentials if xsuaa is not None else None,
            ias=ias.credentials if ias is not None else None,
        )

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
        client = _client(self.xsuaa)
        base = self.xsuaa.get("certurl") if client.uses_mtls and self.xsuaa.get("certurl") else self.xsuaa["url"]
        return _join(str(base), "/oauth/token")

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
            if client is not None:
                public = self._verify_public(parsed, client)
        user = self._exchange_public(public, client) if public is not None and client is not None else self.validator.validate(raw)
        xsuaa_token = self._to_xsuaa(user) if self.options.ias_to_xsuaa and user.kind == "ias" else None
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
        assert self.ias is not None
        if not issuer:
            return False
        parts = urlsplit(issuer if "://" in issuer else f"https://{issuer}")
        if parts.scheme != "https" or parts.query or parts.fragment:
            return False
        host = _host(issuer)  # with a non-default port, as sap-xssec's issuer rule reads it
        if host and host == _host(str(self.ias["url"])):
            return True
        domains = self.ias.get("domains") or ([self.ias["domain"]] if self.ias.get("domain") else [])
        label, _, rest = host.partition(".")
        return bool(re.fullmatch(r"[a-z0-9-]{1,63}", label)) and any(
            isinstance(d, str) and rest == d.lower().strip(".") for d in domains
        )

    def _verify_public(self, token: UserToken, client: str) -> UserToken:
        now = self._clock()
        TokenValidator._check_algorithm(token)
        expires_at = TokenValidator._check_expiry(token, now)
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
        _xssec_verify(token, "ias", {**self.ias, "clientid": client})
        self._public.put(token.raw, token, expires_at)
        logger.debug("inbound public-client token %s verified (client %s)", token.fingerprint, _safe(client))
        return token

    def _exchange_public(self, public: UserToken, client: str) -> UserToken:
        assert self.ias is not None
        from .cache import CacheKey
        from .errors import TokenExchangeError
        from .oauth import GRANT_JWT_BEARER

        url = self.ias_token_url
        key = CacheKey("inbound:ias-public-client", GRANT_JWT_BEARER, str(self.ias["clientid"]), public.tenant,
                       public.fingerprint, url)
        try:
            response, _ = self.cache.get_or_fetch(key, lambda: self._fetch(url, _client(self.ias or {}), public))
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
        assert self.ias is not None and self.xsuaa is not None
        from .cache import CacheKey
        from .errors import TokenExchangeError
        from .oauth import GRANT_JWT_BEARER

        trust = self.options.xsuaa_trust_client_id
        ours = self.ias["clientid"]
        if trust is not None and trust not in user.audiences:
            raise InvalidTokenError(_MISSING_TRUST_AUD.format(which=f" ({_safe(trust)})", answer=""))
        if trust is None and not any(a != ours for a in user.audiences):
            raise InvalidTokenError(_MISSING_TRUST_AUD.format(which="", answer=""))
        url = self.xsuaa_token_url
        key = CacheKey("inbound:ias-to-xsuaa", GRANT_JWT_BEARER, str(self.xsuaa["clientid"]), user.tenant,
                       user.fingerprint, url)
        try:
            response, _ = self.cache.get_or_fetch(key, lambda: self._fetch(url, _client(self.xsuaa or {}), user))
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


def _safe(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))[:80]


# -- framework-neutral request handling (used by wsgi.py and asgi.py) -------------------
_CREDENTIALS = re.compile(r"(?P<scheme>[!-~]+) +(?P<token>[!-~]+)")
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1).

    Anything else — missing, empty, another scheme, extra parts, non-ASCII, oversized —
    raises :class:`InvalidTokenError`. The scheme is case-insensitive.
    """
    if authorization is None:
        raise InvalidTokenError("Missing Authorization header: a Bearer token is required.")
    value = authorization.strip()
    if not value:
        raise InvalidTokenError("Empty Authorization header: a Bearer token is required.")
    if len(value) > MAX_TOKEN_LENGTH + 16:
        raise InvalidTokenError(f"Authorization header too long (tokens are limited to {MAX_TOKEN_LENGTH} characters).")
    match = _CREDENTIALS.fullmatch(value)
    if match is None:
        if value.lower() == "bearer":
            raise InvalidTokenError("Authorization header has the Bearer scheme but no token.")
        raise InvalidTokenError("Malformed Authorization header: expected 'Bearer <token>'.")
    if match["scheme"].lower() != "bearer":
        raise InvalidTokenError("Authorization scheme is not Bearer: a Bearer token is required.")
    token = match["token"]
    if _B64TOKEN.fullmatch(token) is None:
        raise InvalidTokenError("Malformed Bearer token: characters outside the token alphabet.")
    return token


class PublicPaths:
    """Paths that skip authentication (health checks, static assets).

    An entry is an exact path (``/health``), or a prefix when it ends with ``/``
    (``/static/`` matches ``/static/app.js``, not ``/static``) or with ``*`` (``/health*``
    matches ``/health``, ``/healthz`` and ``/health/live``). A path containing ``.`` or
    ``..`` segments is never public, so ``/static/../admin`` cannot slip through a prefix.
    """

    def __init__(self, paths: Iterable[str] = ()) -> None:
        if isinstance(paths, str):
            paths = [paths]
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(f"Public path {path!r} must be a string starting with '/'.")
            if path.endswith("*"):
                prefixes.append(path[:-1])
            elif path.endswith("/"):
                prefixes.append(path)
            else:
                exact.add(path)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)

    def __contains__(self, path: object) -> bool:
        if not (self.exact or self.prefixes) or not isinstance(path, str):
            return False
        path = path or "/"
        if _DOT_SEGMENT.search(path):
            return False
        return path in self.exact or any(path.startswith(p) for p in self.prefixes)

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def __repr__(self) -> str:
        return f"PublicPaths({sorted(self.exact) + [p + '*' for p in self.prefixes]!r})"


class InboundGate:
    """The decision both middlewares make: public path, anonymous, or a validated user.

    ``check`` returns the :class:`UserToken` (or ``None`` when no token is needed) and
    raises :class:`InvalidTokenError` for everything that must be answered 401.

    ``ias_to_xsuaa``, ``xsuaa_trust_client_id`` and ``public_clients`` switch on the IAS
    flows (:class:`IasFlows`); ``None`` takes the propagator's setting, which defaults to
    the environment (``PROPAGATION_IAS_TO_XSUAA`` …).
    """

    def __init__(
        self,
        propagator: "Propagator",
        *,
        public_paths: Iterable[str] = (),
        require_token: bool = True,
        ias_to_xsuaa: bool | None = None,
        xsuaa_trust_client_id: str | None = None,
        public_clients: Iterable[str] | str | None = None,
    ) -> None:
        self.propagator = propagator
        self.public_paths = PublicPaths(public_paths)
        self.require_token = require_token
        # Build the validator now: a missing binding fails at startup, not on the first request.
        self.validator = propagator.validator
        flows = getattr(propagator, "ias_flows", None)
        self.flows: IasFlows | None = (
            flows(ias_to_xsuaa=ias_to_xsuaa, xsuaa_trust_client_id=xsuaa_trust_client_id, public_clients=public_clients)
            if callable(flows) else None
        )
        # Resolved once: the per-request lookup is then one call, no getattr, no wrapper.
        self._lookup: Callable[[str], Authenticated | None] = self._result_lookup()

    def _result_lookup(self) -> Callable[[str], "Authenticated | None"]:
        if self.flows is not None:
            return self.flows.cached
        fast = getattr(self.validator, "cached_result", None)
        if callable(fast):
            return fast  # type: ignore[no-any-return]
        return self._wrapped_cached  # a validator of another kind: cached() -> UserToken

    def _wrapped_cached(self, raw: str) -> "Authenticated | None":
        hit = self.cached(raw)
        return Authenticated(hit) if hit is not None else None

    def is_public(self, path: str) -> bool:
        return path in self.public_paths

    def raw_token(self, authorization: str | None) -> str | None:
        """The bearer token to validate, or ``None`` for a permitted anonymous request."""
        if authorization is None and not self.require_token:
            return None
        return bearer_token(authorization)

    def cached_header(self, authorization: str | None) -> Authenticated | None:
        """Hot path: ``Bearer <token>`` whose token was already validated (no parsing, no I/O).

        Only a token that passed full validation before can be found here, so skipping the
        header grammar check for it accepts nothing that :meth:`raw_token` would refuse.
        """
        if authorization is None:
            return None
        if not authorization.startswith("Bearer ") and authorization[:7].lower() != "bearer ":
            return None
        return self._lookup(authorization[7:].strip())

    def cached(self, raw: str) -> UserToken | None:
        lookup = getattr(self.validator, "cached", None)
        return lookup(raw) if callable(lookup) else None

    def cached_result(self, raw: str) -> Authenticated | None:
        """What :meth:`authenticate` would return for ``raw`` if known without I/O."""
        return self._lookup(raw)

    def validate(self, raw: str) -> UserToken:
        """Validate, turning anything unexpected into an :class:`InvalidTokenError` (never a 500)."""
        try:
            return self.propagator.validate(raw)
        except InvalidTokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken validator must not leak a 500 or the token
            logger.error("inbound token %s: validator failed (%s)", _fingerprint(raw), type(exc).__name__)
            raise InvalidTokenError("Token could not be validated.") from None

    def authenticate(self, raw: str) -> Authenticated:
        """:meth:`validate` plus the IAS flows when on; same error contract."""
        if self.flows is None:
            return Authenticated(self.validate(raw))
        try:
            return self.flows.authenticate(raw)
        except InvalidTokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - as in validate()
            logger.error("inbound token %s: IAS flow failed (%s)", _fingerprint(raw), type(exc).__name__)
            raise InvalidTokenError("Token could not be validated.") from None

    @staticmethod
    def rejected(exc: InvalidTokenError, raw: str | None, where: str) -> None:
        """Log a rejection at info: fingerprint and reason, never the token or headers."""
        logger.info(
            "inbound request %s rejected (401): %s%s",
            "".join(ch if ch.isprintable() else "?" for ch in where[:200]),
            exc.error_description,
            f" [token {_fingerprint(raw)}]" if raw else "",
        )


def _fingerprint(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _header_safe(text: str) -> str:
    """ASCII-printable, quoted-string-escaped text for a ``WWW-Authenticate`` parameter."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)[:_MAX_DESCRIPTION]
    return text.replace("\\", "\\\\").replace('"', '\\"')


def unauthorized(exc: InvalidTokenError) -> tuple[bytes, list[tuple[str, str]]]:
    """The 401 answer: JSON body ``{"error", "error_description"}`` and its headers
    (``WWW-Authenticate: Bearer error=..., error_description=...`` per RFC 6750 §3)."""
    error = getattr(exc, "error", "invalid_token") or "invalid_token"
    description = exc.error_description if isinstance(exc.error_description, str) else str(exc)
    description = "".join(ch if ch.isprintable() else " " for ch in description)[:_MAX_DESCRIPTION]
    body = json.dumps({"error": error, "error_description": description}).encode("ascii")
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("WWW-Authenticate", f'Bearer error="{_header_safe(error)}", error_description="{_header_safe(description)}"'),
        ("Cache-Control", "no-store"),
    ]
    return body, headers
