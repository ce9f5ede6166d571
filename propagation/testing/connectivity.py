"""The emulated Connectivity proxy, Cloud Connector and on-premise system."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit


from ..tokens import fingerprint
from .issuing import _CONNECTION, _Issuing
from .records import Call
from .registry import _Reject
from .wire import NO_USER_TOKEN_MESSAGE, Request, Response, _basic_user, _bearer, _json, _odata_error, _origin


class _Connectivity(_Issuing):
    """The proxy's checks and the on-premise system behind the Cloud Connector."""

    # ------------------------------------------------------------------ Connectivity proxy
    def check_proxy(self, request: Request) -> Response | None:
        """What the Connectivity proxy checks before forwarding: ``Proxy-Authorization`` is an
        unexpired XSUAA token of the connectivity client, and a Cloud Connector is connected
        for ``SAP-Connectivity-SCC-Location_ID``. ``None``: forward; else the answer (407/503)."""
        reset = _CONNECTION.set(getattr(request, "connection", None))
        try:
            return self._check_proxy(request)
        finally:
            _CONNECTION.reset(reset)

    def _check_proxy(self, request: Request) -> Response | None:
        raw = _bearer(request.headers.get("Proxy-Authorization"))
        location = request.headers.get("SAP-Connectivity-SCC-Location_ID") or None
        parts = urlsplit(request.url)
        base = dict(service="connectivity-proxy", method=request.method, path=parts.path or "/", via_proxy=True,
                    location=location)
        try:
            if raw is None:
                raise _Reject("Proxy-Authorization with a Bearer token of the connectivity service is required.")
            verified = self._verify(raw)
            if verified.kind != "xsuaa" or verified.claims.get("cid") != self.connectivity_client:
                raise _Reject("The proxy token was not issued to the connectivity service instance's client.")
        except _Reject as exc:
            self._record(self.calls, Call(status=407, error=exc.description, token=fingerprint(raw) if raw else None, **base))
            return _json(407, {"error": "proxy_authentication_required", "error_description": exc.description},
                         {"Proxy-Authenticate": 'Bearer realm="connectivity"'})
        with self._lock:
            connected = location in self._locations
        if not connected:
            text = f"There is no SAP Cloud Connector (SCC) connected to your subaccount with location id '{location}'."
            self._record(self.calls, Call(status=503, error=text, token=fingerprint(raw), **base))
            return _json(503, {"error": "service_unavailable", "error_description": text})
        return None

    def _onprem(self, request: Request, origin: str, path: str) -> Response:
        refused = self._check_proxy(request)
        if refused is not None:
            return refused
        location = request.headers.get("SAP-Connectivity-SCC-Location_ID") or None
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        call = dict(service="onprem", method=request.method, path=path, via_proxy=True, location=location, query=query)
        if origin != _origin(self.origins.onprem):
            text = f"Access denied to system {urlsplit(request.url).netloc}: it is not mapped in the Cloud Connector."
            self._record(self.calls, Call(status=403, error=text, **call))
            return _json(403, {"error": {"code": "SCC/403", "message": text}})
        proxy_raw = _bearer(request.headers.get("Proxy-Authorization")) or ""
        proxy = self._verify(proxy_raw)
        proxy_fp = fingerprint(proxy_raw)
        assert proxy.tenant is not None
        tenant = proxy.tenant.subdomain
        user: str | None = None
        carried_by: str | None = None
        header_user = _bearer(request.headers.get("SAP-Connectivity-Authentication"))
        if header_user is not None:
            try:
                verified = self._verify(header_user)
            except _Reject as exc:
                self._record(self.calls, Call(status=401, tenant=tenant, carried_by="connectivity-header",
                                              error=exc.description, **call))
                return _odata_error(401, "Invalid user token in SAP-Connectivity-Authentication")
            user, carried_by = self._principal(verified.claims), "connectivity-header"
        elif self._principal(proxy.claims) is not None:
            user, carried_by = self._principal(proxy.claims), "proxy-token"
        elif _bearer(request.headers.get("Authorization")) is not None:
            bearer = _bearer(request.headers.get("Authorization")) or ""
            try:
                user, carried_by = self._principal(self._verify(bearer).claims), "bearer"
            except _Reject as exc:
                self._record(self.calls, Call(status=401, tenant=tenant, carried_by="bearer", error=exc.description,
                                              **call))
                return _odata_error(401, "Token expired" if exc.expired else "Invalid token")
        else:
            basic = _basic_user(request.headers.get("Authorization"))
            if basic is not None:
                name, password = basic
                with self._lock:
                    known = self._basic_users.get(name)
                if known is None or not hmac.compare_digest(known.encode(), password.encode()):
                    self._record(self.calls, Call(status=401, tenant=tenant, carried_by="basic", error="bad credentials", **call))
                    return _odata_error(401, "Logon failed")
                user, carried_by = name, "basic"
        if user is None:
            self._record(self.calls, Call(status=401, tenant=tenant, client=proxy.claims.get("cid"), error="no principal",
                                          token=proxy_fp, **call))
            return _odata_error(401, NO_USER_TOKEN_MESSAGE)
        answer = self._odata_answer(request, path, {"seenBy": user, "service": "onprem", "location": location,
                                                    "carriedBy": carried_by, "tenant": tenant})
        self._record(self.calls, Call(status=answer.status, user=user, tenant=tenant, client=proxy.claims.get("cid"),
                                      carried_by=carried_by, token=proxy_fp, **call))
        return answer

