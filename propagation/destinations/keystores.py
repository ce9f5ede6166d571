"""Key stores and trust stores of destinations: PEM, PKCS#12 and Java KeyStores (JKS).

A Destination-service answer carries its files in ``certificates`` (``Name``, ``Type``,
``Content`` = base64); the destination names the one to use:

* ``KeyStoreLocation`` (+ ``KeyStorePassword``): the client certificate and private key of
  ``ClientCertificateAuthentication`` (mTLS to the target) → ``(PEM chain, PEM key)``;
* ``TrustStoreLocation`` (+ ``TrustStorePassword``): the certificates that the target's TLS
  certificate must chain to (a private CA, a self-signed server) → one PEM CA bundle, to be
  used *instead of* the system CAs for that destination, as the SAP Cloud SDK does.

Formats, by file name and content: PEM (``.pem``/``.crt``/``.cer``, or PEM text), PKCS#12
(``.p12``/``.pfx``, read with ``cryptography``) and JKS (``.jks``/``.keystore``, or the
``FEEDFEED`` magic; read with ``pyjks``, the optional extra ``propagation[jks]``). Nothing
here is parsed by hand but PEM block boundaries.

Errors are :class:`~propagation.errors.ConfigurationError` naming the destination and the
store file, never a password, key or certificate content.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
import tempfile
from typing import Any, Mapping

from ..errors import ConfigurationError

__all__ = [
    "client_certificate",
    "trust_store",
    "load_key_store",
    "load_trust_store",
    "store_format",
    "ssl_context",
    "JKS_EXTRA",
]

#: The extra that installs ``pyjks``.
JKS_EXTRA = "jks"

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.S)
_JKS_MAGIC = b"\xfe\xed\xfe\xed"
_JCEKS_MAGIC = b"\xce\xce\xce\xce"


# -- picking the file from a Destination-service answer -------------------------------------------
def _select(where: str, certificates: Any, location: str | None, property_name: str, purpose: str) -> tuple[str, bytes]:
    """``(file name, decoded content)`` of the answer's certificate named by ``location``.

    Without a location, a single certificate in the answer is taken (the key store of a
    ClientCertificateAuthentication destination is often the only file).
    """
    items = [c for c in certificates if isinstance(c, Mapping)] if isinstance(certificates, list) else []
    chosen = None
    for item in items:
        if location is None or item.get("Name") == location:
            chosen = item
            break
    if chosen is None or location is None and len(items) != 1:
        names = "none" if not items else ", ".join(repr(str(i.get("Name"))[:40]) for i in items)
        raise ConfigurationError(f"{where}: {purpose} needs the store named by '{property_name}' in the answer's certificates ({names}).")
    name = str(chosen.get("Name") or location or "")
    try:
        content = base64.b64decode(str(chosen.get("Content") or ""), validate=False)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{where}: store '{name}' is not base64.") from None
    if not content:
        raise ConfigurationError(f"{where}: store '{name}' is empty.")
    return name, content


def _password(props: Mapping[str, Any], key: str) -> str | None:
    value = props.get(key)
    return None if value in (None, "") else str(value)


def client_certificate(where: str, props: Mapping[str, Any], certificates: Any) -> tuple[str, str]:
    """``(PEM chain, PEM key)`` of a ClientCertificateAuthentication destination's key store.

    ``props`` are the destination's properties (``KeyStoreLocation``, ``KeyStorePassword``),
    ``certificates`` the answer's ``certificates`` list.
    """
    raw = props.get("KeyStoreLocation")
    location = str(raw).strip() or None if raw is not None else None
    name, content = _select(where, certificates, location, "KeyStoreLocation", "ClientCertificateAuthentication")
    return load_key_store(name, content, _password(props, "KeyStorePassword"), where=where)


def trust_store(where: str, props: Mapping[str, Any], certificates: Any) -> str | None:
    """The PEM CA bundle of the destination's ``TrustStoreLocation``, or ``None`` without one."""
    location = props.get("TrustStoreLocation")
    location = str(location).strip() if location is not None else ""
    if not location:
        return None
    name, content = _select(where, certificates, location, "TrustStoreLocation", "the trust store")
    return load_trust_store(name, content, _password(props, "TrustStorePassword"), where=where)


# -- formats ---------------------------------------------------------------------------------------
def store_format(name: str, content: bytes) -> str:
    """``"pem"``, ``"pkcs12"`` or ``"jks"``: the content decides where it can, then the name."""
    if content.startswith((_JKS_MAGIC, _JCEKS_MAGIC)):
        return "jks"
    if b"-----BEGIN" in content[:4096]:
        return "pem"
    lower = name.lower()
    if lower.endswith((".jks", ".keystore", ".jceks", ".ks", ".truststore")):
        return "jks"
    if lower.endswith((".p12", ".pfx", ".pkcs12")):
        return "pkcs12"
    if lower.endswith((".pem", ".crt", ".cer", ".der")):
        return "pem"
    if content[:1] == b"\x30":  # a DER SEQUENCE: PKCS#12 is the only binary store left
        return "pkcs12"
    return "unknown"


def load_key_store(name: str, content: bytes, password: str | None, *, where: str = "Destination") -> tuple[str, str]:
    """``(PEM certificate chain, PEM private key)`` of a key store in any supported format
    (PKCS#8 unless the store is PEM with an unencrypted key, which is kept as it is)."""
    fmt = store_format(name, content)
    if fmt == "pkcs12":
        key, chain = _pkcs12(name, content, password, where)
    elif fmt == "jks":
        key, chain = _jks_key(name, content, password, where)
    elif fmt == "pem":
        key, chain = _pem_key(name, content, password, where)
    else:
        raise _unsupported(name, where)
    if key is None or not chain:
        raise ConfigurationError(f"{where}: key store '{name}' holds no private key with its certificate.")
    return chain, key


def load_trust_store(name: str, content: bytes, password: str | None, *, where: str = "Destination") -> str:
    """The certificates of a trust store as one PEM bundle (private keys in it are ignored)."""
    fmt = store_format(name, content)
    if fmt == "pkcs12":
        from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

        try:
            store = pkcs12.load_pkcs12(content, password.encode("utf-8") if password else None)
        except (ValueError, TypeError):
            raise _unreadable(name, "PKCS#12", "TrustStorePassword", where) from None
        certs = ([store.cert] if store.cert else []) + list(store.additional_certs)
        bundle = "".join(c.certificate.public_bytes(Encoding.PEM).decode("ascii") for c in certs)
    elif fmt == "jks":
        bundle = _jks_trusted(name, content, password, where)
    elif fmt == "pem":
        bundle = _pem_certificates(name, content, where)
    else:
        raise _unsupported(name, where)
    if not bundle:
        raise ConfigurationError(f"{where}: trust store '{name}' holds no certificate.")
    return bundle


def ssl_context(ca_bundle: str | None = None, client: tuple[str, str] | None = None) -> ssl.SSLContext:
    """A client TLS context that trusts only ``ca_bundle`` (else the system CAs), with an
    optional client certificate ``(PEM chain, PEM key)`` (for httpx's ``verify=``)."""
    context = ssl.create_default_context(cadata=ca_bundle) if ca_bundle else ssl.create_default_context()
    if client is not None:
        # ssl loads a client certificate only from files: a private directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="propagation-") as folder:
            chain_path, key_path = os.path.join(folder, "chain.pem"), os.path.join(folder, "key.pem")
            for path, text in ((chain_path, client[0]), (key_path, client[1])):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write(text)
            context.load_cert_chain(chain_path, key_path)
    return context


# -- helpers ---------------------------------------------------------------------------------------
def _unsupported(name: str, where: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: store '{name}' has an unsupported format (use PEM, PKCS#12 (.p12, .pfx) or JKS (.jks)).")


def _unreadable(name: str, fmt: str, password_property: str, where: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: store '{name}' cannot be read as {fmt} (wrong '{password_property}'?).")


def _pem_key_text(key: Any) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode("ascii")


def _pkcs12(name: str, content: bytes, password: str | None, where: str) -> tuple[str | None, str]:
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

    try:
        key, cert, extra = pkcs12.load_key_and_certificates(content, password.encode("utf-8") if password else None)
    except (ValueError, TypeError):
        raise _unreadable(name, "PKCS#12", "KeyStorePassword", where) from None
    if key is None or cert is None:
        return None, ""
    chain = cert.public_bytes(Encoding.PEM) + b"".join(c.public_bytes(Encoding.PEM) for c in extra or [])
    return _pem_key_text(key), chain.decode("ascii")


def _pem_blocks(name: str, content: bytes, where: str) -> list[tuple[str, str]]:
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{where}: store '{name}' is not PEM text.") from None
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]


def _pem_certificates(name: str, content: bytes, where: str) -> str:
    if b"-----BEGIN" not in content[:4096]:  # a lone DER certificate (.cer/.der)
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            return x509.load_der_x509_certificate(content).public_bytes(Encoding.PEM).decode("ascii")
        except ValueError:
            raise ConfigurationError(f"{where}: store '{name}' is neither PEM nor a DER certificate.") from None
    return "".join(block + "\n" for kind, block in _pem_blocks(name, content, where) if kind in ("CERTIFICATE", "TRUSTED CERTIFICATE"))


def _pem_key(name: str, content: bytes, password: str | None, where: str) -> tuple[str | None, str]:
    blocks = _pem_blocks(name, content, where)
    certs = "".join(block + "\n" for kind, block in blocks if kind == "CERTIFICATE")
    keys = [block for kind, block in blocks if kind.endswith("PRIVATE KEY")]
    if not certs or len(keys) != 1:
        raise ConfigurationError(f"{where}: key store '{name}' needs a certificate and one private key (PEM).")
    if "ENCRYPTED" not in keys[0] and "Proc-Type: 4,ENCRYPTED" not in keys[0]:
        return keys[0] + "\n", certs
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(keys[0].encode("ascii"), password.encode("utf-8") if password else None)
    except (ValueError, TypeError):
        raise _unreadable(name, "an encrypted PEM key", "KeyStorePassword", where) from None
    return _pem_key_text(key), certs


def _pyjks(name: str, where: str) -> Any:
    try:
        import jks  # pyjks
    except ImportError:
        raise ConfigurationError(
            f"{where}: store '{name}' is a Java KeyStore (JKS); reading it needs pyjks: "
            f"install the '{JKS_EXTRA}' extra (pip install 'propagation[{JKS_EXTRA}]')."
        ) from None
    return jks


def _jks_load(name: str, content: bytes, password: str | None, property_name: str, where: str) -> Any:
    jks = _pyjks(name, where)
    try:
        return jks.KeyStore.loads(content, password or "", try_decrypt_keys=True)
    except Exception:  # noqa: BLE001 - a wrong password is KeystoreSignatureException; garbage raises struct/pyasn1 errors
        raise _unreadable(name, "JKS", property_name, where) from None


def _der_to_pem(der: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode("ascii")


def _jks_key(name: str, content: bytes, password: str | None, where: str) -> tuple[str | None, str]:
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    store = _jks_load(name, content, password, "KeyStorePassword", where)
    entries = list(store.private_keys.values())
    if len(entries) != 1:
        raise ConfigurationError(
            f"{where}: key store '{name}' holds {len(entries)} private keys; ClientCertificateAuthentication needs exactly one."
        )
    entry = entries[0]
    if not entry.is_decrypted():
        raise ConfigurationError(
            f"{where}: the private key in key store '{name}' has a password other than 'KeyStorePassword'."
        )
    try:
        key = load_der_private_key(entry.pkey_pkcs8, None)
    except (ValueError, TypeError):
        raise ConfigurationError(f"{where}: the private key in key store '{name}' is not a PKCS#8 key.") from None
    chain = "".join(_der_to_pem(der) for _kind, der in entry.cert_chain)
    return _pem_key_text(key), chain


def _jks_trusted(name: str, content: bytes, password: str | None, where: str) -> str:
    store = _jks_load(name, content, password, "TrustStorePassword", where)
    return "".join(_der_to_pem(entry.cert) for _alias, entry in sorted(store.certs.items()))

