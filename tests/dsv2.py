"""A Destination service stand-in for the v2 tests (issue 13): tenants with their own service
tokens, instance and subaccount levels, fragments, ``$skipTokenRetrieval``, the v1/v2 find
APIs and the list APIs — served to ``requests`` and ``httpx`` alike through the ``Web``
handler of ``test_outbound_core``. Every request is recorded as the service saw it, and an
``authTokens`` value names what produced it (type, tenant, user, client-provided headers),
so a test can check exactly which tenant and which headers a target header came from."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwtkit
from propagation import Propagator
from propagation.bindings import Binding, Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.exchange.oauth import OAuthClient
from propagation.tokens import UserToken
from test_outbound_core import Req, Web

DEST_URI = "https://destination.example.com"
V1 = "/destination-configuration/v1/destinations/"
V2 = "/destination-configuration/v2/destinations/"
TARGET = "https://target.example.com"
TENANTS = ("provider", "sub1")
_SPELLING = {h.lower(): h for h in (
    "X-user-token", "X-Subject-Token", "X-Subject-Token-Type", "X-tenant", "X-refresh-token", "X-samlAssertion",
    "X-fragment-name", "X-fragment-optional", "X-chain-name", "X-chain-var-subject_token", "X-chain-var-audience")}
X_USER_TYPES = {"OAuth2JWTBearer", "OAuth2UserTokenExchange", "OAuth2SAMLBearerAssertion", "SAMLAssertion"}


def xsuaa_user(name: str, tenant: str = "provider") -> str:
    return jwtkit.unsigned({
        "user_name": name, "zid": f"{tenant}-zid", "ext_attr": {"zdn": tenant, "enhancer": "XSUAA"},
        "grant_type": "password", "iss": f"https://{tenant}.auth.example.com/oauth/token",
        "exp": int(time.time()) + 3600,
    })


def ias_user(name: str) -> str:
    return jwtkit.unsigned({
        "email": name, "sub": name, "iss": "https://acme.accounts.ondemand.com", "app_tid": "provider-zid",
        "aud": ["app"], "exp": int(time.time()) + 3600,
    })


def cfg(auth: str = "NoAuthentication", name: str = "S4", **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Type": "HTTP", "URL": f"{TARGET}/{name.lower()}", "Authentication": auth,
            "ProxyType": "Internet", **extra}


@dataclass
class Find:
    """One request to the service as it saw it."""

    path: str
    query: dict[str, str]
    tenant: str | None  # whose service token was the bearer
    headers: dict[str, str]  # the X-* headers
    via: str

    @property
    def skip(self) -> bool:
        return self.query.get("$skipTokenRetrieval") == "true"


@dataclass
class StandIn:
    web: Web
    # (tenant, level) -> name -> configuration
    store: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    fragments: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    finds: list[Find] = field(default_factory=list)
    token_urls: list[str] = field(default_factory=list)
    count: int = 0
    echo_error: bool = False  # authTokens[0].error quotes the client-provided headers back

    def add(self, tenant: str, config: dict[str, Any], level: str = "subaccount") -> None:
        self.store.setdefault((tenant, level), {})[config["Name"]] = config

    def fragment(self, tenant: str, name: str, props: dict[str, Any], level: str = "subaccount") -> None:
        self.fragments.setdefault((tenant, level), {})[name] = props

    def install(self) -> "StandIn":
        for tenant in TENANTS:
            self.web.on("POST", f"https://{tenant}.auth.example.com/oauth/token", self._token(tenant))
        self.web.on("GET", DEST_URI + "/", self._service)
        self.web.on("GET", TARGET + "/", lambda r: (200, {}, {"ok": True}))
        return self

    def _token(self, tenant: str) -> Any:
        def answer(req: Req) -> tuple[int, dict[str, str], Any]:
            assert req.form["grant_type"] == "client_credentials"
            self.token_urls.append(req.url)
            return 200, {}, {"access_token": f"svc-{tenant}", "token_type": "bearer", "expires_in": 43199}
        return answer

    # -- the API ------------------------------------------------------------------------------
    def _service(self, req: Req) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(req.url)
        bearer = (req.header("Authorization") or "").removeprefix("Bearer svc-")
        tenant = bearer if bearer in TENANTS else None
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        # Header names as the API spells them (httpx hands them over lower-cased; HTTP ignores case).
        headers = {_SPELLING.get(k.lower(), k.lower()): v for k, v in req.headers.items() if k.lower().startswith("x-")}
        self.finds.append(Find(parts.path, query, tenant, headers, req.via))
        if tenant is None:
            return 401, {}, {"ErrorMessage": "Unauthorized"}
        if parts.path.endswith(("/instanceDestinations", "/subaccountDestinations")):
            level = "instance" if parts.path.endswith("/instanceDestinations") else "subaccount"
            return 200, {}, list(self.store.get((tenant, level), {}).values())
        if parts.path.startswith(V2):
            name, _, level = unquote(parts.path[len(V2):]).partition("@")
            owner = "provider" if level.startswith("provider_") else tenant
            levels = [level.removeprefix("provider_") or "instance"]
        else:
            name, owner, levels = unquote(parts.path[len(V1):]), tenant, ["instance", "subaccount"]
        found = next(((lvl, self.store[(owner, lvl)][name]) for lvl in levels if name in self.store.get((owner, lvl), {})),
                     None)
        if found is None:
            return 404, {}, {"ErrorMessage": "Configuration with the specified name was not found"}
        level, config = found
        config = dict(config)
        fragment = req.header("X-fragment-name")
        if fragment:
            props = self.fragments.get((owner, level), {}).get(fragment)
            if props is None and req.header("X-fragment-optional") != "true":
                return 404, {}, {"ErrorMessage": "Fragment not found"}
            if props is not None:
                config.update(props)
                config["FragmentName"] = fragment
        answer: dict[str, Any] = {"owner": {"SubaccountId": f"{owner}-zid", "InstanceId": None},
                                  "destinationConfiguration": config}
        auth = config.get("Authentication", "NoAuthentication")
        if auth not in ("NoAuthentication", "PrincipalPropagation", "ClientCertificateAuthentication") and not answer_skip(query):
            answer["authTokens"] = [self._auth_token(auth, owner, req)]
        return 200, {}, answer

    def _auth_token(self, auth: str, owner: str, req: Req) -> dict[str, Any]:
        raw = req.header("X-user-token") or req.header("X-Subject-Token")
        if auth in X_USER_TYPES and not raw and not req.header("X-samlAssertion"):
            return {"type": "", "value": "", "error": f"No user token (JWT) has been provided. This is strictly necessary for '{auth}'."}
        if raw and req.header("X-tenant"):
            return {"type": "", "value": "", "error": "X-user-token and X-tenant together"}
        if self.echo_error:
            quoted = ", ".join(f"{h}={req.header(h)}" for h in ("X-refresh-token", "X-samlAssertion") if req.header(h))
            return {"type": "", "value": "", "error": f"invalid_grant: token {quoted} was rejected"}
        who = UserToken.parse(raw).user if raw else "technical"
        extras = [f"{h}={req.header(h)}" for h in ("X-tenant", "X-refresh-token", "X-samlAssertion", "X-chain-name")
                  if req.header(h)]
        self.count += 1
        value = "|".join([auth, owner, str(who), *extras, str(self.count)])
        return {"type": "Bearer", "value": value, "expires_in": 3600,
                "http_header": {"key": "Authorization", "value": f"Bearer {value}"}}

    # -- views ------------------------------------------------------------------------------------
    def seen(self) -> list[tuple[str, str | None, bool, dict[str, str]]]:
        """(path, tenant, skip, X-headers without user tokens) per request."""
        return [(f.path, f.tenant, f.skip, {k: v for k, v in f.headers.items()
                                            if k.lower() not in ("x-user-token", "x-subject-token")}) for f in self.finds]


def answer_skip(query: dict[str, str]) -> bool:
    return query.get("$skipTokenRetrieval") == "true"


def binding(**extra: Any) -> Binding:
    return Binding(name="dest", label="destination", source="VCAP_SERVICES", credentials={
        "clientid": "dest-client", "clientsecret": "dest-secret-VALUE", "url": "https://provider.auth.example.com",
        "uri": DEST_URI, "tenantid": "provider-zid", "identityzone": "provider", **extra})


def engine(environ: dict[str, str] | None = None, **extra: Any) -> Propagator:
    return Propagator(environ=environ or {}, bindings=Bindings([binding(**extra)], ["VCAP_SERVICES"]),
                      cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, sleep=lambda s: None))


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
