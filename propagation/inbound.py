"""Inbound: is the bearer JWT of this request genuine, unexpired and meant for us?

Validation itself is sap-xssec's (signature with the IdP's published keys, audience,
issuer domain for IAS); this module decides *which* binding a token is checked against,
refuses what sap-xssec would not even look at (``alg: none``, HMAC), turns every failure
into one :class:`~propagation.errors.InvalidTokenError` with a description an operator can
act on, and remembers successes by fingerprint until the token expires so a busy user costs
one RSA verification, not one per request.

It also holds the framework-neutral half of the middlewares (``wsgi``, ``asgi``): reading
the ``Authorization`` header, matching public paths and shaping the 401 answer, so the
integrations stay thin and behave identically.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import httpx
import sap.xssec

from ._log import logger
from .errors import ConfigurationError, InvalidTokenError
from .tokens import MAX_TOKEN_LENGTH, TokenKind, UserToken

if TYPE_CHECKING:
    from .bindings import Bindings
    from .engine import Propagator

__all__ = ["TokenValidator", "KeysUnavailableError", "ALLOWED_ALGORITHMS"]

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


@dataclass(frozen=True)
class _Entry:
    token: UserToken
    expires_at: float


class _ValidatedTokens:
    """Bounded, thread-safe LRU of validated tokens, keyed by SHA-256 of the token.

    Only successes go in; an entry is dropped once the token expires. A hit also compares
    the raw token (constant time), so a hash collision can never return another user.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(raw: str) -> str:
        return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, raw: str, now: float) -> UserToken | None:
        if self.maxsize <= 0:
            return None
        key = self.key(raw)
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if now >= entry.expires_at:
                del self._data[key]
                return None
            if not hmac.compare_digest(entry.token.raw.encode(), raw.encode("utf-8", "surrogatepass")):
                return None
            self._data.move_to_end(key)
            return entry.token

    def put(self, token: UserToken, expires_at: float) -> None:
        if self.maxsize <= 0:
            return
        key = self.key(token.raw)
        with self._lock:
            self._data[key] = _Entry(token, expires_at)
            self._data.move_to_end(key)
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
            return hit
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
        self._cache.put(token, expires_at)
        logger.debug("inbound %s token %s validated (tenant %s)", kind, token.fingerprint, token.tenant)
        return token

    def cached(self, raw: str) -> UserToken | None:
        """The already-validated token for ``raw`` if still cached (no I/O, never raises)."""
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
        # Looked up on the module at call time so tests can spy on sap-xssec.
        create = sap.xssec.create_security_context_xsuaa if kind == "xsuaa" else sap.xssec.create_security_context_ias
        try:
            create(token.raw, credentials)
        except httpx.HTTPStatusError as exc:
            raise self._keys_unavailable(token, exc.request.url.host, f"HTTP {exc.response.status_code}") from None
        except httpx.HTTPError as exc:
            host = exc.request.url.host if _has_request(exc) else "the identity provider"
            raise self._keys_unavailable(token, host, type(exc).__name__) from None
        except Exception as exc:  # noqa: BLE001 - every sap-xssec failure is an invalid token
            raise InvalidTokenError(_describe(exc, token.raw)) from None

    @staticmethod
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
        if not isinstance(path, str):
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
    """

    def __init__(self, propagator: "Propagator", *, public_paths: Iterable[str] = (), require_token: bool = True) -> None:
        self.propagator = propagator
        self.public_paths = PublicPaths(public_paths)
        self.require_token = require_token
        # Build the validator now: a missing binding fails at startup, not on the first request.
        self.validator = propagator.validator

    def is_public(self, path: str) -> bool:
        return path in self.public_paths

    def raw_token(self, authorization: str | None) -> str | None:
        """The bearer token to validate, or ``None`` for a permitted anonymous request."""
        if authorization is None and not self.require_token:
            return None
        return bearer_token(authorization)

    def cached(self, raw: str) -> UserToken | None:
        lookup = getattr(self.validator, "cached", None)
        return lookup(raw) if callable(lookup) else None

    def validate(self, raw: str) -> UserToken:
        """Validate, turning anything unexpected into an :class:`InvalidTokenError` (never a 500)."""
        try:
            return self.propagator.validate(raw)
        except InvalidTokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken validator must not leak a 500 or the token
            logger.error("inbound token %s: validator failed (%s)", _fingerprint(raw), type(exc).__name__)
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
