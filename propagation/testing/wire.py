"""Wire types, protocol constants and small parsing helpers shared by every emulated service."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qs, urlsplit

from requests.structures import CaseInsensitiveDict


logger = logging.getLogger("propagation.testing")

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_PASSWORD = "password"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_SAML2_BEARER = "urn:ietf:params:oauth:grant-type:saml2-bearer"
GRANT_REFRESH_TOKEN = "refresh_token"
_GRANT_NAMES = {
    GRANT_CLIENT_CREDENTIALS: "client_credentials",
    GRANT_PASSWORD: "password",
    GRANT_JWT_BEARER: "jwt-bearer",
    GRANT_TOKEN_EXCHANGE: "token-exchange",
    GRANT_SAML2_BEARER: "saml2-bearer",
    GRANT_REFRESH_TOKEN: "refresh_token",
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
#: The IAS public (PKCE) client registered in every landscape: a mobile app / SPA whose
#: tokens the app's IAS client may exchange (``landscape.add_public_client`` adds more).
PUBLIC_CLIENT_ID = "spa-public-client"
FIND_PATH = "/destination-configuration/v1/destinations/"

#: Users registered in every landscape: name → (password, scopes). ``landscape.add_user`` adds more.
DEFAULT_USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "alice": ("alice-password", ("Read", "Write", "Order")),
    "bob": ("bob-password", ("Read",)),
}


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
    connection: str | None = None  # the transport's id of the TCP connection (sandbox), None in process

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


