"""The ``connectivity`` binding, as Cloud Foundry and Kyma deliver it (DESIGN §5).

Shapes this parser reads:

* **Cloud Foundry** (``VCAP_SERVICES``): ``clientid``, ``clientsecret``, ``token_service_url``
  and/or ``url`` (the XSUAA of the subaccount), ``uaadomain``, ``onpremise_proxy_host``,
  ``onpremise_proxy_http_port`` (older: ``onpremise_proxy_port``).
* **Kyma** (``SERVICE_BINDING_ROOT``): the BTP operator's secret of a ``connectivity``
  instance, and the older ``connectivity_proxy`` plan whose credentials are
  ``clientid``/``clientsecret``, ``token_service_url``, ``token_service_domain``,
  ``subaccount_id``, ``subaccount_subdomain`` and a ``connectivity_service`` object — without
  ``url`` and without the proxy (cloud-sdk-js issues 1653/5451/5649: users patch the secret
  by hand). On Kubernetes (a binding read from ``SERVICE_BINDING_ROOT``, or
  ``kubernetes=True``) a missing proxy host or port is the cluster's Connectivity Proxy,
  ``connectivity-proxy.kyma-system.svc.cluster.local:20003`` (the Kyma module's service); a
  missing token URL is ``https://{subaccount_subdomain}.{token_service_domain}`` (or
  ``identityzone``/``uaadomain``). On Cloud Foundry a binding without a proxy stays an error:
  the cluster default would only fail later with a DNS error.
* **X.509 credentials**: ``credential-type`` ``x509`` (also ``x509_generated``,
  ``x509_provided``) with ``certificate`` and ``key`` (PEM) instead of ``clientsecret``; the
  token is fetched with mTLS at ``certurl``, else at the token URL moved to XSUAA's
  certificate host (``*.authentication.cert.<region>``, as ``@sap/xssec`` does).
  ``x509_attested`` (Zero Trust Identity Service) puts no key in the binding: the workload's
  SPIFFE certificate comes from the SPIRE agent, which this library does not read — a
  binding that carries ``certificate``/``key`` anyway is used, else a ConfigurationError says so.

* **Subscriber tenants**: the token of a subscriber's user comes from that tenant's endpoint
  (:mod:`propagation.exchange.tenant_urls`): the subdomain replaces the first host label of the token
  URL (under ``uaadomain``/``token_service_domain`` when given), an IAS user's zone goes in
  ``X-zid`` to ``https://{uaadomain}``. ``provider_zone`` (``tenantid``/``identityzoneid``/
  ``subaccount_id``/``zoneid``) and ``subaccount_subdomain``/``identityzone`` name the
  provider's own tenant, whose users keep the binding's token URL. Where no URL of the user's
  tenant can be formed, the call fails closed — never the provider's proxy token for a
  subscriber's user.
* **No token URL at all** (the SAP Cloud SDK's test binding, hand-written bindings): as the
  Cloud SDK does, the subaccount's ``xsuaa`` binding lends ``url``, ``uaadomain`` and its zone
  (:func:`with_xsuaa_defaults`).

Errors never contain a secret or key (they name the binding and the missing keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from .bindings import Binding
from .errors import ConfigurationError
from .exchange.oauth import ClientCredentials

__all__ = [
    "ConnectivityBinding",
    "connectivity_config",
    "with_xsuaa_defaults",
    "KYMA_PROXY_HOST",
    "KYMA_PROXY_PORT",
    "X509_TYPES",
    "SECRET_TYPES",
]

#: The Connectivity Proxy of a Kyma cluster (the ``connectivity-proxy`` module, namespace kyma-system).
KYMA_PROXY_HOST = "connectivity-proxy.kyma-system.svc.cluster.local"
KYMA_PROXY_PORT = 20003

#: ``credential-type`` values with a client certificate and key in the binding.
X509_TYPES = frozenset({"x509", "x509_generated", "x509_provided", "x509_attested"})
#: ``credential-type`` values with a client secret.
SECRET_TYPES = frozenset({"binding-secret", "instance-secret"})


@dataclass(frozen=True, repr=False)
class ConnectivityBinding:
    """What the ``connectivity`` binding says, with every gap filled (the fields of
    ``connectivity.ConnectivityConfig`` plus where the proxy came from and the credential type)."""

    client: ClientCredentials  # secret, or PEM certificate + key (X.509)
    token_url: str
    proxy_host: str
    proxy_port: int
    uaadomain: str | None = None
    binding_name: str = ""
    credential_type: str = "binding-secret"
    proxy_from_binding: bool = True  # False: the Kyma cluster default
    provider_zone: str | None = None  # the provider's zone id: its users keep token_url
    provider_subdomain: str | None = None  # the provider's subdomain: likewise

    @property
    def proxy_url(self) -> str:
        return f"http://{self.proxy_host}:{self.proxy_port}"

    @property
    def x509(self) -> bool:
        return self.client.uses_mtls

    def __repr__(self) -> str:
        return (
            f"ConnectivityBinding(binding={self.binding_name!r}, client={self.client!r}, "
            f"credential_type={self.credential_type!r}, proxy={self.proxy_url!r})"
        )


def _text(creds: Mapping[str, Any], key: str) -> str | None:
    value = creds.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def _token_url(base: str) -> str:
    """``{base}/oauth/token`` unless ``base`` already is the token endpoint."""
    base = base.rstrip("/")
    return base if base.endswith("/oauth/token") else base + "/oauth/token"


def _cert_host(url: str) -> str:
    """XSUAA's mTLS host: ``x.authentication.<region>`` → ``x.authentication.cert.<region>``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    labels = host.split(".")
    if "authentication" not in labels or "cert" in labels:
        return url
    index = labels.index("authentication")
    labels.insert(index + 1, "cert")
    netloc = ".".join(labels) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


#: Keys that name a token endpoint; a binding with none of them borrows the xsuaa binding's.
_TOKEN_URL_KEYS = ("certurl", "token_service_url", "url", "token_service_domain", "uaadomain")
#: Zone id keys, in the order they are read.
_ZONE_KEYS = ("tenantid", "identityzoneid", "zoneid", "subaccount_id", "subaccountid")


def with_xsuaa_defaults(binding: Binding, xsuaa: Binding | None) -> Binding:
    """``binding`` completed from the app's ``xsuaa`` binding (the provider's subaccount, the
    same one the connectivity instance lives in): its zone (``tenantid``…), ``identityzone``
    and ``uaadomain`` when the binding lacks them, and its ``url`` when the binding names no
    token endpoint at all (what the SAP Cloud SDK does: the subaccount's XSUAA issues the
    connectivity client's tokens). The binding's own keys always win."""
    if xsuaa is None:
        return binding
    creds = binding.credentials
    keys = ["uaadomain", "identityzone", *_ZONE_KEYS]
    if not any(_text(creds, key) for key in _TOKEN_URL_KEYS):
        keys.append("url")
    lent = {key: xsuaa.credentials[key] for key in keys if _text(xsuaa.credentials, key) and not _text(creds, key)}
    if not lent:
        return binding
    if any(_text(creds, key) for key in _ZONE_KEYS):  # one zone, the binding's own
        lent = {k: v for k, v in lent.items() if k not in _ZONE_KEYS}
    return Binding(binding.name, binding.label, {**lent, **creds}, binding.plan, binding.tags, binding.source)


def connectivity_config(binding: Binding, *, kubernetes: bool | None = None) -> ConnectivityBinding:
    """Parse a ``connectivity`` binding (CF or Kyma shape); :class:`ConfigurationError` naming
    the binding and the missing keys when it cannot be used.

    ``kubernetes``: whether the cluster's Connectivity Proxy may stand in for a missing proxy;
    default: the binding was read from ``SERVICE_BINDING_ROOT`` (a caller that knows better,
    e.g. from ``KUBERNETES_SERVICE_HOST`` in its environment, passes it).
    """
    creds = binding.credentials
    where = f"Connectivity binding '{binding.name}'"  # the wording doctor and today's tests expect
    if kubernetes is None:
        kubernetes = binding.source.startswith("SERVICE_BINDING_ROOT")

    raw_type = _text(creds, "credential-type") or _text(creds, "credential_type")
    credential_type = raw_type.lower() if raw_type else None
    if credential_type is not None and credential_type not in X509_TYPES | SECRET_TYPES:
        raise ConfigurationError(
            f"{where} has credential-type {raw_type[:30]!r}: expected one of {', '.join(sorted(X509_TYPES | SECRET_TYPES))}."
        )
    client_id = _text(creds, "clientid")
    certificate, key = _text(creds, "certificate"), _text(creds, "key")
    secret = _text(creds, "clientsecret")
    if not client_id:
        raise ConfigurationError(f"{where} needs 'clientid'.")
    if credential_type in X509_TYPES:
        if not (certificate and key):
            if credential_type == "x509_attested":
                raise ConfigurationError(
                    f"{where} has credential-type 'x509_attested': its client certificate comes from the Zero Trust "
                    f"Identity Service (SPIRE-attested workload credentials from the SPIRE agent's workload API), "
                    f"which this library does not read; put the workload's 'certificate' and 'key' (PEM) into the "
                    f"binding, or bind the instance with credential-type 'x509' or 'binding-secret'."
                )
            raise ConfigurationError(f"{where} has credential-type {credential_type!r} and needs 'certificate' and 'key'.")
        mtls = True
    else:
        mtls = bool(certificate and key) if credential_type is None else False  # both given: mTLS, as before
        if not mtls and not secret:
            raise ConfigurationError(f"{where} needs 'clientid' with 'clientsecret' (or 'certificate' and 'key').")

    # Token URL: certurl (mTLS), token_service_url, url, else subdomain + domain.
    domain = _text(creds, "uaadomain") or _text(creds, "token_service_domain")
    subdomain = _text(creds, "subaccount_subdomain") or _text(creds, "identityzone") or _text(creds, "subdomain")
    base = (_text(creds, "certurl") if mtls else None) or _text(creds, "token_service_url") or _text(creds, "url")
    if base is None and subdomain and domain:
        base = f"https://{subdomain}.{domain}"
    if base is None:
        raise ConfigurationError(
            f"{where} needs 'token_service_url' (or 'url', or 'subaccount_subdomain' with 'token_service_domain')."
        )
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{where}: the token service URL is not an absolute http(s) URL.")
    if mtls and not _text(creds, "certurl"):
        base = _cert_host(base)
    if mtls and domain:  # subscriber token URLs are built under the certificate host's domain
        domain = urlsplit(_cert_host(f"https://{domain}")).hostname

    # Proxy: the binding's, else (Kubernetes only) the cluster's Connectivity Proxy.
    host = _text(creds, "onpremise_proxy_host")
    port_text = _text(creds, "onpremise_proxy_http_port") or _text(creds, "onpremise_proxy_port")
    from_binding = bool(host and port_text)
    if kubernetes:
        host = host or KYMA_PROXY_HOST
        port_text = port_text or str(KYMA_PROXY_PORT)
    try:
        port = int(port_text) if port_text else 0
    except ValueError:
        port = 0
    if not host or not 0 < port < 65536:
        raise ConfigurationError(
            f"{where} needs 'onpremise_proxy_host' and 'onpremise_proxy_http_port' (or 'onpremise_proxy_port')."
        )

    client = ClientCredentials(
        client_id=client_id,
        client_secret=None if mtls else secret,
        certificate=certificate if mtls else None,
        key=key if mtls else None,
    )
    return ConnectivityBinding(
        client=client,
        token_url=_token_url(base),
        proxy_host=host,
        proxy_port=port,
        uaadomain=domain,
        binding_name=binding.name,
        credential_type=credential_type or ("x509" if mtls else "binding-secret"),
        proxy_from_binding=from_binding,
        provider_zone=next((z for z in (_text(creds, k) for k in _ZONE_KEYS) if z), None),
        provider_subdomain=subdomain,
    )
