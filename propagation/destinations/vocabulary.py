"""The property names a ``destinations`` entry may carry, and the check that catches typos.

A misspelt key fails *open* if it is ignored: ``"Authentification": "OAuth2JWTBearer"``
would leave the entry a ``NoAuthentication`` destination that needs no user, and the
target would be called without the user's identity. So an unknown key that is a near miss
of a known one (``difflib``: edit distance, keys compared case-insensitively, as they are
matched) is a :class:`~propagation.errors.ConfigurationError` naming the key and the one it
most likely meant; any other unknown key is kept and reported as a warning (``doctor``).

The vocabulary is the approuter's (``name``, ``url``, ``forwardAuthToken``, …), the
Destination service's (SAP's names: an entry exported from the BTP cockpit must pass), the SAP
Cloud SDK's camelCase form (``username``, ``password``, ``sapClient``, ``headers``…), and
this library's own (``serviceBinding``, ``clientCertificate``, ``connectivityMode``, …).
Keys under a known prefix (``URL.headers.<h>``, ``tokenService.body.<p>``, ``HTML5.…``) are
known whatever their suffix. Only entries of the ``destinations`` variable and of
``default-env.json`` are checked: answers of the Destination service are SAP's and are never
refused.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..bindings import _json_type
from ..errors import ConfigurationError

__all__ = ["KNOWN_KEYS", "KNOWN_PREFIXES", "SDK_ALIASES", "KeyCheck", "check_keys", "without_sdk_aliases"]

#: The approuter's ``destinations`` variable.
_APPROUTER = (
    "name",
    "url",
    "proxyHost",
    "proxyPort",
    "forwardAuthToken",
    "strictSSL",
    "timeout",
    "setXForwardedHeaders",
)

#: Destination-service properties (SAP's names, HTTP destinations and the general ones).
_DESTINATION_SERVICE = (
    "Name",
    "Type",
    "URL",
    "Description",
    "Authentication",
    "ProxyType",
    "User",
    "Password",
    "tokenServiceURL",
    "tokenServiceURLType",
    "tokenServiceUser",
    "tokenServicePassword",
    "tokenService.KeyStoreLocation",
    "tokenService.KeyStorePassword",
    "tokenService.addClientCredentialsInBody",
    "clientId",
    "clientSecret",
    "scope",
    "audience",
    "refreshToken",
    "SystemUser",
    "nameIdFormat",
    "authnContextClassRef",
    "assertionIssuer",
    "assertionRecipient",
    "userIdSource",
    "companyId",
    "KeyStoreLocation",
    "KeyStorePassword",
    "TrustStoreLocation",
    "TrustStorePassword",
    "TrustAll",
    "HostnameVerifier",
    "CloudConnectorLocationId",
    "CloudConnectorVersion",
    "sap-client",
    "sap-platform",
    "sap-sysid",
    "sap-language",
    "WebIDEEnabled",
    "WebIDEUsage",
    "WebIDESystem",
    "AppgyverEnabled",
    "product.name",
    "x_user_token.jwks",
    "x_user_token.jwks_uri",
    "clientAssertion.destinationName",
    "clientAssertion.type",
)

#: The SAP Cloud SDK's own form of an entry (its ``Destination`` interface, camelCase): read
#: as the Destination-service property each one stands for (:data:`SDK_ALIASES`).
_CLOUD_SDK = (
    "username",
    "password",
    "sapClient",
    "isTrustingAllCertificates",
    "keyStoreName",
    "jwks",
    "jwksUri",
    "headers",
    "queryParameters",
)

#: Cloud SDK key (lower-case) → the Destination-service property it stands for. ``headers`` and
#: ``queryParameters`` are objects, read as ``URL.headers.<h>`` / ``URL.queries.<q>``.
SDK_ALIASES: dict[str, str] = {
    "username": "User",
    "password": "Password",
    "sapclient": "sap-client",
    "istrustingallcertificates": "TrustAll",
    "keystorename": "KeyStoreLocation",
    "jwks": "x_user_token.jwks",
    "jwksuri": "x_user_token.jwks_uri",
    "headers": "URL.headers.",
    "queryparameters": "URL.queries.",
}

#: This library's own keys.
_LIBRARY = (
    "serviceBinding",
    "clientCertificate",
    "clientKey",
    "connectivityMode",
)

KNOWN_KEYS: frozenset[str] = frozenset(k.lower() for k in _APPROUTER + _DESTINATION_SERVICE + _CLOUD_SDK + _LIBRARY)
_SPELLING: dict[str, str] = {}  # lower-case → spelling to suggest (the approuter's first: "name", "url")
for _key in _APPROUTER + _DESTINATION_SERVICE + _CLOUD_SDK + _LIBRARY:
    _SPELLING.setdefault(_key.lower(), _key)

#: Keys starting with one of these (case-insensitive) are known whatever follows.
KNOWN_PREFIXES: tuple[str, ...] = (
    "URL.headers.",
    "URL.queries.",
    "tokenService.body.",
    "tokenServiceURL.headers.",
    "tokenServiceURL.queries.",
    "HTML5.",
    "x_user_token.",
    "clientAssertion.",
    "jco.",
    "mail.",
)
_PREFIXES_LOWER = tuple(p.lower() for p in KNOWN_PREFIXES)

#: ``difflib`` ratio from which an unknown key counts as a typo of a known one. "Authentification"
#: (0.93), "forwardAuthTokn" (0.97) and "tokenServiceUrl.header." (0.96) are typos; distinct
#: SAP names ("tokenServiceUser" vs "tokenServiceURL") are both known, never compared.
CUTOFF = 0.8
#: Shorter unknown keys are never called typos: at 3 letters everything is "close".
_MIN_LENGTH = 4


@dataclass(frozen=True)
class KeyCheck:
    """The result of :func:`check_keys`: typos (``(key, meant)``) and other unknown keys."""

    typos: tuple[tuple[str, str], ...] = ()
    unknown: tuple[str, ...] = ()


def _is_known(low: str) -> bool:
    return low in KNOWN_KEYS or any(low.startswith(p) and len(low) > len(p) for p in _PREFIXES_LOWER)


def _swapped(a: str, b: str) -> bool:
    """``a`` is ``b`` with two neighbouring letters swapped."""
    if len(a) != len(b) or a == b:
        return False
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]


def _meant(key: str) -> str | None:
    """The known key (or key under a known prefix) that ``key`` most likely misspells."""
    low = key.lower()
    if len(low) < _MIN_LENGTH:
        return None
    close = difflib.get_close_matches(low, _SPELLING, n=1, cutoff=CUTOFF)
    if close:
        return _SPELLING[close[0]]
    for known, spelling in _SPELLING.items():  # "nmae": one swap of neighbours, low ratio on short keys
        if _swapped(low, known):
            return spelling
    # A misspelt prefix ("URL.header.X-Custom"): compare each head ending in "." with the known
    # prefixes of the same depth, so "tokenService.foo" is not taken for "tokenServiceURL.headers.".
    for index, char in enumerate(low):
        if char != ".":
            continue
        head, rest = low[: index + 1], key[index + 1 :]
        if not rest:
            continue
        same_depth = [p for p in _PREFIXES_LOWER if p.count(".") == head.count(".")]
        close = difflib.get_close_matches(head, same_depth, n=1, cutoff=CUTOFF)
        if close:
            return KNOWN_PREFIXES[_PREFIXES_LOWER.index(close[0])] + rest
    return None


def check_keys(keys: Iterable[str]) -> KeyCheck:
    """Sort the keys of one entry into typos of known keys and other unknown keys."""
    typos: list[tuple[str, str]] = []
    unknown: list[str] = []
    for key in keys:
        if _is_known(key.lower()):
            continue
        meant = _meant(key)
        if meant is not None:
            typos.append((key, meant))
        else:
            unknown.append(key)
    return KeyCheck(tuple(typos), tuple(unknown))


def without_sdk_aliases(entry: Mapping[str, Any], label: str) -> dict[str, Any]:
    """``entry`` with the SAP Cloud SDK's keys stored under the Destination-service names they
    stand for (``username`` → ``User``, ``headers: {h: v}`` → ``URL.headers.h``…)."""
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}  # lower-case stored key → the key it came from

    def put(key: str, value: Any, source: str) -> None:
        low = key.lower()
        if low in origin:
            raise ConfigurationError(
                f"{label} has both '{origin[low]}' and '{source}': they name the same property ('{key}'), "
                f"once in the SAP Cloud SDK's spelling"
            )
        origin[low] = source
        out[key] = value

    for key, value in entry.items():
        key = str(key)
        alias = SDK_ALIASES.get(key.lower())
        if alias is None:
            put(key, value, key)
        elif alias.endswith("."):  # headers / queryParameters: an object of names to values
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"{label}: '{key}' must be an object of names to strings (found {_json_type(value)})")
            for name, item in value.items():
                if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                    raise ConfigurationError(f"{label}: '{key}.{str(name)[:60]}' must be a string")
                put(f"{alias}{name}", str(item), f"{key}.{name}")
        else:
            put(alias, value, key)
    return out
