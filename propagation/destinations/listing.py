"""Which destinations this environment defines, for people and tools: names, where each comes
from, its Authentication type and whether it needs the calling user — never a secret, a
token, a path or a query (only the target's scheme, host and port).

This part lists the ``destinations`` variable (or ``default-env.json``) and the service
bindings that describe a target (DESIGN §3 steps 1 and 2), in resolution order: an entry of
the variable hides a binding of the same name, as it does when a name is resolved.
Destinations of the Destination service are listed by the service part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

from ..bindings import Bindings
from .env import destination_from_binding, destinations_from_env
from .model import Destination

__all__ = ["DestinationInfo", "list_destinations", "info"]


@dataclass(frozen=True)
class DestinationInfo:
    """One destination, described without secrets."""

    name: str
    source: str  # e.g. "destinations environment variable", "service binding 'my-cpi' (VCAP_SERVICES)"
    kind: str  # "environment" | "binding" (the Destination service adds "service")
    authentication: str
    needs_user: bool
    proxy_type: str
    origin: str  # scheme://host[:port] of the target, no user info, path or query


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def info(destination: Destination, kind: str) -> DestinationInfo:
    """The secret-free description of one resolved destination."""
    return DestinationInfo(
        name=destination.name,
        source=destination.source,
        kind=kind,
        authentication=destination.authentication,
        needs_user=destination.needs_user,
        proxy_type=destination.proxy_type,
        origin=_origin(destination.url),
    )


def list_destinations(
    environ: Mapping[str, str],
    bindings: Bindings,
    cwd: str | os.PathLike[str] | None = None,
) -> list[DestinationInfo]:
    """The destinations of the environment variable, then those of service bindings.

    Raises :class:`~propagation.errors.ConfigurationError` for a malformed ``destinations``
    variable, as resolving any name would.
    """
    from_env = destinations_from_env(environ, bindings, cwd=cwd)
    out = [info(d, "environment") for d in from_env.values()]
    seen = set(from_env)
    for binding in bindings.snapshot():
        if binding.name in seen:
            continue  # hidden: the variable's entry, or the first binding of that name, wins
        seen.add(binding.name)
        destination = destination_from_binding(binding)
        if destination is not None:
            out.append(info(destination, "binding"))
    return out
