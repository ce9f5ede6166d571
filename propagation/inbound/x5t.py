"""Certificate-bound tokens (RFC 8705 §3): does the caller own the token it presents?

An IAS token requested with mTLS carries ``cnf: {"x5t#S256": <base64url SHA-256 of the
client certificate (DER)>}``. BTP terminates TLS and forwards the caller's certificate in
``X-Forwarded-Client-Cert`` — as base64 DER or PEM (Cloud Foundry; its line breaks possibly
escaped, header and footer possibly missing) or in Envoy's XFCC format (Kyma:
``Hash=…;Cert="<url-encoded PEM>";Subject="…";URI=…``, ``Hash`` optional; of several
comma-separated elements the last counts, the one the nearest proxy appended). The check is ``@sap/xssec`` v4's
``IdentityService.validateTokenOwnership`` (config ``validation.x5t.enabled``) and the Java
library's ``JwtX5tValidator``: a token without the claim, a request without a certificate,
an unreadable certificate or another thumbprint are refused (401), each named.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
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
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


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
    parts.append("".join(current).strip())
    return parts


def _der_from_pem_or_base64(value: str) -> bytes | None:
    """DER of a PEM certificate (line breaks possibly escaped as ``\\n``, armour possibly
    missing; of a chain, the first) or of plain base64 DER; ``None`` when it is neither."""
    if _PEM_HEADER in value:  # the first certificate of a PEM chain is the client's own
        value = value.split(_PEM_HEADER, 1)[1].split(_PEM_FOOTER, 1)[0]
    body = value.replace("\\n", "\n").replace(_PEM_FOOTER, "")
    body = "".join(body.split())
    if not body or _BASE64.fullmatch(body) is None:
        return None
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (ValueError, binascii.Error):
        return None


def _xfcc_certificate(value: str) -> str | None:
    """The ``Cert`` of the XFCC element the nearest proxy added — the last one: Envoy appends
    an element per hop (``APPEND_FORWARD``), so earlier ones describe clients further away.
    ``None`` when that element carries no certificate (an earlier element's is not taken)."""
    elements = _split(value, ",")
    for field_ in _split(elements[-1], ";"):
        name, _, data = field_.partition("=")
        if name.strip().lower() == "cert":
            data = data.strip()
            if len(data) >= 2 and data[0] == data[-1] == '"':
                data = data[1:-1].replace('\\"', '"')
            return unquote(data) or None
    return None


def certificate_thumbprint(header: str) -> str:
    """``x5t#S256`` of the certificate in an ``X-Forwarded-Client-Cert`` value, in every form
    SAP's Java security library reads (``X509Certificate.newCertificate``): PEM, base64 DER,
    or Envoy elements ``[Hash=…;]Cert="<url-encoded PEM>"[;Subject="…"][;URI=…]``, several
    separated by commas (the last counts). Raises :class:`InvalidTokenError` when it holds no
    readable certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    value = header.strip()
    der = _der_from_pem_or_base64(value)
    if der is None and "=" in value:  # Envoy's key=value elements
        pem = _xfcc_certificate(value)
        if pem is None:
            raise InvalidTokenError("The forwarded client certificate (x-forwarded-client-cert) holds no certificate.")
        der = _der_from_pem_or_base64(pem)
    try:
        if der is None:
            raise ValueError("not PEM or base64")
        der = x509.load_der_x509_certificate(der).public_bytes(Encoding.DER)
    except ValueError:
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
