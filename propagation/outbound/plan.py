"""The transport-free **plan** of one outbound request (DESIGN §1, §2a, §6).

For the user and tenant of *that* request: resolve the destination, decide the URL (joined to
the destination URL, dot segments refused above its path), the headers, query parameters,
proxy, client certificate, TLS verification, timeout, whether a CSRF token applies, and the
key of the connection pool. ``session()``, ``client()``, ``async_client()`` and
``headers()`` all execute this one flow; none of them has rules of its own.

Origins: credentials, ``URL.headers.*``, ``URL.queries.*`` and ``sap-client`` go only to the
destination's origin. A request to an absolute URL elsewhere is planned *bare*: no
authentication is computed at all, no proxy, no client certificate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from ..caches.memory import TokenCache
from ..destinations.lookup import LookupOptions
from ..destinations.model import Destination, without_userinfo
from ..destinations.resolver import DestinationResolver
from ..errors import PathOutsideDestinationError
from ..exchange.flow import Flow
from ..tokens import UserToken
from ..exchange.oauth import OAuthClient
from .auth import Authorizer, OutboundAuth
from .csrf import MODIFYING_METHODS, CookieJars, CsrfStore

from .pools import PoolKey, Pools
from ..events.instrument import note_plan

__all__ = ["Engine", "Plan", "PoolKey", "plan_flow", "join_url", "origin", "DEFAULT_TIMEOUT", "is_protected"]

#: (connect, read) seconds, used when neither the call nor the destination sets a timeout.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 60.0)


def is_protected(header: str) -> bool:
    """``Proxy-Authorization`` and ``SAP-Connectivity-*``: set by the library only, never taken
    from application code or passed through from an inbound request."""
    low = header.lower()
    return low == "proxy-authorization" or low.startswith("sap-connectivity-")


@lru_cache(maxsize=1024)
def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, with percent-encoded dots (``%2e``) treated as dots: servers decode them."""
    output: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        word = unquote(segment)
        last = index == len(segments) - 1
        if word == ".":
            if last:
                output.append("")
            continue
        if word == "..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append("")
            continue
        output.append(segment)
    return "/".join(output)


@lru_cache(maxsize=4096)
def join_url(base: str, url: str) -> str:
    """``url`` joined to the destination URL ``base`` (keeping its path); an absolute ``url`` is
    returned as is. A relative path whose dot segments climb above ``base``'s path raises
    :class:`PathOutsideDestinationError` before anything is sent."""
    if urlsplit(url).scheme:
        return url
    parts = urlsplit(base)
    prefix = parts.path if parts.path.endswith("/") else parts.path + "/"
    relative = url.lstrip("/")
    path_part, sep, query = relative.partition("?")
    fragment = ""
    if not sep:
        path_part, _, fragment = path_part.partition("#")
    else:
        query, _, fragment = query.partition("#")
    joined = prefix + path_part
    if any(unquote(s) in (".", "..") for s in path_part.split("/")):
        resolved = _remove_dot_segments(joined)
        if not (resolved + "/").startswith(prefix):
            raise PathOutsideDestinationError(url, parts.path or "/")
        joined = resolved
    return urlunsplit((parts.scheme, parts.netloc, joined, query, fragment))


@dataclass(frozen=True, repr=False)
class Plan:
    """Everything one request carries, decided before it is sent. ``headers`` hold secrets."""

    destination: Destination
    user: UserToken | None
    method: str
    url: str
    same_origin: bool
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    proxy: str | None = None
    client_cert: tuple[str, str] | None = None
    trust: str | None = None  # PEM CA bundle: the target's TLS trusts only these (TrustStoreLocation)
    verify: bool = True
    timeout: Any = DEFAULT_TIMEOUT
    csrf: bool = False
    pool: PoolKey | None = None
    auth: OutboundAuth | None = None
    lookup: LookupOptions | None = None  # the call's Destination service options (re-planning keeps them)

    @property
    def user_key(self) -> str | None:
        """Whose cookies and CSRF tokens this request uses (the user's fingerprint)."""
        return self.user.fingerprint if self.user is not None else None

    def __repr__(self) -> str:
        return (
            f"Plan({self.method} destination={self.destination.name!r}, url={without_userinfo(self.url.split('?', 1)[0])!r}, "
            f"headers={sorted(self.headers)!r}, proxy={self.proxy!r}, user={self.user_key!r})"
        )


class Engine(Protocol):
    """What the outbound adapters need of the engine (:class:`propagation.Propagator`)."""

    resolver: DestinationResolver
    authorizer: Authorizer
    oauth: OAuthClient
    cache: TokenCache
    pools: Pools
    cookie_jars: CookieJars
    csrf_tokens: CsrfStore
    call_deadline: float

    def destination(self, name: str, *, user_token: Any = None) -> Destination: ...


def _fingerprint(pem: str | None) -> str | None:
    return hashlib.sha256(pem.encode("utf-8")).hexdigest()[:32] if pem is not None else None


def plan_flow(
    engine: Engine, name: str, user: UserToken | None, method: str, url: str, *, csrf: bool = True,
    lookup: LookupOptions | None = None,
) -> Flow[Plan]:
    """The plan of ``method url`` to destination ``name`` as ``user`` (I/O as flow steps);
    ``lookup``: selection, fragment… of a Destination service lookup."""
    destination = yield from engine.resolver.resolve_flow(name, user, lookup)
    target = join_url(destination.url, url)
    note_plan(destination, user, target)
    scheme, host, port = origin(target)
    if origin(target) != origin(destination.url):
        # Elsewhere: nothing of the destination's goes with it.
        return Plan(destination, user, method, target, False, timeout=_timeout(destination),
                    pool=PoolKey(scheme, host, port), lookup=lookup)
    outbound = yield from engine.authorizer.authorize_flow(destination, user)
    headers = dict(outbound.headers)
    params = destination.memo.get("url-params")
    if params is None:
        params = dict(destination.properties.prefixed("URL.queries."))
        sap_client = destination.properties.text("sap-client")
        if sap_client:
            params.setdefault("sap-client", sap_client)
        destination.memo["url-params"] = params
    proxy = outbound.proxy_url
    if proxy is None and destination.proxy_host and destination.proxy_port:
        proxy = f"http://{destination.proxy_host}:{destination.proxy_port}"
    link = destination.service
    cert = None
    if destination.authentication == "ClientCertificateAuthentication" and link is not None:
        cert = link.certificate
    trust = link.trust if link is not None else None
    principal = None
    if destination.on_premise:
        principal = (
            user.tenant if user is not None else None,
            user.fingerprint if user is not None and destination.needs_user else None,
            destination.location_id,
        )
    pool = PoolKey(scheme, host, port, proxy, _fingerprint(cert[0] if cert else None), destination.strict_ssl,
                   principal, _fingerprint(trust))
    return Plan(
        destination,
        user,
        method,
        target,
        True,
        headers,
        params,
        proxy,
        cert,
        trust,
        destination.strict_ssl,
        _timeout(destination),
        csrf and method.upper() in MODIFYING_METHODS,
        pool,
        outbound,
        lookup,
    )


def _timeout(destination: Destination) -> Any:
    return destination.timeout if destination.timeout else DEFAULT_TIMEOUT
