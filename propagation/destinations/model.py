"""``Destination``: one resolved target, whatever its source (env var, binding, service)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

from ..exchange.http_headers import header_problem
from ..exchange.oauth import ClientCredentials

__all__ = ["Destination", "Properties", "header_problem", "without_userinfo", "secret_values", "AUTHENTICATIONS", "USER_AUTHENTICATIONS", "SERVICE_TOKEN_AUTHENTICATIONS", "authentication_needs_user", "canonical_authentication"]

#: Types whose headers the Destination service delivers as ``authTokens`` (no exchange by us).
SERVICE_TOKEN_AUTHENTICATIONS = frozenset(
    {
        "BasicAuthentication",
        "OAuth2ClientCredentials",
        "OAuth2Password",
        "OAuth2JWTBearer",
        "OAuth2UserTokenExchange",
        "OAuth2TokenExchange",
        "OAuth2SAMLBearerAssertion",
        "OAuth2RefreshToken",
        "SAMLAssertion",
    }
)

#: Authentication types that carry the calling user and therefore need a user token.
USER_AUTHENTICATIONS = frozenset(
    {
        "OAuth2JWTBearer",
        "OAuth2UserTokenExchange",
        "OAuth2TokenExchange",
        "OAuth2SAMLBearerAssertion",
        "SAMLAssertion",
        "PrincipalPropagation",
    }
)

#: ProxyType values, lower-cased → canonical spelling.
PROXY_TYPES = {"internet": "Internet", "onpremise": "OnPremise", "privatelink": "PrivateLink"}

#: Every Authentication type the library handles, in DESIGN §4's order.
AUTHENTICATIONS = (
    "NoAuthentication",
    "BasicAuthentication",
    "OAuth2ClientCredentials",
    "OAuth2Password",
    "OAuth2JWTBearer",
    "OAuth2UserTokenExchange",
    "OAuth2TokenExchange",
    "OAuth2SAMLBearerAssertion",
    "PrincipalPropagation",
    "ClientCertificateAuthentication",
    "OAuth2RefreshToken",  # Destination service only: X-refresh-token given per call
    "SAMLAssertion",  # Destination service only: the service makes the user's assertion
)
_CANONICAL_AUTH = {name.lower(): name for name in AUTHENTICATIONS}


def authentication_needs_user(
    authentication: str, *, forward_auth_token: bool, system_user: bool, client_provided_assertion: bool = False
) -> bool:
    """DESIGN §4's "needs user" column: only the calling user may be sent (fail closed).
    ``OAuth2SAMLBearerAssertion`` with ``SystemUser``, or whose assertion the client provides
    (``SAMLAssertionProvider: ClientProvided``, ``X-samlAssertion``), does not."""
    if authentication == "NoAuthentication":
        return forward_auth_token
    if authentication == "OAuth2SAMLBearerAssertion" and (system_user or client_provided_assertion):
        return False
    return authentication in USER_AUTHENTICATIONS


#: An HTTP header name (RFC 9110 token) and a value both transports send as is: printable
#: ASCII and tabs — no line break (header splitting), nothing requests/httpx refuse to encode.


#: Property names (lower-case) whose values are credentials; prefixes whose values may be.
_SECRET_WORDS = ("password", "secret", "token", "clientkey", "assertion")
_SECRET_PREFIXES = ("url.headers.", "url.queries.", "tokenserviceurl.headers.", "tokenserviceurl.queries.",
                    "tokenservice.body.")


def secret_values(properties: Mapping[str, Any]) -> tuple[str, ...]:
    """Every value of ``properties`` that is or may be a credential (``Password``,
    ``clientSecret``, ``tokenServicePassword``, ``KeyStorePassword``, ``refreshToken``,
    ``URL.headers.*`` …) and the password of a URL's user info: what a peer's error text must
    never echo into an exception (:func:`propagation.exchange.redaction.sanitize` removes them)."""
    found: list[str] = []
    for key, value in properties.items():
        low = str(key).lower()
        if isinstance(value, str) and value and (
                any(word in low for word in _SECRET_WORDS) or low.startswith(_SECRET_PREFIXES)):
            found.append(value)
        if low == "url" and isinstance(value, str) and "@" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.append(password)
    return tuple(found)


def without_userinfo(url: str) -> str:
    """``url`` without ``user:password@`` (for reprs and messages): a Destination-service URL may carry it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, "***@" + parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment))


def canonical_authentication(value: str) -> str | None:
    """The canonical spelling of an Authentication type, or ``None`` if unknown."""
    return _CANONICAL_AUTH.get(value.strip().lower())


class Properties(Mapping[str, Any]):
    """Destination properties with case-insensitive keys (as the Destination service treats them)."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, tuple[str, Any]] = {}
        self._prefixed: dict[str, dict[str, str]] = {}  # memo: properties never change
        for key, value in (data or {}).items():
            self._data[str(key).lower()] = (str(key), value)

    def __getitem__(self, key: str) -> Any:
        return self._data[key.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (original for original, _ in self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._data

    def text(self, key: str, default: str | None = None) -> str | None:
        """A property as a stripped string (``None``/empty → ``default``)."""
        value = self.get(key)
        if value is None:
            return default
        value = str(value).strip()
        return value or default

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("true", "1", "yes", "on")

    def prefixed(self, prefix: str) -> dict[str, str]:
        """``{suffix: value}`` of every property named ``<prefix><suffix>`` (case-insensitive prefix)."""
        memo = self._prefixed.get(prefix)
        if memo is not None:
            return dict(memo)
        lowered = prefix.lower()
        out: dict[str, str] = {}
        for low, (original, value) in self._data.items():
            if low.startswith(lowered) and len(low) > len(lowered) and value is not None:
                out[original[len(prefix):]] = str(value)
        self._prefixed[prefix] = out
        return dict(out)

    def __repr__(self) -> str:  # values may be secrets
        return f"Properties(keys={sorted(k for k in self)!r})"


@dataclass(frozen=True, repr=False)
class Destination:
    """A destination: where to call and how to authenticate. ``repr`` shows no secrets."""

    name: str
    url: str
    authentication: str = "NoAuthentication"
    proxy_type: str = "Internet"
    properties: Properties = field(default_factory=Properties)
    source: str = ""
    forward_auth_token: bool = False
    timeout: float | None = None  # seconds
    proxy_host: str | None = None
    proxy_port: int | None = None
    strict_ssl: bool = True
    client: ClientCredentials | None = None
    token_service_url: str | None = None
    #: Set for destinations found by the Destination service: their authTokens and certificate.
    #: (A :class:`~propagation.destinations.service.ServiceLink`; typed loosely so that the model
    #: does not import the service client that builds it.)
    service: Any = field(default=None, compare=False)
    #: True when no ``Authentication`` was given and the type was inferred (``BasicAuthentication``
    #: from ``User``/``Password``, as the SAP Cloud SDK does; else ``NoAuthentication``).
    authentication_inferred: bool = field(default=False, compare=False)

    @cached_property
    def needs_user(self) -> bool:
        """True when this destination can only be called as the calling user."""
        return authentication_needs_user(
            self.authentication,
            forward_auth_token=self.forward_auth_token,
            system_user=bool(self.properties.text("SystemUser")),
            client_provided_assertion=(self.properties.text("SAMLAssertionProvider") or "").lower() == "clientprovided",
        )

    @cached_property
    def memo(self) -> dict[Any, Any]:
        """Values derived from this (immutable) destination by its users, computed once."""
        return {}

    @cached_property
    def on_premise(self) -> bool:
        return self.proxy_type.lower() == "onpremise"

    @cached_property
    def location_id(self) -> str | None:
        return self.properties.text("CloudConnectorLocationId")

    def __repr__(self) -> str:
        return (
            f"Destination(name={self.name!r}, url={without_userinfo(self.url)!r}, authentication={self.authentication!r}, "
            f"proxy_type={self.proxy_type!r}, source={self.source!r})"
        )
