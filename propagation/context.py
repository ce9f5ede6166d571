"""The current user's token, per request, thread or task (a ``ContextVar``)."""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from contextvars import ContextVar, Token
from typing import Iterator

from .tokens import UserToken

__all__ = [
    "ENVIRON_KEY",
    "ENVIRON_EXCHANGED_KEY",
    "ENVIRON_PUBLIC_KEY",
    "current_token",
    "current_xsuaa_token",
    "use_token",
    "set_current",
    "reset_current",
    "set_current_tokens",
    "reset_current_tokens",
    "CORRELATION_ID",
]

#: WSGI environ / ASGI scope key holding the validated inbound :class:`UserToken`.
ENVIRON_KEY = "propagation.token"
#: Key holding the XSUAA token obtained for an IAS token (hybrid inbound), if any.
ENVIRON_EXCHANGED_KEY = "propagation.xsuaa_token"
#: Key holding the caller's original IAS *public-client* (PKCE) token when it was exchanged
#: at IAS for this app's token (``ENVIRON_KEY`` then holds the exchanged one).
ENVIRON_PUBLIC_KEY = "propagation.public_token"

#: (user, XSUAA token of that user) in one variable: one set/reset per request or chunk, and
#: the XSUAA token can never belong to another user than ``current_token()``.
_Tokens = tuple["UserToken | None", "UserToken | None"]
_NONE: _Tokens = (None, None)
_current: ContextVar[_Tokens] = ContextVar("propagation.current_tokens", default=_NONE)

CurrentHandle = Token[_Tokens]

#: The running request's correlation id (see :mod:`propagation.correlation`), else ``None``.
CORRELATION_ID: ContextVar["str | None"] = ContextVar("propagation.correlation_id", default=None)

#: The variable itself, for the middlewares' per-request and per-chunk hot path (a direct
#: ``set``/``reset`` of a prepared ``(token, xsuaa_token)`` pair costs no function call).
#: Application code reads :func:`current_token` and sets :func:`use_token` instead.
CURRENT_TOKENS = _current


def current_token() -> UserToken | None:
    """The user token of the running request (or ``use_token`` block), else ``None``."""
    return _current.get()[0]


def current_xsuaa_token() -> UserToken | None:
    """The XSUAA token the middleware obtained for the running request's IAS token
    (hybrid inbound, ``ias_to_xsuaa=True``), else ``None``. Scope checks against the
    app's XSUAA roles use this one; :func:`current_token` stays the inbound user."""
    return _current.get()[1]


def set_current(token: UserToken | None) -> CurrentHandle:
    """Set the user (and no XSUAA token) — see :func:`set_current_tokens`."""
    return _current.set((token, None))


def reset_current(handle: CurrentHandle) -> None:
    _current.reset(handle)


def set_current_tokens(token: UserToken | None, xsuaa_token: UserToken | None = None) -> CurrentHandle:
    """Set the user and its exchanged XSUAA token together (the middlewares do this, so an
    XSUAA token can never outlive or belong to another user than ``current_token()``)."""
    return _current.set(_NONE if token is None and xsuaa_token is None else (token, xsuaa_token))


def reset_current_tokens(handle: CurrentHandle) -> None:
    _current.reset(handle)


def as_user_token(token: str | UserToken) -> UserToken:
    return token if isinstance(token, UserToken) else _parse(token)


@lru_cache(maxsize=1024)
def _parse(raw: str) -> UserToken:
    # A UserToken is immutable: a job or client passing the same raw JWT on every call parses it once.
    return UserToken.parse(raw)


@contextmanager
def use_token(
    token: str | UserToken | None, *, xsuaa_token: str | UserToken | None = None
) -> Iterator[UserToken | None]:
    """Make ``token`` the current user for the block (jobs, threads, CLIs).

    ``current_xsuaa_token()`` is ``xsuaa_token`` inside the block (``None`` unless given),
    never the XSUAA token of an outer request's user.

    The tokens are parsed, not validated: code that got them from an untrusted place should
    validate them first (``Propagator.validate``).
    """
    value = None if token is None else as_user_token(token)
    exchanged = None if xsuaa_token is None else as_user_token(xsuaa_token)
    handles = set_current_tokens(value, exchanged)
    try:
        yield value
    finally:
        reset_current_tokens(handles)
