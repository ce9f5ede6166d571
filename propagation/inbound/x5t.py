"""Certificate-bound tokens (RFC 8705 §3): does the caller own the token it presents?

An IAS token requested with mTLS carries ``cnf: {"x5t#S256": <base64url SHA-256 of the
client certificate (DER)>}``. BTP terminates TLS and forwards the caller's certificate in
``X-Forwarded-Client-Cert`` — as PEM (Cloud Foundry; its line breaks possibly escaped, header
and footer possibly missing) or in Envoy's XFCC format (Kyma: ``Hash=…;Cert="<url-encoded
PEM>"``, the last entry counts). The check is ``@sap/xssec`` v4's
``IdentityService.validateTokenOwnership`` (config ``validation.x5t.enabled``) and the Java
library's ``JwtX5tValidator``: a token without the claim, a request without a certificate,
an unreadable certificate or another thumbprint are refused (401), each named.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import unquote

from ..errors import InvalidTokenError
from ..tokens import UserToken

__all__ = ["FORWARDED_CLIENT_CERT_HEADER", "certificate_thumbprint", "check_x5t"]

#: The header BTP puts the caller's client certificate in after TLS termination.
FORWARDED_CLIENT_CERT_HEADER = "x-forwarded-client-cert"
_CNF_X5T = "x5t#S256"
_PEM_HEADER = "-----BEGIN CERTIFICATE-----"
_PEM_FOOTER = "-----END CERTIFICATE-----"
_MAX_HEADER = 32 * 1024


def _split(text: str, delimiter: str) -> list[str]:
    """Split at ``delimiter`` outside double quotes (XFCC values may contain both)."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if ch == '"' and not escaped:
            quoted = not quoted
        if ch == delimiter and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        escaped = ch == "\\" and not escaped
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _pem_from_header(value: str) -> str | None:
    if "hash=" not in value.lower():
        return value  # Cloud Foundry: the PEM itself
    entries = _split(value, ",")
    for field in _split(entries[-1], ";") if entries else []:
        name, _, data = field.partition("=")
        if name.strip().lower() == "cert":
            data = data.strip()
            if len(data) >= 2 and data[0] == data[-1] and data[0] in "\"'":
                data = data[1:-1]
            return unquote(data.replace('\\"', '"'))
    return None


def certificate_thumbprint(header: str) -> str:
    """``x5t#S256`` of the certificate in an ``X-Forwarded-Client-Cert`` value; raises
    :class:`InvalidTokenError` when it holds no readable certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = _pem_from_header(header)
    if not pem:
        raise InvalidTokenError("The forwarded client certificate (x-forwarded-client-cert) holds no certificate.")
    pem = pem.replace("\\n", "\n").strip()
    if not pem.startswith(_PEM_HEADER):
        pem = f"{_PEM_HEADER}\n{pem}"
    if not pem.endswith(_PEM_FOOTER):
        pem = f"{pem}\n{_PEM_FOOTER}"
    try:
        der = x509.load_pem_x509_certificate(pem.encode("ascii")).public_bytes(Encoding.DER)
    except (ValueError, UnicodeError):
        raise InvalidTokenError("The forwarded client certificate (x-forwarded-client-cert) could not be parsed.") from None
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def check_x5t(token: UserToken, header: str | None) -> None:
    """Raise :class:`InvalidTokenError` unless ``token`` is bound to the forwarded certificate."""
    cnf = token.claims.get("cnf")
    expected = cnf.get(_CNF_X5T) if isinstance(cnf, dict) else None
    if not isinstance(expected, str) or not expected:
        raise InvalidTokenError("Token is not certificate-bound (no cnf.x5t#S256 claim), but this application "
                                "accepts only certificate-bound tokens.")
    if not header or not header.strip():
        raise InvalidTokenError("No client certificate was forwarded (x-forwarded-client-cert): the "
                                "certificate-bound token cannot be checked against its owner.")
    if len(header) > _MAX_HEADER:
        raise InvalidTokenError("The forwarded client certificate (x-forwarded-client-cert) is too long.")
    actual = certificate_thumbprint(header)
    if not hmac.compare_digest(actual.encode("ascii"), expected.encode("ascii", "replace")):
        raise InvalidTokenError("The token's certificate thumbprint (cnf.x5t#S256) does not match the client "
                                "certificate of this request.")
