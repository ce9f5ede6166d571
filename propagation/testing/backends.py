"""The emulated Internet backend (S/4HANA Cloud OData) and Cloud Integration runtime."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..tokens import fingerprint
from .issuing import _Issuing
from .records import Call
from .registry import _Reject
from .wire import (
    FUNCTIONAL_LOCATION_PATH,
    FUNCTIONAL_LOCATION_V2_PATH,
    NO_USER_TOKEN_MESSAGE,
    Request,
    Response,
    _basic_user,
    _bearer,
    _json,
    _odata_error,
)

_FUNCTIONAL_LOCATIONS: tuple[dict[str, str], ...] = (
    {"FunctionalLocation": "1010-PLT-01", "FunctionalLocationName": "Hamburg plant", "FunctionalLocationCategory": "M"},
    {"FunctionalLocation": "1010-PLT-01-PMP", "FunctionalLocationName": "Cooling water pump", "FunctionalLocationCategory": "M"},
    {"FunctionalLocation": "1010-PLT-01-CMP", "FunctionalLocationName": "Air compressor", "FunctionalLocationCategory": "M"},
)
_FUNCTIONAL_LOCATION_SETS = (FUNCTIONAL_LOCATION_PATH, FUNCTIONAL_LOCATION_V2_PATH)
_ENTITY_KEY = re.compile(r"^\('((?:[^']|'')*)'\)$")


def _functional_location_target(path: str) -> tuple[bool, str | None]:
    """Whether ``path`` is a functional-location entity set (either service), and the key of
    ``...('<id>')`` (OData string literal, percent-decoded, ``''`` → ``'``) if one is addressed."""
    path = unquote(path.rstrip("/"))
    for entity_set in _FUNCTIONAL_LOCATION_SETS:
        if path == entity_set:
            return True, None
        if path.startswith(entity_set):
            match = _ENTITY_KEY.match(path[len(entity_set):])
            if match:
                return True, match.group(1).replace("''", "'")
    return False, None


class _Backends(_Issuing):
    """Backends that check the caller's token and answer who they saw."""

    # ------------------------------------------------------------------ backend / iFlow
    def _backend(self, request: Request, service: str, path: str) -> Response:
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        call = dict(service=service, method=request.method, path=path, query=query)
        authorization = request.headers.get("Authorization")
        raw = _bearer(authorization)
        basic = _basic_user(authorization)
        saml = authorization[8:].strip() if authorization and authorization[:8].lower() == "saml2.0 " else None
        if raw is not None or saml is not None:
            token = raw if raw is not None else saml
            assert token is not None
            try:
                verified = self._verify(token)
            except _Reject as exc:
                self._record(self.calls, Call(status=401, token=fingerprint(token), carried_by="bearer",
                                              error=exc.description, **call))
                return _odata_error(401, "Token expired" if exc.expired else "Invalid token")
            carried = "saml" if verified.kind == "saml" else "bearer"
            if (saml is not None) != (verified.kind == "saml"):
                self._record(self.calls, Call(status=401, token=fingerprint(token), error="wrong scheme", **call))
                return _odata_error(401, "Invalid token")
            user = self._principal(verified.claims)
            client = verified.claims.get("cid") or verified.claims.get("azp")
            tenant = verified.tenant.subdomain if verified.tenant else verified.claims.get("app_tid")
            rec = dict(token=fingerprint(token), client=client, tenant=tenant, carried_by=carried, **call)
            if service == "iflow" and (verified.kind != "xsuaa" or client not in self._iflow_clients):
                self._record(self.calls, Call(status=403, user=user, error="client not authorized for the iFlow", **rec))
                return _json(403, {"error": "Forbidden", "message": "The token's client may not send messages to this iFlow."})
            if user is None and not self.accept_technical:
                self._record(self.calls, Call(status=401, error="technical user", **rec))
                return _odata_error(401, NO_USER_TOKEN_MESSAGE)
            answer = self._odata_answer(request, path, {"seenBy": user, "service": service, "tenant": tenant,
                                                        "client": client, "carriedBy": carried})
            self._record(self.calls, Call(status=answer.status, user=user, **rec))
            return answer
        if basic is not None:
            name, password = basic
            with self._lock:
                known = self._basic_users.get(name)
            if known is None or not hmac.compare_digest(known.encode(), password.encode()):
                self._record(self.calls, Call(status=401, carried_by="basic", error="bad credentials", **call))
                return _odata_error(401, "Logon failed")
            answer = self._odata_answer(request, path, {"seenBy": name, "service": service, "carriedBy": "basic"})
            self._record(self.calls, Call(status=answer.status, user=name, carried_by="basic", **call))
            return answer
        self._record(self.calls, Call(status=401, error="no credentials", **call))
        return _odata_error(401, NO_USER_TOKEN_MESSAGE)

    def _odata_answer(self, request: Request, path: str, seen: dict[str, Any]) -> Response:
        headers: dict[str, str] = {}
        if (request.headers.get("X-CSRF-Token") or "").lower() == "fetch":
            digest = hashlib.sha256(f"{seen.get('seenBy')}|{self._xsuaa_issuer.kid}".encode()).hexdigest()[:24]
            headers["X-CSRF-Token"] = digest
        if request.method == "HEAD":
            return Response(200, {"Content-Type": "application/json", **headers}, b"")
        body: dict[str, Any] = dict(seen)
        body.update({"method": request.method, "path": path})
        status = 201 if request.method == "POST" else 200
        entity_set, key = _functional_location_target(path)
        if entity_set and key is None and request.method == "GET":
            rows = [dict(item) for item in _FUNCTIONAL_LOCATIONS]
            top = parse_qs(urlsplit(request.url).query).get("$top", [""])[0]
            body["d"] = {"results": rows[: int(top)] if top.isdigit() else rows}
        elif entity_set and key is not None and request.method == "GET":
            row = next((dict(item) for item in _FUNCTIONAL_LOCATIONS if item["FunctionalLocation"] == key), None)
            if row is None:
                return _json(404, {"error": {"code": "/IWBEP/CM_MGW_RT/020", "message": f"Resource not found for segment '{key}'"}})
            body["d"] = row
        else:
            body["d"] = {"results": []}
        return _json(status, body, headers)


