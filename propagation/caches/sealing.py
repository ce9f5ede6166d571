"""Token values sealed for a shared cache (DESIGN §6: "values in a shared cache may be
encrypted"): AES-256-GCM with a fresh nonce per value and the cache key as associated data, so
a value copied to another key does not open, and a store dump holds no usable token."""

from __future__ import annotations

import base64
import binascii
import json
import os

from .._log import logger
from ..errors import ConfigurationError
from ..exchange.oauth import TokenResponse

__all__ = ["Sealer", "decode_key"]

_FORMAT = b"\x01"  # value layout version: 0x01 | nonce (12) | AES-GCM ciphertext+tag
_NONCE = 12


def decode_key(value: str, what: str = "PROPAGATION_CACHE_KEY") -> bytes:
    """A base64 (standard or URL-safe) 32-byte key; the message never contains the value."""
    text = (value or "").strip()
    raw = b""
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    raise ConfigurationError(f"{what} must be 32 bytes, base64-encoded (AES-256 key); got {len(raw)} bytes or invalid base64.")


class Sealer:
    """Seals ``(token, usable_until)`` under a 32-byte key, bound to the value's name."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    def __repr__(self) -> str:  # never the key
        return "Sealer(AES-256-GCM)"

    def seal(self, name: str, token: TokenResponse, usable_until: float) -> bytes:
        nonce = os.urandom(_NONCE)
        return _FORMAT + nonce + self._aead.encrypt(nonce, _token_to_json(token, usable_until), name.encode("ascii"))

    def open(self, name: str, value: bytes | None) -> tuple[TokenResponse, float] | None:
        """``(token, usable_until)``, or ``None`` for no value or one that does not open."""
        if value is None:
            return None
        from cryptography.exceptions import InvalidTag

        try:
            if value[:1] != _FORMAT or len(value) < 1 + _NONCE + 16:
                raise ValueError("unknown layout")
            plain = self._aead.decrypt(value[1 : 1 + _NONCE], value[1 + _NONCE :], name.encode("ascii"))
            return _token_from_json(plain)
        except (InvalidTag, ValueError, KeyError, TypeError):
            logger.debug("token cache: a stored value did not decrypt (other key?): treated as a miss")
            return None


def _token_to_json(token: TokenResponse, usable_until: float) -> bytes:
    data = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_at": token.expires_at,
        "scope": token.scope,
        "issued_token_type": token.issued_token_type,
        "extra": dict(token.extra),
        "usable_until": usable_until,
    }
    return json.dumps(data, separators=(",", ":"), default=str).encode("utf-8")


def _token_from_json(raw: bytes) -> tuple[TokenResponse, float]:
    data = json.loads(raw.decode("utf-8"))
    token = TokenResponse(
        access_token=data["access_token"],
        token_type=data.get("token_type") or "bearer",
        expires_at=data.get("expires_at"),
        scope=data.get("scope"),
        issued_token_type=data.get("issued_token_type"),
        extra=data.get("extra") or {},
    )
    return token, float(data["usable_until"])
