"""The emulated Destination service: destination declarations and the find API."""

from __future__ import annotations

import base64
import secrets
from typing import Any, Mapping
from urllib.parse import unquote


from ..destinations.model import SERVICE_TOKEN_AUTHENTICATIONS, USER_AUTHENTICATIONS, canonical_authentication
from ..tokens import fingerprint
from .ias import _Ias
from .records import Call, Exchange
from .registry import EmulatedDestination, _EMULATED_AUTHENTICATIONS, _Reject, _Tenant, _Verified
from .wire import (
    FIND_PATH,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    GRANT_PASSWORD,
    GRANT_SAML2_BEARER,
    GRANT_TOKEN_EXCHANGE,
    Request,
    Response,
    _NO_USER_FOR,
    _RESOURCE_PREFIX,
    _SAML2_HEADER_TYPE,
    _bearer,
    _expand_token_type,
    _json,
    _origin,
)
from .xsuaa import _Xsuaa


class _DestinationService(_Xsuaa, _Ias):
    """Declared destinations and ``/destination-configuration/v1/destinations/{name}``."""

    # ------------------------------------------------------------------ destinations
    def destination(self, spec: str, **properties: str) -> EmulatedDestination:
        """Declare a destination in one line: ``NAME [ProxyType] [Authentication] [forward]
        [/path | URL] [key=value ...]``.

        Examples: ``"S4 OnPremise PrincipalPropagation /sap/opu/odata/sap location=LOC1"``,
        ``"IFLOW OAuth2JWTBearer target=iflow"``, ``"CLOUD OAuth2ClientCredentials"``,
        ``"PUBLIC NoAuthentication forward source=env"``. Special keys: ``source``
        (``service``, the default: the Destination service; ``env``: the ``destinations``
        variable), ``target`` (``backend`` default, ``iflow``, ``onprem`` — default for
        OnPremise), ``location`` (= ``CloudConnectorLocationId``). Other keys are destination
        properties, verbatim (``sap-client=100``, ``tokenService.body.resource=X``).
        OAuth clients, users and passwords are created and registered as an admin would.
        """
        words = spec.split()
        if not words:
            raise ValueError("a destination line needs at least a name")
        name = words[0]
        proxy_type = "Internet"
        authentication = "NoAuthentication"
        forward = False
        url: str | None = None
        path = ""
        props: dict[str, str] = {}
        source = "service"
        target: str | None = None
        for word in words[1:]:
            low = word.lower()
            if low in ("internet", "onpremise"):
                proxy_type = "OnPremise" if low == "onpremise" else "Internet"
            elif canonical_authentication(low) in _EMULATED_AUTHENTICATIONS:
                authentication = canonical_authentication(low)
            elif low in ("forward", "forwardauthtoken"):
                forward = True
            elif word.startswith("/"):
                path = word
            elif low.startswith(("http://", "https://")):
                url = word
            elif "=" in word:
                key, _, value = word.partition("=")
                if not key:
                    raise ValueError(f"destination line {spec!r}: {word!r} names no property")
                if key == "source":
                    source = value
                elif key == "target":
                    target = value
                elif key == "location":
                    props["CloudConnectorLocationId"] = value
                elif key.lower() == "forwardauthtoken":
                    forward = value.lower() == "true"
                else:
                    props[key] = value
            else:
                raise ValueError(f"destination line {spec!r}: cannot read {word!r}")
        props.update({k: str(v) for k, v in properties.items()})
        if source not in ("service", "env"):
            raise ValueError(f"destination {name}: source must be 'service' or 'env', not {source!r}")
        if authentication == "PrincipalPropagation" and proxy_type != "OnPremise":
            proxy_type = "OnPremise"
        if target is None:
            target = "onprem" if proxy_type == "OnPremise" else "backend"
        bases = {"backend": self.origins.backend, "iflow": self.origins.iflow, "onprem": self.origins.onprem}
        if url is None:
            if target not in bases:
                raise ValueError(f"destination {name}: target must be backend, iflow or onprem, not {target!r}")
            url = bases[target]
        else:
            target = next((k for k, v in bases.items() if _origin(url) == _origin(v)), "external")
        url = url.rstrip("/") + path

        with self._lock:
            if authentication in ("BasicAuthentication",):
                props.setdefault("User", f"{name.upper()}_COMM_USER")
                props.setdefault("Password", secrets.token_urlsafe(12))
                self._basic_users[props["User"]] = props["Password"]
            if authentication == "OAuth2Password":
                props.setdefault("User", f"{name.lower()}-technical")
                props.setdefault("Password", secrets.token_urlsafe(12))
                self.add_user(props["User"], password=props["Password"], scopes=())
            if authentication in ("OAuth2ClientCredentials", "OAuth2Password", "OAuth2JWTBearer",
                                  "OAuth2UserTokenExchange", "OAuth2SAMLBearerAssertion"):
                if "clientId" not in props:
                    client = self._add_xsuaa_client(f"sb-{name.lower()}!t{len(self._xsuaa_clients) + 1}")
                    props["clientId"] = client.id
                    props["clientSecret"] = client.secret
                props.setdefault("tokenServiceURL", f"{self.origins.xsuaa}/oauth/token")
                if len(self.tenants) > 1:
                    props.setdefault("tokenServiceURLType", "Common")
                if target == "iflow":
                    self._iflow_clients.add(props["clientId"])
            if authentication == "OAuth2TokenExchange":
                if "clientId" not in props:  # the app's own IAS application exchanges its users' tokens
                    props["clientId"] = self.ias_client
                    props["clientSecret"] = self._ias_clients[self.ias_client].secret
                props.setdefault("tokenServiceURL", f"{self.origins.ias}/oauth2/token")
                resource = props.get("tokenService.body.resource")
                if resource:
                    provider = resource[len(_RESOURCE_PREFIX):] if resource.startswith(_RESOURCE_PREFIX) else resource
                    self._providers.setdefault(provider, f"{provider}-provider-client")
            if source == "service" and authentication in USER_AUTHENTICATIONS - {"PrincipalPropagation"}:
                # What an admin adds so the service accepts IAS user tokens in X-user-token.
                props.setdefault("x_user_token.jwks_uri", f"{self.origins.ias}/oauth2/certs")
            if source == "env" and authentication == "OAuth2SAMLBearerAssertion":
                raise ValueError(f"destination {name}: OAuth2SAMLBearerAssertion works only through the Destination service")
            self._locations.add(props.get("CloudConnectorLocationId") or None)
            destination = EmulatedDestination(name, authentication, proxy_type, url, source, target, dict(props), forward)
            self._destinations[name] = destination
        for listener in list(self._listeners):
            listener(self)
        return destination

    @property
    def destinations(self) -> dict[str, EmulatedDestination]:
        with self._lock:
            return dict(self._destinations)

    # ------------------------------------------------------------------ Destination service
    def _destination_find(self, request: Request, path: str) -> Response:
        if not path.startswith(FIND_PATH) or len(path) <= len(FIND_PATH):
            return _json(404, {"ErrorMessage": "Not found"})
        name = unquote(path[len(FIND_PATH):])
        call = dict(service="destination", method=request.method, path=path, destination=name)
        if request.method != "GET":
            self._record(self.calls, Call(status=405, error="method not allowed", **call))
            return _json(405, {"ErrorMessage": "Method not allowed"})
        raw = _bearer(request.headers.get("Authorization"))
        service_user: str | None = None
        try:
            if raw is None:
                raise _Reject("Missing bearer token.")
            verified = self._verify(raw)
            if verified.kind != "xsuaa" or verified.claims.get("cid") != self.destination_client:
                raise _Reject("The token was not issued to the Destination service instance's client.")
        except _Reject as exc:
            self._record(self.calls, Call(status=401, error=exc.description, token=fingerprint(raw) if raw else None, **call))
            return _json(401, {"ErrorMessage": "Unauthorized"}, {"WWW-Authenticate": 'Bearer realm="destination"'})
        tenant = verified.tenant
        assert tenant is not None
        service_user = self._principal(verified.claims)
        with self._lock:
            destination = self._destinations.get(name)
        if destination is None or destination.source != "service":
            self._record(self.calls, Call(status=404, tenant=tenant.subdomain, client=self.destination_client,
                                          carried_by="service-token", error="not found", **call))
            return _json(404, {"ErrorMessage": "Configuration with the specified name was not found"})
        answer: dict[str, Any] = {
            "owner": {"SubaccountId": tenant.zid, "InstanceId": None},
            "destinationConfiguration": destination.configuration(),
        }
        user: str | None = None
        if destination.authentication in SERVICE_TOKEN_AUTHENTICATIONS:
            token, user = self._auth_token(destination, tenant, request.headers, service_user, verified.claims, raw)
            answer["authTokens"] = [token]
        else:
            user = self._user_header_principal(request.headers)
        self._record(self.calls, Call(status=200, user=user, tenant=tenant.subdomain, client=self.destination_client,
                                      carried_by="service-token", token=fingerprint(raw), **call))
        return _json(200, answer)

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

