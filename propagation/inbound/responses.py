"""The answers of the inbound side: 401 ``invalid_token`` and 403 ``insufficient_scope``
(RFC 6750 §3), shared by every integration."""

from __future__ import annotations

import json

from .._log import logger
from ..errors import InvalidTokenError, MissingUserTokenError
from .scopes import InsufficientScopeError

__all__ = ["unauthorized", "forbidden", "refusal", "missing_user", "MISSING_USER_DESCRIPTION"]

#: What a caller without a user token is told when a view called a destination that needs a
#: user (``MissingUserTokenError``); the destination and its type go to the log, not to the caller.
MISSING_USER_DESCRIPTION = "A signed-in user is required for this resource: send a Bearer token of a user."

_MAX_DESCRIPTION = 300


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


def forbidden(exc: InsufficientScopeError) -> tuple[bytes, list[tuple[str, str]]]:
    """The 403 answer for a missing scope (RFC 6750 §3.1): JSON body
    ``{"error": "insufficient_scope", "error_description"}`` and
    ``WWW-Authenticate: Bearer error="insufficient_scope", error_description=..., scope="..."``."""
    description = "".join(ch if ch.isprintable() else " " for ch in exc.error_description)[:_MAX_DESCRIPTION]
    body = json.dumps({"error": exc.error, "error_description": description}).encode("ascii")
    scope = " ".join(exc.scopes)
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("WWW-Authenticate", f'Bearer error="{exc.error}", error_description="{_header_safe(description)}", '
                             f'scope="{_header_safe(scope)}"'),
        ("Cache-Control", "no-store"),
    ]
    return body, headers


def refusal(exc: "InvalidTokenError | InsufficientScopeError") -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body and headers for either refusal (401 or 403)."""
    if isinstance(exc, InsufficientScopeError):
        return (403, *forbidden(exc))
    return (401, *unauthorized(exc))


def missing_user(exc: MissingUserTokenError, where: str = "") -> tuple[int, bytes, list[tuple[str, str]]]:
    """The answer to a view that called a destination needing a user without one (a public
    path, ``require_token=False``, a technical caller): 401 with the body and challenge of the
    other refusals — the caller can fix it by sending a user's token; a 500 would say the app
    is broken. Logged at info with the destination, never sent to the caller."""
    logger.info("inbound request %s answered 401: %s", "".join(ch if ch.isprintable() else "?" for ch in where[:200]), exc)
    return (401, *unauthorized(InvalidTokenError(MISSING_USER_DESCRIPTION)))
