"""Text that came from a peer (an IdP's ``error_description``, a Destination service's
``ErrorMessage``) made safe for messages and logs: no control characters, nothing shaped like a
JWT, bounded length — and no echo of any secret we sent, in any encoding an echo can take.

Peer texts are bounded *before* anything scans them (a 1 MB ``error_description`` costs no more
than a 1 kB one), and every scan is linear in the text it is given: secrets are masked in place
(same length, so the cut stays where it was), the JWT pattern is possessive and anchored at word
starts, and a token cut in half at the window's edge is masked too.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["sanitize", "encodings", "scan_window"]

#: A JWT: two dot-separated base64url runs of ≥ 8 characters and a third one. Anchored at a word
#: start and possessive: no backtracking, so the scan is linear (the unanchored greedy form was
#: quadratic in a long run of letters).
_JWT_LIKE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+")
#: The run of token characters a cut can leave at the end of the window.
_CUT_TAIL = re.compile(r"(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]++\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MASK = "\x00"  # control characters are gone before masking: a mask is never peer text
_MASKED = re.compile(_MASK + "+")
_MAX_TEXT = 200
#: Characters of a peer text looked at beyond what is shown (and beyond the longest secret form).
_MARGIN = 256


def scan_window(limit: int, secret_forms: list[str]) -> int:
    """How much of a peer text is scanned to show ``limit`` characters safely: every secret echo
    that starts inside the shown part ends inside the window."""
    longest = max((len(v) for v in secret_forms), default=0)
    return limit + longest + _MARGIN


def sanitize(text: Any, secrets: tuple[str, ...], limit: int = _MAX_TEXT) -> str | None:
    """An IdP-supplied string made safe for a message: no control characters, no echo of
    anything we sent as a credential, nothing shaped like a JWT, bounded length."""
    if not isinstance(text, str):
        return None
    variants = encodings(secrets)
    window = scan_window(limit, variants)
    cut = len(text) > window
    clean = _CONTROL.sub(" ", text[:window] if cut else text).lstrip()
    for variant in variants:
        mask = _MASK * len(variant)
        if "%" in variant:
            clean = re.sub(re.escape(variant), mask, clean, flags=re.IGNORECASE)
        else:
            clean = clean.replace(variant, mask)
    clean = _JWT_LIKE.sub(lambda m: _MASK * len(m.group()), clean)
    if cut:  # half a token at the edge (a JWT or a secret's head) is not shown either
        clean = _CUT_TAIL.sub(lambda m: _MASK * len(m.group()), clean)
    clean = _MASKED.sub("[redacted]", clean).strip()
    if cut or len(clean) > limit:
        clean = clean[: limit - 1] + "…" if len(clean) >= limit else clean + "…"
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
