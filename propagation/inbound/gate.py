"""The inbound gate: the framework-neutral decision every integration makes per request —
public path, anonymous, or a validated user — and the ``Authorization`` header grammar."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Iterable, Protocol

from .._log import logger
from ..errors import InvalidTokenError
from ..events.instrument import traced_authenticate
from ..tokens import MAX_TOKEN_LENGTH, UserToken
from .ias_flows import IasFlows
from .public_paths import PublicPaths
from .result import Authenticated
from .scopes import ScopeCheck
from .timestamps import leeway_seconds
from .x5t import check_x5t

__all__ = ["InboundGate", "GateEngine", "bearer_token"]

_CREDENTIALS = re.compile(r"(?P<scheme>[!-~]+) +(?P<token>[!-~]+)")
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class GateEngine(Protocol):
    """What the gate takes from the engine (``Propagator`` has it): its validator, its
    ``validate`` and, optionally, ``ias_flows(**options)``. A protocol, so this package
    never imports the engine."""

    @property
    def validator(self) -> Any: ...

    def validate(self, raw: str) -> UserToken: ...


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



class InboundGate:
    """The decision every integration makes: public path, anonymous, or a validated caller.

    :meth:`cached_header` (hot path, no I/O) or :meth:`raw_token` + :meth:`authenticate`
    give the :class:`Authenticated` caller, :meth:`check_certificate` binds it to the
    request's client certificate (``validate_x5t``); everything that must be answered 401
    raises :class:`InvalidTokenError`. ``scope_check`` is the app's ``require_scopes`` check.
    A technical token (no user) passes only with ``allow_technical``. ``clock_skew_leeway``
    (seconds past ``exp`` / before ``nbf``) sets the engine validator's leeway when given.
    ``cors_preflight`` (default ``True``) lets CORS pre-flight requests through without a token.

    ``ias_to_xsuaa``, ``xsuaa_trust_client_id`` and ``public_clients`` switch on the IAS
    flows (:class:`IasFlows`); ``None`` takes the propagator's setting, which defaults to
    the environment (``PROPAGATION_IAS_TO_XSUAA`` …).
    """

    def __init__(
        self,
        propagator: GateEngine,
        *,
        public_paths: Iterable[str] = (),
        require_token: bool = True,
        ias_to_xsuaa: bool | None = None,
        xsuaa_trust_client_id: str | None = None,
        public_clients: Iterable[str] | str | None = None,
        allow_technical: bool = False,
        validate_x5t: bool = False,
        clock_skew_leeway: float | str | None = None,
        cors_preflight: bool = True,
    ) -> None:
        self.propagator = propagator
        self.cors_preflight = bool(cors_preflight)
        self.public_paths = PublicPaths(public_paths)
        self.require_token = require_token
        self.allow_technical = bool(allow_technical)
        self.validate_x5t = bool(validate_x5t)
        # Build the validator now: a missing binding fails at startup, not on the first request.
        self.validator = propagator.validator
        if clock_skew_leeway is not None and hasattr(self.validator, "leeway"):
            # The engine's validator (shared by its gates): the option sets it for the app.
            self.validator.leeway = leeway_seconds(clock_skew_leeway)
        flows = getattr(propagator, "ias_flows", None)
        self.flows: IasFlows | None = (
            flows(ias_to_xsuaa=ias_to_xsuaa, xsuaa_trust_client_id=xsuaa_trust_client_id, public_clients=public_clients)
            if callable(flows) else None
        )
        self.scope_check = ScopeCheck(getattr(self.validator, "xsappname", None))
        # Resolved once: the per-request lookup is then one call, no getattr, no wrapper.
        found = self._result_lookup()
        if not self.allow_technical:
            # The validator's cache is shared by every gate of the engine, so a technical
            # token another gate admitted must not pass here: a miss sends it to authenticate().
            def users_only(raw: str, found: Callable[[str], Authenticated | None] = found) -> Authenticated | None:
                hit = found(raw)
                return hit if hit is None or hit.token.is_user else None

            self._lookup: Callable[[str], Authenticated | None] = users_only
        else:
            self._lookup = found

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

    def is_preflight(self, method: str | None, origin: str | None, request_method: str | None) -> bool:
        """A CORS pre-flight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``):
        browsers never send credentials with it, so it passes without a token (anonymous, as a
        public path) to the app's CORS handler — unless ``cors_preflight=False``."""
        return self.cors_preflight and method == "OPTIONS" and origin is not None and request_method is not None

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

    @traced_authenticate
    def authenticate(self, raw: str) -> Authenticated:
        """:meth:`validate` plus the IAS flows when on; same error contract. A technical
        token (no user: XSUAA or IAS client credentials) is refused unless ``allow_technical``."""
        if self.flows is None:
            return self.admit(Authenticated(self.validate(raw)))
        try:
            result = self.flows.authenticate(raw)
        except InvalidTokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - as in validate()
            logger.error("inbound token %s: IAS flow failed (%s)", _fingerprint(raw), type(exc).__name__)
            raise InvalidTokenError("Token could not be validated.") from None
        return self.admit(result)

    def admit(self, auth: Authenticated) -> Authenticated:
        """``auth`` if its caller may pass this gate (user, or technical and allowed)."""
        token = auth.token
        if not self.allow_technical and not token.is_user:
            client = "".join(ch if ch.isprintable() else "?" for ch in str(token.client_id or "?"))[:80]
            raise InvalidTokenError(
                f"Token of client '{client}' carries no user (a technical client-credentials token), and this "
                "application accepts user tokens only (allow_technical=True admits technical callers)."
            )
        return auth

    def check_certificate(self, auth: Authenticated, forwarded_certificate: str | None) -> None:
        """Certificate-bound tokens (``validate_x5t``): the IAS token the caller presented must
        carry the thumbprint of the client certificate forwarded with this request (per
        request — the token may be cached, the certificate is not). XSUAA tokens are not
        checked (as in sap-xssec, x5t is an IAS validation)."""
        presented = auth.public_token or auth.token
        if presented.kind == "ias":
            check_x5t(presented, forwarded_certificate)

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

