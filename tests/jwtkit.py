"""Test-only JWT issuers: real RSA keys, real signatures, the claim shapes of XSUAA and IAS."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

_KEY_CACHE: dict[str, rsa.RSAPrivateKey] = {}


def rsa_key(name: str = "default") -> rsa.RSAPrivateKey:
    if name not in _KEY_CACHE:
        _KEY_CACHE[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEY_CACHE[name]


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": _b64(numbers.n), "e": _b64(numbers.e)}


@dataclass
class Xsuaa:
    """An XSUAA tenant: binding credentials plus a signer for its tokens."""

    subdomain: str = "provider"
    uaadomain: str = "authentication.eu10.hana.ondemand.com"
    clientid: str = "sb-app!t123"
    clientsecret: str = "xsuaa-secret-VALUE"
    xsappname: str = "app!t123"
    zid: str = "tenant-provider-zid"
    kid: str = "key-xsuaa"
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa_key("xsuaa"))

    @property
    def url(self) -> str:
        return f"https://{self.subdomain}.{self.uaadomain}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token"

    @property
    def keys_url(self) -> str:
        return f"https://{self.uaadomain}/token_keys"

    def credentials(self) -> dict[str, Any]:
        return {
            "clientid": self.clientid,
            "clientsecret": self.clientsecret,
            "url": self.url,
            "uaadomain": self.uaadomain,
            "xsappname": self.xsappname,
            "identityzone": self.subdomain,
            "identityzoneid": self.zid,
            "tenantid": self.zid,
            "verificationkey": public_pem(self.key),
        }

    def token_keys(self) -> dict[str, Any]:
        return {"keys": [{**jwk(self.key, self.kid), "value": public_pem(self.key)}]}

    def token(self, user: str = "alice@example.com", *, scopes: tuple[str, ...] = ("openid",), ttl: int = 3600,
              zid: str | None = None, subdomain: str | None = None, cid: str | None = None,
              key: rsa.RSAPrivateKey | None = None, extra: dict[str, Any] | None = None,
              grant_type: str = "authorization_code") -> str:
        now = int(time.time())
        sub = subdomain or self.subdomain
        claims: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "iss": f"https://{sub}.{self.uaadomain}/oauth/token",
            "sub": str(uuid.uuid5(uuid.NAMESPACE_DNS, user)),
            "user_name": user,
            "email": user,
            "origin": "sap.default",
            "cid": cid or self.clientid,
            "azp": cid or self.clientid,
            "client_id": cid or self.clientid,
            "grant_type": grant_type,
            "zid": zid or self.zid,
            "ext_attr": {"enhancer": "XSUAA", "subaccountid": zid or self.zid, "zdn": sub},
            "scope": list(scopes) + [f"{self.xsappname}.Read"],
            "aud": [self.clientid, self.xsappname],
            "iat": now,
            "exp": now + ttl,
        }
        claims.update(extra or {})
        return jwt.encode(claims, key or self.key, algorithm="RS256",
                          headers={"kid": self.kid, "jku": f"{self.keys_url}?zid={zid or self.zid}"})


@dataclass
class Ias:
    """An IAS tenant (SAP Cloud Identity Services)."""

    host: str = "mytenant.accounts.ondemand.com"
    domain: str = "accounts.ondemand.com"
    clientid: str = "ias-client-id"
    clientsecret: str = "ias-secret-VALUE"
    app_tid: str = "ias-app-tid"
    kid: str = "key-ias"
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa_key("ias"))

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/oauth2/certs"

    def credentials(self) -> dict[str, Any]:
        return {"clientid": self.clientid, "clientsecret": self.clientsecret, "url": self.url,
                "domains": [self.domain], "app_tid": self.app_tid}

    def openid_configuration(self) -> dict[str, Any]:
        return {"issuer": self.url, "jwks_uri": self.jwks_url, "token_endpoint": f"{self.url}/oauth2/token"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [jwk(self.key, self.kid)]}

    def token(self, user: str = "bob@example.com", *, aud: list[str] | None = None, ttl: int = 3600,
              app_tid: str | None = None, key: rsa.RSAPrivateKey | None = None,
              extra: dict[str, Any] | None = None, issuer: str | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.url,
            "sub": str(uuid.uuid5(uuid.NAMESPACE_DNS, user)),
            "user_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, user)),
            "email": user,
            "aud": aud if aud is not None else [self.clientid],
            "azp": self.clientid,
            "app_tid": app_tid or self.app_tid,
            "zone_uuid": app_tid or self.app_tid,
            "iat": now,
            "exp": now + ttl,
            "sid": uuid.uuid4().hex,
        }
        claims.update(extra or {})
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})


def unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token (must always be rejected)."""
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}."


def ias_token_url(ias: Ias) -> str:
    """The IAS token endpoint (``{url}/oauth2/token``)."""
    return f"{ias.url}/oauth2/token"


def self_signed_certificate(common_name: str = "propagation-test-client") -> tuple[str, str]:
    """A throw-away X.509 client certificate and its key (PEM), for mTLS bindings."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem
