"""Outbound calls with ``requests``: a :class:`DestinationSession` bound to one destination,
and :class:`DestinationAuth`, which injects the destination's headers for the calling user
on every prepared request and re-exchanges once on a 401 (like ``HTTPDigestAuth.handle_401``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urljoin, urlsplit

import requests
from requests.auth import AuthBase

from ._log import logger
from .auth import OutboundAuth
from .context import as_user_token, current_token
from .csrf import CsrfHandler, UserCookieJars
from .destinations.model import Destination
from .tokens import UserToken

if TYPE_CHECKING:
    from .engine import Propagator

__all__ = ["DestinationSession", "DestinationAuth", "DEFAULT_TIMEOUT", "PROTECTED_HEADER_PREFIXES"]

#: (connect, read) seconds, used when neither the call nor the destination sets a timeout.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 60.0)

#: Headers the library owns: never taken from application code, never sent to another host.
PROTECTED_HEADER_PREFIXES = ("proxy-authorization", "sap-connectivity-")


def _is_protected(header: str) -> bool:
    low = header.lower()
    return low == "proxy-authorization" or low.startswith("sap-connectivity-")


@lru_cache(maxsize=1024)
def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class DestinationAuth(AuthBase):
    """Sets the destination's authentication headers for the current user on each request.

    The user is read when the request is *sent* (explicit ``user_token`` first, else the
    request context), so a session reused across requests never carries a stale user.
    """

    def __init__(self, session: "DestinationSession") -> None:
        self.session = session

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        for header in [h for h in request.headers if _is_protected(h)]:
            logger.warning("dropping application-set header %s: it is owned by propagation", header)
            del request.headers[header]
        if _origin(request.url or "") != _origin(self.session.destination.url):
            logger.warning(
                "destination=%s: request to another host is sent without the destination's credentials",
                self.session.destination.name,
            )
            return request
        outbound = self.session.authorize()
        self._apply(request, outbound)
        request.register_hook("response", self._handle_401)  # type: ignore[arg-type]
        request._propagation_outbound = outbound  # type: ignore[attr-defined]
        return request

    @staticmethod
    def _apply(request: requests.PreparedRequest, outbound: OutboundAuth) -> None:
        if "Authorization" in outbound.headers or outbound.strategy != "none":
            request.headers.pop("Authorization", None)
        request.headers.update(outbound.headers)

    def _handle_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """A 401 from the destination host (or a 407 from the Connectivity proxy): drop the
        cached token (the proxy token for 407), re-exchange, resend once."""
        request = response.request
        outbound: OutboundAuth | None = getattr(request, "_propagation_outbound", None)
        if outbound is None:
            return response
        stale = {401: outbound.cache_key, 407: outbound.proxy_cache_key}.get(response.status_code)
        if (
            stale is None
            or getattr(request, "_propagation_retried", False)
            or _origin(request.url or "") != _origin(self.session.destination.url)
        ):
            return response
        if request.body is not None and not isinstance(request.body, (bytes, str)):
            return response  # a streamed body cannot be sent twice
        logger.info(
            "destination=%s answered %d: dropping cached %s token and retrying once",
            self.session.destination.name,
            response.status_code,
            "proxy" if response.status_code == 407 else "destination",
        )
        self.session.propagator.cache.invalidate(stale)
        response.content  # consume so the connection can be reused
        response.close()
        retry = request.copy()
        fresh = self.session.authorize()
        self._apply(retry, fresh)
        retry._propagation_outbound = fresh  # type: ignore[attr-defined]
        retry._propagation_retried = True  # type: ignore[attr-defined]
        second = response.connection.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        return second


class DestinationSession(requests.Session):
    """A ``requests.Session`` bound to one destination.

    Relative URLs are joined to the destination URL (keeping its path), the
    destination's authentication is injected per request, ``URL.queries.*`` and
    ``sap-client`` are added, and a default timeout applies. Modifying calls get an
    ``X-CSRF-Token`` (``csrf=False`` to opt out), and cookies are kept per user
    (see :mod:`propagation.csrf`).
    """

    cookies = UserCookieJars()  # one jar per user fingerprint: no backend session leaks across users

    def __init__(
        self,
        propagator: "Propagator",
        name: str,
        *,
        user_token: str | UserToken | None = None,
        destination: Destination | None = None,
        csrf: bool = True,
    ) -> None:
        super().__init__()
        self.propagator = propagator
        self.name = name
        self._explicit_user = None if user_token is None else as_user_token(user_token)
        self.destination = destination or propagator.destination(name, user_token=self._explicit_user or current_token())
        self.auth = DestinationAuth(self)
        self.csrf: CsrfHandler | None = CsrfHandler(self) if csrf else None
        self.verify = self.destination.strict_ssl
        if self.destination.on_premise:
            # The Connectivity proxy (none yet when the binding is missing: authorize() raises).
            self._use_proxy(propagator.connectivity.proxy_url(self.destination))
        elif self.destination.proxy_host and self.destination.proxy_port:
            self._use_proxy(f"http://{self.destination.proxy_host}:{self.destination.proxy_port}")

    def _use_proxy(self, proxy: str | None) -> None:
        if proxy:
            self.proxies.update({"http": proxy, "https": proxy})

    @property
    def user(self) -> UserToken | None:
        """The user this call is made as: the explicit ``user_token``, else the context's."""
        return self._explicit_user if self._explicit_user is not None else current_token()

    def authorize(self) -> OutboundAuth:
        outbound = self.propagator.authorizer.authorize(self.destination, self.user)
        if outbound.proxy_url:
            # Session proxies are merged into the request after auth ran: this request uses it.
            self._use_proxy(outbound.proxy_url)
        return outbound

    # -- requests.Session overrides ---------------------------------------------------
    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = self._join(url.decode() if isinstance(url, bytes) else url)
        params = kwargs.get("params")
        defaults = self._default_params()
        if defaults:
            merged: dict[str, Any] = dict(defaults)
            if isinstance(params, Mapping):
                merged.update(params)
                kwargs["params"] = merged
            elif params is None:
                kwargs["params"] = merged
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.destination.timeout if self.destination.timeout else DEFAULT_TIMEOUT
        from .destinations.service import client_certificate

        with client_certificate(self.destination, url) as cert:  # ClientCertificateAuthentication: mTLS, files for this call only
            if cert is not None:
                kwargs["cert"] = cert
            if self.csrf is not None:
                return self.csrf.request(
                    method.decode() if isinstance(method, bytes) else method,
                    url,
                    kwargs,
                    lambda kw: super(DestinationSession, self).request(method, url, *args, **kw),
                )
            return super().request(method, url, *args, **kwargs)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        """On a redirect to another host, carry no credentials of ours (nor the app's).

        On a same-host redirect of an on-premise call, the proxy headers are set again
        (``rebuild_proxies`` has dropped ``Proxy-Authorization``; the token comes from the cache).
        """
        super().rebuild_auth(prepared_request, response)
        if _origin(prepared_request.url or "") != _origin(self.destination.url):
            for header in list(prepared_request.headers):
                if header.lower() == "authorization" or _is_protected(header):
                    del prepared_request.headers[header]
        elif self.destination.on_premise and urlsplit(prepared_request.url or "").scheme.lower() == "http":
            outbound = self.authorize()
            for header in [h for h in prepared_request.headers if _is_protected(h)]:
                del prepared_request.headers[header]
            prepared_request.headers.update({k: v for k, v in outbound.headers.items() if _is_protected(k)})

    def rebuild_proxies(self, prepared_request: requests.PreparedRequest, proxies: Any) -> Any:
        result = super().rebuild_proxies(prepared_request, proxies)
        if _origin(prepared_request.url or "") != _origin(self.destination.url):
            for header in list(prepared_request.headers):
                if _is_protected(header):
                    del prepared_request.headers[header]
        return result

    def _join(self, url: str) -> str:
        if urlsplit(url).scheme:
            return url  # DestinationAuth sends credentials only to the destination's origin
        base = self.destination.url
        if not base.endswith("/"):
            base += "/"
        relative = url.lstrip("/")
        if "./" in relative or relative in (".", ".."):
            return urljoin(base, relative)  # dot segments: let urljoin resolve them
        return base + relative

    def _default_params(self) -> dict[str, str]:
        props = self.destination.properties
        params = dict(props.prefixed("URL.queries."))
        sap_client = props.text("sap-client")
        if sap_client:
            params.setdefault("sap-client", sap_client)
        return params


SessionFactory = Callable[..., DestinationSession]
