"""The ``connectivity`` binding in its Cloud Foundry and Kyma shapes, with secret or X.509
credentials (propagation.connectivity_config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from propagation.bindings import Binding, Bindings
from propagation.outbound.connectivity import ConnectivityConfig
from propagation.connectivity_config import KYMA_PROXY_HOST, connectivity_config
from propagation.errors import ConfigurationError
from propagation.tokens import UserToken

UAADOMAIN = "authentication.eu10.hana.ondemand.com"
SECRET = "conn-secret-VALUE"
KEY = "-----BEGIN PRIVATE KEY-----\nKEY-VALUE\n-----END PRIVATE KEY-----"
CERT = "-----BEGIN CERTIFICATE-----\nCERT\n-----END CERTIFICATE-----"
K8S = "SERVICE_BINDING_ROOT (/bindings/connectivity)"

CF = {"clientid": "sb-conn!b1", "clientsecret": SECRET, "token_service_url": f"https://provider.{UAADOMAIN}",
      "url": f"https://provider.{UAADOMAIN}", "uaadomain": UAADOMAIN,
      "onpremise_proxy_host": "connectivityproxy.internal.cf.eu10.hana.ondemand.com",
      "onpremise_proxy_http_port": "20003", "onpremise_proxy_port": "20003"}
# The Kyma BTP operator's secret of a 'connectivity' instance: no url, no proxy (cloud-sdk-js 5649).
KYMA = {"clientid": "sb-conn!b1", "clientsecret": SECRET, "token_service_url": f"https://provider.{UAADOMAIN}",
        "token_service_domain": UAADOMAIN, "subaccount_id": "0f1e", "subaccount_subdomain": "provider"}
# The older 'connectivity_proxy' plan: the proxy's own binding, no token_service_url either here.
PROXY_PLAN = {"clientid": "sb-proxy!b2", "clientsecret": SECRET, "token_service_domain": UAADOMAIN,
              "subaccount_subdomain": "provider", "subaccount_id": "0f1e",
              "connectivity_service": {"CAs_path": "/api/v1/CAs", "api_path": "/api/v1", "tunnel_path": "/api/v1/tunnel",
                                       "url": "https://connectivity.cf.eu10.hana.ondemand.com"}}


def binding(credentials: dict[str, Any], source: str = "VCAP_SERVICES", plan: str | None = "lite", **extra: Any) -> Binding:
    creds = {k: v for k, v in {**credentials, **extra}.items() if v is not None}
    return Binding(name="conn", label="connectivity", credentials=creds, plan=plan, source=source)


@pytest.mark.parametrize(
    "b, token_url, proxy, from_binding, kind",
    [
        pytest.param(binding(CF), f"https://provider.{UAADOMAIN}/oauth/token",
                     "http://connectivityproxy.internal.cf.eu10.hana.ondemand.com:20003", True, "binding-secret", id="cf"),
        pytest.param(binding(KYMA, K8S), f"https://provider.{UAADOMAIN}/oauth/token",
                     f"http://{KYMA_PROXY_HOST}:20003", False, "binding-secret", id="kyma-no-url-no-proxy"),
        pytest.param(binding(KYMA, K8S, onpremise_proxy_host="cp.my-ns.svc.cluster.local", onpremise_proxy_port="20004"),
                     f"https://provider.{UAADOMAIN}/oauth/token", "http://cp.my-ns.svc.cluster.local:20004", True,
                     "binding-secret", id="kyma-patched-secret"),
        pytest.param(binding(PROXY_PLAN, K8S, plan="connectivity_proxy"), f"https://provider.{UAADOMAIN}/oauth/token",
                     f"http://{KYMA_PROXY_HOST}:20003", False, "binding-secret", id="connectivity_proxy-plan"),
        pytest.param(binding(KYMA, K8S, **{"credential-type": "x509", "clientsecret": None, "certificate": CERT, "key": KEY}),
                     "https://provider.authentication.cert.eu10.hana.ondemand.com/oauth/token",
                     f"http://{KYMA_PROXY_HOST}:20003", False, "x509", id="x509-cert-host-derived"),
        pytest.param(binding(CF, **{"credential-type": "x509", "clientsecret": None, "certificate": CERT, "key": KEY,
                                    "certurl": "https://provider.authentication.cert.eu10.hana.ondemand.com"}),
                     "https://provider.authentication.cert.eu10.hana.ondemand.com/oauth/token",
                     "http://connectivityproxy.internal.cf.eu10.hana.ondemand.com:20003", True, "x509", id="x509-certurl"),
        pytest.param(binding(KYMA, K8S, **{"credential-type": "x509_attested", "clientsecret": None, "certificate": CERT,
                                          "key": KEY}),
                     "https://provider.authentication.cert.eu10.hana.ondemand.com/oauth/token",
                     f"http://{KYMA_PROXY_HOST}:20003", False, "x509_attested", id="x509_attested-with-key"),
        pytest.param(binding(CF, **{"credential-type": "binding-secret", "certificate": CERT, "key": KEY}),
                     f"https://provider.{UAADOMAIN}/oauth/token",
                     "http://connectivityproxy.internal.cf.eu10.hana.ondemand.com:20003", True, "binding-secret",
                     id="secret-type-wins-over-stray-certificate"),
    ],
)
def test_shapes(b: Binding, token_url: str, proxy: str, from_binding: bool, kind: str) -> None:
    c = connectivity_config(b)
    assert (c.token_url, c.proxy_url, c.proxy_from_binding, c.credential_type) == (token_url, proxy, from_binding, kind)
    assert c.x509 == kind.startswith("x509")
    assert (c.client.certificate, c.client.key, c.client.client_secret) == (
        (CERT, KEY, None) if c.x509 else (None, None, SECRET))
    assert SECRET not in repr(c) and "KEY-VALUE" not in repr(c)


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(CF, id="cf"),
        pytest.param({**CF, "token_service_url": f"https://provider.{UAADOMAIN}/oauth/token/", "onpremise_proxy_http_port": None,
                      "onpremise_proxy_port": 20004}, id="port-fallback"),
        pytest.param({**CF, "clientsecret": None, "certificate": CERT, "key": KEY,
                      "certurl": "https://provider.authentication.cert.eu10.hana.ondemand.com"}, id="mtls-certurl"),
    ],
)
def test_same_result_as_today_for_cloud_foundry(credentials: dict[str, Any]) -> None:
    """A drop-in for ConnectivityConfig.from_binding on every shape that worked before."""
    b = binding(credentials)
    old, new = ConnectivityConfig.from_binding(b), connectivity_config(b)
    assert (old.client, old.token_url, old.proxy_host, old.proxy_port, old.binding_name) == (
        new.client, new.token_url, new.proxy_host, new.proxy_port, new.binding_name)


def test_subscriber_token_url_under_the_certificate_domain() -> None:
    """ConnectivityConfig.token_url_for puts the user's subdomain first under ``uaadomain``:
    for X.509 that domain is the certificate host's."""
    c = connectivity_config(binding(KYMA, K8S, **{"credential-type": "x509", "clientsecret": None, "certificate": CERT, "key": KEY}))
    config = ConnectivityConfig(c.client, c.token_url, c.proxy_host, c.proxy_port, c.uaadomain, c.binding_name)
    user = UserToken.parse(_jwt({"zid": "sub-zone", "ext_attr": {"zdn": "subscriber"}, "iss": f"https://subscriber.{UAADOMAIN}/oauth/token"}))
    assert config.token_endpoint_for(user) == ("https://subscriber.authentication.cert.eu10.hana.ondemand.com/oauth/token", {})


def _jwt(claims: dict[str, Any]) -> str:
    import base64

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'exp': 4102444800, 'user_name': 'u', **claims})}.sig"


@pytest.mark.parametrize(
    "b, message",
    [
        pytest.param(binding(CF, onpremise_proxy_host=None), "needs 'onpremise_proxy_host'", id="cf-without-proxy-stays-an-error"),
        pytest.param(binding(KYMA, K8S, onpremise_proxy_port="x"), "needs 'onpremise_proxy_host' and 'onpremise_proxy_http_port'",
                     id="kyma-bad-port"),
        pytest.param(binding(KYMA, K8S, clientsecret=None), "needs 'clientid' with 'clientsecret'", id="no-secret"),
        pytest.param(binding(KYMA, K8S, clientid=None), "needs 'clientid'", id="no-client-id"),
        pytest.param(binding(KYMA, K8S, token_service_url=None, subaccount_subdomain=None),
                     "needs 'token_service_url' (or 'url', or 'subaccount_subdomain' with 'token_service_domain')", id="no-token-url"),
        pytest.param(binding(KYMA, K8S, **{"credential-type": "x509", "clientsecret": None, "key": KEY}),
                     "credential-type 'x509' and needs 'certificate' and 'key'", id="x509-without-certificate"),
        pytest.param(binding(KYMA, K8S, **{"credential-type": "x509_attested", "clientsecret": None}),
                     "credential-type 'x509_attested': its client certificate comes from the Zero Trust Identity Service",
                     id="x509_attested-without-key"),
        pytest.param(binding(KYMA, K8S, **{"credential-type": "magic"}), "has credential-type 'magic': expected one of",
                     id="unknown-credential-type"),
    ],
)
def test_errors(b: Binding, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        connectivity_config(b)
    assert message in str(info.value)
    assert str(info.value).startswith("Connectivity binding 'conn'")
    assert SECRET not in str(info.value) and "KEY-VALUE" not in str(info.value)


@pytest.mark.parametrize(
    "kubernetes, expected",
    [pytest.param(True, f"http://{KYMA_PROXY_HOST}:20003", id="told-kubernetes"), pytest.param(None, None, id="vcap-default")],
)
def test_kubernetes_flag(kubernetes: bool | None, expected: str | None) -> None:
    """A VCAP-style binding inside a pod (the caller saw KUBERNETES_SERVICE_HOST) may use the cluster proxy."""
    b = binding(PROXY_PLAN, plan="connectivity_proxy")
    if expected is None:
        with pytest.raises(ConfigurationError, match="needs 'onpremise_proxy_host'"):
            connectivity_config(b, kubernetes=kubernetes)
    else:
        assert connectivity_config(b, kubernetes=kubernetes).proxy_url == expected


def test_kyma_secret_files_end_to_end(tmp_path: Path) -> None:
    """A BTP-operator secret mounted under SERVICE_BINDING_ROOT, one file per key."""
    folder = tmp_path / "my-connectivity"
    folder.mkdir()
    files = {**{k: v for k, v in KYMA.items()}, "type": "connectivity", "plan": "connectivity_proxy",
             "credential-type": "x509", "certificate": CERT, "key": KEY}
    del files["clientsecret"]
    for name, value in files.items():
        (folder / name).write_text(value + "\n")
    b = Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path)}, cwd=tmp_path).find(label="connectivity")
    assert b is not None
    c = connectivity_config(b)
    assert (c.proxy_url, c.token_url, c.x509) == (
        f"http://{KYMA_PROXY_HOST}:20003", "https://provider.authentication.cert.eu10.hana.ondemand.com/oauth/token", True)
