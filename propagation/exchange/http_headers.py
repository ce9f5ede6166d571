"""Configured HTTP headers (destination properties ``URL.headers.*``,
``tokenServiceURL.headers.*``) checked before anything is sent: requests and httpx refuse a bad
header *with its value in the message* (often an API key), and a CR/LF could smuggle a second
header. Caller input never reaches a peer, nor a breaker, unchecked."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigurationError

__all__ = ["checked_header", "header_problem"]

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


def header_problem(name: Any, value: Any) -> str | None:
    """Why ``name: value`` cannot be sent as a header (``None`` if it can): a name that is no
    RFC 9110 token, a value with a line break, a control or a non-ASCII character. Never quotes
    the value: a header from a destination property is often an API key."""
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        return "is not an HTTP header name"
    if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
        return "has a value with a line break, a control or a non-ASCII character"
    return None


def checked_header(name: str, value: Any, where: str) -> str:
    """A configured header (a destination property) as sent, surrounding blanks dropped:
    refused with a :class:`ConfigurationError` naming it (never its value) by
    :func:`header_problem`'s rule, before any request."""
    text = str(value)
    problem = header_problem(name, text)
    if problem is not None:
        raise ConfigurationError(f"{where} {problem}; nothing was sent.")
    return text.strip(" \t")
