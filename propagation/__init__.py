"""propagation — principal propagation for Python APIs on SAP BTP.

Carry the calling user's JWT from the inbound request to every outbound call, exchange
it per destination, and fail closed: a destination that needs the user never gets a
technical user instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import current_token, current_xsuaa_token, use_token
from .correlation import correlation_id, use_correlation_id
from .errors import (
    BlockingCallError,
    ConfigurationError,
    DestinationNotFoundError,
    InvalidArgumentError,
    InvalidTokenError,
    MissingUserTokenError,
    PathOutsideDestinationError,
    PeerAnswerError,
    PropagationError,
    TokenExchangeError,
)
from .tokens import UserToken

if TYPE_CHECKING:
    from .destinations.listing import DestinationInfo
    from .destinations.model import Destination
    from .engine import Propagator, default_propagator, set_default_propagator
    from .outbound.clients import AsyncDestinationClient, DestinationClient
    from .outbound.session import DestinationSession
    from .wsgi import PropagationMiddleware

__version__ = "0.1.0"

__all__ = [
    "PropagationMiddleware",
    "Propagator",
    "UserToken",
    "current_token",
    "current_xsuaa_token",
    "use_token",
    "session",
    "destination",
    "headers",
    "default_propagator",
    "set_default_propagator",
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
    "client",
    "async_client",
    "async_headers",
    "destinations",
    "correlation_id",
    "use_correlation_id",
]


def session(
    name: str, *, user_token: str | UserToken | None = None, csrf: bool = True, **lookup: Any
) -> "DestinationSession":
    """A ``requests.Session`` bound to destination ``name`` (default engine); ``csrf=False``
    turns off the automatic ``X-CSRF-Token`` for modifying calls.

    Destination service options (also for :func:`client`, :func:`async_client`,
    :func:`headers`): ``selection`` (``subscriberFirst`` | ``alwaysProvider`` |
    ``alwaysSubscriber``), ``fragment`` and ``fragment_optional``, ``refresh_token``,
    ``saml_assertion``, ``chain`` and ``chain_vars``; ``name@level`` picks a level."""
    from .engine import default_propagator

    return default_propagator().session(name, user_token=user_token, csrf=csrf, **lookup)


def client(name: str, *, user_token: str | UserToken | None = None, csrf: bool = True, **kwargs: Any) -> "DestinationClient":
    """An ``httpx.Client`` bound to destination ``name`` (default engine); same rules as
    :func:`session`. Extra keyword arguments go to ``httpx.Client``."""
    from .engine import default_propagator

    return default_propagator().client(name, user_token=user_token, csrf=csrf, **kwargs)


def async_client(
    name: str, *, user_token: str | UserToken | None = None, csrf: bool = True, **kwargs: Any
) -> "AsyncDestinationClient":
    """An ``httpx.AsyncClient`` bound to destination ``name`` (default engine): every
    exchange and lookup is awaited, nothing blocks the event loop."""
    from .engine import default_propagator

    return default_propagator().async_client(name, user_token=user_token, csrf=csrf, **kwargs)


async def async_headers(name: str, *, user_token: str | UserToken | None = None, **lookup: Any) -> dict[str, str]:
    """The async twin of :func:`headers`: never blocks the event loop."""
    from .engine import default_propagator

    return await default_propagator().async_headers(name, user_token=user_token, **lookup)


def destination(name: str, *, user_token: str | UserToken | None = None, **lookup: Any) -> "Destination":
    """Resolve destination ``name`` (default engine)."""
    from .engine import default_propagator

    return default_propagator().destination(name, user_token=user_token, **lookup)


def headers(name: str, *, user_token: str | UserToken | None = None, **lookup: Any) -> dict[str, str]:
    """The headers a call to ``name`` carries for the current user (default engine)."""
    from .engine import default_propagator

    return default_propagator().headers(name, user_token=user_token, **lookup)


def destinations(*, user_token: str | UserToken | None = None, service: bool = True) -> "list[DestinationInfo]":
    """(Once any ``propagation.destinations.*`` submodule is imported, the name refers to that
    package, which is callable with the same arguments and result.)

    Every destination the default engine can resolve — the ``destinations`` variable,
    service bindings, and the Destination service's subaccount and instance destinations (of
    the user's tenant, or the provider's) — as :class:`DestinationInfo` (name, source, type,
    needs-user, proxy type, origin): never a secret. ``service=False`` skips the service."""
    from .engine import default_propagator

    return default_propagator().destinations(user_token=user_token, service=service)


#: Names imported on first use, so that ``import propagation`` (which pytest does in every
#: run, for the ``propagation.testing`` plugin) loads neither ``requests`` nor sap-xssec.
_LAZY = {
    "PropagationMiddleware": ".wsgi",
    "Propagator": ".engine",
    "default_propagator": ".engine",
    "set_default_propagator": ".engine",
}


def __getattr__(attr: str) -> Any:
    module = _LAZY.get(attr)
    if module is None:
        raise AttributeError(f"module 'propagation' has no attribute {attr!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[attr] = value
    return value
