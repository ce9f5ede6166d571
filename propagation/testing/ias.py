"""The emulated IAS token endpoint (``{ias}/oauth2/token``)."""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Mapping


from ..tokens import fingerprint
from .issuing import _Issuing
from .records import Exchange
from .registry import _Client, _OAuthError, _Reject, _Tenant, _User, _saml_assertion
from .wire import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    GRANT_PASSWORD,
    GRANT_TOKEN_EXCHANGE,
    Response,
    _RESOURCE_PREFIX,
    _SAML2_HEADER_TYPE,
    _TOKEN_TYPE,
    _json,
    _params,
    _short,
)


class _Ias(_Issuing):
    """IAS ``/oauth2/token``: client_credentials, password (also public clients), jwt-bearer, RFC 8693."""

    # ------------------------------------------------------------------ IAS /oauth2/token
    def _ias_token(self, form: Mapping[str, str], headers: Mapping[str, str], *, url: str = "",
                   via: str = "app") -> Response:
        grant = form.get("grant_type")
        claimed, mode = self._claimed_client(form, headers)
        user: str | None = None
        subject: str | None = None
        subject_fp: str | None = None
        params = _params(form)
        tenant = self.provider
        extra_answer: dict[str, Any] = {}
        try:
            public = self._public_client(form, headers) if grant == GRANT_PASSWORD else None
            if public is not None:  # a public client has no secret: it identifies itself by client_id only
                client, mode = _Client(public, ""), "none"
            else:
                client, mode = self._client_auth(self._ias_clients, form, headers)
            if not grant:
                raise _OAuthError(400, "invalid_request", "Missing grant_type.")
            if grant == GRANT_CLIENT_CREDENTIALS:
                claims = self._ias_claims(tenant, None, [client.id], client.id)
                token = self._sign_ias(claims)
            elif grant == GRANT_PASSWORD:
                user = form.get("username")
                record = self._password_user(user, form.get("password"))
                if record is None:
                    raise _OAuthError(400, "invalid_grant", "User authentication failed.")
                user = record.name
                # xsuaa-cross-consumption (on for the app's IAS binding) adds the XSUAA trust client;
                # a public client's token is issued to that client alone.
                aud = [client.id] + ([self.trust_client_id] if client.id == self.ias_client else [])
                claims = self._ias_claims(tenant, record, aud, client.id)
                token = self._sign_ias(claims)
            elif grant in (GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE):
                field_name = "assertion" if grant == GRANT_JWT_BEARER else "subject_token"
                raw = form.get(field_name)
                if not raw:
                    raise _OAuthError(400, "invalid_request", f"Missing {field_name}.")
                subject_fp = fingerprint(raw)
                try:
                    verified = self._verify(raw)
                except _Reject as exc:
                    raise _OAuthError(400, "invalid_grant",
                                      f"The {field_name} has expired." if exc.expired else exc.description) from None
                subject = verified.kind
                user = self._principal(verified.claims)
                if verified.kind != "ias":
                    raise _OAuthError(400, "invalid_grant", f"The {field_name} was not issued by this IAS tenant.")
                if user is None:
                    raise _OAuthError(400, "invalid_grant", f"The {field_name} carries no user.")
                aud = verified.claims.get("aud")
                audiences = [aud] if isinstance(aud, str) else list(aud or [])
                consumable = {client.id} | (self._public_clients if client.id == self.ias_client else set())
                if not consumable.intersection(audiences + [verified.claims.get("azp")]):
                    raise _OAuthError(400, "invalid_grant",
                                      f"The {field_name} was not issued to a client that '{client.id}' may consume.")
                tenant = next((t for t in self.tenants.values() if t.zid == verified.claims.get("app_tid")), self.provider)
                record = self._user_of(verified.claims, user)
                if grant == GRANT_JWT_BEARER:
                    aud_out = [client.id] + ([self.trust_client_id] if client.id == self.ias_client else [])
                    claims = self._ias_claims(tenant, record, aud_out, client.id)
                    token = self._sign_ias(claims)
                else:
                    token, claims, extra_answer = self._token_exchange(form, client, tenant, record)
            else:
                raise _OAuthError(400, "unsupported_grant_type", f"Unsupported grant type: {str(grant)[:80]}")
        except _OAuthError as exc:
            self._record(self.exchanges, Exchange(
                "ias", _short(grant), claimed, user, exc.status, exc.error, tenant.zid, subject, mode, params,
                subject_fp, None, via, url))
            return _json(exc.status, {"error": exc.error, "error_description": exc.description})
        self._record(self.exchanges, Exchange(
            "ias", _short(grant), client.id, user, 200, None, tenant.zid, subject, mode, params, subject_fp,
            fingerprint(token), via, url))
        return _json(200, self._token_answer(token, claims, extra_answer))

    def _public_client(self, form: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
        """The registered public client a request names by ``client_id`` alone (no secret, no Basic)."""
        client_id = form.get("client_id")
        if not client_id or "client_secret" in form or (headers.get("Authorization") or "")[:6].lower() == "basic ":
            return None
        with self._lock:
            return client_id if client_id in self._public_clients else None

    def _password_user(self, username: str | None, password: str | None) -> _User | None:
        """The registered user with this login name or e-mail and password (IAS accepts both)."""
        with self._lock:
            name = username if username in self._users else self._emails.get((username or "").lower())
            record = self._users.get(name or "")
        if record is None or record.password is None or password is None:
            return None
        return record if hmac.compare_digest(record.password.encode(), password.encode()) else None

    def _token_exchange(self, form: Mapping[str, str], client: _Client, tenant: _Tenant,
                        user: _User) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """RFC 8693 at IAS: ``subject_token_type``, ``requested_token_type``, ``resource``, ``token_format``."""
        subject_type = form.get("subject_token_type")
        if subject_type not in {_TOKEN_TYPE + t for t in ("access_token", "id_token", "jwt")}:
            raise _OAuthError(400, "invalid_request", "subject_token_type must be an access_token, id_token or jwt URN.")
        requested = form.get("requested_token_type") or _TOKEN_TYPE + "access_token"
        allowed = {_TOKEN_TYPE + t for t in ("access_token", "id_token", "jwt", "saml2")} | {_SAML2_HEADER_TYPE}
        if requested not in allowed:
            raise _OAuthError(400, "invalid_request", "Unsupported requested_token_type.")
        aud = [client.id]
        resource = form.get("resource")
        if resource:
            name = resource[len(_RESOURCE_PREFIX):] if resource.startswith(_RESOURCE_PREFIX) else None
            provider = self._providers.get(name or "")
            if provider is None:
                raise _OAuthError(400, "invalid_target", "The resource is not a provided API this client may consume.")
            aud = [provider]
        token_format = form.get("token_format") or "jwt"
        if token_format not in ("jwt", "opaque"):
            raise _OAuthError(400, "invalid_request", "token_format must be jwt or opaque.")
        claims = self._ias_claims(tenant, user, aud, client.id)
        if requested in (_TOKEN_TYPE + "saml2", _SAML2_HEADER_TYPE):
            assertion = _saml_assertion(user, self.origins.ias, aud[0])
            with self._lock:
                self._opaque[assertion] = ("saml", claims)
            return assertion, claims, {"issued_token_type": requested, "token_type": "N_A"}
        if token_format == "opaque":
            token = secrets.token_urlsafe(32)
            with self._lock:
                self._opaque[token] = ("ias", claims)
        else:
            token = self._sign_ias(claims)
        return token, claims, {"issued_token_type": requested}

