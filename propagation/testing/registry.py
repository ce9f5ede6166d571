"""The landscape's registry: tenants, clients, users, declared destinations, signing keys."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..destinations.model import AUTHENTICATIONS, authentication_needs_user


#: The Authentication types a destination line may name: every type the library knows but
#: ClientCertificateAuthentication, which the landscape does not emulate.
_EMULATED_AUTHENTICATIONS = frozenset(AUTHENTICATIONS) - {"ClientCertificateAuthentication"}

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
    tenant: str | None = None  # subdomain of the only subaccount holding it; None: every tenant's
    level: str = "subaccount"  # "subaccount" | "instance"

    @property
    def key(self) -> str:
        """``name``, ``tenant/name``, ``name@instance`` or ``tenant/name@instance``."""
        where = f"{self.tenant}/" if self.tenant else ""
        return f"{where}{self.name}" + ("@instance" if self.level == "instance" else "")

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
            f"proxy_type={self.proxy_type!r}, url={self.url!r}, source={self.source!r}, tenant={self.tenant!r}, "
            f"level={self.level!r})"
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


