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

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from ..errors import InvalidTokenError
from ..tokens import UserToken

__all__ = ["tenant_token_endpoint", "ZONE_HEADER"]

ZONE_HEADER = "X-zid"
#: A zone id travels in a header: a UUID in practice, never anything a header could be split with.
_ZONE = re.compile(r"[A-Za-z0-9._~-]{1,128}")


def _with_host(url: str, host: str) -> str:
    parts = urlsplit(url)
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def tenant_token_endpoint(
    token_url: str, uaadomain: str | None, user: UserToken | None, *, provider_zone: str | None = None,
    provider_subdomain: str | None = None,
) -> tuple[str, dict[str, str]] | None:
    """``(url, extra headers)`` of the token request for ``user``'s tenant, or ``None`` when
    no URL of that tenant can be formed — the caller then fails closed: the provider's
    endpoint would issue the *provider's* token for a subscriber's user.

    * No user, a token that names no tenant at all, or the provider's own user (zone ``provider_zone`` or subdomain
      ``provider_subdomain``, when the binding names them): the provider's ``token_url``.
    * An XSUAA user with a subdomain (checked to be a host label, else
      :class:`~propagation.errors.InvalidTokenError`): ``token_url`` with that subdomain as
      first host label — under ``uaadomain`` when given (keeping labels such as
      ``authentication.cert``), else the first label replaced, as for the Destination service.
    * Otherwise (IAS users, XSUAA tokens without subdomain) the zone id goes to
      ``https://{uaadomain}`` with ``X-zid`` — only when ``uaadomain`` is known.
    * A token URL whose host is an IP address or a single label (loopback tests): that URL,
      with ``X-zid`` for any zone but the provider's.

    ``uaadomain``: the XSUAA domain the provider's ``token_url`` lives under (binding
    ``uaadomain``/``token_service_domain``; for a destination's ``Common`` token URL, the host
    without its first label).
    """
    if user is None:
        return token_url, {}
    zone = user.tenant
    if zone and not _ZONE.fullmatch(zone):
        raise InvalidTokenError("The token's zone id (zid/app_tid) is not a plain identifier; refused before any request.")
    host = (urlsplit(token_url).hostname or "").lower()
    domain = (uaadomain or "").lower().strip(".")
    under_domain = bool(domain) and host.endswith("." + domain)
    subdomain = user.tenant_subdomain if user.kind == "xsuaa" else None
    if _is_ip(host) or "." not in host:
        # An address or a single-label host ("localhost") has no subdomain to replace: the
        # tenant is named by its zone in X-zid — never left out, so never the provider's by default.
        return token_url, ({ZONE_HEADER: zone} if zone and zone != provider_zone else {})
    if (provider_zone is not None and zone == provider_zone) or (
            provider_subdomain is not None and subdomain is not None and subdomain.lower() == provider_subdomain.lower()):
        return token_url, {}
    if subdomain:
        if under_domain:
            labels = host[: -len(domain) - 1].split(".")  # "<subdomain>" or "<subdomain>.authentication.cert"
            return _with_host(token_url, ".".join([subdomain, *labels[1:], domain])), {}
        return _with_host(token_url, subdomain + "." + host.split(".", 1)[1]), {}
    if not zone:
        return token_url, {}  # a token that names no tenant at all is nobody's subscriber (as for the Destination service)
    if under_domain:
        labels = host[: -len(domain) - 1].split(".")
        base = ".".join([*labels[1:], domain])  # drop the provider's subdomain, keep e.g. "authentication.cert"
        return _with_host(token_url, base), {ZONE_HEADER: zone}
    return None
