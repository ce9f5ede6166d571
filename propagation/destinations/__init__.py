"""Destinations: resolve a NAME to a :class:`Destination` from the configured sources.

``propagation.destinations`` is both this package and the listing function of the public
API: importing a submodule (``propagation.destinations.model``) binds the package to that
name on ``propagation``, so the package itself is callable —
``propagation.destinations(user_token=None, service=True)`` lists every destination (see
:func:`propagation.destinations.listing.list_all`).
"""

import sys
import types
from typing import Any

from .model import Destination, Properties, USER_AUTHENTICATIONS, canonical_authentication
from .resolver import DestinationResolver

__all__ = ["Destination", "Properties", "USER_AUTHENTICATIONS", "canonical_authentication", "DestinationResolver"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *, user_token: Any = None, service: bool = True) -> Any:
        """Every destination the default engine can resolve, described without secrets."""
        from ..engine import default_propagator

        return default_propagator().destinations(user_token=user_token, service=service)


sys.modules[__name__].__class__ = _CallablePackage
