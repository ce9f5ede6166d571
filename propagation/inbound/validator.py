"""Is the bearer JWT of this request genuine, unexpired and meant for us?

Validation itself is sap-xssec's (signature with the IdP's published keys, audience,
issuer domain for IAS); this module decides *which* binding a token is checked against,
refuses what sap-xssec would not even look at (``alg: none``, HMAC), turns every failure
into one :class:`~propagation.errors.InvalidTokenError` with a description an operator can
act on, and remembers successes (keyed by the whole token) until the token expires, so a
busy user costs one RSA verification, not one per request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from urllib.parse import urlsplit
from typing import TYPE_CHECKING, Any, Callable, Mapping

import httpx
import sap.xssec

from .._log import logger
from ..errors import ConfigurationError, InvalidTokenError
from ..tokens import TokenKind, UserToken
from .key_fetch import KeyFetchLimiter
from .result import Authenticated
from .timestamps import check_lifetime, leeway_seconds, xssec_time_checks_done

if TYPE_CHECKING:
    from ..bindings import Bindings

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

    ``leeway``: seconds a token is still accepted past ``exp`` and before ``nbf`` (clock skew
    between the IdP and this host; default 60 as SAP's Java library, ``0`` for none; env
    ``PROPAGATION_CLOCK_SKEW_LEEWAY`` through the engine). The time checks are this
    validator's (:mod:`.timestamps`); signature, issuer and audience stay sap-xssec's.
    """

    def __init__(
        self,
        *,
        xsuaa: Mapping[str, Any] | None = None,
        ias: Mapping[str, Any] | None = None,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        key_fetches: KeyFetchLimiter | None = None,
        leeway: float | str | None = None,
        bindings: "Bindings | None" = None,
    ) -> None:
        self.leeway = leeway_seconds(leeway)
        self._fixed: dict[TokenKind, dict[str, Any] | None] = {
            "xsuaa": dict(xsuaa) if xsuaa is not None else None,
            "ias": dict(ias) if ias is not None else None,
        }
        _check_credentials(self._fixed)
        # With ``bindings`` (from_bindings): the credentials follow a rotated binding.
        rotates = bindings is not None and getattr(bindings, "rotates", True)
        self._rotation = _Rotation(bindings, self._fixed) if rotates else None
        self._clock = clock
        self._cache = _ValidatedTokens(cache_size)
        self.key_fetches = key_fetches if key_fetches is not None else KeyFetchLimiter()

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
            bindings=bindings,
            **kwargs,
        )

    @property
    def _credentials(self) -> dict[TokenKind, dict[str, Any] | None]:
        """The binding credentials in force: those of the current bindings generation (a
        rotation swaps them and drops the validated tokens), else the fixed ones."""
        rotation = self._rotation
        if rotation is None:
            return self._fixed
        credentials = rotation.current()
        if credentials is not rotation.cleared_for:
            rotation.cleared_for = credentials
            self._cache.clear()
        return credentials

    # -- public -----------------------------------------------------------------------
    def validate(self, raw: str) -> UserToken:
        """The :class:`UserToken` of a genuine, unexpired token meant for this app.

        Raises :class:`InvalidTokenError` (or its :class:`KeysUnavailableError`) otherwise.
        """
        if not isinstance(raw, str):
            raise InvalidTokenError("Token is not a string.")
        if self._rotation is not None:
            self._credentials  # noqa: B018 - a rotation drops what was validated before it
        now = self._clock()
        hit = self._cache.get(raw, now)
        if hit is not None:
            return hit.token
        token = UserToken.parse(raw)
        self._check_algorithm(token)
        expires_at = self.check_lifetime(token, now)
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
        if self._rotation is not None:
            self._credentials  # noqa: B018 - a rotation drops what was validated before it
        return self._cache.get(raw, self._clock()) if isinstance(raw, str) else None

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def xsappname(self) -> str | None:
        """The XSUAA binding's ``xsappname`` (the prefix of the app's local scopes), if bound."""
        xsuaa = self._credentials["xsuaa"]
        value = xsuaa.get("xsappname") if xsuaa is not None else None
        return value if isinstance(value, str) and value else None

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

    def check_lifetime(self, token: UserToken, now: float | None = None) -> float:
        """Refuse a token past ``exp`` or before ``nbf`` by more than the leeway; the instant
        until which it is accepted (``exp`` + leeway: how long a result may be cached)."""
        return check_lifetime(token, self._clock() if now is None else now, self.leeway)

    def _verify(self, token: UserToken, kind: TokenKind, credentials: Mapping[str, Any]) -> None:
        self.verify(token, kind, credentials)

    def verify(self, token: UserToken, kind: TokenKind, credentials: Mapping[str, Any]) -> None:
        """sap-xssec's check of ``token`` against ``credentials``, with key fetches for
        unknown keys rate-limited (:class:`KeyFetchLimiter`): while limited, 401 without a fetch."""
        self.check_lifetime(token)  # sap-xssec's own time checks are off during the call below
        slot = _key_slot(token, kind)
        limiter = self.key_fetches
        if limiter.known(slot):
            _xssec_verify(token, kind, credentials)
            return
        if not limiter.acquire(slot):
            logger.warning("inbound token %s: key fetch for unknown %s key refused (rate limit)", token.fingerprint, kind)
            raise InvalidTokenError(
                "Token signing key is not known to this application, and key fetches for its issuer are "
                "rate-limited after repeated unknown keys: try again later."
            )
        valid = False
        try:
            _xssec_verify(token, kind, credentials)
            valid = True
        finally:
            limiter.done(slot, valid)


def _check_credentials(credentials: Mapping[TokenKind, Mapping[str, Any] | None]) -> None:
    """Fail on credentials sap-xssec would reject on every request (at construction, and for
    rotated bindings, which are then not taken)."""
    xsuaa, ias = credentials["xsuaa"], credentials["ias"]
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


class _Rotation:
    """The ``xsuaa`` / ``identity`` credentials of the bindings' current generation, so a
    binding rotated under ``SERVICE_BINDING_ROOT`` (new secret, certificate or key) is used
    without a restart, as the outbound side does (:class:`propagation.rotation.Derived`).
    Rotated credentials that could not validate anything are not taken (logged; the
    previous ones stay), like a malformed rotated binding file."""

    __slots__ = ("_derived", "_last", "cleared_for")

    def __init__(self, bindings: "Bindings", initial: dict[TokenKind, dict[str, Any] | None]) -> None:
        from ..rotation import Derived

        self._last = initial
        self.cleared_for: Any = initial
        self._derived = Derived(bindings, self._read)

    def _read(self, snapshot: "Bindings") -> dict[TokenKind, dict[str, Any] | None]:
        xsuaa, ias = snapshot.find(label="xsuaa"), snapshot.find(label="identity")
        found: dict[TokenKind, dict[str, Any] | None] = {
            "xsuaa": dict(xsuaa.credentials) if xsuaa is not None else None,
            "ias": dict(ias.credentials) if ias is not None else None,
        }
        if found == self._last:
            return self._last  # unchanged (another binding rotated): keep the validated tokens
        try:
            _check_credentials(found)
        except ConfigurationError as exc:
            logger.warning("rotated xsuaa/identity credentials not taken (keeping the previous ones): %s", exc)
            return self._last
        logger.info("inbound validation uses the rotated xsuaa/identity credentials (generation %d)", snapshot.generation)
        self._last = found
        return found

    def current(self) -> dict[TokenKind, dict[str, Any] | None]:
        return self._derived.get()


def _key_slot(token: UserToken, kind: TokenKind) -> tuple[str, ...]:
    """What sap-xssec fetches keys per: XSUAA zone (``zid``) or IAS issuer and tenant, and the key id."""
    kid = token.header.get("kid")
    zone = token.tenant or ""
    issuer = token.issuer if kind == "ias" else ""
    return (kind, str(issuer or "")[:200], zone[:100], str(kid)[:100] if kid is not None else "")


def _xssec_verify(token: UserToken, kind: TokenKind, credentials: Mapping[str, Any]) -> None:
    """Check ``token`` with sap-xssec against ``credentials``; every failure becomes an
    :class:`InvalidTokenError` with a safe description (a key fetch failure a
    :class:`KeysUnavailableError`)."""
    # Looked up on the module at call time so tests can spy on sap-xssec.
    create = sap.xssec.create_security_context_xsuaa if kind == "xsuaa" else sap.xssec.create_security_context_ias
    try:
        with xssec_time_checks_done():  # every caller checked exp/nbf with the leeway just before
            create(token.raw, dict(credentials))
    except httpx.HTTPStatusError as exc:
        raise _keys_unavailable(token, exc.request.url.host, f"HTTP {exc.response.status_code}") from None
    except httpx.HTTPError as exc:
        host = exc.request.url.host if _has_request(exc) else "the identity provider"
        raise _keys_unavailable(token, host, type(exc).__name__) from None
    except Exception as exc:  # noqa: BLE001 - every sap-xssec failure is an invalid token
        description = _describe(exc, token.raw)
        if description == _UNKNOWN_KID:
            description = _unknown_kid(token, kind, credentials)
        raise InvalidTokenError(description) from None


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


_UNKNOWN_KID = "Token signing key (kid) is not published by the issuer."


def _unknown_kid(token: UserToken, kind: TokenKind, credentials: Mapping[str, Any]) -> str:
    """The unknown-key refusal with what an operator needs (within the 300 characters an
    answer carries): the key id, the issuer, where the keys were read, and the usual cause —
    a token of another landscape (another subaccount or identity tenant; a sandbox that was
    restarted, whose keys and port are new)."""
    def shown(value: Any, limit: int) -> str:
        return "".join(ch if ch.isprintable() else "?" for ch in str(value))[:limit]

    keys = credentials.get("uaadomain") if kind == "xsuaa" else urlsplit(str(token.issuer or "")).netloc
    return (
        f"Token signing key '{shown(token.header.get('kid'), 40)}' is not published by issuer "
        f"'{shown(token.claims.get('iss'), 90)}' (keys read from {shown(keys or '?', 60)}): likely a token of another "
        "landscape (another subaccount or identity tenant, or a restarted sandbox)."
    )


_KNOWN_FAILURES: tuple[tuple[str, str], ...] = (
    ("Audience Validation Failed", "Token audience does not match this application's OAuth client."),
    ("Signature verification failed", "Token signature verification failed."),
    ("Token has expired", "Token expired."),
    ("Signature has expired", "Token expired."),
    ("Failed to decode provided token", "Malformed JWT."),
    ("Could not find key with kid", _UNKNOWN_KID),
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


