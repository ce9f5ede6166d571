"""Which destinations this environment defines, for people and tools: names, where each comes
from, its Authentication type and whether it needs the calling user — never a secret, a
token, a path or a query (only the target's scheme, host and port).

:func:`list_destinations` lists the ``destinations`` variable (or ``default-env.json``) and
the service bindings that describe a target (DESIGN §3 steps 1 and 2), in resolution order:
an entry of the variable hides a binding of the same name, as it does when a name is resolved.
:func:`service_listing_flow` adds the Destination service's lists
(``GET {uri}/destination-configuration/v1/instanceDestinations`` and
``/subaccountDestinations``, with the tenant's service token) for the tenants the default
selection asks — the user's, then the provider's — instance before subaccount, as a lookup
finds them. :func:`list_all` is both, behind ``propagation.destinations()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit

from ..bindings import Bindings
from .env import destination_from_binding
from .env_entries import destinations_from_env
from .model import PROXY_TYPES, Destination, Properties, authentication_needs_user, canonical_authentication

if TYPE_CHECKING:
    from ..exchange.flow import Flow
    from ..tokens import UserToken
    from .service import DestinationService

__all__ = ["DestinationInfo", "list_destinations", "info", "service_listing_flow", "list_all", "LIST_PATHS"]

#: The service's lists, in the order a lookup prefers them (instance level first).
LIST_PATHS = (
    ("instance", "/destination-configuration/v1/instanceDestinations"),
    ("subaccount", "/destination-configuration/v1/subaccountDestinations"),
)


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
    tenant: str | None = None  # Destination service: whose destination (tenant id)
    level: str | None = None  # Destination service: "instance" or "subaccount"
    problem: str | None = None  # why it cannot be called as is (unsupported type, no URL…)


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


# -- the Destination service's lists ---------------------------------------------------------------
def _service_info(entry: Mapping[str, Any], source: str, tenant: str, level: str) -> DestinationInfo | None:
    props = Properties(entry)
    name = props.text("Name")
    if not name:
        return None
    problem = None
    kind = props.text("Type") or "HTTP"
    raw_auth = props.text("Authentication") or "NoAuthentication"
    authentication = canonical_authentication(raw_auth)
    proxy_type = PROXY_TYPES.get((props.text("ProxyType") or "Internet").lower())
    url = props.text("URL") or ""
    if kind.upper() != "HTTP":
        problem = f"Type {kind[:20]}: only HTTP destinations can be called"
    elif authentication is None:
        problem = f"Authentication {raw_auth[:40]} is not supported"
    elif proxy_type is None:
        problem = f"ProxyType {str(props.text('ProxyType'))[:20]} is not supported"
    elif not _origin(url).split("://", 1)[-1]:
        problem = "no absolute http(s) URL"
    needs_user = authentication is not None and authentication_needs_user(
        authentication,
        forward_auth_token=props.flag("forwardAuthToken", False),
        system_user=bool(props.text("SystemUser")),
        client_provided_assertion=(props.text("SAMLAssertionProvider") or "").lower() == "clientprovided",
    )
    return DestinationInfo(
        name=name,
        source=f"{source}, {level} level",
        kind="service",
        authentication=authentication or raw_auth[:40],
        needs_user=needs_user,
        proxy_type=proxy_type or str(props.text("ProxyType"))[:20],
        origin=_origin(url) if url.lower().startswith(("http://", "https://")) else "",
        tenant=tenant,
        level=level,
        problem=problem,
    )


def service_listing_flow(service: "DestinationService", user: "UserToken | None") -> "Flow[list[DestinationInfo]]":
    """The destinations the service holds for ``user``'s lookups, as a flow (one GET per
    tenant and level, with that tenant's service token; never cached). A name found earlier
    (user's tenant before provider, instance before subaccount) hides later ones."""
    from ..errors import TokenExchangeError
    from .service_http import NotFound, call

    out: list[DestinationInfo] = []
    seen: set[str] = set()
    for tenant in service.tenants(user):
        for level, path in LIST_PATHS:
            try:
                answer = yield from call(service, service.config.uri + path, tenant, {}, user=user,
                                         what=f"the list of {level} destinations")
            except NotFound:
                # The real service answers every list with an array (empty when there is none):
                # a 404 means the binding's 'uri' is not a Destination service.
                raise TokenExchangeError(
                    f"{service.source}: the list of {level} destinations ({path}) answered 404 for tenant "
                    f"'{tenant.id}': check that the binding's 'uri' is the Destination service's API URL.",
                    status=404,
                ) from None
            if not isinstance(answer, list):
                raise TokenExchangeError(f"{service.source}: the list of {level} destinations is not a JSON array.")
            for entry in answer:
                described = _service_info(entry, service.source, tenant.id, level) if isinstance(entry, Mapping) else None
                if described is not None and described.name not in seen:
                    seen.add(described.name)
                    out.append(described)
    return out


def list_all(engine: Any, user: "UserToken | None", *, service: bool = True) -> list[DestinationInfo]:
    """:func:`list_destinations`, then the Destination service's destinations that those do
    not hide (``engine``: a :class:`~propagation.Propagator`)."""
    from ..exchange.flow import run_sync

    resolver = engine.resolver
    listed = list_destinations(resolver.environ, resolver.bindings, resolver.cwd)
    client = resolver.destination_service() if service else None
    if client is None:
        return listed
    names = {d.name for d in listed}
    found = run_sync(service_listing_flow(client, user), client.oauth.io)
    return listed + [d for d in found if d.name not in names]
