"""Text that came from a peer (an IdP's ``error_description``, a Destination service's
``ErrorMessage``) made safe for messages and logs: no control characters, nothing shaped like a
JWT, bounded length — and no echo of any secret we sent, in any encoding an echo can take."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["sanitize"]

_JWT_LIKE = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_TEXT = 200


def sanitize(text: Any, secrets: tuple[str, ...], limit: int = _MAX_TEXT) -> str | None:
    """An IdP-supplied string made safe for a message: no control characters, no echo of
    anything we sent as a credential, nothing shaped like a JWT, bounded length."""
    if not isinstance(text, str):
        return None
    clean = _CONTROL.sub(" ", text).strip()
    for variant in encodings(secrets):
        clean = _replace_ci(clean, variant) if "%" in variant else clean.replace(variant, "[redacted]")
    clean = _JWT_LIKE.sub("[redacted]", clean)
    if len(clean) > limit:
        clean = clean[: limit - 1] + "…"
    return clean or None


def encodings(secrets: tuple[str, ...]) -> list[str]:
    """Every way a secret we sent can come back in an echo: as is, form-encoded (``+`` or
    ``%20``, upper- or lower-case escapes), JSON-escaped, base64 (alone, or as the tail of a
    Basic header) — longest first, so a longer form is redacted before a shorter one inside it."""
    variants: set[str] = set()
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        variants.update({secret, quote_plus(secret), quote(secret, safe=""), json.dumps(secret)[1:-1]})
        variants.add(base64.b64encode(secret.encode("utf-8")).decode("ascii").rstrip("="))
    return sorted((v for v in variants if len(v) >= 4), key=len, reverse=True)


def _replace_ci(text: str, needle: str) -> str:
    """Replace ``needle`` whatever the case of its percent-escapes (``%2B`` / ``%2b``)."""
    return re.sub(re.escape(needle), "[redacted]", text, flags=re.IGNORECASE)
