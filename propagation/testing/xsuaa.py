"""The emulated XSUAA token endpoint (``{url}/oauth/token``)."""

from __future__ import annotations

import hmac
from typing import Mapping


from ..tokens import fingerprint
from .issuing import _Issuing
from .records import Exchange
from .registry import _OAuthError, _Reject, _Tenant
from .wire import GRANT_CLIENT_CREDENTIALS, GRANT_JWT_BEARER, GRANT_PASSWORD, Response, _json, _params, _short


class _Xsuaa(_Issuing):
    """XSUAA ``/oauth/token``: client_credentials, password, jwt-bearer."""

    # ------------------------------------------------------------------ XSUAA /oauth/token
    def _xsuaa_token(self, tenant: _Tenant, form: Mapping[str, str], headers: Mapping[str, str], *,
                     url: str = "", via: str = "app", grant_override: str | None = None) -> Response:
        grant = form.get("grant_type")
        claimed, mode = self._claimed_client(form, headers)
        user: str | None = None
        subject: str | None = None
        assertion_fp: str | None = None
        params = _params(form)
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
        return _json(200, self._token_answer(token, claims))

