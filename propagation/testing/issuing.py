"""Token issuing and verification shared by the emulated IdPs (XSUAA, IAS) and every service
that checks a token; OAuth client authentication."""

from __future__ import annotations

import base64
import binascii
import contextvars
import dataclasses
import hmac
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote_plus, urlsplit

import jwt

from .records import Call, Exchange, Records, Traffic
from .registry import EmulatedDestination, _Client, _Issuer, _OAuthError, _Reject, _Tenant, _User, _Verified
from .wire import GRANT_CLIENT_CREDENTIALS, Origins


#: The transport's id of the connection the request being answered came on (sandbox only).
_CONNECTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("landscape_connection", default=None)


class _Issuing:
    """Signing, verifying and reading tokens of this landscape; OAuth client authentication.

    The state every emulated service shares is set by ``Landscape.__init__``; it is declared
    here so that each service module reads as a whole.
    """

    origins: Origins
    tenants: dict[str, _Tenant]
    provider: _Tenant
    ttl: int
    accept_technical: bool
    xsappname: str
    app_client: str
    destination_client: str
    connectivity_client: str
    iflow_client: str
    ias_client: str
    trust_client_id: str
    public_client_id: str
    exchanges: Records[Exchange]
    calls: Records[Call]
    traffic: Records[Traffic]
    _lock: threading.RLock
    _xsuaa_issuer: _Issuer
    _ias_issuer: _Issuer
    _xsuaa_clients: dict[str, _Client]
    _ias_clients: dict[str, _Client]
    _public_clients: set[str]
    _providers: dict[str, str]
    _iflow_clients: set[str]
    _users: dict[str, _User]
    _emails: dict[str, str]
    _destinations: dict[str, EmulatedDestination]
    _basic_users: dict[str, str]
    _opaque: dict[str, tuple[str, dict[str, Any]]]
    _locations: set[str | None]
    _observers: list[Callable[[Any], None]]

    def _record(self, records: Records[Any], record: Any) -> None:
        """Append a record, stamped with the client connection of the request being answered
        (not for the token requests the Destination service makes itself)."""
        connection = _CONNECTION.get()
        if connection is not None and getattr(record, "connection", "") is None and getattr(record, "via", "app") == "app":
            record = dataclasses.replace(record, connection=connection)
        with self._lock:
            records.append(record)
            observers = list(self._observers)
        for observer in observers:
            try:
                observer(record)
            except Exception:  # noqa: BLE001 - a broken observer must not change an answer
                pass

    def observe(self, observer: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``observer(record)`` after each record (:class:`Exchange`, :class:`Call`,
        :class:`Traffic`) as it happens — the sandbox's live trace; returns the unsubscriber."""
        with self._lock:
            self._observers.append(observer)

        def unsubscribe() -> None:
            with self._lock:
                if observer in self._observers:
                    self._observers.remove(observer)

        return unsubscribe

    def add_user(self, name: str, *, password: str | None = None, scopes: Iterable[str] = ("Read",),
                 email: str | None = None) -> None:
        """Register a user (for the password grant and the scopes of its tokens)."""
        with self._lock:
            mail = email or (name if "@" in name else f"{name}@example.com")
            self._users[name] = _User(name, password, tuple(scopes), mail)
            self._emails[mail.lower()] = name

    def add_public_client(self, client_id: str) -> None:
        """Register an IAS public (PKCE) client whose tokens the app's IAS client may consume."""
        with self._lock:
            self._public_clients.add(client_id)

    def tenant_url(self, tenant: str | None = None) -> str:
        """The XSUAA URL of a tenant (the provider's is ``origins.xsuaa``)."""
        t = self._tenant(tenant)
        if t.provider:
            return self.origins.xsuaa
        parts = urlsplit(self.origins.xsuaa)
        host = parts.hostname or ""
        rest = host.split(".", 1)[1] if "." in host else host
        return f"{parts.scheme}://{t.subdomain}.{rest}" + (f":{parts.port}" if parts.port else "")

    def _tenant(self, name: str | None) -> _Tenant:
        if name is None:
            return self.provider
        try:
            return self.tenants[name]
        except KeyError:
            raise ValueError(f"unknown tenant {name!r}: declared tenants are {list(self.tenants)}") from None

    # ------------------------------------------------------------------ tokens
    def user_token(
        self,
        user: str,
        *,
        scopes: Iterable[str] | None = None,
        tenant: str | None = None,
        kind: str = "xsuaa",
        public_client: str | None = None,
        ttl: int = 3600,
        cross_consumption: bool = True,
    ) -> str:
        """A real signed JWT for ``user``, as a login would give the app.

        ``kind="xsuaa"``: issued by the tenant's XSUAA to the app's client, scopes prefixed
        with the ``xsappname``. ``kind="ias"``: issued by IAS to the app's IAS client, whose
        ``aud`` also holds the XSUAA trust client id when ``cross_consumption``;
        ``public_client`` → issued to that public (PKCE) client only. A negative ``ttl``
        gives an expired token. ``scopes`` default to the registered user's.
        """
        t = self._tenant(tenant)
        with self._lock:
            if user not in self._users:
                self.add_user(user)
            record = self._users[user]
        granted = tuple(scopes) if scopes is not None else record.scopes
        if kind == "xsuaa":
            if public_client is not None:
                raise ValueError("public_client is an IAS notion: use kind='ias'")
            client = self._xsuaa_clients[self.app_client]
            return self._sign_xsuaa(self._xsuaa_claims(t, client, "authorization_code", record, granted, ttl))
        if kind == "ias":
            if public_client is not None:
                self.add_public_client(public_client)
                aud = [public_client]
                azp = public_client
            else:
                aud = [self.ias_client] + ([self.trust_client_id] if cross_consumption else [])
                azp = self.ias_client
            # IAS carries no scopes: explicit ones travel as groups, which XSUAA maps to role collections.
            extra = {"groups": list(scopes)} if scopes is not None else None
            return self._sign_ias(self._ias_claims(t, record, aud, azp, ttl, extra))
        raise ValueError(f"kind must be 'xsuaa' or 'ias', not {kind!r}")

    def technical_token(self, client_id: str | None = None, *, tenant: str | None = None, ttl: int = 3600) -> str:
        """A ``client_credentials`` XSUAA token (the app's client by default): no user."""
        client = self._xsuaa_clients[client_id or self.app_client]
        return self._sign_xsuaa(self._xsuaa_claims(self._tenant(tenant), client, GRANT_CLIENT_CREDENTIALS, None, (), ttl))

    def _xsuaa_claims(self, tenant: _Tenant, client: _Client, grant: str, user: _User | None,
                      scopes: Iterable[str], ttl: int | None = None, *, origin: str = "sap.default") -> dict[str, Any]:
        now = int(time.time())
        lifetime = self.ttl if ttl is None else ttl
        granted: list[str] = []
        if user is not None:
            granted.append("openid")
            if client.xsappname and client.id == self.app_client:
                granted += [f"{client.xsappname}.{s}" for s in scopes]
        else:
            granted.append("uaa.resource")
        granted += [a for a in client.authorities if a not in granted]
        aud = [client.id] + sorted({s.split(".", 1)[0] for s in granted if "." in s and s.split(".", 1)[0] != client.id})
        claims: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "ext_attr": {"enhancer": "XSUAA", "subaccountid": tenant.zid, "zdn": tenant.subdomain},
            "iss": f"{self.tenant_url(tenant.subdomain)}/oauth/token",
            "zid": tenant.zid,
            "cid": client.id,
            "azp": client.id,
            "client_id": client.id,
            "grant_type": grant,
            "scope": granted,
            "aud": aud,
            "iat": now,
            "exp": now + lifetime,
            "rev_sig": uuid.uuid4().hex[:8],
        }
        if user is not None:
            user_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{user.name}.users.sandbox.test"))
            claims.update(
                {"sub": user_id, "user_id": user_id, "user_name": user.name, "email": user.email, "origin": origin}
            )
        else:
            claims["sub"] = client.id
        return claims

    def _ias_claims(self, tenant: _Tenant, user: _User | None, aud: list[str], azp: str, ttl: int | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        now = int(time.time())
        lifetime = self.ttl if ttl is None else ttl
        claims: dict[str, Any] = {
            "iss": self.origins.ias,
            "aud": aud if len(aud) != 1 else aud[0],
            "azp": azp,
            "app_tid": tenant.zid,
            "zone_uuid": tenant.zid,
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        if user is not None:
            user_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ias:{user.name}"))
            claims.update({"sub": user_uuid, "user_uuid": user_uuid, "email": user.email, "sid": uuid.uuid4().hex,
                           "scim_id": user_uuid})
        else:
            claims["sub"] = azp
        claims.update(extra or {})
        return claims

    def _sign_xsuaa(self, claims: Mapping[str, Any]) -> str:
        jku = f"https://{self.origins.uaadomain}/token_keys?zid={claims['zid']}"
        return jwt.encode(dict(claims), self._xsuaa_issuer.key, algorithm="RS256",
                          headers={"kid": self._xsuaa_issuer.kid, "jku": jku})

    def _sign_ias(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self._ias_issuer.key, algorithm="RS256", headers={"kid": self._ias_issuer.kid})

    def _verify(self, raw: str) -> _Verified:
        """Whose token is this? Signature, issuer (and zone), expiry — or :class:`_Reject`."""
        with self._lock:
            artefact = self._opaque.get(raw)
        if artefact is not None:
            kind, claims = artefact
            if int(claims.get("exp", 0)) <= time.time():
                raise _Reject("Token expired.", expired=True)
            return _Verified(kind, claims, None)
        try:
            header = jwt.get_unverified_header(raw)
        except jwt.PyJWTError:
            raise _Reject("Malformed token.") from None
        kid = header.get("kid")
        issuer = {self._xsuaa_issuer.kid: self._xsuaa_issuer, self._ias_issuer.kid: self._ias_issuer}.get(kid)
        if issuer is None or header.get("alg") != "RS256":
            raise _Reject("Token is not signed by a key of this landscape.")
        try:
            claims = jwt.decode(raw, issuer.key.public_key(), algorithms=["RS256"],
                                options={"verify_aud": False, "require": ["exp", "iat", "iss"]})
        except jwt.ExpiredSignatureError:
            raise _Reject("Token expired.", expired=True) from None
        except jwt.PyJWTError:
            raise _Reject("Token signature or claims are invalid.") from None
        if issuer is self._ias_issuer:
            if claims.get("iss") != self.origins.ias:
                raise _Reject("Token issuer is not this IAS tenant.")
            return _Verified("ias", claims, None)
        tenant = next((t for t in self.tenants.values() if t.zid == claims.get("zid")), None)
        if tenant is None or claims.get("iss") != f"{self.tenant_url(tenant.subdomain)}/oauth/token":
            raise _Reject("Token issuer does not match its identity zone.")
        return _Verified("xsuaa", claims, tenant)

    def _principal(self, claims: Mapping[str, Any]) -> str | None:
        """The user a service sees in a token (``None`` for a technical token)."""
        if claims.get("grant_type") == GRANT_CLIENT_CREDENTIALS:
            return None
        name = claims.get("user_name")
        if isinstance(name, str) and name:
            return name
        email = claims.get("email")
        if isinstance(email, str) and email:
            return self._emails.get(email.lower(), email)
        return None

    def _user_of(self, claims: Mapping[str, Any], principal: str) -> _User:
        with self._lock:
            user = self._users.get(principal)
        if user is None:
            email = claims.get("email") if isinstance(claims.get("email"), str) else None
            user = _User(principal, None, (), email or f"{principal}@example.com")
        return user

    def _local_scopes(self, claims: Mapping[str, Any], user: _User) -> tuple[str, ...]:
        scopes = claims.get("scope") if isinstance(claims.get("scope"), list) else []
        prefix = f"{self.xsappname}."
        local = tuple(s[len(prefix):] for s in scopes if isinstance(s, str) and s.startswith(prefix))
        return local or user.scopes

    # ------------------------------------------------------------------ OAuth helpers
    @staticmethod
    def _client_auth(clients: Mapping[str, _Client], form: Mapping[str, str],
                     headers: Mapping[str, str]) -> tuple[_Client, str]:
        authorization = headers.get("Authorization") or ""
        body_id = form.get("client_id")
        if authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _OAuthError(401, "invalid_client", "Malformed Basic credentials.") from None
            raw_id, sep, raw_secret = decoded.partition(":")
            if not sep:
                raise _OAuthError(401, "invalid_client", "Malformed Basic credentials.")
            client_id, secret, mode = unquote_plus(raw_id), unquote_plus(raw_secret), "basic"
            if body_id is not None and body_id != client_id:
                raise _OAuthError(401, "invalid_client", "client_id in the body differs from the authenticated client.")
        elif body_id:
            client_id, mode = body_id, "body"
            secret = form.get("client_secret")
            if secret is None:
                raise _OAuthError(401, "invalid_client",
                                  "Client authentication is required (client secret; mTLS is not emulated).")
        else:
            raise _OAuthError(401, "invalid_client", "Full authentication is required to access this resource.")
        client = clients.get(client_id)
        if client is None or not hmac.compare_digest(client.secret.encode("utf-8"), secret.encode("utf-8")):
            raise _OAuthError(401, "invalid_client", "Bad credentials")
        return client, mode

    @staticmethod
    def _claimed_client(form: Mapping[str, str], headers: Mapping[str, str]) -> tuple[str | None, str | None]:
        authorization = headers.get("Authorization") or ""
        if authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
                return unquote_plus(decoded.partition(":")[0]) or None, "basic"
            except (binascii.Error, UnicodeDecodeError):
                return None, "basic"
        if form.get("client_id"):
            return form["client_id"], "body"
        return None, None

    def _token_answer(self, token: str, claims: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        scope = claims.get("scope")
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(claims.get("exp", 0)) - int(claims.get("iat", 0)),
            "scope": " ".join(scope) if isinstance(scope, list) else (scope or ""),
            "jti": claims.get("jti") or uuid.uuid4().hex,
        }
        answer.update(extra or {})
        return answer

