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

Only the standard library, PyJWT and ``cryptography`` (both required by sap-xssec) and
``requests``' case-insensitive dict are used here: no pytest, ``responses`` or ``respx``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar
from urllib.parse import parse_qs, quote, unquote, unquote_plus, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from requests.structures import CaseInsensitiveDict

from ..destinations.model import (
    AUTHENTICATIONS,
    SERVICE_TOKEN_AUTHENTICATIONS,
    USER_AUTHENTICATIONS,
    authentication_needs_user,
    canonical_authentication,
)
from ..tokens import fingerprint

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

logger = logging.getLogger("propagation.testing")

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_PASSWORD = "password"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_SAML2_BEARER = "urn:ietf:params:oauth:grant-type:saml2-bearer"
_GRANT_NAMES = {
    GRANT_CLIENT_CREDENTIALS: "client_credentials",
    GRANT_PASSWORD: "password",
    GRANT_JWT_BEARER: "jwt-bearer",
    GRANT_TOKEN_EXCHANGE: "token-exchange",
    GRANT_SAML2_BEARER: "saml2-bearer",
}
_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:"
_SAML2_HEADER_TYPE = "urn:sap:identity:oauth:token-type:saml2-header"
_RESOURCE_PREFIX = "urn:sap:identity:application:provider:name:"

#: What S/4HANA (and the SAP Cloud SDK) answer when the principal is missing.
NO_USER_TOKEN_MESSAGE = "No user token (JWT) has been provided. This is strictly necessary for 'PrincipalPropagation'"
#: The Destination service's ``authTokens[].error`` for a user type without a user token.
_NO_USER_FOR = "No user token (JWT) has been provided. This is strictly necessary for '{auth}'."
FUNCTIONAL_LOCATION_PATH = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation"
#: The released S/4HANA OData V2 entity set (``API_FUNCTIONALLOCATION_SRV``): the same rows.
FUNCTIONAL_LOCATION_V2_PATH = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION_SRV/A_FunctionalLocation"
_FUNCTIONAL_LOCATION_SETS = (FUNCTIONAL_LOCATION_PATH, FUNCTIONAL_LOCATION_V2_PATH)
#: The IAS public (PKCE) client registered in every landscape: a mobile app / SPA whose
#: tokens the app's IAS client may exchange (``landscape.add_public_client`` adds more).
PUBLIC_CLIENT_ID = "spa-public-client"
FIND_PATH = "/destination-configuration/v1/destinations/"

#: Users registered in every landscape: name → (password, scopes). ``landscape.add_user`` adds more.
DEFAULT_USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "alice": ("alice-password", ("Read", "Write", "Order")),
    "bob": ("bob-password", ("Read",)),
}

_FUNCTIONAL_LOCATIONS: tuple[dict[str, str], ...] = (
    {"FunctionalLocation": "1010-PLT-01", "FunctionalLocationName": "Hamburg plant", "FunctionalLocationCategory": "M"},
    {"FunctionalLocation": "1010-PLT-01-PMP", "FunctionalLocationName": "Cooling water pump", "FunctionalLocationCategory": "M"},
    {"FunctionalLocation": "1010-PLT-01-CMP", "FunctionalLocationName": "Air compressor", "FunctionalLocationCategory": "M"},
)

#: Form fields never recorded: they are credentials.
_SECRET_FIELDS = frozenset(
    {"client_secret", "password", "assertion", "subject_token", "actor_token", "refresh_token", "code", "client_assertion",
     "access_token", "id_token"}
)
_JWT_LIKE = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


def _params(form: Mapping[str, str]) -> dict[str, str]:
    """The form fields a record may keep: no credential, nothing shaped like a token."""
    return {
        k: ("<redacted>" if _JWT_LIKE.search(v) else v)
        for k, v in form.items()
        if k not in _SECRET_FIELDS and k not in ("grant_type", "client_id")
    }

#: The Authentication types a destination line may name: every type the library knows but
#: ClientCertificateAuthentication, which the landscape does not emulate.
_EMULATED_AUTHENTICATIONS = frozenset(AUTHENTICATIONS) - {"ClientCertificateAuthentication"}


# =============================================================================== wire types
@dataclass(frozen=True)
class Request:
    """One HTTP request as the client meant it (absolute URL; for a request that came
    through the Connectivity proxy, the on-premise virtual host URL and ``via_proxy``)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    via_proxy: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.headers, CaseInsensitiveDict):
            object.__setattr__(self, "headers", CaseInsensitiveDict(dict(self.headers or {})))
        object.__setattr__(self, "method", str(self.method).upper())
        body = self.body
        if body is None:
            object.__setattr__(self, "body", b"")
        elif isinstance(body, str):
            object.__setattr__(self, "body", body.encode("utf-8"))

    def __repr__(self) -> str:  # headers and body hold tokens
        return f"Request(method={self.method!r}, url={_strip_query(self.url)!r}, via_proxy={self.via_proxy!r})"


@dataclass(frozen=True)
class Response:
    """The landscape's answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def __repr__(self) -> str:  # bodies hold tokens
        return f"Response(status={self.status!r}, content_type={self.headers.get('Content-Type')!r})"


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    data = json.dumps(body).encode("utf-8")
    out = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    out.update(headers or {})
    return Response(status, out, data)


@dataclass(frozen=True)
class Origins:
    """Where each emulated service lives (``scheme://host[:port]``, no trailing slash).

    ``xsuaa`` is the provider tenant's XSUAA URL; a subscriber's is the same URL with its
    subdomain as first host label (in-process only). Keys are served at
    ``https://{uaadomain}/token_keys``. ``ias`` is the IAS tenant URL and token issuer; it
    must match ``^https://<label>\\.<ias_domain>$`` (sap-xssec's issuer rule) — for loopback
    ``https://127.0.0.1:PORT`` with ``ias_domain="0.0.1:PORT"``.
    """

    xsuaa: str
    uaadomain: str
    ias: str
    ias_domain: str
    destination: str
    destination_token: str
    connectivity_token: str
    proxy_host: str
    proxy_port: int
    backend: str
    iflow: str
    onprem: str = "http://s4-virtual:44300"

    @classmethod
    def in_process(cls, provider: str = "provider") -> "Origins":
        """Fake hostnames under ``*.sandbox.test`` (never resolvable: nothing leaks to a network)."""
        xsuaa = f"https://{provider}.authentication.sandbox.test"
        return cls(
            xsuaa=xsuaa,
            uaadomain="authentication.sandbox.test",
            ias="https://tenant.accounts.sandbox.test",
            ias_domain="accounts.sandbox.test",
            destination="https://destination-configuration.cfapps.sandbox.test",
            destination_token=xsuaa,
            connectivity_token=xsuaa,
            proxy_host="connectivityproxy.internal.sandbox.test",
            proxy_port=20003,
            backend="https://s4.sandbox.test",
            iflow="https://tenant.it-cpi.cfapps.sandbox.test",
        )

    @property
    def proxy_url(self) -> str:
        return f"http://{self.proxy_host}:{self.proxy_port}"


# =============================================================================== records
R = TypeVar("R")


class Records(list, Generic[R]):  # type: ignore[type-arg]
    """A list of records with small filters for assertions.

    ``landscape.exchanges.for_user("alice")``, ``landscape.calls.where(service="onprem")``,
    ``landscape.exchanges.where(grant="jwt-bearer").values("client")``.
    """

    def where(self, **criteria: Any) -> "Records[R]":
        """Records whose fields equal every given value (a callable value is a predicate)."""
        out: Records[R] = Records()
        for record in self:
            if all(
                (value(getattr(record, key)) if callable(value) else getattr(record, key) == value)
                for key, value in criteria.items()
            ):
                out.append(record)
        return out

    def for_user(self, user: str | None) -> "Records[R]":
        return self.where(user=user)

    def values(self, name: str) -> list[Any]:
        """One field of every record, in order."""
        return [getattr(record, name) for record in self]

    def __repr__(self) -> str:
        return f"Records({list.__repr__(self)})"


@dataclass(frozen=True)
class Exchange:
    """One token request at XSUAA or IAS (also those the Destination service made itself,
    ``via="destination-service"``). Tokens appear only as fingerprints."""

    service: str  # "xsuaa" | "ias"
    grant: str | None  # client_credentials, password, jwt-bearer, token-exchange, saml2-bearer
    client: str | None  # the OAuth client that asked (as claimed)
    user: str | None  # the principal of the assertion / subject token / password
    status: int
    error: str | None = None
    tenant: str | None = None  # subdomain (XSUAA zone) or IAS app tenant id
    subject: str | None = None  # kind of the assertion/subject token: "xsuaa" | "ias"
    client_auth: str | None = None  # "basic" | "body" | None
    params: Mapping[str, str] = field(default_factory=dict)  # non-secret form fields
    assertion: str | None = None  # fingerprint of the assertion / subject token
    issued: str | None = None  # fingerprint of the issued token
    via: str = "app"  # "app" | "destination-service"
    url: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Call:
    """One call to the Destination service, the backend, the iFlow or the on-premise
    system (or a refusal by the Connectivity proxy): whom the service saw."""

    service: str  # "destination" | "backend" | "iflow" | "onprem" | "connectivity-proxy"
    method: str
    path: str
    status: int
    user: str | None = None  # the principal seen
    via_proxy: bool = False
    location: str | None = None  # SAP-Connectivity-SCC-Location_ID
    tenant: str | None = None
    client: str | None = None  # OAuth client of the bearer token seen
    carried_by: str | None = None  # bearer | basic | saml | proxy-token | connectivity-header | service-token
    destination: str | None = None  # the name looked up (Destination service)
    token: str | None = None  # fingerprint of the bearer token
    error: str | None = None
    query: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Traffic:
    """Every request the landscape answered, key fetches included (no headers, no bodies)."""

    method: str
    url: str  # without the query
    status: int
    via_proxy: bool = False


# =============================================================================== registry
@dataclass(frozen=True)
class _Tenant:
    subdomain: str
    zid: str
    provider: bool


@dataclass(frozen=True, repr=False)
class _Client:
    id: str
    secret: str
    xsappname: str | None = None
    authorities: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"_Client(id={self.id!r})"


@dataclass(repr=False)
class _User:
    name: str
    password: str | None
    scopes: tuple[str, ...]
    email: str

    def __repr__(self) -> str:
        return f"_User(name={self.name!r})"


@dataclass(frozen=True, repr=False)
class EmulatedDestination:
    """A destination declared with :meth:`Landscape.destination` (``repr`` shows no secret)."""

    name: str
    authentication: str
    proxy_type: str
    url: str
    source: str  # "service" | "env"
    target: str  # "backend" | "iflow" | "onprem" | "external"
    properties: Mapping[str, str]
    forward_auth_token: bool = False

    @property
    def needs_user(self) -> bool:
        return authentication_needs_user(
            self.authentication,
            forward_auth_token=self.forward_auth_token,
            system_user=bool(self.properties.get("SystemUser")),
        )

    @property
    def location(self) -> str | None:
        return self.properties.get("CloudConnectorLocationId") or None

    def configuration(self) -> dict[str, Any]:
        """``destinationConfiguration`` as the Destination service returns it."""
        config: dict[str, Any] = {
            "Name": self.name,
            "Type": "HTTP",
            "URL": self.url,
            "Authentication": self.authentication,
            "ProxyType": self.proxy_type,
        }
        if self.forward_auth_token:
            config["forwardAuthToken"] = "true"
        config.update(self.properties)
        return config

    def env_entry(self) -> dict[str, Any]:
        """The entry of the approuter-style ``destinations`` environment variable."""
        entry: dict[str, Any] = {"name": self.name, "url": self.url, "Authentication": self.authentication,
                                 "ProxyType": self.proxy_type}
        if self.forward_auth_token:
            entry["forwardAuthToken"] = True
        entry.update(self.properties)
        return entry

    def __repr__(self) -> str:
        return (
            f"EmulatedDestination(name={self.name!r}, authentication={self.authentication!r}, "
            f"proxy_type={self.proxy_type!r}, url={self.url!r}, source={self.source!r})"
        )


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class _Reject(Exception):
    """A token the landscape does not accept (``expired`` distinguishes the common case)."""

    def __init__(self, description: str, *, expired: bool = False) -> None:
        super().__init__(description)
        self.description, self.expired = description, expired


@dataclass(frozen=True)
class _Verified:
    kind: str  # "xsuaa" | "ias" | "saml"
    claims: Mapping[str, Any]
    tenant: _Tenant | None  # XSUAA zone (None for IAS)


@dataclass(frozen=True)
class _Issuer:
    name: str
    key: rsa.RSAPrivateKey
    kid: str

    @property
    def public_pem(self) -> str:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def jwk(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": _b64uint(numbers.n), "e": _b64uint(numbers.e)}


def _b64uint(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode("ascii")


def _new_issuer(name: str) -> _Issuer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # A kid unique to this key: sap-xssec caches keys process-wide by (jku|issuer, kid), so
    # two landscapes in one test run must never share a kid.
    return _Issuer(name, key, f"{name}-{hashlib.sha256(der).hexdigest()[:16]}")


def _origin(url: str) -> str:
    """``scheme://host[:port]`` lower-cased, default ports dropped."""
    parts = urlsplit(url)
    scheme = (parts.scheme or "").lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or port == {"http": 80, "https": 443}.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _strip_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{_origin(url)}{parts.path or '/'}"


def _short(grant: str | None) -> str | None:
    return _GRANT_NAMES.get(grant, grant) if grant else grant


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        token = value[7:].strip()
        return token or None
    return None


def _expand_token_type(value: str) -> str:
    value = value.strip()
    if ":" in value:
        return value
    if value == "saml2-header":
        return _SAML2_HEADER_TYPE
    return _TOKEN_TYPE + value


# =============================================================================== the landscape
class Landscape:
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
        self._basic_users: dict[str, str] = {}  # backend communication users (Basic)
        self._opaque: dict[str, tuple[str, dict[str, Any]]] = {}  # opaque/SAML artefacts → (kind, claims)
        self._locations: set[str | None] = {None}
        self._listeners: list[Callable[["Landscape"], None]] = []

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

    def add_user(self, name: str, *, password: str | None = None, scopes: Iterable[str] = ("Read",),
                 email: str | None = None) -> None:
        """Register a user (for the password grant and the scopes of its tokens)."""
        with self._lock:
            mail = email or (name if "@" in name else f"{name}@example.com")
            self._users[name] = _User(name, password, tuple(scopes), mail)
            self._emails[mail.lower()] = name

    def add_public_client(self, client_id: str) -> None:
        """Register an IAS public (PKCE) client whose tokens the app's IAS client may consume."""
        with self._lock:
            self._public_clients.add(client_id)

    def on_change(self, listener: Callable[["Landscape"], None]) -> Callable[[], None]:
        """Call ``listener(landscape)`` after a destination is declared (transports update the
        environment then); returns the function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def tenant_url(self, tenant: str | None = None) -> str:
        """The XSUAA URL of a tenant (the provider's is ``origins.xsuaa``)."""
        t = self._tenant(tenant)
        if t.provider:
            return self.origins.xsuaa
        parts = urlsplit(self.origins.xsuaa)
        host = parts.hostname or ""
        rest = host.split(".", 1)[1] if "." in host else host
        return f"{parts.scheme}://{t.subdomain}.{rest}" + (f":{parts.port}" if parts.port else "")

    def _tenant(self, name: str | None) -> _Tenant:
        if name is None:
            return self.provider
        try:
            return self.tenants[name]
        except KeyError:
            raise ValueError(f"unknown tenant {name!r}: declared tenants are {list(self.tenants)}") from None

    # ------------------------------------------------------------------ tokens
    def user_token(
        self,
        user: str,
        *,
        scopes: Iterable[str] | None = None,
        tenant: str | None = None,
        kind: str = "xsuaa",
        public_client: str | None = None,
        ttl: int = 3600,
        cross_consumption: bool = True,
    ) -> str:
        """A real signed JWT for ``user``, as a login would give the app.

        ``kind="xsuaa"``: issued by the tenant's XSUAA to the app's client, scopes prefixed
        with the ``xsappname``. ``kind="ias"``: issued by IAS to the app's IAS client, whose
        ``aud`` also holds the XSUAA trust client id when ``cross_consumption``;
        ``public_client`` → issued to that public (PKCE) client only. A negative ``ttl``
        gives an expired token. ``scopes`` default to the registered user's.
        """
        t = self._tenant(tenant)
        with self._lock:
            if user not in self._users:
                self.add_user(user)
            record = self._users[user]
        granted = tuple(scopes) if scopes is not None else record.scopes
        if kind == "xsuaa":
            if public_client is not None:
                raise ValueError("public_client is an IAS notion: use kind='ias'")
            client = self._xsuaa_clients[self.app_client]
            return self._sign_xsuaa(self._xsuaa_claims(t, client, "authorization_code", record, granted, ttl))
        if kind == "ias":
            if public_client is not None:
                self.add_public_client(public_client)
                aud = [public_client]
                azp = public_client
            else:
                aud = [self.ias_client] + ([self.trust_client_id] if cross_consumption else [])
                azp = self.ias_client
            # IAS carries no scopes: explicit ones travel as groups, which XSUAA maps to role collections.
            extra = {"groups": list(scopes)} if scopes is not None else None
            return self._sign_ias(self._ias_claims(t, record, aud, azp, ttl, extra))
        raise ValueError(f"kind must be 'xsuaa' or 'ias', not {kind!r}")

    def technical_token(self, client_id: str | None = None, *, tenant: str | None = None, ttl: int = 3600) -> str:
        """A ``client_credentials`` XSUAA token (the app's client by default): no user."""
        client = self._xsuaa_clients[client_id or self.app_client]
        return self._sign_xsuaa(self._xsuaa_claims(self._tenant(tenant), client, GRANT_CLIENT_CREDENTIALS, None, (), ttl))

    def _xsuaa_claims(self, tenant: _Tenant, client: _Client, grant: str, user: _User | None,
                      scopes: Iterable[str], ttl: int | None = None, *, origin: str = "sap.default") -> dict[str, Any]:
        now = int(time.time())
        lifetime = self.ttl if ttl is None else ttl
        granted: list[str] = []
        if user is not None:
            granted.append("openid")
            if client.xsappname and client.id == self.app_client:
                granted += [f"{client.xsappname}.{s}" for s in scopes]
        else:
            granted.append("uaa.resource")
        granted += [a for a in client.authorities if a not in granted]
        aud = [client.id] + sorted({s.split(".", 1)[0] for s in granted if "." in s and s.split(".", 1)[0] != client.id})
        claims: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "ext_attr": {"enhancer": "XSUAA", "subaccountid": tenant.zid, "zdn": tenant.subdomain},
            "iss": f"{self.tenant_url(tenant.subdomain)}/oauth/token",
            "zid": tenant.zid,
            "cid": client.id,
            "azp": client.id,
            "client_id": client.id,
            "grant_type": grant,
            "scope": granted,
            "aud": aud,
            "iat": now,
            "exp": now + lifetime,
            "rev_sig": uuid.uuid4().hex[:8],
        }
        if user is not None:
            user_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{user.name}.users.sandbox.test"))
            claims.update(
                {"sub": user_id, "user_id": user_id, "user_name": user.name, "email": user.email, "origin": origin}
            )
        else:
            claims["sub"] = client.id
        return claims

    def _ias_claims(self, tenant: _Tenant, user: _User | None, aud: list[str], azp: str, ttl: int | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        now = int(time.time())
        lifetime = self.ttl if ttl is None else ttl
        claims: dict[str, Any] = {
            "iss": self.origins.ias,
            "aud": aud if len(aud) != 1 else aud[0],
            "azp": azp,
            "app_tid": tenant.zid,
            "zone_uuid": tenant.zid,
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        if user is not None:
            user_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ias:{user.name}"))
            claims.update({"sub": user_uuid, "user_uuid": user_uuid, "email": user.email, "sid": uuid.uuid4().hex,
                           "scim_id": user_uuid})
        else:
            claims["sub"] = azp
        claims.update(extra or {})
        return claims

    def _sign_xsuaa(self, claims: Mapping[str, Any]) -> str:
        jku = f"https://{self.origins.uaadomain}/token_keys?zid={claims['zid']}"
        return jwt.encode(dict(claims), self._xsuaa_issuer.key, algorithm="RS256",
                          headers={"kid": self._xsuaa_issuer.kid, "jku": jku})

    def _sign_ias(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self._ias_issuer.key, algorithm="RS256", headers={"kid": self._ias_issuer.kid})

    def _verify(self, raw: str) -> _Verified:
        """Whose token is this? Signature, issuer (and zone), expiry — or :class:`_Reject`."""
        with self._lock:
            artefact = self._opaque.get(raw)
        if artefact is not None:
            kind, claims = artefact
            if int(claims.get("exp", 0)) <= time.time():
                raise _Reject("Token expired.", expired=True)
            return _Verified(kind, claims, None)
        try:
            header = jwt.get_unverified_header(raw)
        except jwt.PyJWTError:
            raise _Reject("Malformed token.") from None
        kid = header.get("kid")
        issuer = {self._xsuaa_issuer.kid: self._xsuaa_issuer, self._ias_issuer.kid: self._ias_issuer}.get(kid)
        if issuer is None or header.get("alg") != "RS256":
            raise _Reject("Token is not signed by a key of this landscape.")
        try:
            claims = jwt.decode(raw, issuer.key.public_key(), algorithms=["RS256"],
                                options={"verify_aud": False, "require": ["exp", "iat", "iss"]})
        except jwt.ExpiredSignatureError:
            raise _Reject("Token expired.", expired=True) from None
        except jwt.PyJWTError:
            raise _Reject("Token signature or claims are invalid.") from None
        if issuer is self._ias_issuer:
            if claims.get("iss") != self.origins.ias:
                raise _Reject("Token issuer is not this IAS tenant.")
            return _Verified("ias", claims, None)
        tenant = next((t for t in self.tenants.values() if t.zid == claims.get("zid")), None)
        if tenant is None or claims.get("iss") != f"{self.tenant_url(tenant.subdomain)}/oauth/token":
            raise _Reject("Token issuer does not match its identity zone.")
        return _Verified("xsuaa", claims, tenant)

    def _principal(self, claims: Mapping[str, Any]) -> str | None:
        """The user a service sees in a token (``None`` for a technical token)."""
        if claims.get("grant_type") == GRANT_CLIENT_CREDENTIALS:
            return None
        name = claims.get("user_name")
        if isinstance(name, str) and name:
            return name
        email = claims.get("email")
        if isinstance(email, str) and email:
            return self._emails.get(email.lower(), email)
        return None

    def _user_of(self, claims: Mapping[str, Any], principal: str) -> _User:
        with self._lock:
            user = self._users.get(principal)
        if user is None:
            email = claims.get("email") if isinstance(claims.get("email"), str) else None
            user = _User(principal, None, (), email or f"{principal}@example.com")
        return user

    def _local_scopes(self, claims: Mapping[str, Any], user: _User) -> tuple[str, ...]:
        scopes = claims.get("scope") if isinstance(claims.get("scope"), list) else []
        prefix = f"{self.xsappname}."
        local = tuple(s[len(prefix):] for s in scopes if isinstance(s, str) and s.startswith(prefix))
        return local or user.scopes

    # ------------------------------------------------------------------ destinations
    def destination(self, spec: str, **properties: str) -> EmulatedDestination:
        """Declare a destination in one line: ``NAME [ProxyType] [Authentication] [forward]
        [/path | URL] [key=value ...]``.

        Examples: ``"S4 OnPremise PrincipalPropagation /sap/opu/odata/sap location=LOC1"``,
        ``"IFLOW OAuth2JWTBearer target=iflow"``, ``"CLOUD OAuth2ClientCredentials"``,
        ``"PUBLIC NoAuthentication forward source=env"``. Special keys: ``source``
        (``service``, the default: the Destination service; ``env``: the ``destinations``
        variable), ``target`` (``backend`` default, ``iflow``, ``onprem`` — default for
        OnPremise), ``location`` (= ``CloudConnectorLocationId``). Other keys are destination
        properties, verbatim (``sap-client=100``, ``tokenService.body.resource=X``).
        OAuth clients, users and passwords are created and registered as an admin would.
        """
        words = spec.split()
        if not words:
            raise ValueError("a destination line needs at least a name")
        name = words[0]
        proxy_type = "Internet"
        authentication = "NoAuthentication"
        forward = False
        url: str | None = None
        path = ""
        props: dict[str, str] = {}
        source = "service"
        target: str | None = None
        for word in words[1:]:
            low = word.lower()
            if low in ("internet", "onpremise"):
                proxy_type = "OnPremise" if low == "onpremise" else "Internet"
            elif canonical_authentication(low) in _EMULATED_AUTHENTICATIONS:
                authentication = canonical_authentication(low)
            elif low in ("forward", "forwardauthtoken"):
                forward = True
            elif word.startswith("/"):
                path = word
            elif low.startswith(("http://", "https://")):
                url = word
            elif "=" in word:
                key, _, value = word.partition("=")
                if not key:
                    raise ValueError(f"destination line {spec!r}: {word!r} names no property")
                if key == "source":
                    source = value
                elif key == "target":
                    target = value
                elif key == "location":
                    props["CloudConnectorLocationId"] = value
                elif key.lower() == "forwardauthtoken":
                    forward = value.lower() == "true"
                else:
                    props[key] = value
            else:
                raise ValueError(f"destination line {spec!r}: cannot read {word!r}")
        props.update({k: str(v) for k, v in properties.items()})
        if source not in ("service", "env"):
            raise ValueError(f"destination {name}: source must be 'service' or 'env', not {source!r}")
        if authentication == "PrincipalPropagation" and proxy_type != "OnPremise":
            proxy_type = "OnPremise"
        if target is None:
            target = "onprem" if proxy_type == "OnPremise" else "backend"
        bases = {"backend": self.origins.backend, "iflow": self.origins.iflow, "onprem": self.origins.onprem}
        if url is None:
            if target not in bases:
                raise ValueError(f"destination {name}: target must be backend, iflow or onprem, not {target!r}")
            url = bases[target]
        else:
            target = next((k for k, v in bases.items() if _origin(url) == _origin(v)), "external")
        url = url.rstrip("/") + path

        with self._lock:
            if authentication in ("BasicAuthentication",):
                props.setdefault("User", f"{name.upper()}_COMM_USER")
                props.setdefault("Password", secrets.token_urlsafe(12))
                self._basic_users[props["User"]] = props["Password"]
            if authentication == "OAuth2Password":
                props.setdefault("User", f"{name.lower()}-technical")
                props.setdefault("Password", secrets.token_urlsafe(12))
                self.add_user(props["User"], password=props["Password"], scopes=())
            if authentication in ("OAuth2ClientCredentials", "OAuth2Password", "OAuth2JWTBearer",
                                  "OAuth2UserTokenExchange", "OAuth2SAMLBearerAssertion"):
                if "clientId" not in props:
                    client = self._add_xsuaa_client(f"sb-{name.lower()}!t{len(self._xsuaa_clients) + 1}")
                    props["clientId"] = client.id
                    props["clientSecret"] = client.secret
                props.setdefault("tokenServiceURL", f"{self.origins.xsuaa}/oauth/token")
                if len(self.tenants) > 1:
                    props.setdefault("tokenServiceURLType", "Common")
                if target == "iflow":
                    self._iflow_clients.add(props["clientId"])
            if authentication == "OAuth2TokenExchange":
                if "clientId" not in props:  # the app's own IAS application exchanges its users' tokens
                    props["clientId"] = self.ias_client
                    props["clientSecret"] = self._ias_clients[self.ias_client].secret
                props.setdefault("tokenServiceURL", f"{self.origins.ias}/oauth2/token")
                resource = props.get("tokenService.body.resource")
                if resource:
                    provider = resource[len(_RESOURCE_PREFIX):] if resource.startswith(_RESOURCE_PREFIX) else resource
                    self._providers.setdefault(provider, f"{provider}-provider-client")
            if source == "service" and authentication in USER_AUTHENTICATIONS - {"PrincipalPropagation"}:
                # What an admin adds so the service accepts IAS user tokens in X-user-token.
                props.setdefault("x_user_token.jwks_uri", f"{self.origins.ias}/oauth2/certs")
            if source == "env" and authentication == "OAuth2SAMLBearerAssertion":
                raise ValueError(f"destination {name}: OAuth2SAMLBearerAssertion works only through the Destination service")
            self._locations.add(props.get("CloudConnectorLocationId") or None)
            destination = EmulatedDestination(name, authentication, proxy_type, url, source, target, dict(props), forward)
            self._destinations[name] = destination
        for listener in list(self._listeners):
            listener(self)
        return destination

    @property
    def destinations(self) -> dict[str, EmulatedDestination]:
        with self._lock:
            return dict(self._destinations)

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

    def _record(self, records: Records[Any], record: Any) -> None:
        with self._lock:
            records.append(record)

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
        try:
            response = self._dispatch(request)
        except Exception:  # noqa: BLE001 - a bug in the model must surface as a 500, never a traceback in the app
            logger.exception("emulated landscape failed on %s %s", request.method, _strip_query(request.url))
            response = _json(500, {"error": "server_error", "error_description": "The emulated service failed."})
        self._record(self.traffic, Traffic(request.method, _strip_query(request.url), response.status, request.via_proxy))
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
            if path == "/token_keys" and request.method == "GET":
                return _json(200, {"keys": [{**self._xsuaa_issuer.jwk(), "value": self._xsuaa_issuer.public_pem}]})
            if path == "/oauth/token" and service == "xsuaa":
                if request.method != "POST":
                    return _json(405, {"error": "method_not_allowed", "error_description": "Use POST."})
                tenant = self._xsuaa_tenant_of(origin)
                assert tenant is not None
                return self._xsuaa_token(tenant, _form(request.body), request.headers, url=_strip_query(request.url))
            return _json(404, {"error": "not_found", "error_description": f"No XSUAA endpoint {path}."})
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

    # ------------------------------------------------------------------ OAuth helpers
    @staticmethod
    def _client_auth(clients: Mapping[str, _Client], form: Mapping[str, str],
                     headers: Mapping[str, str]) -> tuple[_Client, str]:
        authorization = headers.get("Authorization") or ""
        body_id = form.get("client_id")
        if authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _OAuthError(401, "invalid_client", "Malformed Basic credentials.") from None
            raw_id, sep, raw_secret = decoded.partition(":")
            if not sep:
                raise _OAuthError(401, "invalid_client", "Malformed Basic credentials.")
            client_id, secret, mode = unquote_plus(raw_id), unquote_plus(raw_secret), "basic"
            if body_id is not None and body_id != client_id:
                raise _OAuthError(401, "invalid_client", "client_id in the body differs from the authenticated client.")
        elif body_id:
            client_id, mode = body_id, "body"
            secret = form.get("client_secret")
            if secret is None:
                raise _OAuthError(401, "invalid_client",
                                  "Client authentication is required (client secret; mTLS is not emulated).")
        else:
            raise _OAuthError(401, "invalid_client", "Full authentication is required to access this resource.")
        client = clients.get(client_id)
        if client is None or not hmac.compare_digest(client.secret.encode("utf-8"), secret.encode("utf-8")):
            raise _OAuthError(401, "invalid_client", "Bad credentials")
        return client, mode

    @staticmethod
    def _claimed_client(form: Mapping[str, str], headers: Mapping[str, str]) -> tuple[str | None, str | None]:
        authorization = headers.get("Authorization") or ""
        if authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
                return unquote_plus(decoded.partition(":")[0]) or None, "basic"
            except (binascii.Error, UnicodeDecodeError):
                return None, "basic"
        if form.get("client_id"):
            return form["client_id"], "body"
        return None, None

    def _token_answer(self, token: str, claims: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        scope = claims.get("scope")
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(claims.get("exp", 0)) - int(claims.get("iat", 0)),
            "scope": " ".join(scope) if isinstance(scope, list) else (scope or ""),
            "jti": claims.get("jti") or uuid.uuid4().hex,
        }
        answer.update(extra or {})
        return answer

    # ------------------------------------------------------------------ XSUAA /oauth/token
    def _xsuaa_token(self, tenant: _Tenant, form: Mapping[str, str], headers: Mapping[str, str], *,
                     url: str = "", via: str = "app", grant_override: str | None = None) -> Response:
        grant = form.get("grant_type")
        claimed, mode = self._claimed_client(form, headers)
        user: str | None = None
        subject: str | None = None
        assertion_fp: str | None = None
        params = _params(form)
        try:
            client, mode = self._client_auth(self._xsuaa_clients, form, headers)
            if not grant:
                raise _OAuthError(400, "invalid_request", "Missing grant_type.")
            if grant == GRANT_CLIENT_CREDENTIALS:
                claims = self._xsuaa_claims(tenant, client, grant, None, ())
            elif grant == GRANT_PASSWORD:
                username, password = form.get("username"), form.get("password")
                user = username
                with self._lock:
                    record = self._users.get(username or "")
                if (record is None or record.password is None or password is None
                        or not hmac.compare_digest(record.password.encode(), password.encode())):
                    raise _OAuthError(401, "unauthorized", "Bad credentials")
                claims = self._xsuaa_claims(tenant, client, grant, record, record.scopes)
            elif grant == GRANT_JWT_BEARER:
                raw = form.get("assertion")
                if not raw:
                    raise _OAuthError(400, "invalid_request", "Missing assertion.")
                assertion_fp = fingerprint(raw)
                try:
                    verified = self._verify(raw)
                except _Reject as exc:
                    raise _OAuthError(401 if not exc.expired else 400, "invalid_grant" if exc.expired else "invalid_token",
                                      "The assertion has expired." if exc.expired else exc.description) from None
                subject = verified.kind
                user = self._principal(verified.claims)
                if verified.kind == "xsuaa":
                    assert verified.tenant is not None
                    if verified.tenant.zid != tenant.zid:
                        raise _OAuthError(400, "invalid_grant",
                                          "The assertion was issued by a different identity zone.")
                elif verified.kind == "ias":
                    aud = verified.claims.get("aud")
                    audiences = [aud] if isinstance(aud, str) else list(aud or [])
                    if self.trust_client_id not in audiences:
                        raise _OAuthError(400, "invalid_grant",
                                          "The IAS token's audience does not contain the client id of the XSUAA trust "
                                          "(xsuaa-cross-consumption).")
                else:
                    raise _OAuthError(400, "invalid_grant", "The assertion is not a JWT of a trusted issuer.")
                if user is None:
                    raise _OAuthError(400, "invalid_grant", "The assertion carries no user.")
                record = self._user_of(verified.claims, user)
                if verified.kind == "xsuaa":
                    scopes = self._local_scopes(verified.claims, record)
                else:
                    groups = verified.claims.get("groups")
                    scopes = tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else record.scopes
                origin = "sap.default" if verified.kind == "xsuaa" else "sap.custom"
                claims = self._xsuaa_claims(tenant, client, grant_override or grant, record, scopes, origin=origin)
            else:
                raise _OAuthError(400, "unsupported_grant_type", f"Unsupported grant type: {str(grant)[:80]}")
        except _OAuthError as exc:
            self._record(self.exchanges, Exchange(
                "xsuaa", _short(grant_override or grant), claimed, user, exc.status, exc.error, tenant.subdomain, subject,
                mode, params, assertion_fp, None, via, url))
            headers_out = {"WWW-Authenticate": 'Basic realm="UAA/client", error="invalid_client"'} if exc.status == 401 else {}
            return _json(exc.status, {"error": exc.error, "error_description": exc.description}, headers_out)
        token = self._sign_xsuaa(claims)
        self._record(self.exchanges, Exchange(
            "xsuaa", _short(grant_override or grant), client.id, user, 200, None, tenant.subdomain, subject, mode, params,
            assertion_fp, fingerprint(token), via, url))
        return _json(200, self._token_answer(token, claims))

    # ------------------------------------------------------------------ IAS /oauth2/token
    def _ias_token(self, form: Mapping[str, str], headers: Mapping[str, str], *, url: str = "",
                   via: str = "app") -> Response:
        grant = form.get("grant_type")
        claimed, mode = self._claimed_client(form, headers)
        user: str | None = None
        subject: str | None = None
        subject_fp: str | None = None
        params = _params(form)
        tenant = self.provider
        extra_answer: dict[str, Any] = {}
        try:
            public = self._public_client(form, headers) if grant == GRANT_PASSWORD else None
            if public is not None:  # a public client has no secret: it identifies itself by client_id only
                client, mode = _Client(public, ""), "none"
            else:
                client, mode = self._client_auth(self._ias_clients, form, headers)
            if not grant:
                raise _OAuthError(400, "invalid_request", "Missing grant_type.")
            if grant == GRANT_CLIENT_CREDENTIALS:
                claims = self._ias_claims(tenant, None, [client.id], client.id)
                token = self._sign_ias(claims)
            elif grant == GRANT_PASSWORD:
                user = form.get("username")
                record = self._password_user(user, form.get("password"))
                if record is None:
                    raise _OAuthError(400, "invalid_grant", "User authentication failed.")
                user = record.name
                # xsuaa-cross-consumption (on for the app's IAS binding) adds the XSUAA trust client;
                # a public client's token is issued to that client alone.
                aud = [client.id] + ([self.trust_client_id] if client.id == self.ias_client else [])
                claims = self._ias_claims(tenant, record, aud, client.id)
                token = self._sign_ias(claims)
            elif grant in (GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE):
                field_name = "assertion" if grant == GRANT_JWT_BEARER else "subject_token"
                raw = form.get(field_name)
                if not raw:
                    raise _OAuthError(400, "invalid_request", f"Missing {field_name}.")
                subject_fp = fingerprint(raw)
                try:
                    verified = self._verify(raw)
                except _Reject as exc:
                    raise _OAuthError(400, "invalid_grant",
                                      f"The {field_name} has expired." if exc.expired else exc.description) from None
                subject = verified.kind
                user = self._principal(verified.claims)
                if verified.kind != "ias":
                    raise _OAuthError(400, "invalid_grant", f"The {field_name} was not issued by this IAS tenant.")
                if user is None:
                    raise _OAuthError(400, "invalid_grant", f"The {field_name} carries no user.")
                aud = verified.claims.get("aud")
                audiences = [aud] if isinstance(aud, str) else list(aud or [])
                consumable = {client.id} | (self._public_clients if client.id == self.ias_client else set())
                if not consumable.intersection(audiences + [verified.claims.get("azp")]):
                    raise _OAuthError(400, "invalid_grant",
                                      f"The {field_name} was not issued to a client that '{client.id}' may consume.")
                tenant = next((t for t in self.tenants.values() if t.zid == verified.claims.get("app_tid")), self.provider)
                record = self._user_of(verified.claims, user)
                if grant == GRANT_JWT_BEARER:
                    aud_out = [client.id] + ([self.trust_client_id] if client.id == self.ias_client else [])
                    claims = self._ias_claims(tenant, record, aud_out, client.id)
                    token = self._sign_ias(claims)
                else:
                    token, claims, extra_answer = self._token_exchange(form, client, tenant, record)
            else:
                raise _OAuthError(400, "unsupported_grant_type", f"Unsupported grant type: {str(grant)[:80]}")
        except _OAuthError as exc:
            self._record(self.exchanges, Exchange(
                "ias", _short(grant), claimed, user, exc.status, exc.error, tenant.zid, subject, mode, params,
                subject_fp, None, via, url))
            return _json(exc.status, {"error": exc.error, "error_description": exc.description})
        self._record(self.exchanges, Exchange(
            "ias", _short(grant), client.id, user, 200, None, tenant.zid, subject, mode, params, subject_fp,
            fingerprint(token), via, url))
        return _json(200, self._token_answer(token, claims, extra_answer))

    def _public_client(self, form: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
        """The registered public client a request names by ``client_id`` alone (no secret, no Basic)."""
        client_id = form.get("client_id")
        if not client_id or "client_secret" in form or (headers.get("Authorization") or "")[:6].lower() == "basic ":
            return None
        with self._lock:
            return client_id if client_id in self._public_clients else None

    def _password_user(self, username: str | None, password: str | None) -> _User | None:
        """The registered user with this login name or e-mail and password (IAS accepts both)."""
        with self._lock:
            name = username if username in self._users else self._emails.get((username or "").lower())
            record = self._users.get(name or "")
        if record is None or record.password is None or password is None:
            return None
        return record if hmac.compare_digest(record.password.encode(), password.encode()) else None

    def _token_exchange(self, form: Mapping[str, str], client: _Client, tenant: _Tenant,
                        user: _User) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """RFC 8693 at IAS: ``subject_token_type``, ``requested_token_type``, ``resource``, ``token_format``."""
        subject_type = form.get("subject_token_type")
        if subject_type not in {_TOKEN_TYPE + t for t in ("access_token", "id_token", "jwt")}:
            raise _OAuthError(400, "invalid_request", "subject_token_type must be an access_token, id_token or jwt URN.")
        requested = form.get("requested_token_type") or _TOKEN_TYPE + "access_token"
        allowed = {_TOKEN_TYPE + t for t in ("access_token", "id_token", "jwt", "saml2")} | {_SAML2_HEADER_TYPE}
        if requested not in allowed:
            raise _OAuthError(400, "invalid_request", "Unsupported requested_token_type.")
        aud = [client.id]
        resource = form.get("resource")
        if resource:
            name = resource[len(_RESOURCE_PREFIX):] if resource.startswith(_RESOURCE_PREFIX) else None
            provider = self._providers.get(name or "")
            if provider is None:
                raise _OAuthError(400, "invalid_target", "The resource is not a provided API this client may consume.")
            aud = [provider]
        token_format = form.get("token_format") or "jwt"
        if token_format not in ("jwt", "opaque"):
            raise _OAuthError(400, "invalid_request", "token_format must be jwt or opaque.")
        claims = self._ias_claims(tenant, user, aud, client.id)
        if requested in (_TOKEN_TYPE + "saml2", _SAML2_HEADER_TYPE):
            assertion = _saml_assertion(user, self.origins.ias, aud[0])
            with self._lock:
                self._opaque[assertion] = ("saml", claims)
            return assertion, claims, {"issued_token_type": requested, "token_type": "N_A"}
        if token_format == "opaque":
            token = secrets.token_urlsafe(32)
            with self._lock:
                self._opaque[token] = ("ias", claims)
        else:
            token = self._sign_ias(claims)
        return token, claims, {"issued_token_type": requested}

    # ------------------------------------------------------------------ Destination service
    def _destination_find(self, request: Request, path: str) -> Response:
        if not path.startswith(FIND_PATH) or len(path) <= len(FIND_PATH):
            return _json(404, {"ErrorMessage": "Not found"})
        name = unquote(path[len(FIND_PATH):])
        call = dict(service="destination", method=request.method, path=path, destination=name)
        if request.method != "GET":
            self._record(self.calls, Call(status=405, error="method not allowed", **call))
            return _json(405, {"ErrorMessage": "Method not allowed"})
        raw = _bearer(request.headers.get("Authorization"))
        service_user: str | None = None
        try:
            if raw is None:
                raise _Reject("Missing bearer token.")
            verified = self._verify(raw)
            if verified.kind != "xsuaa" or verified.claims.get("cid") != self.destination_client:
                raise _Reject("The token was not issued to the Destination service instance's client.")
        except _Reject as exc:
            self._record(self.calls, Call(status=401, error=exc.description, token=fingerprint(raw) if raw else None, **call))
            return _json(401, {"ErrorMessage": "Unauthorized"}, {"WWW-Authenticate": 'Bearer realm="destination"'})
        tenant = verified.tenant
        assert tenant is not None
        service_user = self._principal(verified.claims)
        with self._lock:
            destination = self._destinations.get(name)
        if destination is None or destination.source != "service":
            self._record(self.calls, Call(status=404, tenant=tenant.subdomain, client=self.destination_client,
                                          carried_by="service-token", error="not found", **call))
            return _json(404, {"ErrorMessage": "Configuration with the specified name was not found"})
        answer: dict[str, Any] = {
            "owner": {"SubaccountId": tenant.zid, "InstanceId": None},
            "destinationConfiguration": destination.configuration(),
        }
        user: str | None = None
        if destination.authentication in SERVICE_TOKEN_AUTHENTICATIONS:
            token, user = self._auth_token(destination, tenant, request.headers, service_user, verified.claims, raw)
            answer["authTokens"] = [token]
        else:
            user = self._user_header_principal(request.headers)
        self._record(self.calls, Call(status=200, user=user, tenant=tenant.subdomain, client=self.destination_client,
                                      carried_by="service-token", token=fingerprint(raw), **call))
        return _json(200, answer)

    def _user_header_principal(self, headers: Mapping[str, str]) -> str | None:
        raw = headers.get("X-user-token") or headers.get("X-Subject-Token")
        if not raw:
            return None
        try:
            return self._principal(self._verify(raw).claims)
        except _Reject:
            return None

    def _auth_token(self, destination: EmulatedDestination, tenant: _Tenant, headers: Mapping[str, str],
                    service_user: str | None, service_claims: Mapping[str, Any],
                    service_raw: str) -> tuple[dict[str, Any], str | None]:
        """One ``authTokens`` entry: the service runs the destination's token flow itself."""
        auth = destination.authentication
        props = destination.properties

        def error(text: str, user: str | None = None) -> tuple[dict[str, Any], str | None]:
            return {"type": "", "value": "", "error": text, "expires_in": "0"}, user

        if auth == "BasicAuthentication":
            value = base64.b64encode(f"{props['User']}:{props['Password']}".encode("utf-8")).decode("ascii")
            return {"type": "Basic", "value": value, "http_header": {"key": "Authorization", "value": f"Basic {value}"}}, None
        client_form = {"client_id": props.get("clientId", ""), "client_secret": props.get("clientSecret", "")}
        if auth in ("OAuth2ClientCredentials", "OAuth2Password"):
            form = {"grant_type": GRANT_CLIENT_CREDENTIALS, **client_form}
            if auth == "OAuth2Password":
                form.update(grant_type=GRANT_PASSWORD, username=props.get("User", ""), password=props.get("Password", ""))
            answer = self._xsuaa_token(tenant, form, {}, url=props.get("tokenServiceURL", ""), via="destination-service")
            return self._auth_token_from(answer, auth), None

        if auth == "OAuth2TokenExchange":
            raw = headers.get("X-Subject-Token")
            token_type = headers.get("X-Subject-Token-Type")
            if not raw or not token_type:
                return error(_NO_USER_FOR.format(auth=auth))
        else:
            raw = headers.get("X-user-token")
        system_user = props.get("SystemUser") if auth == "OAuth2SAMLBearerAssertion" else None
        user: str | None = None
        verified: _Verified | None = None
        if raw:
            try:
                verified = self._verify(raw)
            except _Reject as exc:
                return error(f"The user token is not valid: {exc.description}")
            user = self._principal(verified.claims)
            if user is None:
                return error(f"The user token carries no user: {_NO_USER_FOR.format(auth=auth)}")
            if verified.kind == "ias" and not (props.get("x_user_token.jwks_uri") or props.get("x_user_token.jwks")):
                return error("The user token is not issued by XSUAA: the destination needs the property "
                             "'x_user_token.jwks_uri' or 'x_user_token.jwks' to verify it.")
        elif service_user is not None and auth != "OAuth2TokenExchange":
            user, verified = service_user, _Verified("xsuaa", service_claims, tenant)  # provider-user variant
        elif system_user:
            user = system_user
        else:
            return error(_NO_USER_FOR.format(auth=auth))

        if auth == "OAuth2TokenExchange":
            form = {"grant_type": GRANT_TOKEN_EXCHANGE, **client_form, "subject_token": raw or "",
                    "subject_token_type": token_type or ""}
            for key, value in props.items():
                param = key[len("tokenService.body."):] if key.startswith("tokenService.body.") else None
                if not param or param == "subject_token_type":  # the caller's X-Subject-Token-Type wins
                    continue
                if param == "requested_token_type":
                    value = _expand_token_type(value)
                elif param == "resource" and ":" not in value:
                    value = _RESOURCE_PREFIX + value
                form[param] = value
            answer = self._ias_token(form, {}, url=props.get("tokenServiceURL", ""), via="destination-service")
            return self._auth_token_from(answer, auth), user
        if auth == "OAuth2SAMLBearerAssertion":
            client = self._xsuaa_clients.get(props.get("clientId", ""))
            if client is None:
                return error("The destination's OAuth client is not known to the token service.", user)
            assert user is not None
            record = self._user_of(verified.claims if verified else {}, user)
            claims = self._xsuaa_claims(tenant, client, GRANT_SAML2_BEARER, record, record.scopes)
            token = self._sign_xsuaa(claims)
            self._record(self.exchanges, Exchange(
                "xsuaa", "saml2-bearer", client.id, user, 200, None, tenant.subdomain, verified.kind if verified else None,
                "body", {}, fingerprint(raw) if raw else None, fingerprint(token), "destination-service",
                props.get("tokenServiceURL", "")))
            return self._auth_token_from(_json(200, self._token_answer(token, claims)), auth), user
        # OAuth2JWTBearer / OAuth2UserTokenExchange: jwt-bearer at the destination's token service
        # (provider-user variant: the find call's bearer is itself the user's token).
        assertion = raw or service_raw
        target_tenant = verified.tenant if verified is not None and verified.tenant is not None else tenant
        form = {"grant_type": GRANT_JWT_BEARER, **client_form, "assertion": assertion}
        answer = self._xsuaa_token(target_tenant, form, {}, url=props.get("tokenServiceURL", ""), via="destination-service")
        return self._auth_token_from(answer, auth), user

    @staticmethod
    def _auth_token_from(answer: Response, auth: str) -> dict[str, Any]:
        data = answer.json() or {}
        if answer.status != 200:
            return {"type": "", "value": "", "expires_in": "0",
                    "error": f"Retrieval of OAuth token for '{auth}' failed: "
                             f"{data.get('error', 'error')}: {data.get('error_description', '')}".rstrip(": ")}
        issued = data.get("issued_token_type")
        scheme = "SAML2.0" if issued == _SAML2_HEADER_TYPE else "Bearer"
        value = data["access_token"]
        return {"type": scheme if scheme != "Bearer" else "bearer", "value": value,
                "http_header": {"key": "Authorization", "value": f"{scheme} {value}"},
                "expires_in": str(data.get("expires_in", 0)), "scope": data.get("scope", "")}

    # ------------------------------------------------------------------ Connectivity proxy
    def check_proxy(self, request: Request) -> Response | None:
        """What the Connectivity proxy checks before forwarding: ``Proxy-Authorization`` is an
        unexpired XSUAA token of the connectivity client, and a Cloud Connector is connected
        for ``SAP-Connectivity-SCC-Location_ID``. ``None``: forward; else the answer (407/503)."""
        raw = _bearer(request.headers.get("Proxy-Authorization"))
        location = request.headers.get("SAP-Connectivity-SCC-Location_ID") or None
        parts = urlsplit(request.url)
        base = dict(service="connectivity-proxy", method=request.method, path=parts.path or "/", via_proxy=True,
                    location=location)
        try:
            if raw is None:
                raise _Reject("Proxy-Authorization with a Bearer token of the connectivity service is required.")
            verified = self._verify(raw)
            if verified.kind != "xsuaa" or verified.claims.get("cid") != self.connectivity_client:
                raise _Reject("The proxy token was not issued to the connectivity service instance's client.")
        except _Reject as exc:
            self._record(self.calls, Call(status=407, error=exc.description, token=fingerprint(raw) if raw else None, **base))
            return _json(407, {"error": "proxy_authentication_required", "error_description": exc.description},
                         {"Proxy-Authenticate": 'Bearer realm="connectivity"'})
        with self._lock:
            connected = location in self._locations
        if not connected:
            text = f"There is no SAP Cloud Connector (SCC) connected to your subaccount with location id '{location}'."
            self._record(self.calls, Call(status=503, error=text, token=fingerprint(raw), **base))
            return _json(503, {"error": "service_unavailable", "error_description": text})
        return None

    def _onprem(self, request: Request, origin: str, path: str) -> Response:
        refused = self.check_proxy(request)
        if refused is not None:
            return refused
        location = request.headers.get("SAP-Connectivity-SCC-Location_ID") or None
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        call = dict(service="onprem", method=request.method, path=path, via_proxy=True, location=location, query=query)
        if origin != _origin(self.origins.onprem):
            text = f"Access denied to system {urlsplit(request.url).netloc}: it is not mapped in the Cloud Connector."
            self._record(self.calls, Call(status=403, error=text, **call))
            return _json(403, {"error": {"code": "SCC/403", "message": text}})
        proxy_raw = _bearer(request.headers.get("Proxy-Authorization")) or ""
        proxy = self._verify(proxy_raw)
        proxy_fp = fingerprint(proxy_raw)
        assert proxy.tenant is not None
        tenant = proxy.tenant.subdomain
        user: str | None = None
        carried_by: str | None = None
        header_user = _bearer(request.headers.get("SAP-Connectivity-Authentication"))
        if header_user is not None:
            try:
                verified = self._verify(header_user)
            except _Reject as exc:
                self._record(self.calls, Call(status=401, tenant=tenant, carried_by="connectivity-header",
                                              error=exc.description, **call))
                return _odata_error(401, "Invalid user token in SAP-Connectivity-Authentication")
            user, carried_by = self._principal(verified.claims), "connectivity-header"
        elif self._principal(proxy.claims) is not None:
            user, carried_by = self._principal(proxy.claims), "proxy-token"
        elif _bearer(request.headers.get("Authorization")) is not None:
            bearer = _bearer(request.headers.get("Authorization")) or ""
            try:
                user, carried_by = self._principal(self._verify(bearer).claims), "bearer"
            except _Reject as exc:
                self._record(self.calls, Call(status=401, tenant=tenant, carried_by="bearer", error=exc.description,
                                              **call))
                return _odata_error(401, "Token expired" if exc.expired else "Invalid token")
        else:
            basic = _basic_user(request.headers.get("Authorization"))
            if basic is not None:
                name, password = basic
                with self._lock:
                    known = self._basic_users.get(name)
                if known is None or not hmac.compare_digest(known.encode(), password.encode()):
                    self._record(self.calls, Call(status=401, tenant=tenant, carried_by="basic", error="bad credentials", **call))
                    return _odata_error(401, "Logon failed")
                user, carried_by = name, "basic"
        if user is None:
            self._record(self.calls, Call(status=401, tenant=tenant, client=proxy.claims.get("cid"), error="no principal",
                                          token=proxy_fp, **call))
            return _odata_error(401, NO_USER_TOKEN_MESSAGE)
        answer = self._odata_answer(request, path, {"seenBy": user, "service": "onprem", "location": location,
                                                    "carriedBy": carried_by, "tenant": tenant})
        self._record(self.calls, Call(status=answer.status, user=user, tenant=tenant, client=proxy.claims.get("cid"),
                                      carried_by=carried_by, token=proxy_fp, **call))
        return answer

    # ------------------------------------------------------------------ backend / iFlow
    def _backend(self, request: Request, service: str, path: str) -> Response:
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        call = dict(service=service, method=request.method, path=path, query=query)
        authorization = request.headers.get("Authorization")
        raw = _bearer(authorization)
        basic = _basic_user(authorization)
        saml = authorization[8:].strip() if authorization and authorization[:8].lower() == "saml2.0 " else None
        if raw is not None or saml is not None:
            token = raw if raw is not None else saml
            assert token is not None
            try:
                verified = self._verify(token)
            except _Reject as exc:
                self._record(self.calls, Call(status=401, token=fingerprint(token), carried_by="bearer",
                                              error=exc.description, **call))
                return _odata_error(401, "Token expired" if exc.expired else "Invalid token")
            carried = "saml" if verified.kind == "saml" else "bearer"
            if (saml is not None) != (verified.kind == "saml"):
                self._record(self.calls, Call(status=401, token=fingerprint(token), error="wrong scheme", **call))
                return _odata_error(401, "Invalid token")
            user = self._principal(verified.claims)
            client = verified.claims.get("cid") or verified.claims.get("azp")
            tenant = verified.tenant.subdomain if verified.tenant else verified.claims.get("app_tid")
            rec = dict(token=fingerprint(token), client=client, tenant=tenant, carried_by=carried, **call)
            if service == "iflow" and (verified.kind != "xsuaa" or client not in self._iflow_clients):
                self._record(self.calls, Call(status=403, user=user, error="client not authorized for the iFlow", **rec))
                return _json(403, {"error": "Forbidden", "message": "The token's client may not send messages to this iFlow."})
            if user is None and not self.accept_technical:
                self._record(self.calls, Call(status=401, error="technical user", **rec))
                return _odata_error(401, NO_USER_TOKEN_MESSAGE)
            answer = self._odata_answer(request, path, {"seenBy": user, "service": service, "tenant": tenant,
                                                        "client": client, "carriedBy": carried})
            self._record(self.calls, Call(status=answer.status, user=user, **rec))
            return answer
        if basic is not None:
            name, password = basic
            with self._lock:
                known = self._basic_users.get(name)
            if known is None or not hmac.compare_digest(known.encode(), password.encode()):
                self._record(self.calls, Call(status=401, carried_by="basic", error="bad credentials", **call))
                return _odata_error(401, "Logon failed")
            answer = self._odata_answer(request, path, {"seenBy": name, "service": service, "carriedBy": "basic"})
            self._record(self.calls, Call(status=answer.status, user=name, carried_by="basic", **call))
            return answer
        self._record(self.calls, Call(status=401, error="no credentials", **call))
        return _odata_error(401, NO_USER_TOKEN_MESSAGE)

    def _odata_answer(self, request: Request, path: str, seen: dict[str, Any]) -> Response:
        headers: dict[str, str] = {}
        if (request.headers.get("X-CSRF-Token") or "").lower() == "fetch":
            digest = hashlib.sha256(f"{seen.get('seenBy')}|{self._xsuaa_issuer.kid}".encode()).hexdigest()[:24]
            headers["X-CSRF-Token"] = digest
        if request.method == "HEAD":
            return Response(200, {"Content-Type": "application/json", **headers}, b"")
        body: dict[str, Any] = dict(seen)
        body.update({"method": request.method, "path": path})
        status = 201 if request.method == "POST" else 200
        entity_set, key = _functional_location_target(path)
        if entity_set and key is None and request.method == "GET":
            rows = [dict(item) for item in _FUNCTIONAL_LOCATIONS]
            top = parse_qs(urlsplit(request.url).query).get("$top", [""])[0]
            body["d"] = {"results": rows[: int(top)] if top.isdigit() else rows}
        elif entity_set and key is not None and request.method == "GET":
            row = next((dict(item) for item in _FUNCTIONAL_LOCATIONS if item["FunctionalLocation"] == key), None)
            if row is None:
                return _json(404, {"error": {"code": "/IWBEP/CM_MGW_RT/020", "message": f"Resource not found for segment '{key}'"}})
            body["d"] = row
        else:
            body["d"] = {"results": []}
        return _json(status, body, headers)


# =============================================================================== helpers
_ENTITY_KEY = re.compile(r"^\('((?:[^']|'')*)'\)$")


def _functional_location_target(path: str) -> tuple[bool, str | None]:
    """Whether ``path`` is a functional-location entity set (either service), and the key of
    ``...('<id>')`` (OData string literal, percent-decoded, ``''`` → ``'``) if one is addressed."""
    path = unquote(path.rstrip("/"))
    for entity_set in _FUNCTIONAL_LOCATION_SETS:
        if path == entity_set:
            return True, None
        if path.startswith(entity_set):
            match = _ENTITY_KEY.match(path[len(entity_set):])
            if match:
                return True, match.group(1).replace("''", "'")
    return False, None


def _form(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def _basic_user(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


def _odata_error(status: int, message: str) -> Response:
    return _json(status, {"error": {"code": "/IWFND/CM_CONSUMER/401" if status == 401 else str(status), "message": message}},
                 {"WWW-Authenticate": 'Bearer realm="SAP NetWeaver Application Server"'} if status == 401 else None)


def _saml_assertion(user: _User, issuer: str, audience: str) -> str:
    """A base64url SAML 2.0 assertion (unsigned: the landscape remembers what it issued)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    xml = (
        f'<saml2:Assertion xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion" ID="_{uuid.uuid4().hex}" '
        f'IssueInstant="{now}" Version="2.0"><saml2:Issuer>{quote(issuer)}</saml2:Issuer><saml2:Subject>'
        f"<saml2:NameID>{quote(user.name)}</saml2:NameID></saml2:Subject><saml2:Conditions><saml2:AudienceRestriction>"
        f"<saml2:Audience>{quote(audience)}</saml2:Audience></saml2:AudienceRestriction></saml2:Conditions>"
        f"</saml2:Assertion>"
    )
    return base64.urlsafe_b64encode(xml.encode("utf-8")).rstrip(b"=").decode("ascii")


