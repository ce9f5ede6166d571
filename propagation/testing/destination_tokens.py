"""The token flows the emulated Destination service runs for a found destination: one
``authTokens`` entry per lookup (unless ``$skipTokenRetrieval=true``).

Headers it reads, as the service's API description says: ``X-user-token`` (user types; the
find call's bearer when absent), ``X-Subject-Token``/``X-Subject-Token-Type``
(OAuth2TokenExchange), ``X-tenant`` (OAuth2ClientCredentials: the subdomain of the tenant to
fetch the token for; refused together with ``X-user-token``), ``X-refresh-token``
(OAuth2RefreshToken).
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

from ..tokens import fingerprint
from .ias import _Ias
from .records import Exchange
from .registry import EmulatedDestination, _Reject, _Tenant, _Verified
from .wire import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    GRANT_PASSWORD,
    GRANT_REFRESH_TOKEN,
    GRANT_SAML2_BEARER,
    GRANT_TOKEN_EXCHANGE,
    Response,
    _NO_USER_FOR,
    _RESOURCE_PREFIX,
    _SAML2_HEADER_TYPE,
    _expand_token_type,
    _json,
)
from .xsuaa import _Xsuaa


class _DestinationTokens(_Xsuaa, _Ias):
    """``authTokens``: the destination's token flow, run by the service itself."""

    def _user_header_principal(self, headers: Mapping[str, str]) -> str | None:
        raw = headers.get("X-user-token") or headers.get("X-Subject-Token")
        if not raw:
            return None
        try:
            return self._principal(self._verify(raw).claims)
        except _Reject:
            return None

    def _auth_token(self, destination: EmulatedDestination, tenant: _Tenant, headers: Mapping[str, str],
                    service_user: str | None, service_claims: Mapping[str, Any],
                    service_raw: str) -> tuple[dict[str, Any], str | None]:
        """One ``authTokens`` entry: the service runs the destination's token flow itself."""
        auth = destination.authentication
        props = destination.properties

        def error(text: str, user: str | None = None) -> tuple[dict[str, Any], str | None]:
            return {"type": "", "value": "", "error": text, "expires_in": "0"}, user

        if auth == "BasicAuthentication":
            value = base64.b64encode(f"{props['User']}:{props['Password']}".encode("utf-8")).decode("ascii")
            return {"type": "Basic", "value": value, "http_header": {"key": "Authorization", "value": f"Basic {value}"}}, None
        client_form = {"client_id": props.get("clientId", ""), "client_secret": props.get("clientSecret", "")}
        if auth == "OAuth2RefreshToken":
            refresh = headers.get("X-refresh-token")
            if not refresh:
                return error("The header 'X-refresh-token' is mandatory for 'OAuth2RefreshToken'.")
            form = {"grant_type": GRANT_REFRESH_TOKEN, **client_form, "refresh_token": refresh}
            answer = self._xsuaa_token(tenant, form, {}, url=props.get("tokenServiceURL", ""), via="destination-service")
            return self._auth_token_from(answer, auth), self._refresh_user(refresh)
        if auth == "OAuth2ClientCredentials" and headers.get("X-tenant"):
            subdomain = headers["X-tenant"].strip()
            named = self.tenants.get(subdomain)
            if named is None:
                return error(f"Retrieval of OAuth token for '{auth}' failed: no tenant with subdomain "
                             f"'{subdomain[:64]}' (X-tenant).")
            tenant = named
        if auth in ("OAuth2ClientCredentials", "OAuth2Password"):
            form = {"grant_type": GRANT_CLIENT_CREDENTIALS, **client_form}
            if auth == "OAuth2Password":
                form.update(grant_type=GRANT_PASSWORD, username=props.get("User", ""), password=props.get("Password", ""))
            answer = self._xsuaa_token(tenant, form, {}, url=props.get("tokenServiceURL", ""), via="destination-service")
            return self._auth_token_from(answer, auth), None

        if auth == "OAuth2TokenExchange":
            raw = headers.get("X-Subject-Token")
            token_type = headers.get("X-Subject-Token-Type")
            if not raw or not token_type:
                return error(_NO_USER_FOR.format(auth=auth))
        else:
            raw = headers.get("X-user-token")
        system_user = props.get("SystemUser") if auth == "OAuth2SAMLBearerAssertion" else None
        user: str | None = None
        verified: _Verified | None = None
        if raw:
            try:
                verified = self._verify(raw)
            except _Reject as exc:
                return error(f"The user token is not valid: {exc.description}")
            user = self._principal(verified.claims)
            if user is None:
                return error(f"The user token carries no user: {_NO_USER_FOR.format(auth=auth)}")
            if verified.kind == "ias" and not (props.get("x_user_token.jwks_uri") or props.get("x_user_token.jwks")):
                return error("The user token is not issued by XSUAA: the destination needs the property "
                             "'x_user_token.jwks_uri' or 'x_user_token.jwks' to verify it.")
        elif service_user is not None and auth != "OAuth2TokenExchange":
            user, verified = service_user, _Verified("xsuaa", service_claims, tenant)  # provider-user variant
        elif system_user:
            user = system_user
        else:
            return error(_NO_USER_FOR.format(auth=auth))

        if auth == "OAuth2TokenExchange":
            form = {"grant_type": GRANT_TOKEN_EXCHANGE, **client_form, "subject_token": raw or "",
                    "subject_token_type": token_type or ""}
            for key, value in props.items():
                param = key[len("tokenService.body."):] if key.startswith("tokenService.body.") else None
                if not param or param == "subject_token_type":  # the caller's X-Subject-Token-Type wins
                    continue
                if param == "requested_token_type":
                    value = _expand_token_type(value)
                elif param == "resource" and ":" not in value:
                    value = _RESOURCE_PREFIX + value
                form[param] = value
            answer = self._ias_token(form, {}, url=props.get("tokenServiceURL", ""), via="destination-service")
            return self._auth_token_from(answer, auth), user
        if auth == "OAuth2SAMLBearerAssertion":
            client = self._xsuaa_clients.get(props.get("clientId", ""))
            if client is None:
                return error("The destination's OAuth client is not known to the token service.", user)
            assert user is not None
            record = self._user_of(verified.claims if verified else {}, user)
            claims = self._xsuaa_claims(tenant, client, GRANT_SAML2_BEARER, record, record.scopes)
            token = self._sign_xsuaa(claims)
            self._record(self.exchanges, Exchange(
                "xsuaa", "saml2-bearer", client.id, user, 200, None, tenant.subdomain, verified.kind if verified else None,
                "body", {}, fingerprint(raw) if raw else None, fingerprint(token), "destination-service",
                props.get("tokenServiceURL", "")))
            return self._auth_token_from(_json(200, self._token_answer(token, claims)), auth), user
        # OAuth2JWTBearer / OAuth2UserTokenExchange: jwt-bearer at the destination's token service
        # (provider-user variant: the find call's bearer is itself the user's token).
        assertion = raw or service_raw
        target_tenant = verified.tenant if verified is not None and verified.tenant is not None else tenant
        form = {"grant_type": GRANT_JWT_BEARER, **client_form, "assertion": assertion}
        answer = self._xsuaa_token(target_tenant, form, {}, url=props.get("tokenServiceURL", ""), via="destination-service")
        return self._auth_token_from(answer, auth), user

    @staticmethod
    def _auth_token_from(answer: Response, auth: str) -> dict[str, Any]:
        data = answer.json() or {}
        if answer.status != 200:
            return {"type": "", "value": "", "expires_in": "0",
                    "error": f"Retrieval of OAuth token for '{auth}' failed: "
                             f"{data.get('error', 'error')}: {data.get('error_description', '')}".rstrip(": ")}
        issued = data.get("issued_token_type")
        scheme = "SAML2.0" if issued == _SAML2_HEADER_TYPE else "Bearer"
        value = data["access_token"]
        return {"type": scheme if scheme != "Bearer" else "bearer", "value": value,
                "http_header": {"key": "Authorization", "value": f"{scheme} {value}"},
                "expires_in": str(data.get("expires_in", 0)), "scope": data.get("scope", "")}


    def _refresh_user(self, refresh: str) -> str | None:
        with self._lock:
            grant = self._refresh.get(refresh)
        return grant[2] if grant else None
