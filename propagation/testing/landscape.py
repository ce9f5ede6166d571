"""A transport-free model of a SAP BTP landscape: XSUAA, IAS, the Destination service, the
Connectivity proxy with a Cloud Connector and an on-premise system, an Internet backend
(S/4HANA Cloud) and a Cloud Integration runtime.

Why a model and not mocks: principal propagation fails in the seams between services (an
assertion of the wrong zone, a token without the trust audience, a proxy token without a
user). A test is only worth something if those seams answer the way BTP answers, for every
transport. So every protocol rule lives here, once; the pytest plugin (``responses`` +
``respx``) and the sandbox (real TLS servers, a real HTTP proxy) only turn their requests
into a :class:`Request` and send back the :class:`Response` of :meth:`Landscape.handle`.

Everything the landscape sees is recorded (:attr:`Landscape.exchanges`,
:attr:`Landscape.calls`, :attr:`Landscape.traffic`) with token *fingerprints*, never tokens.

One module per emulated service, joined here into :class:`Landscape`: :mod:`.xsuaa`
(``/oauth/token``), :mod:`.ias` (``/oauth2/token``), :mod:`.destination_service`
(declarations and the find API), :mod:`.connectivity` (proxy, Cloud Connector, on-premise
system), :mod:`.backends` (OData backend, iFlow); shared: :mod:`.issuing` (signing,
verification, client authentication), :mod:`.registry`, :mod:`.records`, :mod:`.wire`.
The names of this module are the public ones; they stay importable from here.

Only the standard library, PyJWT and ``cryptography`` (both required by sap-xssec) and
``requests``' case-insensitive dict are used here: no pytest, ``responses`` or ``respx``.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from .backends import _Backends
from .connectivity import _Connectivity
from .destination_service import _DestinationService
from .issuing import _CONNECTION
from .records import Call, Exchange, Records, Traffic
from .registry import EmulatedDestination, _Client, _Tenant, _User, _new_issuer
from .wire import (
    DEFAULT_USERS,
    FUNCTIONAL_LOCATION_PATH,
    FUNCTIONAL_LOCATION_V2_PATH,
    GRANT_JWT_BEARER,
    GRANT_TOKEN_EXCHANGE,
    NO_USER_TOKEN_MESSAGE,
    PUBLIC_CLIENT_ID,
    Origins,
    Request,
    Response,
    _form,
    _json,
    _origin,
    _strip_query,
    logger,
)

__all__ = [
    "Request",
    "Response",
    "Origins",
    "Landscape",
    "EmulatedDestination",
    "Exchange",
    "Call",
    "Traffic",
    "Records",
    "NO_USER_TOKEN_MESSAGE",
    "DEFAULT_USERS",
    "FUNCTIONAL_LOCATION_PATH",
    "FUNCTIONAL_LOCATION_V2_PATH",
    "PUBLIC_CLIENT_ID",
]


# =============================================================================== the landscape
class Landscape(_DestinationService, _Connectivity, _Backends):
    """An emulated BTP subaccount (or several, ``tenants``), its services and backends.

    :param origins: where each service lives; ``None`` → :meth:`Origins.in_process` for the
        first tenant (fake ``*.sandbox.test`` hosts).
    :param tenants: XSUAA subdomains; the first is the provider (the app's own subaccount),
        the others subscribers (multi-tenant: in-process only, their XSUAA URL has their
        subdomain as first host label).
    :param ttl: lifetime (s) of every token the emulated IdPs issue.
    :param accept_technical: let the backend accept ``client_credentials`` tokens (default:
        401 with the S/4HANA text, as a principal-propagation system answers).
    :param iflow_binding: instance name of the Cloud Integration (``it-rt``) binding, which
        is also a destination name (DESIGN §3 step 2).
    """

    def __init__(
        self,
        origins: Origins | None = None,
        *,
        tenants: Iterable[str] = ("provider",),
        ttl: int = 3600,
        accept_technical: bool = False,
        iflow_binding: str = "order-iflow",
        users: Mapping[str, tuple[str, Iterable[str]]] | None = None,
    ) -> None:
        names = [t.strip() for t in tenants if t and t.strip()]
        if not names:
            raise ValueError("at least one tenant (the provider subdomain) is needed")
        self.origins = origins if origins is not None else Origins.in_process(names[0])
        self.tenants: dict[str, _Tenant] = {
            name: _Tenant(name, str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.zone.sandbox.test")), i == 0)
            for i, name in enumerate(names)
        }
        self.provider = self.tenants[names[0]]
        self.ttl = ttl
        self.accept_technical = accept_technical
        self.iflow_binding = iflow_binding
        self._lock = threading.RLock()
        self._xsuaa_issuer = _new_issuer("xsuaa")
        self._ias_issuer = _new_issuer("ias")

        # -- OAuth clients (XSUAA zone clients and IAS applications) --------------------
        self.xsappname = "app!t1"
        self.app_client = "sb-app!t1"
        self.destination_client = "sb-destination-instance!b404"
        self.connectivity_client = "sb-connectivity-instance!b137"
        self.iflow_client = "sb-it-rt-instance!b196"
        self.ias_client = "ias-app-client"
        #: The IAS client id of the subaccount's XSUAA trust (``xsuaa-cross-consumption`` puts it in ``aud``).
        self.trust_client_id = "xsuaa-trust-client"
        self._xsuaa_clients: dict[str, _Client] = {}
        self._ias_clients: dict[str, _Client] = {}
        self._add_xsuaa_client(self.app_client, xsappname=self.xsappname)
        self._add_xsuaa_client(self.destination_client, authorities=("uaa.resource",))
        self._add_xsuaa_client(self.connectivity_client, authorities=("uaa.resource",))
        self._add_xsuaa_client(self.iflow_client, xsappname="it-rt!b196", authorities=("it-rt!b196.ESBMessaging.send",))
        self._add_ias_client(self.ias_client)
        #: The IAS public (PKCE) client of the subaccount's mobile app / SPA (password grant with ``client_id`` only).
        self.public_client_id = PUBLIC_CLIENT_ID
        self._public_clients: set[str] = {self.public_client_id}
        self._providers: dict[str, str] = {}  # IAS "provided API" name → client id
        self._iflow_clients: set[str] = {self.iflow_client}

        # -- users, destinations, opaque artefacts ---------------------------------------
        self._users: dict[str, _User] = {}
        self._emails: dict[str, str] = {}
        for name, (password, scopes) in (users if users is not None else DEFAULT_USERS).items():
            self.add_user(name, password=password, scopes=scopes)
        self._destinations: dict[str, EmulatedDestination] = {}
        self._fragments: dict[tuple[str | None, str, str], dict[str, str]] = {}
        self._basic_users: dict[str, str] = {}  # backend communication users (Basic)
        self._refresh: dict[str, tuple[str, str, str, tuple[str, ...]]] = {}
        self._opaque: dict[str, tuple[str, dict[str, Any]]] = {}  # opaque/SAML artefacts → (kind, claims)
        self._locations: set[str | None] = {None}
        self._listeners: list[Callable[["Landscape"], None]] = []
        self._observers: list[Callable[[Any], None]] = []

        # -- records ----------------------------------------------------------------------
        self.exchanges: Records[Exchange] = Records()
        self.calls: Records[Call] = Records()
        self.traffic: Records[Traffic] = Records()

    def __repr__(self) -> str:
        return (
            f"Landscape(xsuaa={self.origins.xsuaa!r}, tenants={list(self.tenants)!r}, "
            f"destinations={sorted(self._destinations)!r})"
        )

    # ------------------------------------------------------------------ setup
    def _add_xsuaa_client(self, client_id: str, *, xsappname: str | None = None,
                          authorities: tuple[str, ...] = ()) -> _Client:
        client = _Client(client_id, secrets.token_urlsafe(18), xsappname, authorities)
        self._xsuaa_clients[client_id] = client
        return client

    def _add_ias_client(self, client_id: str) -> _Client:
        client = _Client(client_id, secrets.token_urlsafe(18))
        self._ias_clients[client_id] = client
        return client

    def client_secret(self, client_id: str) -> str:
        """The secret of a registered client (XSUAA or IAS): for tests of wrong/right secrets."""
        client = self._xsuaa_clients.get(client_id) or self._ias_clients.get(client_id)
        if client is None:
            raise KeyError(client_id)
        return client.secret

    def on_change(self, listener: Callable[["Landscape"], None]) -> Callable[[], None]:
        """Call ``listener(landscape)`` after a destination is declared (transports update the
        environment then); returns the function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # ------------------------------------------------------------------ environment
    def credentials(self) -> dict[str, dict[str, Any]]:
        """Binding credentials by label: xsuaa, identity, destination, connectivity, it-rt."""
        o = self.origins
        p = self.provider
        app = self._xsuaa_clients[self.app_client]
        dest = self._xsuaa_clients[self.destination_client]
        conn = self._xsuaa_clients[self.connectivity_client]
        iflow = self._xsuaa_clients[self.iflow_client]
        ias = self._ias_clients[self.ias_client]
        common = {"uaadomain": o.uaadomain, "identityzone": p.subdomain, "identityzoneid": p.zid, "tenantid": p.zid,
                  "subaccountid": p.zid, "zoneid": p.zid}
        return {
            "xsuaa": {
                "clientid": app.id, "clientsecret": app.secret, "url": o.xsuaa, "xsappname": self.xsappname,
                "verificationkey": self._xsuaa_issuer.public_pem, "tenantmode": "shared" if len(self.tenants) > 1 else "dedicated",
                **common,
            },
            "identity": {
                "clientid": ias.id, "clientsecret": ias.secret, "url": o.ias, "domains": [o.ias_domain],
                "domain": o.ias_domain, "app_tid": p.zid, "authorization_endpoint": f"{o.ias}/oauth2/authorize",
            },
            "destination": {
                "clientid": dest.id, "clientsecret": dest.secret, "url": o.destination_token, "uri": o.destination,
                "xsappname": "clone-destination!b404", **common,
            },
            "connectivity": {
                "clientid": conn.id, "clientsecret": conn.secret, "url": o.connectivity_token,
                "token_service_url": o.connectivity_token, "token_service_domain": o.uaadomain,
                "onpremise_proxy_host": o.proxy_host, "onpremise_proxy_http_port": str(o.proxy_port),
                "onpremise_proxy_port": str(o.proxy_port), "onpremise_socks5_proxy_port": "20004",
                "xsappname": "connectivity-instance!b137", **common,
            },
            "it-rt": {
                "oauth": {"url": o.iflow, "tokenurl": f"{o.xsuaa}/oauth/token", "clientid": iflow.id,
                          "clientsecret": iflow.secret, "createdate": "2024-01-01T00:00:00Z"},
            },
        }

    def vcap_services(self) -> dict[str, list[dict[str, Any]]]:
        names = {"xsuaa": "my-xsuaa", "identity": "my-ias", "destination": "my-destination",
                 "connectivity": "my-connectivity", "it-rt": self.iflow_binding}
        plans = {"xsuaa": "application", "identity": "application", "destination": "lite", "connectivity": "lite",
                 "it-rt": "integration-flow"}
        return {
            label: [{"name": names[label], "instance_name": names[label], "label": label, "plan": plans[label],
                     "tags": [label], "credentials": creds}]
            for label, creds in self.credentials().items()
        }

    def env_destinations(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.env_entry() for d in self._destinations.values() if d.source == "env"]

    def environ(self) -> dict[str, str]:
        """``VCAP_SERVICES`` and ``destinations`` as the app's environment holds them."""
        return {"VCAP_SERVICES": json.dumps(self.vcap_services()), "destinations": json.dumps(self.env_destinations())}

    def default_env(self) -> dict[str, Any]:
        """The same as ``default-env.json`` content."""
        return {"VCAP_SERVICES": self.vcap_services(), "destinations": self.env_destinations()}

    # ------------------------------------------------------------------ records
    def reset(self) -> None:
        """Forget what was recorded (declarations, users and keys stay)."""
        with self._lock:
            self.exchanges.clear()
            self.calls.clear()
            self.traffic.clear()

    # ------------------------------------------------------------------ routing
    def owns(self, url: str) -> bool:
        """Whether ``url`` is served by this landscape (a transport routes it to :meth:`handle`)."""
        return self._service_of(_origin(url)) is not None

    def _xsuaa_tenant_of(self, origin: str) -> _Tenant | None:
        o = self.origins
        if origin in (_origin(o.xsuaa), _origin(o.destination_token), _origin(o.connectivity_token)):
            return self.provider
        parts = urlsplit(origin)
        if parts.scheme != "https":
            return None
        host = parts.hostname or ""
        label, _, rest = host.partition(".")
        netloc = rest + (f":{parts.port}" if parts.port else "")
        if netloc == o.uaadomain.lower():
            tenant = self.tenants.get(label)
            if tenant is not None:
                return tenant
        return None

    def _service_of(self, origin: str) -> str | None:
        o = self.origins
        if origin == _origin(o.onprem):
            return "onprem"
        if self._xsuaa_tenant_of(origin) is not None:
            return "xsuaa"
        if origin == _origin(f"https://{o.uaadomain}"):
            return "uaadomain"
        table = {_origin(o.ias): "ias", _origin(o.destination): "destination", _origin(o.backend): "backend",
                 _origin(o.iflow): "iflow"}
        return table.get(origin)

    def handle(self, request: Request) -> Response:
        """Answer one request as the service at its origin would. Never raises."""
        reset = _CONNECTION.set(getattr(request, "connection", None))
        try:
            try:
                response = self._dispatch(request)
            except Exception:  # noqa: BLE001 - a bug in the model must surface as a 500, never a traceback in the app
                logger.exception("emulated landscape failed on %s %s", request.method, _strip_query(request.url))
                response = _json(500, {"error": "server_error", "error_description": "The emulated service failed."})
            self._record(self.traffic, Traffic(request.method, _strip_query(request.url), response.status,
                                               request.via_proxy))
        finally:
            _CONNECTION.reset(reset)
        return response

    def _dispatch(self, request: Request) -> Response:
        origin = _origin(request.url)
        path = urlsplit(request.url).path or "/"
        service = self._service_of(origin)
        if request.via_proxy:
            return self._onprem(request, origin, path)
        if service is None or service == "onprem":
            return _json(404, {"error": "not_found", "error_description": f"No emulated service at {origin}."})
        if service in ("xsuaa", "uaadomain"):
            return self._xsuaa_endpoint(request, origin, path, service)
        if service == "ias":
            if path == "/.well-known/openid-configuration" and request.method == "GET":
                ias = self.origins.ias
                return _json(200, {
                    "issuer": ias, "jwks_uri": f"{ias}/oauth2/certs", "token_endpoint": f"{ias}/oauth2/token",
                    "authorization_endpoint": f"{ias}/oauth2/authorize",
                    "grant_types_supported": ["client_credentials", "password", GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE],
                    "id_token_signing_alg_values_supported": ["RS256"],
                })
            if path == "/oauth2/certs" and request.method == "GET":
                return _json(200, {"keys": [self._ias_issuer.jwk()]})
            if path == "/oauth2/token":
                if request.method != "POST":
                    return _json(405, {"error": "method_not_allowed", "error_description": "Use POST."})
                return self._ias_token(_form(request.body), request.headers, url=_strip_query(request.url))
            return _json(404, {"error": "not_found", "error_description": f"No IAS endpoint {path}."})
        if service == "destination":
            return self._destination_find(request, path)
        return self._backend(request, service, path)

