"""What the landscape records: token exchanges, service calls, raw traffic (fingerprints only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Mapping, TypeVar


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

    def distinct(self, name: str) -> list[Any]:
        """The distinct values of one field, in order of first appearance (``None`` left out):
        ``landscape.traffic.where(url=...).distinct("connection")`` counts connections."""
        return [v for v in dict.fromkeys(self.values(name)) if v is not None]

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
    connection: str | None = None  # the client's TCP connection (sandbox: "xsuaa#3"); None in process

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
    connection: str | None = None  # the client's TCP connection (through the proxy: the app's to the proxy)

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
    connection: str | None = None


