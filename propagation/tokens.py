"""``UserToken``: what a raw JWT says about its user, read without any I/O.

Decoding here does *not* validate the signature: that is the inbound validator's job
(:mod:`propagation.inbound`). This module only parses, so it is safe to call on any
string and never touches the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

from .errors import InvalidTokenError

__all__ = ["UserToken", "TokenKind", "fingerprint", "is_host_label"]

TokenKind = Literal["xsuaa", "ias"]

#: Longest raw token accepted; real BTP tokens are a few kB.
MAX_TOKEN_LENGTH = 16 * 1024


#: One DNS label (RFC 1123 §2.1): letters, digits and inner hyphens, 1-63 characters.
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_host_label(value: object) -> bool:
    """True when ``value`` is one RFC 1123 host label: safe to put in front of a domain."""
    return isinstance(value, str) and value.isascii() and _HOST_LABEL.fullmatch(value) is not None


def fingerprint(raw: str) -> str:
    """A stable, non-reversible identifier of a token, for cache keys and logs."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def _b64url_json(segment: str, what: str) -> dict[str, Any]:
    try:
        padded = segment + "=" * (-len(segment) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError) as exc:
        raise InvalidTokenError(f"Malformed JWT: the {what} is not base64url-encoded JSON.") from exc
    if not isinstance(data, dict):
        raise InvalidTokenError(f"Malformed JWT: the {what} is not a JSON object.")
    return data


@dataclass(frozen=True, repr=False, eq=False)
class UserToken:
    """A user's JWT with its claims. ``repr`` shows the fingerprint, never the token."""

    raw: str
    header: Mapping[str, Any] = field(default_factory=dict)
    claims: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str) -> "UserToken":
        """Parse a compact JWS. Raises :class:`InvalidTokenError` for anything else."""
        if not isinstance(raw, str) or not raw:
            raise InvalidTokenError("Empty token.")
        if len(raw) > MAX_TOKEN_LENGTH:
            raise InvalidTokenError(f"Token longer than {MAX_TOKEN_LENGTH} characters.")
        if not raw.isascii():
            raise InvalidTokenError("Malformed JWT: non-ASCII characters.")
        parts = raw.split(".")
        if len(parts) != 3 or not all(parts[:2]):
            raise InvalidTokenError("Malformed JWT: expected three dot-separated segments.")
        header = _b64url_json(parts[0], "header")
        claims = _b64url_json(parts[1], "payload")
        return cls(raw=raw, header=header, claims=claims)

    # -- identity -----------------------------------------------------------------
    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.raw)

    @property
    def issuer(self) -> str | None:
        iss = self.claims.get("ias_iss") or self.claims.get("iss")
        return iss if isinstance(iss, str) else None

    @cached_property
    def kind(self) -> TokenKind:
        """``xsuaa`` for XSUAA-issued tokens, ``ias`` for SAP Cloud Identity Services."""
        ext_attr = self.claims.get("ext_attr")
        if isinstance(ext_attr, Mapping) and ext_attr.get("enhancer") == "XSUAA":
            return "xsuaa"
        iss = self.claims.get("iss")
        if isinstance(iss, str) and urlsplit(iss).path.rstrip("/").endswith("/oauth/token"):
            return "xsuaa"
        if "zid" in self.claims and "cid" in self.claims and "app_tid" not in self.claims:
            return "xsuaa"
        return "ias"

    @property
    def tenant(self) -> str | None:
        """Tenant (zone) id: ``zid`` for XSUAA, ``app_tid`` (or ``zone_uuid``) for IAS."""
        if self.kind == "xsuaa":
            value = self.claims.get("zid")
        else:
            value = self.claims.get("app_tid") or self.claims.get("zone_uuid")
        return value if isinstance(value, str) and value else None

    @property
    def subdomain(self) -> str | None:
        """XSUAA subaccount subdomain: ``ext_attr.zdn``, else the issuer's first host label.
        ``None`` for IAS tokens: their issuer's label is the IAS tenant, not the subaccount (they
        name their tenant by id, :attr:`tenant`)."""
        ext_attr = self.claims.get("ext_attr")
        if isinstance(ext_attr, Mapping) and isinstance(ext_attr.get("zdn"), str) and ext_attr["zdn"]:
            return ext_attr["zdn"]
        if self.kind != "xsuaa":
            return None
        iss = self.issuer
        if iss:
            host = urlsplit(iss if "://" in iss else f"https://{iss}").hostname or ""
            label = host.split(".", 1)[0]
            return label or None
        return None

    @property
    def tenant_subdomain(self) -> str | None:
        """:attr:`subdomain`, checked to be one RFC 1123 host label before anything builds a URL
        or a header with it: a token given to ``use_token``/``user_token=`` is not validated,
        and a ``zdn`` like ``attacker.example#`` would send client secrets and the user's JWT
        to another host. Raises :class:`InvalidTokenError` (the value is not echoed)."""
        subdomain = self.subdomain
        if subdomain is not None and not is_host_label(subdomain):
            raise InvalidTokenError(
                "The token's tenant subdomain (ext_attr.zdn, else the issuer's first host label) is not a DNS host "
                "label (RFC 1123: letters, digits, inner hyphens, at most 63 characters); refused before any request."
            )
        return subdomain

    @property
    def user(self) -> str | None:
        """The user id the backend will see (``user_name``, ``user_uuid``, ``email`` or ``sub``)."""
        for claim in ("user_name", "user_uuid", "email", "sub"):
            value = self.claims.get(claim)
            if isinstance(value, str) and value:
                return value
        return None

    @property
    def client_id(self) -> str | None:
        value = self.claims.get("cid") or self.claims.get("azp") or self.claims.get("client_id")
        return value if isinstance(value, str) else None

    @property
    def audiences(self) -> tuple[str, ...]:
        aud = self.claims.get("aud")
        if isinstance(aud, str):
            return (aud,)
        if isinstance(aud, (list, tuple)):
            return tuple(a for a in aud if isinstance(a, str))
        return ()

    @property
    def grant_type(self) -> str | None:
        value = self.claims.get("grant_type")
        return value if isinstance(value, str) else None

    @cached_property
    def is_user(self) -> bool:
        """False for technical tokens, which carry no user: XSUAA ``client_credentials``;
        IAS tokens of a client — ``sap_id_type: "app"`` (how IAS marks them; ``@sap/xssec``
        v4's ``IdentityServiceToken.idType``), ``grant_type: client_credentials``, or, for
        tokens without ``sap_id_type``, a subject that is the client itself (``sub == azp``)."""
        if self.grant_type == "client_credentials":
            return False
        if self.kind == "ias":
            id_type = self.claims.get("sap_id_type")
            if id_type is not None:
                return id_type != "app"
            sub, azp = self.claims.get("sub"), self.claims.get("azp")
            if isinstance(sub, str) and sub and sub == azp:
                return False
        return True

    # -- lifetime -----------------------------------------------------------------
    @property
    def expires_at(self) -> float | None:
        exp = self.claims.get("exp")
        return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None

    def expires_in(self, now: float | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def is_expired(self, skew: float = 0.0, now: float | None = None) -> bool:
        remaining = self.expires_in(now)
        return remaining is not None and remaining <= skew

    # -- dunder -------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"UserToken(kind={self.kind!r}, user={self.user!r}, tenant={self.tenant!r}, fingerprint={self.fingerprint!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserToken) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)
