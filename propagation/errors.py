"""The exception tree.

Every error the library raises derives from :class:`PropagationError` and also from the
builtin it means, so callers can catch either. Messages never contain a token, a client
secret or a private key: they name destinations, bindings, URLs and OAuth error codes.
"""

from __future__ import annotations

from typing import Iterable

__all__ = [
    "PropagationError",
    "MissingUserTokenError",
    "InvalidTokenError",
    "TokenExchangeError",
    "DestinationNotFoundError",
    "ConfigurationError",
    "PathOutsideDestinationError",
    "InvalidArgumentError",
    "PeerAnswerError",
    "BlockingCallError",
]


class PropagationError(Exception):
    """Base of every error raised by ``propagation``."""


class MissingUserTokenError(PropagationError, PermissionError):
    """The destination needs the calling user and no user token is known.

    Raised *before* anything is sent: neither the token endpoint nor the target sees a
    request, and there is never a silent fallback to a technical user.
    """

    def __init__(self, destination: str, authentication: str, hint: str | None = None) -> None:
        self.destination = destination
        self.authentication = authentication
        message = (
            f"No user token (JWT) has been provided. This is strictly necessary for "
            f"'{authentication}' (destination '{destination}'). Nothing was sent."
        )
        if hint:
            message += f" {hint}"
        super().__init__(message)


class InvalidTokenError(PropagationError, ValueError):
    """An inbound token was rejected (the middleware answers 401 ``invalid_token``)."""

    error = "invalid_token"

    def __init__(self, description: str) -> None:
        self.error_description = description
        super().__init__(description)


class TokenExchangeError(PropagationError, RuntimeError):
    """An identity provider (or the Destination service) refused to issue a token.

    ``status`` is the HTTP status (``None`` for connection errors), ``error`` and
    ``error_description`` the OAuth error fields of the answer when it had them.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        error_description: str | None = None,
        url: str | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.error_description = error_description
        self.url = url
        super().__init__(message)


class DestinationNotFoundError(PropagationError, LookupError):
    """No configuration source knows the destination."""

    def __init__(self, name: str, searched: Iterable[str] = ()) -> None:
        self.name = name
        self.searched = tuple(searched)
        where = "; ".join(self.searched) if self.searched else "no source configured"
        super().__init__(f"Destination '{name}' not found. Looked in: {where}.")


class ConfigurationError(PropagationError, ValueError):
    """A configuration source (environment variable, binding, file) is malformed."""


class PathOutsideDestinationError(PropagationError, ValueError):
    """A relative path whose dot segments climb above the destination URL's path: refused
    before anything is sent (``"../../admin"`` must not reach ``/sap/admin``)."""

    def __init__(self, path: str, base_path: str) -> None:
        self.path = path[:200]
        self.base_path = base_path
        super().__init__(
            f"Path {self.path!r} climbs above the destination's path {base_path!r} with dot segments; "
            f"nothing was sent."
        )


class PeerAnswerError(PropagationError, ValueError):
    """A peer (an IdP, the Destination service) answered something unusable: not JSON, too
    large, or nested too deeply. Raised before anything walks the answer; the message names the
    limit, never the content (it may echo secrets). A ``ValueError`` too, as ``json`` errors are."""


class BlockingCallError(PropagationError, RuntimeError):
    """A blocking call (``session()``, ``client()``, ``headers()``) was made on a running event
    loop while ``PROPAGATION_BLOCKING_CALLS=raise``: it would stall every request of the worker."""


class InvalidArgumentError(ConfigurationError):
    """An argument of a call (``fragment=``, ``chain_vars=``, a ``name@level``, a destination
    property that becomes a header) cannot be sent as it is: refused before any request, so it
    never counts as a failure of the Destination service or an IdP (no breaker opens). The
    message names the argument, never a secret value."""
