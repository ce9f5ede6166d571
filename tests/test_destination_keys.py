"""Typos in ``destinations`` entries fail closed (issue 11 item 9).

A misspelt key used to be ignored: ``"Authentification": "OAuth2JWTBearer"`` became a
``NoAuthentication`` destination that needs no user, and the target was called without the
user's identity. A near miss of a known key is now a ConfigurationError naming the key and
the likely intended one; other unknown keys are warnings (``unknown_keys``, for doctor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from propagation.bindings import Bindings
from propagation.destinations.env import unknown_keys
from propagation.destinations.env_entries import destinations_from_env
from propagation.destinations.vocabulary import check_keys
from propagation.errors import ConfigurationError

SECRET = "s3cr3t-VALUE"
BASE = {"name": "S4", "url": "https://s4.example.com", "clientId": "c", "clientSecret": SECRET,
        "tokenServiceURL": "https://idp.example.com/oauth/token"}


def environ(*entries: dict[str, Any]) -> dict[str, str]:
    return {"destinations": json.dumps(list(entries))}


@pytest.mark.parametrize(
    "key, value, meant",
    [
        pytest.param("Authentification", "OAuth2JWTBearer", "Authentication", id="Authentification"),
        pytest.param("forwardAuthTokn", True, "forwardAuthToken", id="forwardAuthTokn"),
        pytest.param("FORWARDAUTHTOKN", True, "forwardAuthToken", id="typo-in-another-case"),
        pytest.param("ProxyTyp", "OnPremise", "ProxyType", id="ProxyTyp"),
        pytest.param("CloudConectorLocationId", "loc", "CloudConnectorLocationId", id="CloudConectorLocationId"),
        pytest.param("tokenServiceUrl.header.X-Tenant", "t1", "tokenServiceURL.headers.X-Tenant", id="prefix-typo"),
        pytest.param("URL.header.X-Custom", "v", "URL.headers.X-Custom", id="URL-headers-typo"),
        pytest.param("tokenService.bod.resource", "urn:x", "tokenService.body.resource", id="body-prefix-typo"),
        pytest.param("clientsecrets", SECRET, "clientSecret", id="secret-key-typo"),
        pytest.param("serviceBindng", "my-cpi", "serviceBinding", id="library-key-typo"),
    ],
)
def test_near_miss_key_is_refused(key: str, value: Any, meant: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        destinations_from_env(environ({**BASE, key: value}), Bindings())
    message = str(info.value)
    assert f"destinations[0] ('S4') in the destinations environment variable: unknown key '{key}'" in message
    assert f"did you mean '{meant}'?" in message
    assert SECRET not in message


def test_typo_in_default_env_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "default-env.json").write_text(
        json.dumps({"destinations": [{"name": "S4", "url": "https://s4.example.com", "Authentification": "OAuth2JWTBearer"}]})
    )
    with pytest.raises(ConfigurationError, match=r"default-env\.json .*unknown key 'Authentification'; did you mean 'Authentication'\?"):
        destinations_from_env({}, Bindings(), cwd=tmp_path)


def test_typo_of_the_name_key_names_the_index() -> None:
    with pytest.raises(ConfigurationError, match=r"^destinations\[0\] in the .*unknown key 'nmae'; did you mean 'name'\?"):
        destinations_from_env(environ({"nmae": "S4", "url": "https://s4.example.com"}), Bindings())


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"authentication": "OAuth2JWTBearer"}, id="case-variant-of-known-key"),
        pytest.param({"URL.headers.X-Anything": "1", "URL.queries.sap-language": "EN"}, id="url-prefixes"),
        pytest.param({"tokenService.body.resource": "urn:x", "tokenServiceURL.headers.X-zid": "z",
                      "tokenServiceURL.queries.a": "b"}, id="token-service-prefixes"),
        pytest.param({"Description": "d", "Type": "HTTP", "WebIDEUsage": "odata_gen", "sap-client": "100",
                      "HTML5.DynamicDestination": "true", "tokenServiceUser": "u", "tokenServicePassword": "p",
                      "TrustStoreLocation": "t.jks", "KeyStoreLocation": "k.p12", "x_user_token.jwks_uri": "https://j"},
                     id="cockpit-export-properties"),
        pytest.param({"setXForwardedHeaders": False, "strictSSL": True, "timeout": 3000}, id="approuter-keys"),
    ],
)
def test_known_keys_pass_without_warning(extra: dict[str, Any]) -> None:
    env = environ({**BASE, **extra})
    assert list(destinations_from_env(env, Bindings())) == ["S4"]
    assert unknown_keys(env) == []


def test_the_typo_would_otherwise_fail_open() -> None:
    """The regression itself: with the key spelt right, the destination needs the user."""
    right = destinations_from_env(environ({**BASE, "Authentication": "OAuth2JWTBearer"}), Bindings())["S4"]
    assert right.needs_user is True
    with pytest.raises(ConfigurationError):
        destinations_from_env(environ({**BASE, "Authentification": "OAuth2JWTBearer"}), Bindings())


def test_other_unknown_keys_are_warnings() -> None:
    env = environ(
        {**BASE, "myTeamOwner": "ops", "costCenter": "4711"},
        {"name": "Plain", "url": "https://plain.example.com"},
        {"name": "X", "url": "https://x.example.com", "zz": 1},
    )
    assert set(destinations_from_env(env, Bindings())) == {"S4", "Plain", "X"}
    assert unknown_keys(env) == [
        "destinations[0] ('S4') in the destinations environment variable: unknown keys 'myTeamOwner', 'costCenter' (ignored)",
        "destinations[2] ('X') in the destinations environment variable: unknown key 'zz' (ignored)",
    ]


def test_unknown_keys_without_destinations(tmp_path: Path) -> None:
    assert unknown_keys({}, cwd=tmp_path) == []


@pytest.mark.parametrize(
    "keys, typos, unknown",
    [
        pytest.param(["tokenService.foo"], (), ("tokenService.foo",), id="unknown-under-no-prefix-is-no-typo"),
        pytest.param(["usr"], (), ("usr",), id="short-keys-are-never-typos"),
        pytest.param(["tokenServiceUser", "tokenServiceURL"], (), (), id="close-known-keys-are-both-known"),
        pytest.param(["scopes"], (("scopes", "scope"),), (), id="plural"),
        pytest.param(["Uesr", "nmae"], (("Uesr", "User"), ("nmae", "name")), (), id="swapped-letters"),
    ],
)
def test_check_keys(keys: list[str], typos: tuple[tuple[str, str], ...], unknown: tuple[str, ...]) -> None:
    result = check_keys(keys)
    assert (result.typos, result.unknown) == (typos, unknown)
