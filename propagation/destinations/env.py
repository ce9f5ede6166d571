"""Destinations from the environment: the approuter's ``destinations`` variable (or the
``destinations`` of ``default-env.json``) and service bindings that describe a target
(DESIGN §3 steps 1 and 2).

An entry is read the way the approuter reads it, and may also carry Destination-service
property names, so one configuration works for the approuter, the SAP Cloud SDK and this
library. Keys are case-insensitive. Every entry key is kept verbatim in
:attr:`Destination.properties`; the typed fields of :class:`Destination` are derived from them.
A key that is a near miss of a known one (``Authentification``) is refused rather than
ignored (:mod:`.vocabulary`); other unknown keys are listed by :func:`unknown_keys`.

The SAP Cloud SDK's form of an entry is read too (``{"name", "url", "username", "password"}``,
``authentication``, ``tokenServiceUrl``, ``clientId``, ``clientSecret``, ``type``,
``proxyType``, ``sapClient``, ``isTrustingAllCertificates``, ``headers``/``queryParameters``
objects…): each SDK key is stored under the Destination-service property it stands for
(:data:`~.vocabulary.SDK_ALIASES`), and giving both is an error. As the SDK does, an entry
without ``Authentication`` but with ``User`` and ``Password`` (either spelling) is
``BasicAuthentication`` — never sent without the credentials it carries.

OAuth client of an entry: ``clientId`` with ``clientSecret``, or ``clientId`` with
``clientCertificate`` and ``clientKey`` (PEM strings) for mTLS client authentication at the
token endpoint. ``serviceBinding: "<instance name>"`` takes the URL (unless the entry has
one) and the OAuth client and token URL (unless the entry has them) from that binding.

Errors are :class:`~propagation.errors.ConfigurationError` naming the variable or file, the
entry index and name and the key; they never contain ``clientSecret``, ``Password`` or
``clientKey`` values.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from ..bindings import Binding, Bindings, _json_type, default_env_path, load_default_env, parse_json
from ..errors import ConfigurationError
from ..exchange.oauth import ClientCredentials
from .model import _CANONICAL_AUTH, PROXY_TYPES, Destination, Properties, canonical_authentication, header_problem
from .vocabulary import check_keys, without_sdk_aliases

__all__ = ["raw_entries", "from_entry", "destination_from_binding", "unknown_keys", "ENV_VARIABLE"]

#: The approuter's environment variable.
ENV_VARIABLE = "destinations"
_ENV_SOURCE = "destinations environment variable"


#: Labels of infrastructure services: they serve the library, they are not call targets.
_INFRASTRUCTURE_LABELS = frozenset({"xsuaa", "identity", "destination", "connectivity"})

#: Default Authentication of an entry that names a ``serviceBinding``: the binding's client
#: exists to act for the user, and failing closed beats a silent technical user.
_SERVICE_BINDING_AUTHENTICATION = "OAuth2JWTBearer"


# -- public ----------------------------------------------------------------------------------
def unknown_keys(environ: Mapping[str, str], *, cwd: str | os.PathLike[str] | None = None) -> list[str]:
    """Warnings for the keys of ``destinations`` entries that no reader knows (``doctor``).

    They are ignored by the library: a custom key is harmless, but it may be a misspelling
    that :mod:`~propagation.destinations.vocabulary` does not recognise as one. Near misses of
    known keys are not listed here: :func:`~.env_entries.read_entries` refuses them. Malformed
    input raises the same :class:`ConfigurationError` as :func:`~.env_entries.read_entries`.
    """
    raw = raw_entries(environ, cwd)
    if raw is None:
        return []
    data, where, _ = raw
    warnings: list[str] = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            continue
        check = check_keys(str(key) for key in entry)
        if check.unknown:
            warnings.append(
                f"{_entry_label(entry, index)} in {where}: unknown "
                f"{'key' if len(check.unknown) == 1 else 'keys'} "
                f"{', '.join(repr(_short(k)) for k in check.unknown)} (ignored)"
            )
    return warnings


def raw_entries(
    environ: Mapping[str, str], cwd: str | os.PathLike[str] | None
) -> tuple[list[Any], str, str] | None:
    """The parsed entry list, where it came from (for messages) and its ``Destination.source``."""
    raw = environ.get(ENV_VARIABLE)
    if raw is not None and raw.strip():
        source = _ENV_SOURCE
        where = f"the {_ENV_SOURCE}"
        data = parse_json(raw, f"The {_ENV_SOURCE}")
        what = f"The {_ENV_SOURCE}"
    else:
        default_env = load_default_env(cwd)
        if default_env is None or default_env.get(ENV_VARIABLE) is None:
            return None
        source = f"default-env.json ({default_env_path(cwd)})"
        where = source
        what = f"'destinations' in {source}"
        data = default_env[ENV_VARIABLE]
        if isinstance(data, str):
            data = parse_json(data, what)
    if not isinstance(data, list):
        raise ConfigurationError(f"{what} is not a JSON array (found {_json_type(data)})")
    return data, where, source


def _short(key: str) -> str:
    return key if len(key) <= 60 else key[:57] + "..."


def _entry_label(entry: Mapping[str, Any], index: int) -> str:
    """``destinations[i] ('NAME')``, or ``destinations[i]`` while the name is unknown."""
    name = Properties(entry).get("name")
    return f"destinations[{index}] ('{name.strip()}')" if isinstance(name, str) and name.strip() else f"destinations[{index}]"


def destination_from_binding(binding: Binding) -> Destination | None:
    """A jwt-bearer destination from a binding that describes a target (DESIGN §3 step 2).

    E.g. Cloud Integration (``it-rt``) with ``credentials.oauth.{url,tokenurl,clientid,
    clientsecret}`` (or ``certificate``/``key``). ``None`` when the binding lacks a URL, an
    OAuth client or a token URL, and for infrastructure bindings (xsuaa, identity,
    destination, connectivity), whose URLs are identity or service endpoints, not targets.
    """
    if binding.label.lower() in _INFRASTRUCTURE_LABELS:
        return None
    oauth = _binding_oauth(binding)
    if oauth.url is None or not _is_http_url(oauth.url) or oauth.client is None or oauth.token_url is None:
        return None
    properties: dict[str, Any] = {
        "Name": binding.name,
        "URL": oauth.url,
        "Authentication": _SERVICE_BINDING_AUTHENTICATION,
        "tokenServiceURL": oauth.token_url,
        "clientId": oauth.client.client_id,
    }
    return Destination(
        name=binding.name,
        url=oauth.url,
        authentication=_SERVICE_BINDING_AUTHENTICATION,
        properties=Properties(properties),
        source=f"service binding '{binding.name}' ({binding.source})",
        client=oauth.client,
        token_service_url=oauth.token_url,
    )


# -- service binding → URL + OAuth client --------------------------------------------------------
@dataclass(frozen=True)
class _BindingOAuth:
    url: str | None
    client: ClientCredentials | None
    token_url: str | None


def _text(mapping: Mapping[str, Any] | None, key: str) -> str | None:
    if mapping is None:
        return None
    value = mapping.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _nested(credentials: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = credentials.get(key)
    return value if isinstance(value, Mapping) else None


def _binding_oauth(binding: Binding) -> _BindingOAuth:
    """URL, OAuth client and token URL of a binding, wherever its service keeps them.

    XSUAA-style credentials (``uaadomain``) and IAS (``identity``) carry the *auth server*
    in ``url``, so their API URL is only ever ``uri``/``apiurl``; calling the auth server
    as if it were the target would be wrong in a way that is hard to spot.
    """
    creds = binding.credentials
    oauth = _nested(creds, "oauth")
    uaa = _nested(creds, "uaa")
    is_identity = binding.label.lower() == "identity"
    auth_server_url = "uaadomain" in creds or is_identity

    if auth_server_url:
        url = _text(creds, "uri") or _text(creds, "apiurl")
    else:
        url = _text(creds, "url") or _text(creds, "uri") or _text(oauth, "url") or _text(creds, "apiurl")

    # The client lives at the top level (xsuaa, identity, destination), under "oauth"
    # (Cloud Integration) or under "uaa" (many SAP services with their own UAA).
    client_source: Mapping[str, Any] | None = None
    for candidate in (creds, oauth, uaa):
        if candidate is not None and _text(candidate, "clientid"):
            client_source = candidate
            break
    if client_source is None:
        return _BindingOAuth(url, None, None)
    certificate = _text(client_source, "certificate")
    key = _text(client_source, "key")
    mtls = bool(certificate and key)
    client = ClientCredentials(
        client_id=_text(client_source, "clientid") or "",
        client_secret=client_source.get("clientsecret") if isinstance(client_source.get("clientsecret"), str) else None,
        certificate=certificate if mtls else None,
        key=key if mtls else None,
    )

    token_url = _text(client_source, "tokenurl") or _text(creds, "tokenurl") or _text(oauth, "tokenurl")
    if token_url is None:
        service_url = _text(client_source, "token_service_url") or _text(creds, "token_service_url")
        if service_url is not None:
            token_url = _xsuaa_token_url(service_url) if "uaadomain" in client_source else service_url
    if token_url is None:
        if "uaadomain" in client_source:
            base = (_text(client_source, "certurl") if mtls else None) or _text(client_source, "url")
            token_url = _xsuaa_token_url(base) if base else None
        elif is_identity and client_source is creds and _text(creds, "url"):
            token_url = str(_text(creds, "url")).rstrip("/") + "/oauth2/token"
    return _BindingOAuth(url, client, token_url)


def _xsuaa_token_url(base: str) -> str:
    """``{base}/oauth/token`` unless ``base`` already is the token endpoint."""
    base = base.rstrip("/")
    return base if base.endswith("/oauth/token") else base + "/oauth/token"


# -- one entry -------------------------------------------------------------------------------
def _shown(value: Any) -> str:
    """A non-secret value for a message, shortened so a pasted blob cannot flood the log."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


class _Entry:
    """Typed, case-insensitive reads of one entry; every error names the entry and the key."""

    def __init__(self, props: Properties, context: str) -> None:
        self.props = props
        self.context = context

    def fail(self, message: str) -> ConfigurationError:
        return ConfigurationError(f"{self.context}: {message}")

    def string(self, key: str) -> str | None:
        """A string property; blank counts as absent. Never echoes the value (it may be a secret)."""
        value = self.props.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"'{key}' must be a string (found {_json_type(value)})")
        return value if value.strip() else None

    def flag(self, key: str, default: bool) -> bool:
        value = self.props.get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise self.fail(f"'{key}' must be true or false (found {_shown(value)})")

    def url(self, key: str) -> str | None:
        value = self.string(key)
        if value is None:
            return None
        value = value.strip()
        if not _is_http_url(value):
            raise self.fail(f"'{key}' must be an absolute http or https URL")
        return value

    def timeout(self) -> float | None:
        """``timeout`` in milliseconds (approuter) → seconds."""
        value = self.props.get("timeout")
        if value is None or value == "":
            return None
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or number <= 0:
            raise self.fail(f"'timeout' must be a positive number of milliseconds (found {_shown(value)})")
        return number / 1000.0

    def port(self, key: str) -> int | None:
        value = self.props.get(key)
        if value is None or value == "":
            return None
        port: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            port = value
        elif isinstance(value, float) and value.is_integer():
            port = int(value)
        elif isinstance(value, str) and value.strip().isdigit():
            port = int(value.strip())
        if port is None or not 0 < port < 65536:
            raise self.fail(f"'{key}' must be a port number 1-65535 (found {_shown(value)})")
        return port


def from_entry(entry: Any, index: int, where: str, source: str, bindings: Bindings) -> Destination:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"destinations[{index}] in {where} is not a JSON object (found {_json_type(entry)})")
    seen: dict[str, str] = {}
    for key in entry:
        other = seen.setdefault(str(key).lower(), str(key))
        if other != key:
            raise ConfigurationError(
                f"destinations[{index}] in {where} has both '{other}' and '{key}' (keys are case-insensitive)"
            )
    check = check_keys(str(key) for key in entry)
    if check.typos:
        key, meant = check.typos[0]
        raise ConfigurationError(
            f"{_entry_label(entry, index)} in {where}: unknown key {_short(key)!r}; did you mean {meant!r}? "
            f"(a misspelt key would be ignored, and the destination called without it)"
        )
    props = Properties(without_sdk_aliases(entry, f"{_entry_label(entry, index)} in {where}"))
    name = props.get("name")
    if not isinstance(name, str) or not name.strip():
        problem = "has no 'name'" if name is None or name == "" else "has a 'name' that is not a non-empty string"
        raise ConfigurationError(f"destinations[{index}] in {where} {problem}")
    name = name.strip()
    e = _Entry(props, f"destinations[{index}] ('{name}') in {where}")

    service_binding = e.string("serviceBinding")
    service_binding = service_binding.strip() if service_binding else None

    for prefix in ("URL.headers.", "tokenServiceURL.headers."):  # at start-up, not at the first call
        for header, value in props.prefixed(prefix).items():
            problem = header_problem(header, value)
            if problem is not None:
                raise e.fail(f"property '{prefix}{header[:60]}' {problem}; it cannot be sent as a header. Nothing was sent.")
    kind = e.string("Type")
    if kind is not None and kind.strip().upper() != "HTTP":
        raise e.fail(f"Type {_shown(kind.strip())}: only HTTP destinations can be called")
    raw_auth = e.string("Authentication")
    inferred = False
    if raw_auth is None:
        authentication = _SERVICE_BINDING_AUTHENTICATION if service_binding else "NoAuthentication"
        inferred = True
    else:
        canonical = canonical_authentication(raw_auth)
        if canonical is None:
            raise e.fail(
                f"Authentication {_shown(raw_auth.strip())} is not one of {', '.join(_CANONICAL_AUTH.values())}"
            )
        authentication = canonical

    raw_proxy_type = e.string("ProxyType")
    proxy_type = "Internet"
    if raw_proxy_type is not None:
        proxy_type = PROXY_TYPES.get(raw_proxy_type.strip().lower(), "")
        if not proxy_type:
            raise e.fail(f"ProxyType {_shown(raw_proxy_type.strip())} is not one of {', '.join(PROXY_TYPES.values())}")

    url = e.url("url")
    token_service_url = e.url("tokenServiceURL")
    client = _entry_client(e)
    forward_auth_token = e.flag("forwardAuthToken", False)
    strict_ssl = e.flag("strictSSL", not e.flag("TrustAll", False))
    e.flag("tokenService.addClientCredentialsInBody", True)  # validated here, read by the authorizer
    timeout = e.timeout()
    proxy_host = e.string("proxyHost")
    proxy_port = e.port("proxyPort")

    if service_binding is not None:
        binding = bindings.find(name=service_binding)
        if binding is None:
            looked = ", ".join(bindings.sources) or "no binding source present"
            raise e.fail(f"serviceBinding '{service_binding}' is not bound (bindings read from: {looked})")
        oauth = _binding_oauth(binding)
        source = f"{source} (serviceBinding '{service_binding}')"
        if url is None:
            if oauth.url is None:
                raise e.fail(
                    f"'url' is missing and serviceBinding '{service_binding}' ({binding.label}) has no API URL "
                    f"(credentials 'uri', 'url', 'oauth.url' or 'apiurl')"
                )
            if not _is_http_url(oauth.url):
                raise e.fail(f"the URL of serviceBinding '{service_binding}' is not an absolute http or https URL")
            url = oauth.url
        if client is None:
            client = oauth.client
        if token_service_url is None:
            token_service_url = oauth.token_url
        if authentication.startswith("OAuth2") and (client is None or token_service_url is None):
            raise e.fail(
                f"serviceBinding '{service_binding}' ({binding.label}) has no OAuth client and token URL "
                f"(credentials 'clientid' with 'clientsecret' or 'certificate'/'key', and 'tokenurl')"
            )
    if url is None:
        raise e.fail("'url' is missing")
    if inferred and service_binding is None:
        authentication = _inferred_authentication(e)

    return Destination(
        name=name,
        url=url,
        authentication=authentication,
        proxy_type=proxy_type,
        properties=props,
        source=source,
        forward_auth_token=forward_auth_token,
        timeout=timeout,
        proxy_host=proxy_host.strip() if proxy_host else None,
        proxy_port=proxy_port,
        strict_ssl=strict_ssl,
        client=client,
        token_service_url=token_service_url,
        authentication_inferred=inferred,
    )


def _inferred_authentication(e: _Entry) -> str:
    """No ``Authentication``: ``BasicAuthentication`` when ``User`` and ``Password`` are both
    given (the SAP Cloud SDK's rule: the entry is never called without the credentials it
    carries), else ``NoAuthentication``."""
    if e.string("User") is not None and e.string("Password") is not None:
        return "BasicAuthentication"
    return "NoAuthentication"


def _entry_client(e: _Entry) -> ClientCredentials | None:
    """``clientId`` + ``clientSecret``, and/or ``clientCertificate`` + ``clientKey`` (PEM, mTLS)."""
    client_id = e.string("clientId")
    secret = e.string("clientSecret")
    certificate = e.string("clientCertificate")
    key = e.string("clientKey")
    if (certificate is None) != (key is None):
        raise e.fail("'clientCertificate' and 'clientKey' must be given together")
    if client_id is None and certificate is None:
        if secret is not None:
            raise e.fail("'clientSecret' is given without 'clientId'")
        return None
    return ClientCredentials(
        client_id=client_id.strip() if client_id else "",
        client_secret=secret,
        certificate=certificate,
        key=key,
    )
