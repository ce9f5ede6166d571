"""What a ``destination`` binding says (DESIGN §5, "Destination binding"): the OAuth client
(secret or X.509), its token URL, the API URI and the provider tenant — and, per user, which
tenant a lookup belongs to and where that tenant's service token comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from ..bindings import Binding
from ..errors import ConfigurationError
from ..exchange.oauth import ClientCredentials
from ..tokens import UserToken

__all__ = ["DestinationServiceConfig"]


def _text(creds: Mapping[str, Any], key: str) -> str | None:
    value = creds.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _with_first_label(url: str, label: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    rest = host.split(".", 1)[1] if "." in host else host
    netloc = f"{label}.{rest}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class _Tenant:
    id: str
    token_url: str
    subscriber: bool


@dataclass(frozen=True, repr=False)
class DestinationServiceConfig:
    """What the ``destination`` binding says: the OAuth client, token URL, API URI, tenant."""

    binding_name: str
    client: ClientCredentials
    token_url: str
    uri: str
    tenant_id: str | None = None
    identityzone: str | None = None

    @classmethod
    def from_binding(cls, binding: Binding) -> "DestinationServiceConfig":
        creds = binding.credentials
        where = f"Destination service binding '{binding.name}' ({binding.source or 'bindings'})"
        client_id = _text(creds, "clientid")
        secret = _text(creds, "clientsecret")
        certificate, key = _text(creds, "certificate"), _text(creds, "key")
        mtls = bool(certificate and key)
        credential_type = (_text(creds, "credential-type") or _text(creds, "credential_type") or "").lower()
        if credential_type == "x509_attested" and not mtls:
            raise ConfigurationError(
                f"{where} has credential-type 'x509_attested': its client certificate comes from the Zero Trust "
                f"Identity Service (SPIRE-attested workload credentials from the SPIRE agent's workload API), which "
                f"this library does not read; put the workload's 'certificate' and 'key' (PEM) into the binding, or "
                f"bind the instance with credential-type 'x509' or 'binding-secret'."
            )
        if not client_id or not (secret or mtls):
            raise ConfigurationError(f"{where} needs 'clientid' with 'clientsecret' (or 'certificate' and 'key').")
        base = (_text(creds, "certurl") if mtls else None) or _text(creds, "url")
        uri = _text(creds, "uri")
        for field_name, value in (("url", base), ("uri", uri)):
            parts = urlsplit(value or "")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError(f"{where} needs '{field_name}' as an absolute http(s) URL.")
        assert base is not None and uri is not None
        base = base.rstrip("/")
        token_url = base if base.endswith("/oauth/token") else base + "/oauth/token"
        client = ClientCredentials(
            client_id=client_id,
            client_secret=None if mtls else secret,
            certificate=certificate if mtls else None,
            key=key if mtls else None,
        )
        tenant_id = _text(creds, "tenantid") or _text(creds, "identityzoneid")
        return cls(binding.name, client, token_url, uri.rstrip("/"), tenant_id, _text(creds, "identityzone"))

    def tenant_for(self, user: UserToken | None) -> _Tenant:
        """The tenant of the lookup and the token URL of its service token."""
        provider = _Tenant(self.tenant_id or self.identityzone or "provider", self.token_url, False)
        if user is None or user.kind != "xsuaa":
            return provider
        tenant, subdomain = user.tenant, user.tenant_subdomain  # a host label, else InvalidTokenError
        if not tenant or not subdomain or tenant == self.tenant_id:
            return provider
        if self.tenant_id is None and subdomain == self.identityzone:
            return provider
        return _Tenant(tenant, _with_first_label(self.token_url, subdomain), True)

    def __repr__(self) -> str:
        return f"DestinationServiceConfig(binding={self.binding_name!r}, client={self.client!r}, uri={self.uri!r})"
