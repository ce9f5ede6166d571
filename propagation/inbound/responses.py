"""The answers of the inbound side: 401 ``invalid_token`` (RFC 6750 §3), shared by every integration."""

from __future__ import annotations

import json

from ..errors import InvalidTokenError

__all__ = ["unauthorized"]

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
