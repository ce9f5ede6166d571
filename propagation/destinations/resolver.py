"""Resolve a destination NAME in the order of DESIGN §3: the ``destinations`` environment
variable, then a service binding of that instance name, then the Destination service."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Mapping

from ..bindings import Bindings
from ..errors import ConfigurationError, DestinationNotFoundError
from ..events.instrument import traced_resolve_flow
from ..rotation import Derived
from ..tokens import UserToken
from .model import Destination

if TYPE_CHECKING:
    from ..cache import TokenCache
    from ..flow import Flow
    from ..oauth import OAuthClient
    from .lookup import LookupOptions
    from .service import DestinationService

__all__ = ["DestinationResolver"]


class DestinationResolver:
    """Looks a destination up by name. Environment sources are parsed on first use, and again
    only when the service bindings rotate."""

    def __init__(
        self,
        environ: Mapping[str, str],
        bindings: Bindings,
        *,
        cwd: str | os.PathLike[str] | None = None,
        oauth: "OAuthClient | None" = None,
        cache: "TokenCache | None" = None,
    ) -> None:
        self.environ = environ
        self.bindings = bindings
        self.cwd = cwd
        self.oauth = oauth
        self.cache = cache
        # Re-parsed when the binding files rotate (Kubernetes): never half-old, half-new.
        self._env_destinations: Derived[dict[str, Destination]] = Derived(bindings, self._parse_env)
        self._service: "Derived[DestinationService | None]" = Derived(bindings, self._build_service)
        self._lock = threading.Lock()

    def destination_service(self) -> "DestinationService | None":
        """The Destination service client when a ``destination`` binding exists (rebuilt only
        when the bindings rotate)."""
        return self._service.get()

    def _build_service(self, bindings: Bindings) -> "DestinationService | None":
        from ..cache import MemoryTokenCache
        from ..oauth import OAuthClient
        from .lookup import selection_from_env
        from .service import DEFAULT_CONFIG_TTL, TTL_ENV, DestinationService

        raw_ttl = self.environ.get(TTL_ENV)
        try:
            ttl = float(raw_ttl) if raw_ttl not in (None, "") else DEFAULT_CONFIG_TTL
        except ValueError:
            raise ConfigurationError(f"{TTL_ENV} must be a number of seconds.") from None
        with self._lock:
            if self.oauth is None:
                self.oauth = OAuthClient()
            if self.cache is None:
                self.cache = MemoryTokenCache()
        selection = selection_from_env(self.environ)  # PROPAGATION_DESTINATION_SELECTION
        return DestinationService.from_bindings(bindings, self.oauth, self.cache, config_ttl=ttl, selection=selection)

    def env_destinations(self) -> dict[str, Destination]:
        """Destinations of the ``destinations`` variable (or ``default-env.json``), parsed once
        (again when the bindings their ``serviceBinding`` entries name rotate)."""
        return self._env_destinations.get()

    def _parse_env(self, bindings: Bindings) -> dict[str, Destination]:
        from .env import destinations_from_env

        return destinations_from_env(self.environ, bindings, cwd=self.cwd)

    def resolve(self, name: str, user: UserToken | None = None, options: "LookupOptions | None" = None) -> Destination:
        """:meth:`resolve_flow`, blocking."""
        from ..flow import run_sync

        service = self.destination_service()
        io = service.oauth.io if service is not None else None
        return run_sync(self.resolve_flow(name, user, options), io)  # type: ignore[arg-type]

    @traced_resolve_flow
    def resolve_flow(
        self, name: str, user: UserToken | None = None, options: "LookupOptions | None" = None
    ) -> "Flow[Destination]":
        """The destination ``name``; :class:`DestinationNotFoundError` names every place looked in.
        Only the Destination service (step 3) does I/O; ``options`` (selection, ``name@level``
        aside) shape its lookups only."""
        from .env import destination_from_binding

        found = self.env_destinations().get(name)
        if found is not None:
            return found
        binding = self.bindings.find(name=name)
        if binding is not None:
            destination = destination_from_binding(binding)
            if destination is not None:
                return destination
        service = self.destination_service()
        if service is not None:
            destination = yield from service.find_flow(name, user, options)
            if destination is not None:
                return destination
        searched = ["the 'destinations' environment variable (or default-env.json)"]
        sources = ", ".join(self.bindings.sources) or "no binding source present"
        searched.append(
            f"service bindings named '{name}' with a URL and an OAuth client ({sources})"
            + ("" if binding is None else f"; binding '{name}' ({binding.label}) has no URL and OAuth client")
        )
        searched.append(
            service.searched(name, user, options or _NO_OPTIONS()) if service is not None else "the Destination service (no 'destination' binding)"
        )
        raise DestinationNotFoundError(name, searched)


def _NO_OPTIONS() -> "LookupOptions":
    from .lookup import NO_OPTIONS

    return NO_OPTIONS
