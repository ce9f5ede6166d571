"""Key stores (ClientCertificateAuthentication) and trust stores (TrustStoreLocation):
PEM, PKCS#12 and JKS, generated here (cryptography writes PKCS#12, pyjks writes JKS), and
proven with real TLS handshakes on loopback: the trust store is what makes the target's
private CA trusted, the key store is the client certificate the target verifies."""

from __future__ import annotations

import base64
import re
import datetime as dt
import socket
import ssl
import sys
import threading
from typing import Any

import jks
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from propagation.destinations import keystores
from propagation.errors import ConfigurationError
from propagation.sandbox.pki import Pki

PASSWORD = "st0re-PASSWORD"
WHERE = "Destination 'S4' (Destination service 'dest')"


# -- a client CA and a client certificate -------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class ClientPki:
    def __init__(self, key_kind: str = "ec") -> None:
        now = dt.datetime.now(dt.timezone.utc)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = (
            x509.CertificateBuilder().subject_name(_name("client CA")).issuer_name(_name("client CA"))
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.key: Any = rsa.generate_private_key(65537, 2048) if key_kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder().subject_name(_name("technical-user")).issuer_name(_name("client CA"))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )

    def pkcs8_der(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def pem_key(self, password: str | None = None) -> bytes:
        encryption = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def pem_chain(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM) + self.ca.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def client_pki() -> ClientPki:
    return ClientPki()


@pytest.fixture(scope="module")
def server_pki() -> Any:
    pki = Pki(prefix="propagation-keystores-")
    yield pki
    pki.cleanup()


def key_store(kind: str, pki: ClientPki, password: str | None = PASSWORD) -> tuple[str, bytes]:
    der = lambda c: c.public_bytes(serialization.Encoding.DER)  # noqa: E731
    if kind == "jks":
        entry = jks.PrivateKeyEntry.new("client", [der(pki.cert), der(pki.ca)], pki.pkcs8_der())
        return "client.jks", jks.KeyStore.new("jks", [entry]).saves(password or "")
    if kind == "p12":
        encryption = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        return "client.p12", pkcs12.serialize_key_and_certificates(b"client", pki.key, pki.cert, [pki.ca], encryption)
    if kind == "pem":
        return "client.pem", pki.pem_chain() + pki.pem_key()
    if kind == "pem-encrypted":
        return "client.pem", pki.pem_chain() + pki.pem_key(password)
    raise AssertionError(kind)


def trust_store(kind: str, ca_pem: bytes, password: str = PASSWORD) -> tuple[str, bytes]:
    ca = x509.load_pem_x509_certificate(ca_pem)
    if kind == "jks":
        entry = jks.TrustedCertEntry.new("ca", ca.public_bytes(serialization.Encoding.DER))
        return "trust.jks", jks.KeyStore.new("jks", [entry]).saves(password)
    if kind == "p12":
        return "trust.p12", pkcs12.serialize_key_and_certificates(
            None, None, None, [ca], serialization.BestAvailableEncryption(password.encode())
        )
    if kind == "pem":
        return "trust.pem", ca_pem
    if kind == "der":
        return "trust.cer", ca.public_bytes(serialization.Encoding.DER)
    raise AssertionError(kind)


def answer(*stores: tuple[str, bytes]) -> list[dict[str, str]]:
    return [{"Name": name, "Type": "CERTIFICATE", "Content": base64.b64encode(content).decode()} for name, content in stores]


# -- a loopback TLS server ----------------------------------------------------------------------------
def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> dict[str, Any]:
    """One TLS handshake on loopback; what each side saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, Any] = {}
    accepted = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_context.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                seen["client_subject"] = dict(x[0] for x in peer["subject"]) if peer else None
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["server_error"] = type(exc).__name__
        finally:
            accepted.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                seen["data"] = tls.recv(2)
    except ssl.SSLCertVerificationError as exc:
        seen["client_error"] = exc.verify_message
    except (ssl.SSLError, OSError) as exc:
        seen["client_error"] = type(exc).__name__
    finally:
        accepted.wait(timeout=10)
        listener.close()
        thread.join(timeout=10)
    return seen


# -- trust stores ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [pytest.param(k, id=k) for k in ("jks", "p12", "pem", "der")])
def test_trust_store_makes_the_private_ca_trusted(kind: str, server_pki: Any) -> None:
    props = {"TrustStoreLocation": f"trust.{ {'der': 'cer'}.get(kind, kind)}", "TrustStorePassword": PASSWORD}
    stores = answer(trust_store(kind, server_pki.ca_file.read_bytes()))
    bundle = keystores.trust_store(WHERE, props, stores)
    assert bundle is not None
    assert bundle == server_pki.ca_file.read_text()

    # Without it the target's private CA is unknown (the real failure); with it the handshake works.
    refused = handshake(server_pki.server_context(), keystores.ssl_context(None))
    assert refused["client_error"] == "unable to get local issuer certificate"
    assert handshake(server_pki.server_context(), keystores.ssl_context(bundle))["data"] == b"ok"


def test_trust_store_replaces_the_system_cas(server_pki: Any) -> None:
    context = keystores.ssl_context(server_pki.ca_file.read_text())
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "propagation sandbox CA"),),)]


def test_no_trust_store_location_is_none() -> None:
    assert keystores.trust_store(WHERE, {}, answer(("x.pem", b"-----BEGIN CERTIFICATE-----"))) is None


@pytest.mark.parametrize(
    "props, stores, expected",
    [
        pytest.param({"TrustStoreLocation": "trust.jks", "TrustStorePassword": "wrong-PW"}, "jks",
                     "store 'trust.jks' cannot be read as JKS (wrong 'TrustStorePassword'?)", id="jks-wrong-password"),
        pytest.param({"TrustStoreLocation": "trust.p12", "TrustStorePassword": "wrong-PW"}, "p12",
                     "store 'trust.p12' cannot be read as PKCS#12 (wrong 'TrustStorePassword'?)", id="p12-wrong-password"),
        pytest.param({"TrustStoreLocation": "other.jks"}, "jks",
                     "the trust store needs the store named by 'TrustStoreLocation' in the answer's certificates ('trust.jks')",
                     id="location-not-in-answer"),
    ],
)
def test_trust_store_errors(props: dict[str, str], stores: str, expected: str, server_pki: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        keystores.trust_store(WHERE, props, answer(trust_store(stores, server_pki.ca_file.read_bytes())))
    assert str(info.value) == f"{WHERE}: {expected}."
    assert "wrong-PW" not in str(info.value) and PASSWORD not in str(info.value)


# -- key stores --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, key_kind",
    [
        pytest.param("jks", "ec", id="jks-ec"),
        pytest.param("jks", "rsa", id="jks-rsa"),
        pytest.param("p12", "ec", id="p12"),
        pytest.param("pem", "ec", id="pem"),
        pytest.param("pem-encrypted", "ec", id="pem-encrypted-key"),
    ],
)
def test_key_store_is_the_client_certificate_the_target_verifies(kind: str, key_kind: str, server_pki: Any) -> None:
    pki = ClientPki(key_kind)
    name, content = key_store(kind, pki)
    chain, key = keystores.client_certificate(
        WHERE, {"KeyStoreLocation": name, "KeyStorePassword": PASSWORD}, answer(("trust.pem", b"x"), (name, content))
    )
    assert chain.encode() == pki.pem_chain()
    assert key.startswith("-----BEGIN PRIVATE KEY-----")

    server = server_pki.server_context()
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=pki.ca.public_bytes(serialization.Encoding.PEM).decode())
    trust = server_pki.ca_file.read_text()
    # Without the client certificate the target refuses the handshake; with it, it sees the technical user.
    assert "data" not in handshake(server, keystores.ssl_context(trust))
    seen = handshake(server, keystores.ssl_context(trust, client=(chain, key)))
    assert seen["data"] == b"ok"
    assert seen["client_subject"] == {"commonName": "technical-user"}


def test_single_certificate_without_location(client_pki: ClientPki) -> None:
    chain, _ = keystores.client_certificate(WHERE, {"KeyStorePassword": PASSWORD}, answer(key_store("jks", client_pki)))
    assert chain.encode() == client_pki.pem_chain()


def test_jks_detected_by_content_whatever_the_name(client_pki: ClientPki) -> None:
    _, content = key_store("jks", client_pki)
    assert keystores.store_format("keystore.bin", content) == "jks"
    assert keystores.load_key_store("keystore.bin", content, PASSWORD)[0].encode() == client_pki.pem_chain()


@pytest.mark.parametrize(
    "kind, password, expected",
    [
        pytest.param("jks", "wrong-PW", "store 'client.jks' cannot be read as JKS (wrong 'KeyStorePassword'?)", id="jks-wrong-password"),
        pytest.param("p12", "wrong-PW", "store 'client.p12' cannot be read as PKCS#12 (wrong 'KeyStorePassword'?)", id="p12-wrong-password"),
        pytest.param("pem-encrypted", "wrong-PW",
                     "store 'client.pem' cannot be read as an encrypted PEM key (wrong 'KeyStorePassword'?)", id="pem-wrong-password"),
    ],
)
def test_key_store_errors(kind: str, password: str, expected: str, client_pki: ClientPki) -> None:
    name, content = key_store(kind, client_pki)
    with pytest.raises(ConfigurationError) as info:
        keystores.client_certificate(WHERE, {"KeyStoreLocation": name, "KeyStorePassword": password}, answer((name, content)))
    assert str(info.value) == f"{WHERE}: {expected}."
    assert "wrong-PW" not in str(info.value) and PASSWORD not in str(info.value)


def test_jks_trust_store_is_no_key_store(server_pki: Any) -> None:
    name, content = trust_store("jks", server_pki.ca_file.read_bytes())
    with pytest.raises(ConfigurationError, match="holds 0 private keys; ClientCertificateAuthentication needs exactly one"):
        keystores.load_key_store(name, content, PASSWORD, where=WHERE)


@pytest.mark.parametrize(
    "name, content",
    [
        pytest.param("client.jks", b"\xfe\xed\xfe\xed" + b"\x00" * 7, id="truncated-jks"),
        pytest.param("store.bin", b"plain text", id="unknown-format"),
    ],
)
def test_garbage_stores(name: str, content: bytes) -> None:
    with pytest.raises(ConfigurationError, match="^" + re.escape(f"{WHERE}: store '{name}' ")):
        keystores.load_key_store(name, content, PASSWORD, where=WHERE)


def test_missing_pyjks_names_the_extra(monkeypatch: pytest.MonkeyPatch, client_pki: ClientPki) -> None:
    monkeypatch.setitem(sys.modules, "jks", None)  # import jks → ImportError, as without the extra
    name, content = key_store("jks", client_pki)
    with pytest.raises(ConfigurationError) as info:
        keystores.load_key_store(name, content, PASSWORD, where=WHERE)
    assert str(info.value) == (
        f"{WHERE}: store 'client.jks' is a Java KeyStore (JKS); reading it needs pyjks: "
        "install the 'jks' extra (pip install 'propagation[jks]')."
    )
