"""What the inbound side established for one request (the gate's and the caches' value)."""

from __future__ import annotations

from dataclasses import dataclass

from ..tokens import UserToken

__all__ = ["Authenticated"]


@dataclass(frozen=True)
class Authenticated:
    """What the inbound side established for one request.

    ``token`` is the user (``environ["propagation.token"]``, :func:`current_token`): the
    validated inbound token, or for a public (PKCE) client the IAS token it was exchanged
    for. ``xsuaa_token`` is the XSUAA token obtained for an IAS token in hybrid mode
    (``environ["propagation.xsuaa_token"]``, :func:`current_xsuaa_token`); ``public_token``
    the caller's original public-client token (``environ["propagation.public_token"]``).
    """

    token: UserToken
    xsuaa_token: UserToken | None = None
    public_token: UserToken | None = None

    @property
    def expires_at(self) -> float:
        ends = [t.expires_at for t in (self.token, self.xsuaa_token, self.public_token) if t is not None]
        return min(e for e in ends if e is not None) if any(e is not None for e in ends) else 0.0
