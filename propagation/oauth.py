"""OAuth 2.0 token endpoint client: client_credentials, password, jwt-bearer (RFC 7523),
token exchange (RFC 8693); client authentication by secret (Basic or form body) or by
X.509 (mTLS). Every call has a timeout; 5xx and connection errors retry with bounded
backoff; a 4xx answer raises :class:`~propagation.errors.TokenExchangeError` carrying the
OAuth ``error`` field. No token, secret or key ever appears in a message or a log line.

INTERFACE (fixed; implementation by the oauth/cache owner):
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "GRANT_CLIENT_CREDENTIALS",
    "GRANT_PASSWORD",
    "GRANT_JWT_BEARER",
    "GRANT_TOKEN_EXCHANGE",
    "ClientCredentials",
    "TokenResponse",
    "OAuthClient",
]

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_PASSWORD = "password"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@dataclass(frozen=True, repr=False)
class ClientCredentials:
    """An OAuth client: id plus a secret, or a PEM certificate and key (mTLS)."""

    client_id: str
    client_secret: str | None = None
    certificate: str | None = None  # PEM chain
    key: str | None = None  # PEM private key

    @property
    def uses_mtls(self) -> bool:
        return bool(self.certificate and self.key)

    def __repr__(self) -> str:
        mode = "mtls" if self.uses_mtls else ("secret" if self.client_secret else "public")
        return f"ClientCredentials(client_id={self.client_id!r}, auth={mode!r})"


@dataclass(frozen=True, repr=False)
class TokenResponse:
    """A token endpoint's answer. ``expires_at`` is absolute (epoch seconds)."""

    access_token: str
    token_type: str = "bearer"
    expires_at: float | None = None
    scope: str | None = None
    issued_token_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def expires_in(self, now: float | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def __repr__(self) -> str:
        from .tokens import fingerprint

        return f"TokenResponse(token_type={self.token_type!r}, expires_at={self.expires_at!r}, fingerprint={fingerprint(self.access_token)!r})"
