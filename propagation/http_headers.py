"""Configured HTTP headers (destination properties ``URL.headers.*``,
``tokenServiceURL.headers.*``) checked before anything is sent: requests and httpx refuse a bad
header *with its value in the message* (often an API key), and a CR/LF could smuggle a second
header. Caller input never reaches a peer, nor a breaker, unchecked."""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError

__all__ = ["checked_header"]

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def checked_header(name: str, value: Any, where: str) -> str:
    """A configured header (a destination property) as sent: refused with a
    :class:`ConfigurationError` naming it — never its value, often an API key — before any
    request when requests/httpx would refuse it (with the value in their message) or when it
    could smuggle a second header (CR/LF)."""
    text = str(value)
    if not name or not set(name) <= _TCHARS:
        raise ConfigurationError(f"{where}: the header name is not a valid HTTP header name; nothing was sent.")
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
        raise ConfigurationError(f"{where}: the value holds a control character (CR/LF…); nothing was sent.")
    return text.strip(" \t")
