"""The emulated XSUAA: ``/oauth/token`` of every tenant (by subdomain host, or by the
``X-zid`` header at ``https://{uaadomain}``) and ``/token_keys``.

What XSUAA (UAA) does and the emulation follows: request parameters may come in the query
string as well as in the form body (Spring merges both; the body wins on a clash); a zone is
chosen by the host's first label, or, at the bare ``uaadomain`` host, by ``X-zid`` (what
``@sap/xssec`` v4 sends for IAS tokens, which carry no subdomain); the password grant also
returns a ``refresh_token``, redeemable with ``grant_type=refresh_token`` by the same client.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Mapping
from urllib.parse import parse_qs, urlsplit

from ..tokens import fingerprint
from .issuing import _Issuing
from .records import Exchange
from .registry import _OAuthError, _Reject, _Tenant
from .wire import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    GRANT_PASSWORD,
    GRANT_REFRESH_TOKEN,
    Request,
    Response,
    _form,
    _json,
    _origin,
    _params,
    _short,
    _strip_query,
)


class _Xsuaa(_Issuing):
    """XSUAA ``/oauth/token``: client_credentials, password, jwt-bearer, refresh_token."""

    _refresh: dict[str, tuple[str, str, str, tuple[str, ...]]]  # refresh token → (zid, client, user, scopes)

    def _xsuaa_endpoint(self, request: Request, origin: str, path: str, service: str) -> Response:
        if path == "/token_keys" and request.method == "GET":
            return _json(200, {"keys": [{**self._xsuaa_issuer.jwk(), "value": self._xsuaa_issuer.public_pem}]})
        if path != "/oauth/token":
            return _json(404, {"error": "not_found", "error_description": f"No XSUAA endpoint {path}."})
        if request.method != "POST":
            return _json(405, {"error": "method_not_allowed", "error_description": "Use POST."})
        tenant = self._xsuaa_tenant_of(origin) if service == "xsuaa" else None
        zid = (request.headers.get("X-zid") or "").strip()
        if zid:
            named = next((t for t in self.tenants.values() if t.zid == zid), None)
            if named is None:
                return _json(404, {"error": "not_found",
                                   "error_description": f"Identity zone with id '{zid[:64]}' does not exist."})
            at_uaadomain = origin == _origin(f"https://{self.origins.uaadomain}")
            if tenant is not None and not at_uaadomain and named.zid != tenant.zid:
                return _json(400, {"error": "invalid_request",
                                   "error_description": "X-zid names another identity zone than the host's subdomain."})
            tenant = named
        if tenant is None:
            return _json(400, {"error": "invalid_request",
                               "error_description": "No identity zone: use the tenant's subdomain host or the X-zid header."})
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query, keep_blank_values=True).items()}
        form = {**query, **_form(request.body)}
        return self._xsuaa_token(tenant, form, request.headers, url=_strip_query(request.url))

    # ------------------------------------------------------------------ XSUAA /oauth/token
    def _xsuaa_token(self, tenant: _Tenant, form: Mapping[str, str], headers: Mapping[str, str], *,
                     url: str = "", via: str = "app", grant_override: str | None = None) -> Response:
        grant = form.get("grant_type")
        claimed, mode = self._claimed_client(form, headers)
        user: str | None = None
        subject: str | None = None
        assertion_fp: str | None = None
        params = _params(form)
        extra: dict[str, str] = {}
        try:
            client, mode = self._client_auth(self._xsuaa_clients, form, headers)
            if not grant:
                raise _OAuthError(400, "invalid_request", "Missing grant_type.")
            if grant == GRANT_CLIENT_CREDENTIALS:
                claims = self._xsuaa_claims(tenant, client, grant, None, ())
            elif grant == GRANT_PASSWORD:
                username, password = form.get("username"), form.get("password")
                user = username
                with self._lock:
                    record = self._users.get(username or "")
                if (record is None or record.password is None or password is None
                        or not hmac.compare_digest(record.password.encode(), password.encode())):
                    raise _OAuthError(401, "unauthorized", "Bad credentials")
                claims = self._xsuaa_claims(tenant, client, grant, record, record.scopes)
                refresh = secrets.token_urlsafe(24)
                with self._lock:
                    self._refresh[refresh] = (tenant.zid, client.id, record.name, record.scopes)
                extra = {"refresh_token": refresh}
            elif grant == GRANT_REFRESH_TOKEN:
                presented = form.get("refresh_token") or ""
                with self._lock:
                    grant_of = self._refresh.get(presented)
                if grant_of is None or grant_of[0] != tenant.zid or grant_of[1] != client.id:
                    raise _OAuthError(401, "invalid_token", "Invalid refresh token.")
                user = grant_of[2]
                with self._lock:
                    record = self._users.get(user)
                if record is None:
                    raise _OAuthError(401, "invalid_token", "Invalid refresh token.")
                claims = self._xsuaa_claims(tenant, client, GRANT_PASSWORD, record, grant_of[3])
            elif grant == GRANT_JWT_BEARER:
                raw = form.get("assertion")
                if not raw:
                    raise _OAuthError(400, "invalid_request", "Missing assertion.")
                assertion_fp = fingerprint(raw)
                try:
                    verified = self._verify(raw)
                except _Reject as exc:
                    raise _OAuthError(401 if not exc.expired else 400, "invalid_grant" if exc.expired else "invalid_token",
                                      "The assertion has expired." if exc.expired else exc.description) from None
                subject = verified.kind
                user = self._principal(verified.claims)
                if verified.kind == "xsuaa":
                    assert verified.tenant is not None
                    if verified.tenant.zid != tenant.zid:
                        raise _OAuthError(400, "invalid_grant",
                                          "The assertion was issued by a different identity zone.")
                elif verified.kind == "ias":
                    aud = verified.claims.get("aud")
                    audiences = [aud] if isinstance(aud, str) else list(aud or [])
                    if self.trust_client_id not in audiences:
                        raise _OAuthError(400, "invalid_grant",
                                          "The IAS token's audience does not contain the client id of the XSUAA trust "
                                          "(xsuaa-cross-consumption).")
                else:
                    raise _OAuthError(400, "invalid_grant", "The assertion is not a JWT of a trusted issuer.")
                if user is None:
                    raise _OAuthError(400, "invalid_grant", "The assertion carries no user.")
                record = self._user_of(verified.claims, user)
                if verified.kind == "xsuaa":
                    scopes = self._local_scopes(verified.claims, record)
                else:
                    groups = verified.claims.get("groups")
                    scopes = tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else record.scopes
                origin = "sap.default" if verified.kind == "xsuaa" else "sap.custom"
                claims = self._xsuaa_claims(tenant, client, grant_override or grant, record, scopes, origin=origin)
            else:
                raise _OAuthError(400, "unsupported_grant_type", f"Unsupported grant type: {str(grant)[:80]}")
        except _OAuthError as exc:
            self._record(self.exchanges, Exchange(
                "xsuaa", _short(grant_override or grant), claimed, user, exc.status, exc.error, tenant.subdomain, subject,
                mode, params, assertion_fp, None, via, url))
            headers_out = {"WWW-Authenticate": 'Basic realm="UAA/client", error="invalid_client"'} if exc.status == 401 else {}
            return _json(exc.status, {"error": exc.error, "error_description": exc.description}, headers_out)
        token = self._sign_xsuaa(claims)
        self._record(self.exchanges, Exchange(
            "xsuaa", _short(grant_override or grant), client.id, user, 200, None, tenant.subdomain, subject, mode, params,
            assertion_fp, fingerprint(token), via, url))
        return _json(200, self._token_answer(token, claims, extra))

