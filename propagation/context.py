"""The current user's token, per request, thread or task (a ``ContextVar``)."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Iterator

from .tokens import UserToken

__all__ = ["ENVIRON_KEY", "ENVIRON_EXCHANGED_KEY", "current_token", "use_token", "set_current", "reset_current"]

#: WSGI environ / ASGI scope key holding the validated inbound :class:`UserToken`.
ENVIRON_KEY = "propagation.token"
#: Key holding the XSUAA token obtained for an IAS token (hybrid inbound), if any.
ENVIRON_EXCHANGED_KEY = "propagation.xsuaa_token"

_current: ContextVar[UserToken | None] = ContextVar("propagation.current_token", default=None)


def current_token() -> UserToken | None:
    """The user token of the running request (or ``use_token`` block), else ``None``."""
    return _current.get()


def set_current(token: UserToken | None) -> Token[UserToken | None]:
    return _current.set(token)


def reset_current(handle: Token[UserToken | None]) -> None:
    _current.reset(handle)


def as_user_token(token: str | UserToken) -> UserToken:
    return token if isinstance(token, UserToken) else UserToken.parse(token)


@contextmanager
def use_token(token: str | UserToken | None) -> Iterator[UserToken | None]:
    """Make ``token`` the current user for the block (jobs, threads, CLIs).

    The token is parsed, not validated: code that got it from an untrusted place should
    validate it first (``Propagator.validate``).
    """
    value = None if token is None else as_user_token(token)
    handle = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(handle)
