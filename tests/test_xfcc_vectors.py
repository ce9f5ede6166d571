"""``x-forwarded-client-cert`` in every form SAP's Java security library reads (issue 17
item 4), on its own test vectors (tests/data/xfcc/README.md): base64 DER, PEM (a chain,
escaped line breaks), Envoy elements with or without ``Hash``, several elements (the last
one, which the nearest proxy appended, counts)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import jwtkit
from propagation.errors import InvalidTokenError
from propagation.inbound.x5t import certificate_thumbprint, check_x5t
from propagation.tokens import UserToken

DATA = Path(__file__).parent / "data" / "xfcc"
CF_BASE64 = (DATA / "cf-forwarded-client-cert-base64.txt").read_text()
CF = (DATA / "cf-forwarded-client-cert.txt").read_text()
K8S_PEM_CHAIN = (DATA / "k8s-forwarded-client-cert-pem.txt").read_text()
ENVOY_NO_HASH = (DATA / "envoy-element-without-hash.txt").read_text()
ENVOY_NO_CERT = ENVOY_NO_HASH.partition(";Cert=")[0]  # XfccCertificateTest's xfcc_element_without_cert
SAP_X5T = "fU-XoQlhMTpQsz9ArXl6zHIpMGuRO4ExLKdLRTc5VjM"  # X509CertificateTest.x5t
OWN, _ = jwtkit.self_signed_certificate("caller")


def x5t(certificate: x509.Certificate) -> str:
    der = certificate.public_bytes(Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


# Computed here independently of the parser under test (cryptography on the decoded vector).
K8S_LEAF = x509.load_pem_x509_certificates(K8S_PEM_CHAIN.replace("\\n", "\n").encode())[0]
ENVOY_CERT = x509.load_pem_x509_certificate(unquote(re.search(r'Cert="([^"]*)"', ENVOY_NO_HASH)[1]).encode())  # type: ignore[index]
OWN_X5T = x5t(x509.load_pem_x509_certificate(OWN.encode()))


def test_the_vectors_are_what_the_java_tests_say() -> None:
    assert K8S_LEAF.issuer.rfc4514_string() == (
        "CN=SAP Cloud Platform Client CA,OU=SAP Cloud Platform Clients,O=SAP SE,L=EU10-Canary,C=DE")
    assert ENVOY_CERT.subject.rfc4514_string().startswith("CN=a43c6936-a6c0-4237-8f1c-e8778d02c86b,L=sap-uaa")


@pytest.mark.parametrize("header, expected", [
    pytest.param(CF_BASE64, SAP_X5T, id="java-cf-base64"),
    pytest.param(CF, SAP_X5T, id="java-cf"),
    pytest.param("\n".join(CF_BASE64[i:i + 64] for i in range(0, len(CF_BASE64), 64)), SAP_X5T, id="base64-wrapped"),
    pytest.param(K8S_PEM_CHAIN, x5t(K8S_LEAF), id="java-k8s-pem-chain-first-counts"),
    pytest.param(ENVOY_NO_HASH, x5t(ENVOY_CERT), id="java-xfcc-headerWithSingleValidElement-no-hash"),
    pytest.param(f"{ENVOY_NO_HASH},{ENVOY_NO_HASH}", x5t(ENVOY_CERT), id="java-xfcc-headerWithTwoValidElements"),
    pytest.param(f"Hash=invalid;Cert=invalid,{ENVOY_NO_HASH}", x5t(ENVOY_CERT), id="java-xfcc-headerWithValidElementLast"),
    pytest.param(f'By=spiffe://cluster.local/ns/a/sa/b;Hash=468ed33b;Cert="{quote(OWN)}";Subject="CN=x, O=y;z";'
                 "URI=spiffe://cluster.local/ns/c/sa/d", OWN_X5T, id="envoy-with-hash-and-quoted-separators"),
    pytest.param(f'Cert={quote(OWN, safe="")}', OWN_X5T, id="envoy-cert-unquoted"),
    pytest.param(f'{ENVOY_NO_HASH},Subject="CN=proxy, O=a,b";Cert="{quote(OWN)}"', OWN_X5T, id="envoy-last-of-two-elements"),
])
def test_forwarded_certificate_forms(header: str, expected: str) -> None:
    assert certificate_thumbprint(header) == expected


@pytest.mark.parametrize("header, message", [
    pytest.param(f"{ENVOY_NO_HASH},Hash=invalid;Cert=", "holds no certificate", id="java-xfcc-headerWithValidElementFirst"),
    pytest.param(ENVOY_NO_CERT, "holds no certificate", id="java-xfcc-headerWithoutCertValue"),
    pytest.param(f"{ENVOY_NO_HASH},{ENVOY_NO_CERT}", "holds no certificate", id="last-element-without-cert"),
    pytest.param("invalid", "could not be parsed", id="java-newCertificate_invalid"),
    pytest.param("R93AEV2m52aX6yXCfzwkL92cW1zBsCuNi82K9PiNmzb/WVB5i7VdXUwAd7bI9ACb", "could not be parsed",
                 id="java-parseCertificate_invalidCertificate"),
    pytest.param('Hash=1;Cert="-----BEGIN%20CERTIFICATE-----%0Anot-base64%0A-----END%20CERTIFICATE-----"',
                 "could not be parsed", id="envoy-cert-garbage"),
])
def test_unreadable_forwarded_certificates_are_refused(header: str, message: str) -> None:
    with pytest.raises(InvalidTokenError) as info:
        certificate_thumbprint(header)
    assert message in info.value.error_description


def test_a_token_bound_to_the_envoy_certificate_without_hash_is_accepted() -> None:
    """Issue 17 item 4: this header was a 401 "could not be parsed" (the Java library accepts it)."""
    token = UserToken("h.p.s", {}, {"iss": "https://t.accounts.ondemand.com", "cnf": {"x5t#S256": x5t(ENVOY_CERT)}})
    check_x5t(token, ENVOY_NO_HASH)
    with pytest.raises(InvalidTokenError, match="does not match"):
        check_x5t(token, CF)
