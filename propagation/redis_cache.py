"""Public path of the Redis token cache (DESIGN §1: ``propagation.redis_cache`` stays
importable); the implementation lives in :mod:`propagation.caches.redis`."""

from .caches.redis import *  # noqa: F401,F403 - the public names, as before
from .caches.redis import __all__  # noqa: F401
