"""On-premise calls through the SAP BTP Connectivity proxy (DESIGN §5, "Connectivity binding").

A destination with ``ProxyType: OnPremise`` is called through the HTTP proxy of the
``connectivity`` binding. The proxy needs ``Proxy-Authorization`` and, to reach the Cloud
Connector of the right location, ``SAP-Connectivity-SCC-Location_ID``. The calling user
(``PrincipalPropagation``) is carried in one of two ways:

* ``exchange`` (default, SAP's recommendation): ``Proxy-Authorization: Bearer <token>``,
  the token from jwt-bearer at the connectivity token endpoint with the connectivity client
  and the user JWT as ``assertion`` (``token_format=jwt``, ``response_type=token``), cached
  per user fingerprint and tenant;
* ``header`` (backward-compatible): ``Proxy-Authorization: Bearer <client_credentials
  token of the connectivity client>`` (cached per tenant) plus
  ``SAP-Connectivity-Authentication: Bearer <user JWT>``.

Other Authentication types over OnPremise keep their own ``Authorization`` and get the
client_credentials proxy token (no user headers).

Every proxy token belongs to the calling user's tenant — it picks that tenant's Cloud
Connector: its token URL is formed as for the Destination service (:mod:`propagation.exchange.tenant_urls`:
the user's subdomain as first host label, or ``X-zid`` at ``token_service_domain``/``uaadomain``);
where none can be formed the call fails closed with a :class:`ConfigurationError` before any
request — never the provider's token for a subscriber's user. The mode comes from the destination
property ``connectivityMode``, else ``Propagator(connectivity_mode=…)``, else the env var
``PROPAGATION_CONNECTIVITY_MODE``, else ``exchange``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .._log import logger
from ..bindings import Binding, Bindings
from ..caches.memory import CacheKey, TokenCache
from ..connectivity_config import connectivity_config, with_xsuaa_defaults
from ..destinations.model import Destination
from ..errors import ConfigurationError
from ..exchange.flow import Cached, Flow
from ..rotation import Derived
from ..exchange.tenant_urls import tenant_token_endpoint
from ..exchange.oauth import GRANT_CLIENT_CREDENTIALS, GRANT_JWT_BEARER, ClientCredentials, OAuthClient, TokenResponse
from ..tokens import UserToken

__all__ = [
    "MODES",
    "MODE_ENV",
    "CACHE_DESTINATION",
    "ConnectivityConfig",
    "ProxyAuth",
    "Connectivity",
    "normalize_mode",
]

MODES = ("exchange", "header")
MODE_ENV = "PROPAGATION_CONNECTIVITY_MODE"
#: ``CacheKey.destination`` of connectivity proxy tokens (no destination name can contain "<").
CACHE_DESTINATION = "<connectivity>"

HEADER_PROXY_AUTHORIZATION = "Proxy-Authorization"
HEADER_USER = "SAP-Connectivity-Authentication"
HEADER_LOCATION = "SAP-Connectivity-SCC-Location_ID"


def normalize_mode(value: Any, where: str) -> str:
    """``exchange`` or ``header`` (case-insensitive), else :class:`ConfigurationError`."""
    mode = str(value).strip().lower()
    if mode not in MODES:
        raise ConfigurationError(f"{where}: connectivity mode {str(value).strip()[:40]!r} is not one of {', '.join(MODES)}.")
    return mode


@dataclass(frozen=True, repr=False)
class ConnectivityConfig:
    """What the ``connectivity`` binding says: the OAuth client, its token URL and the proxy."""

    client: ClientCredentials
    token_url: str
    proxy_host: str
    proxy_port: int
    uaadomain: str | None = None
    binding_name: str = ""
    provider_zone: str | None = None
    provider_subdomain: str | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://{self.proxy_host}:{self.proxy_port}"

    @classmethod
    def from_binding(cls, binding: Binding, *, kubernetes: bool | None = None) -> "ConnectivityConfig":
        """Parse the binding (Cloud Foundry or Kyma shape, secret or X.509; see
        :func:`propagation.connectivity_config.connectivity_config`)."""
        parsed = connectivity_config(binding, kubernetes=kubernetes)
        return cls(parsed.client, parsed.token_url, parsed.proxy_host, parsed.proxy_port, parsed.uaadomain,
                   parsed.binding_name, parsed.provider_zone, parsed.provider_subdomain)

    @classmethod
    def from_bindings(cls, bindings: Bindings) -> "ConnectivityConfig | None":
        """The ``connectivity`` binding's configuration, completed from the ``xsuaa`` binding
        (:func:`~propagation.connectivity_config.with_xsuaa_defaults`); ``None`` when none is bound."""
        binding = bindings.find(label="connectivity")
        if binding is None:
            return None
        return cls.from_binding(with_xsuaa_defaults(binding, bindings.find(label="xsuaa")))

    def token_endpoint_for(self, user: UserToken | None) -> tuple[str, dict[str, str]]:
        """The token URL (and ``X-zid`` header) of the user's tenant, so the proxy token belongs
        to that tenant and reaches its Cloud Connector: see :mod:`propagation.exchange.tenant_urls`.
        Fails closed (:class:`ConfigurationError`, nothing sent) where no URL of that tenant
        can be formed: the provider's endpoint would carry a subscriber's user through the
        provider's Cloud Connector."""
        found = tenant_token_endpoint(self.token_url, self.uaadomain, user, provider_zone=self.provider_zone,
                                      provider_subdomain=self.provider_subdomain)
        if found is None:
            raise ConfigurationError(
                f"Connectivity binding '{self.binding_name}': the token endpoint of the calling user's tenant "
                f"(zone {user.tenant if user is not None else None!r}) cannot be formed — the user token names no "
                f"subaccount subdomain and the binding has no 'uaadomain' (or 'token_service_domain') for an X-zid "
                f"request. Add 'uaadomain'/'token_service_domain' to the binding (or 'tenantid' if this is the "
                f"provider's own user). Nothing was sent: the provider's proxy token is never used for another "
                f"tenant's user."
            )
        return found

    def __repr__(self) -> str:
        return f"ConnectivityConfig(binding={self.binding_name!r}, client={self.client!r}, proxy={self.proxy_url!r})"


def _parse(bindings: Bindings) -> ConnectivityConfig | None:
    return ConnectivityConfig.from_bindings(bindings)


@dataclass
class ProxyAuth:
    """The proxy headers of one on-premise call and the cache key of the proxy token."""

    proxy_url: str
    headers: dict[str, str] = field(default_factory=dict)
    cache_key: CacheKey | None = None
    mode: str = "client_credentials"

    def __repr__(self) -> str:  # headers hold secrets
        return f"ProxyAuth(proxy_url={self.proxy_url!r}, mode={self.mode!r}, headers={sorted(self.headers)!r})"


class Connectivity:
    """Proxy headers for OnPremise destinations; one per engine (shares its OAuth client and cache)."""

    def __init__(self, bindings: Bindings, oauth: OAuthClient, cache: TokenCache, mode: str = "exchange") -> None:
        self.bindings = bindings
        self.oauth = oauth
        self.cache = cache
        self.mode = normalize_mode(mode, "Propagator")
        # Re-parsed when the binding files rotate (Kubernetes), never half-old, half-new.
        self._config: Derived[ConnectivityConfig | None] = Derived(bindings, _parse)

    def __repr__(self) -> str:
        return f"Connectivity(mode={self.mode!r})"

    def config(self, destination: Destination) -> ConnectivityConfig:
        """The connectivity binding's configuration, or a :class:`ConfigurationError` naming ``destination``."""
        config = self._config.get()
        if config is None:
            raise ConfigurationError(
                f"Destination '{destination.name}' ({destination.source}) has ProxyType OnPremise: "
                f"it needs a 'connectivity' service binding (the Connectivity proxy), and none is bound."
            )
        return config

    def proxy_url(self, destination: Destination) -> str | None:
        """The proxy URL when ``destination`` is on-premise and a binding exists, else ``None``."""
        if not destination.on_premise:
            return None
        try:
            return self.config(destination).proxy_url
        except ConfigurationError:
            return None

    def mode_for(self, destination: Destination) -> str:
        value = destination.properties.text("connectivityMode")
        if value is None:
            return self.mode
        return normalize_mode(value, f"Destination '{destination.name}' ({destination.source}) property connectivityMode")

    def authorize_flow(self, destination: Destination, user: UserToken | None, *, propagate_user: bool) -> Flow[ProxyAuth]:
        """Proxy headers for one call. ``propagate_user``: the user travels to the Cloud
        Connector (PrincipalPropagation); ``user`` must then be set."""
        config = self.config(destination)
        mode = self.mode_for(destination)
        token_url, zone_headers = config.token_endpoint_for(user)
        tenant = user.tenant if user is not None else None
        headers: dict[str, str] = {}
        if propagate_user and user is not None and mode == "exchange":
            grant = GRANT_JWT_BEARER
            form = {"assertion": user.raw, "token_format": "jwt", "response_type": "token"}
            key_user: str | None = user.fingerprint
            label = "exchange"
        else:
            grant = GRANT_CLIENT_CREDENTIALS
            form = {}
            key_user = None
            label = "header" if propagate_user else "client_credentials"
        key = CacheKey(
            destination=CACHE_DESTINATION,
            grant=grant,
            client=config.client.client_id,
            tenant=tenant,
            user=key_user,
            extra=hashlib.sha256(json.dumps([token_url, zone_headers], sort_keys=True).encode("utf-8")).hexdigest(),
        )

        def fetch() -> Flow[TokenResponse]:
            return self.oauth.token_flow(token_url, config.client, grant, form, headers=zone_headers)

        token, hit = yield Cached(self.cache, key, fetch, user.expires_at if key_user is not None and user is not None else None)
        headers[HEADER_PROXY_AUTHORIZATION] = f"Bearer {token.access_token}"
        if propagate_user and user is not None and mode == "header":
            headers[HEADER_USER] = f"Bearer {user.raw}"
        location = destination.location_id
        if location:
            headers[HEADER_LOCATION] = location
        logger.debug(
            "destination=%s connectivity mode=%s cache=%s user=%s tenant=%s location=%s",
            destination.name,
            label,
            "hit" if hit else "miss",
            user.fingerprint if propagate_user and user is not None else None,
            tenant,
            location,
        )
        return ProxyAuth(config.proxy_url, headers, key, label)
