"""Token lifetimes with a clock-skew leeway: ``exp`` and ``nbf`` checked by this library, on
its own (injectable) clock, with the leeway SAP's Java security library allows (60 s).

``sap-xssec`` for Python checks ``exp`` (and, through PyJWT, ``nbf`` and ``iat``) against the
wall clock with no leeway at all, so a token a few seconds past ``exp`` — or minted by an IdP
whose clock runs a little ahead — was a 401 on a host whose clock drifted. It has no setting
for it, so the validator does the time checks itself (:func:`check_lifetime`) and, only while
it calls sap-xssec right after them, switches sap-xssec's own time checks off
(:func:`xssec_time_checks_done`). Signature, issuer and audience stay sap-xssec's, unchanged.

How the switch works: sap-xssec reaches PyJWT through the ``jwt`` name of
``sap.xssec.jwt_validation_facade``; that name is replaced once by a proxy whose ``decode``
adds ``verify_exp/nbf/iat=False`` while a context variable says "this library checked the
times" — per thread and per task, so other code calling sap-xssec in the process (and this
library outside that call) sees PyJWT unchanged. Should a future sap-xssec stop using that
name, the proxy is simply not in the way: sap-xssec's checks run again, stricter, never laxer.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

from ..errors import ConfigurationError, InvalidTokenError
from ..tokens import UserToken

__all__ = ["DEFAULT_LEEWAY", "LEEWAY_ENV", "MAX_LEEWAY", "leeway_seconds", "check_lifetime", "xssec_time_checks_done"]

#: Seconds a token is still accepted past ``exp`` and before ``nbf`` (the Java library's default).
DEFAULT_LEEWAY = 60.0
#: Environment variable for the leeway (seconds; ``0`` turns it off).
LEEWAY_ENV = "PROPAGATION_CLOCK_SKEW_LEEWAY"
#: The largest leeway accepted: RFC 7519 §4.1.4 speaks of "no more than a few minutes".
MAX_LEEWAY = 300.0

_TIMES_CHECKED: ContextVar[bool] = ContextVar("propagation_token_times_checked", default=False)


def leeway_seconds(value: Any, name: str = "clock_skew_leeway") -> float:
    """``value`` (a number, or a string from the environment) as seconds in ``[0, 300]``;
    ``None`` or ``""`` is the default (60). Anything else raises ``ConfigurationError``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_LEEWAY
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a number of seconds (0 to {MAX_LEEWAY:g}), not {value!r}.")
    try:
        seconds = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{name} must be a number of seconds (0 to {MAX_LEEWAY:g}), not {str(value)[:20]!r}."
        ) from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_LEEWAY:
        raise ConfigurationError(f"{name} must be between 0 and {MAX_LEEWAY:g} seconds, not {str(value)[:20]!r}.")
    return seconds


def _instant(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidTokenError(f"Token claim '{name}' is not a number of seconds.")
    return float(value)


def check_lifetime(token: UserToken, now: float, leeway: float) -> float:
    """Refuse a token that expired more than ``leeway`` seconds ago, or that may not be used
    for more than ``leeway`` seconds yet (``nbf``, else ``iat``, as the Java library's
    ``JwtTimestampValidator``); return the instant until which it is accepted (``exp + leeway``)."""
    expires_at = _instant(token.claims, "exp")
    if expires_at is None:
        raise InvalidTokenError("Token has no 'exp' claim: tokens without an expiry are not accepted.")
    if not expires_at + leeway > now:
        raise InvalidTokenError("Token expired.")
    not_before = _instant(token.claims, "nbf")
    if not_before is None:
        not_before = _instant(token.claims, "iat")
    if not_before is not None and not now > not_before - leeway:
        raise InvalidTokenError(
            f"Token is not valid yet (its {'nbf' if 'nbf' in token.claims else 'iat'} lies "
            f"{not_before - now:.0f} s ahead of this host's clock; clock-skew leeway {leeway:g} s)."
        )
    return expires_at + leeway


class _JwtProxy:
    """The ``jwt`` module as sap-xssec's facade sees it: ``decode`` skips the time claims
    while :func:`xssec_time_checks_done` is active in this context; everything else is PyJWT."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        if _TIMES_CHECKED.get():
            kwargs["options"] = {**(kwargs.get("options") or {}),
                                 "verify_exp": False, "verify_nbf": False, "verify_iat": False}
        return self._module.decode(*args, **kwargs)


def _install() -> None:
    import sap.xssec.jwt_validation_facade as facade

    current = getattr(facade, "jwt", None)
    if current is not None and not isinstance(current, _JwtProxy):
        facade.jwt = _JwtProxy(current)  # type: ignore[attr-defined]


@contextmanager
def xssec_time_checks_done() -> Iterator[None]:
    """While active (this thread / task only), sap-xssec skips ``exp``/``nbf``/``iat``:
    :func:`check_lifetime` just checked them with the leeway."""
    _install()
    handle = _TIMES_CHECKED.set(True)
    try:
        yield
    finally:
        _TIMES_CHECKED.reset(handle)
