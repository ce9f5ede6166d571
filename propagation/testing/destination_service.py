"""The emulated Destination service: destinations and fragments declared per tenant and
level, and the consumption APIs.

* ``GET /destination-configuration/v1/destinations/{name}`` — find: the instance level,
  then the subaccount level, of the tenant of the service token; answer with ``owner``.
* ``GET /destination-configuration/v2/destinations/{name}[@level]`` — consume: without a
  level as v1 (no ``owner``; ``$includeMetadata=owner`` adds ``$metadata``); ``@instance``,
  ``@subaccount`` — that level of the caller's tenant; ``@provider_instance``,
  ``@provider_subaccount`` — that level of the provider tenant (a subscriber reading the
  provider's destination).
* Both: ``X-fragment-name: NAME[@level]`` (+ ``X-fragment-optional``) merges a fragment
  from the destination's level and tenant; ``$skipTokenRetrieval=true`` returns the
  configuration without running any token flow; ``$skipCredentials=true`` leaves the
  credentials out of it.
* ``GET /destination-configuration/v1/subaccountDestinations`` and ``…/instanceDestinations``
  — the lists (what ``propagation.destinations()`` and ``doctor --service`` read): a JSON
  array of the destination configurations at that level of the service token's tenant (its
  own, and those declared for every tenant), empty when there is none — never 404; no token
  flow runs. Only ``GET``.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from ..destinations.model import SERVICE_TOKEN_AUTHENTICATIONS, USER_AUTHENTICATIONS, canonical_authentication
from ..tokens import fingerprint
from .destination_tokens import _DestinationTokens
from .records import Call
from .registry import _EMULATED_AUTHENTICATIONS, EmulatedDestination, _Reject, _Tenant
from .wire import _RESOURCE_PREFIX, Request, Response, _bearer, _json, _origin

V1_PATH = "/destination-configuration/v1/destinations/"
V2_PATH = "/destination-configuration/v2/destinations/"
#: The list APIs (v1), by level.
LIST_PATHS = {"/destination-configuration/v1/subaccountDestinations": "subaccount",
              "/destination-configuration/v1/instanceDestinations": "instance"}
LEVELS = ("instance", "subaccount", "provider_instance", "provider_subaccount")
#: Types whose ``authTokens`` the service produces (the library's set, plus a type only the service handles).
_TOKEN_TYPES = SERVICE_TOKEN_AUTHENTICATIONS | {"OAuth2RefreshToken"}
#: Properties ``$skipCredentials=true`` leaves out.
_CREDENTIALS = frozenset({"clientSecret", "Password", "tokenServicePassword", "KeyStorePassword"})
_TOP_LEVEL = {"URL": "url", "Authentication": "authentication", "ProxyType": "proxy_type"}


def _emulated_authentication(word: str) -> str | None:
    if word == "oauth2refreshtoken":
        return "OAuth2RefreshToken"
    canonical = canonical_authentication(word)
    return canonical if canonical in _EMULATED_AUTHENTICATIONS else None


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


class _DestinationService(_DestinationTokens):
    """Declared destinations and fragments; the v1 find and v2 consume APIs."""

    _fragments: dict[tuple[str | None, str, str], dict[str, str]]

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

        Where it lives in the Destination service: ``tenant=<subdomain>`` (only that tenant's
        subaccount; without it the destination exists in every tenant's subaccount, each
        tenant seeing its own copy) and ``level=subaccount`` (default) or ``level=instance``
        (the service instance's destinations, found first). ``OAuth2RefreshToken`` (a type
        only the service handles) needs ``X-refresh-token`` at lookup time.
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
        tenant: str | None = None
        level = "subaccount"
        for word in words[1:]:
            low = word.lower()
            if low in ("internet", "onpremise"):
                proxy_type = "OnPremise" if low == "onpremise" else "Internet"
            elif _emulated_authentication(low) is not None:
                authentication = _emulated_authentication(low) or authentication
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
                elif key == "tenant":
                    tenant = value
                elif key == "level":
                    level = value
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
        if level not in ("subaccount", "instance"):
            raise ValueError(f"destination {name}: level must be 'subaccount' or 'instance', not {level!r}")
        if tenant is not None:
            self._tenant(tenant)  # unknown → ValueError naming the declared tenants
        if source == "env" and (tenant is not None or level != "subaccount"):
            raise ValueError(f"destination {name}: tenant= and level= are Destination-service notions (source=service)")
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
                                  "OAuth2UserTokenExchange", "OAuth2SAMLBearerAssertion", "OAuth2RefreshToken"):
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
            destination = EmulatedDestination(name, authentication, proxy_type, url, source, target, dict(props), forward,
                                              tenant, level)
            self._destinations[destination.key] = destination
        for listener in list(self._listeners):
            listener(self)
        return destination

    @property
    def destinations(self) -> dict[str, EmulatedDestination]:
        """Declared destinations by key: the name, ``tenant/name`` and ``name@instance``."""
        with self._lock:
            return dict(self._destinations)

    def fragment(self, spec: str, **properties: str) -> dict[str, str]:
        """Declare a destination fragment: ``NAME [tenant=<subdomain>] [level=instance]
        key=value ...`` (properties verbatim, e.g. ``URL=https://...``,
        ``tokenService.body.resource=X``). A lookup with ``X-fragment-name: NAME[@level]``
        merges them over the destination's (the fragment wins); returns the properties."""
        words = spec.split()
        if not words:
            raise ValueError("a fragment line needs at least a name")
        name, tenant, level = words[0], None, "subaccount"
        props: dict[str, str] = {}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep or not key:
                raise ValueError(f"fragment line {spec!r}: cannot read {word!r}")
            if key == "tenant":
                tenant = value
            elif key == "level":
                level = value
            else:
                props[key] = value
        props.update({k: str(v) for k, v in properties.items()})
        if level not in ("subaccount", "instance"):
            raise ValueError(f"fragment {name}: level must be 'subaccount' or 'instance', not {level!r}")
        if tenant is not None:
            self._tenant(tenant)
        with self._lock:
            self._fragments[(tenant, level, name)] = dict(props)
        return dict(props)

    # ------------------------------------------------------------------ lookup
    def _lookup(self, tenant: _Tenant, name: str, levels: tuple[str, ...]) -> EmulatedDestination | None:
        """The first destination NAME at ``levels`` of ``tenant``'s subaccount (its own, then
        the one declared for every tenant)."""
        with self._lock:
            for level in levels:
                for owner in (tenant.subdomain, None):
                    for candidate in self._destinations.values():
                        if (candidate.name, candidate.level, candidate.tenant, candidate.source) == (
                                name, level, owner, "service"):
                            return candidate
        return None

    def _fragment(self, tenant: _Tenant, name: str, level: str) -> dict[str, str] | None:
        with self._lock:
            for owner in (tenant.subdomain, None):
                found = self._fragments.get((owner, level, name))
                if found is not None:
                    return dict(found)
        return None

    def _service_caller(self, request: Request, call: dict[str, Any]) -> tuple[Any, str] | Response:
        """The verified service token of a request (and its raw value), or the 401 answer."""
        raw = _bearer(request.headers.get("Authorization"))
        try:
            if raw is None:
                raise _Reject("Missing bearer token.")
            verified = self._verify(raw)
            if verified.kind != "xsuaa" or verified.claims.get("cid") != self.destination_client:
                raise _Reject("The token was not issued to the Destination service instance's client.")
        except _Reject as exc:
            self._record(self.calls, Call(status=401, error=exc.description, token=fingerprint(raw) if raw else None, **call))
            return _json(401, {"ErrorMessage": "Unauthorized"}, {"WWW-Authenticate": 'Bearer realm="destination"'})
        return verified, raw

    def _get_by_service(self, request: Request, call: dict[str, Any]) -> "Response | tuple[Any, str]":
        """What every Destination-service API checks first: a GET, with the service's own token
        as bearer → ``(verified token, raw token)``, its tenant set; else the refusal (recorded)."""
        if request.method != "GET":
            self._record(self.calls, Call(status=405, error="method not allowed", **call))
            return _json(405, {"ErrorMessage": "Method not allowed"})
        caller = self._service_caller(request, call)
        if isinstance(caller, Response):
            return caller
        assert caller[0].tenant is not None
        return caller

    def _destination_list(self, request: Request, path: str, level: str) -> Response:
        """A list API: the configurations at ``level`` of the caller's tenant (an array, maybe empty)."""
        call = dict(service="destination", method=request.method, path=path, query=_query(request))
        caller = self._get_by_service(request, call)
        if isinstance(caller, Response):
            return caller
        verified, raw = caller
        tenant = verified.tenant
        found: dict[str, EmulatedDestination] = {}
        with self._lock:
            for owner in (None, tenant.subdomain):  # the tenant's own copy wins over the shared one
                for candidate in self._destinations.values():
                    if (candidate.level, candidate.tenant, candidate.source) == (level, owner, "service"):
                        found[candidate.name] = candidate
        self._record(self.calls, Call(status=200, tenant=tenant.subdomain, client=self.destination_client,
                                      carried_by="service-token", token=fingerprint(raw), **call))
        return _json(200, [found[name].configuration() for name in sorted(found)])

    def _destination_find(self, request: Request, path: str) -> Response:
        if path in LIST_PATHS:
            return self._destination_list(request, path, LIST_PATHS[path])
        if path.startswith(V1_PATH) and len(path) > len(V1_PATH):
            version, rest = 1, unquote(path[len(V1_PATH):])
        elif path.startswith(V2_PATH) and len(path) > len(V2_PATH):
            version, rest = 2, unquote(path[len(V2_PATH):])
        else:
            return _json(404, {"ErrorMessage": "Not found"})
        name, level = rest, None
        if version == 2 and "@" in rest:
            name, _, level = rest.rpartition("@")
        query = _query(request)
        call = dict(service="destination", method=request.method, path=path, destination=name, query=query)
        caller = self._get_by_service(request, call)
        if isinstance(caller, Response):
            return caller
        verified, raw = caller
        tenant = verified.tenant
        seen = dict(tenant=tenant.subdomain, client=self.destination_client, carried_by="service-token",
                    token=fingerprint(raw), **call)

        def refuse(status: int, text: str) -> Response:
            self._record(self.calls, Call(status=status, error=text, **seen))
            return _json(status, {"ErrorMessage": text})

        if level is not None and level not in LEVELS:
            return refuse(400, f"Unsupported level '{level[:40]}': use one of {', '.join(LEVELS)}.")
        if request.headers.get("X-user-token") and request.headers.get("X-tenant"):
            return refuse(400, "The headers X-user-token and X-tenant cannot be used together.")
        owner = self.provider if level is not None and level.startswith("provider_") else tenant
        levels = (level.removeprefix("provider_"),) if level else ("instance", "subaccount")
        destination = self._lookup(owner, name, levels)
        if destination is None:
            return refuse(404, "Configuration with the specified name was not found")
        fragment_header = (request.headers.get("X-fragment-name") or "").strip()
        if fragment_header:
            fragment_name, _, fragment_level = fragment_header.partition("@")
            if fragment_level and fragment_level not in LEVELS:
                return refuse(400, f"Unsupported fragment level '{fragment_level[:40]}'.")
            fragment_owner = self.provider if fragment_level.startswith("provider_") else owner
            fragment = self._fragment(fragment_owner, fragment_name,
                                      fragment_level.removeprefix("provider_") or destination.level)
            if fragment is None and not _flag(request.headers.get("X-fragment-optional")):
                return refuse(404, f"Fragment with name '{fragment_name[:64]}' was not found")
            if fragment is not None:
                destination = _merged(destination, fragment_name, fragment)
        config = destination.configuration()
        if _flag(query.get("$skipCredentials")):
            config = {k: v for k, v in config.items() if k not in _CREDENTIALS}
        owner_field = ({"SubaccountId": None, "InstanceId": f"{self.destination_client}-{owner.zid}"}
                       if destination.level == "instance" else {"SubaccountId": owner.zid, "InstanceId": None})
        answer: dict[str, Any] = {"destinationConfiguration": config}
        if version == 1:
            answer = {"owner": owner_field, **answer}
        elif "owner" in (query.get("$includeMetadata") or "").split(";"):
            config["$metadata"] = {"owner": owner_field}
        user: str | None = None
        if destination.authentication in _TOKEN_TYPES and not _flag(query.get("$skipTokenRetrieval")):
            service_user = self._principal(verified.claims)
            token, user = self._auth_token(destination, tenant, request.headers, service_user, verified.claims, raw or "")
            answer["authTokens"] = [token]
        else:
            user = self._user_header_principal(request.headers)
        self._record(self.calls, Call(status=200, user=user, **seen))
        return _json(200, answer)


def _merged(destination: EmulatedDestination, fragment_name: str, fragment: Mapping[str, str]) -> EmulatedDestination:
    """The destination with a fragment's properties over its own (``FragmentName`` added)."""
    top = {field: fragment[key] for key, field in _TOP_LEVEL.items() if key in fragment}
    if "authentication" in top:
        top["authentication"] = _emulated_authentication(top["authentication"].lower()) or top["authentication"]
    props = dict(destination.properties)
    props.update({k: v for k, v in fragment.items() if k not in _TOP_LEVEL and k not in ("Name", "Type")})
    props["FragmentName"] = fragment_name
    return replace(destination, properties=props, **top)


def _query(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.url).query, keep_blank_values=True).items()}
