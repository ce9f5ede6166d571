"""Destinations: resolve a NAME to a :class:`Destination` from the configured sources."""

from .model import Destination, Properties, USER_AUTHENTICATIONS, canonical_authentication
from .resolver import DestinationResolver

__all__ = ["Destination", "Properties", "USER_AUTHENTICATIONS", "canonical_authentication", "DestinationResolver"]
