"""Which token endpoint serves the tenant of a user (DESIGN §5, "Tenant of a token without a
subdomain").

* An XSUAA user token names its subaccount by subdomain (``ext_attr.zdn``): the tenant's token
  endpoint is the provider's with that subdomain as first host label.
* An IAS user token names its tenant by id only (``app_tid``/``zone_uuid``): XSUAA is asked at
  ``https://{uaadomain}/oauth/token`` (``authentication.cert.`` hosts for X.509 clients keep
  their ``cert`` label) with the header ``X-zid: <zone id>`` — what ``@sap/xssec`` v4 does. A
  subdomain is never derived from an IAS issuer's host: that label is the IAS tenant, not the
  user's subaccount, and the host it would name belongs to somebody else.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .tokens import UserToken

__all__ = ["tenant_token_endpoint", "ZONE_HEADER"]

ZONE_HEADER = "X-zid"


def _with_host(url: str, host: str) -> str:
    parts = urlsplit(url)
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def tenant_token_endpoint(token_url: str, uaadomain: str | None, user: UserToken | None) -> tuple[str, dict[str, str]]:
    """``(url, extra headers)`` of the token request for ``user``'s tenant.

    ``uaadomain``: the XSUAA domain the provider's ``token_url`` lives under (binding
    ``uaadomain``/``token_service_domain``; for a destination's ``Common`` token URL, the host
    without its first label). Without a user, or a user whose tenant cannot be named, the
    provider's ``token_url`` unchanged.
    """
    if user is None:
        return token_url, {}
    host = (urlsplit(token_url).hostname or "").lower()
    domain = (uaadomain or "").lower().strip(".")
    if user.kind == "xsuaa":
        if not user.subdomain or not domain:
            return token_url, {}
        suffix = "." + domain
        if not host.endswith(suffix):
            return token_url, {}
        middle = host[: -len(suffix)]  # "<subdomain>" or "<subdomain>.authentication.cert" style labels
        labels = middle.split(".")
        return _with_host(token_url, ".".join([user.subdomain, *labels[1:]]) + suffix), {}
    zone = user.tenant
    if not zone:
        return token_url, {}
    if domain and host.endswith("." + domain):
        labels = host[: -len(domain) - 1].split(".")
        base = ".".join([*labels[1:], domain])  # drop the provider's subdomain, keep e.g. "authentication.cert"
        return _with_host(token_url, base), {ZONE_HEADER: zone}
    return token_url, {ZONE_HEADER: zone}
