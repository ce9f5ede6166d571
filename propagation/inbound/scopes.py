"""Scope checks: does the caller hold the app's XSUAA *local* scopes a route requires?

Semantics of sap-xssec's ``check_local_scope``: a local scope ``Read`` is the XSUAA scope
``<xsappname>.Read`` of the app's XSUAA binding, looked up in the token's ``scope`` claim.
The token checked is the caller's XSUAA token; for an IAS caller that is the XSUAA token the
IAS→XSUAA flow obtained (``current_xsuaa_token()``) — an IAS token itself carries no XSUAA
scopes, so without that flow an IAS caller holds none. No token at all is a 401 (the caller
must authenticate), a missing scope a 403 ``insufficient_scope`` (RFC 6750 §3.1).

Framework-neutral: the integrations (Flask, FastAPI, Django) only find the check and shape
the answer with :func:`propagation.inbound.responses.forbidden`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

from .._log import logger
from ..errors import ConfigurationError, InvalidTokenError, PropagationError
from ..tokens import UserToken

__all__ = ["InsufficientScopeError", "ScopeCheck", "scope_names", "mark_guard", "unguarded_views"]

#: RFC 6749 §3.3 scope-token characters (no space, no quote, no backslash).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")

#: Attribute of a view ``require_scopes`` wrapped (the undecorated function): its scope names.
GUARDED_BY = "__propagation_guarded_by__"
#: Attribute of the wrapper ``require_scopes`` returned (copied by ``functools.wraps`` onto
#: any decorator stacked above it): its scope names.
GUARD = "__propagation_scopes__"


class InsufficientScopeError(PropagationError, PermissionError):
    """The caller is authenticated but lacks a required scope (answered 403).

    ``scopes`` are the fully qualified scopes required (``<xsappname>.Read``), as the
    ``scope`` parameter of the ``WWW-Authenticate`` challenge names them.
    """

    error = "insufficient_scope"

    def __init__(self, description: str, scopes: tuple[str, ...]) -> None:
        self.error_description = description
        self.scopes = scopes
        super().__init__(description)


def scope_names(scopes: Iterable[Any]) -> tuple[str, ...]:
    """Validate the local scope names a route declares (at decoration time, so a typo such
    as ``"Read Write"`` fails when the module is imported, not on a request).

    A fully qualified scope (``"app!t1.Read"``, ``"$XSAPPNAME.Read"``) is refused here: the
    check qualifies the name with the binding's ``xsappname`` itself, and the ``xsappname``
    is not known when the module is imported, so a qualified name could only fail later, at
    request time, as "Missing scope app!t1.app!t1.Read". ``@require_scopes`` without
    parentheses is refused with the right spelling."""
    names = tuple(scopes)
    if len(names) == 1 and callable(names[0]) and not isinstance(names[0], str):
        what = getattr(names[0], "__name__", "the view")
        raise ConfigurationError(
            f"require_scopes was applied to {what!r} without scope names: write @require_scopes(\"Read\") "
            "(with the parentheses and the local scope names)."
        )
    if not names:
        raise ConfigurationError("require_scopes() needs at least one scope name.")
    for name in names:
        if not isinstance(name, str) or _SCOPE_TOKEN.fullmatch(name) is None:
            raise ConfigurationError(f"Scope name {name!r} is not a single OAuth scope token (no spaces or quotes).")
        qualified = name.startswith("$XSAPPNAME") or "!" in name.partition(".")[0]
        if qualified and "." in name:
            local = name.partition(".")[2]
            raise ConfigurationError(
                f"Scope {name!r} is fully qualified: require_scopes takes the local scope name ({local!r}) and "
                "prefixes the XSUAA binding's xsappname itself, as sap-xssec's check_local_scope does."
            )
    return names


def mark_guard(guard: Callable[..., Any], view: Callable[..., Any], names: tuple[str, ...]) -> None:
    """Mark ``guard`` as ``view`` wrapped by ``require_scopes(*names)`` and ``view`` as wrapped,
    so :func:`unguarded_views` can tell a route that calls ``view`` itself (the decorators in
    the wrong order: the route registered the undecorated function) from one that calls the
    guard."""
    setattr(guard, GUARD, names)
    try:
        setattr(view, GUARDED_BY, names)
    except (AttributeError, TypeError):  # a builtin or a bound method: nothing to compare against
        pass


def unguarded_views(routes: Mapping[str, Any]) -> list[tuple[str, Any, tuple[str, ...]]]:
    """``(endpoint, view, scope names)`` of every route whose view was wrapped by
    ``require_scopes`` but is registered undecorated — the check would never run for it."""
    found = []
    for endpoint, view in routes.items():
        names = getattr(view, GUARDED_BY, None)
        if names and getattr(view, GUARD, None) is None:
            found.append((str(endpoint), view, tuple(names)))
    return found


class ScopeCheck:
    """The local-scope check for one app (its XSUAA binding's ``xsappname``)."""

    __slots__ = ("xsappname",)

    def __init__(self, xsappname: str | None) -> None:
        self.xsappname = xsappname

    def qualify(self, scope: str) -> str:
        return f"{self.xsappname}.{scope}" if self.xsappname else scope

    def check(self, scopes: Iterable[str], user: UserToken | None, xsuaa_token: UserToken | None) -> None:
        """Return if the caller holds every scope; else raise :class:`InvalidTokenError`
        (no caller: 401) or :class:`InsufficientScopeError` (403)."""
        names = tuple(scopes)
        if user is None:
            raise InvalidTokenError("A Bearer token is required for this resource.")
        required = tuple(self.qualify(s) for s in names)
        if not self.xsappname:
            logger.error("scope check for %s: the app has no XSUAA binding (xsappname), no scope can be granted",
                         ", ".join(names))
            raise InsufficientScopeError(
                "The application has no XSUAA binding, so its scopes cannot be checked.", required
            )
        token = user if user.kind == "xsuaa" else xsuaa_token
        if token is None:
            raise InsufficientScopeError(
                f"Missing scope {', '.join(names)}: IAS tokens carry no XSUAA scopes; the app's "
                "IAS→XSUAA flow (ias_to_xsuaa) provides them.", required
            )
        granted = _granted(token)
        missing = tuple(q for q in required if q not in granted)
        if missing:
            raise InsufficientScopeError(f"Missing scope {', '.join(missing)}.", required)


def _granted(token: UserToken) -> frozenset[str]:
    scope = token.claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, (list, tuple)):
        return frozenset(s for s in scope if isinstance(s, str))
    return frozenset()
