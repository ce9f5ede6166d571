"""Resolve a destination NAME in the order of DESIGN §3: the ``destinations`` environment
variable, then a service binding of that instance name, then the Destination service."""

from __future__ import annotations

import difflib
import os
import threading
from typing import TYPE_CHECKING, Mapping

from ..bindings import Bindings
from ..errors import ConfigurationError, DestinationNotFoundError, InvalidArgumentError
from ..events.instrument import traced_resolve_flow
from ..rotation import Derived
from ..tokens import UserToken
from .env_entries import read_entries
from .model import Destination

if TYPE_CHECKING:
    from .env_entries import EnvEntries
    from ..caches.memory import TokenCache
    from ..exchange.flow import Flow
    from ..exchange.oauth import OAuthClient
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
        self._env_entries: "Derived[EnvEntries]" = Derived(bindings, self._parse_env)
        self._service: "Derived[DestinationService | None]" = Derived(bindings, self._build_service)
        self._lock = threading.Lock()

    def destination_service(self) -> "DestinationService | None":
        """The Destination service client when a ``destination`` binding exists (rebuilt only
        when the bindings rotate)."""
        return self._service.get()

    def _build_service(self, bindings: Bindings) -> "DestinationService | None":
        from ..caches.memory import MemoryTokenCache
        from ..exchange.oauth import OAuthClient
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
        return self._env_entries.get().destinations

    def _parse_env(self, bindings: Bindings) -> "EnvEntries":
        return read_entries(self.environ, bindings, cwd=self.cwd)

    def resolve(self, name: str, user: UserToken | None = None, options: "LookupOptions | None" = None) -> Destination:
        """:meth:`resolve_flow`, blocking."""
        from ..exchange.flow import run_sync

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

        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidArgumentError("A destination name must be a non-empty string of at most 200 characters.")
        entries = self._env_entries.get()
        found = entries.destinations.get(name)
        if found is not None:
            return found
        unreadable = entries.error_for(name)  # that entry's own error; the other names still resolve
        if unreadable is not None:
            raise unreadable
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
        error = DestinationNotFoundError(name, searched)
        meant = self.did_you_mean(name)
        if meant:
            # The hint ends the message (DestinationNotFoundError's own text stays as it is).
            error.did_you_mean = meant  # type: ignore[attr-defined]
            error.args = (f"{error.args[0]} Did you mean {' or '.join(repr(m) for m in meant)}? "
                          f"(destination names are case-sensitive)",)
        raise error

    def did_you_mean(self, name: str) -> tuple[str, ...]:
        """Known names (``destinations`` entries and target bindings) that ``name`` most likely
        means: the same name in another case first, then close spellings."""
        from .env import destination_from_binding

        try:
            known = list(self.env_destinations())
        except ConfigurationError:
            known = []
        known += [b.name for b in self.bindings.snapshot() if b.name not in known and destination_from_binding(b)]
        same = tuple(k for k in known if k.lower() == name.lower() and k != name)
        if same:
            return same
        lowered = {k.lower(): k for k in known}
        return tuple(lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=2, cutoff=0.8))


def _NO_OPTIONS() -> "LookupOptions":
    from .lookup import NO_OPTIONS

    return NO_OPTIONS
