"""Listing the destinations of the environment variable and of service bindings: names,
source, type, needs-user, origin; never a secret."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from propagation.bindings import Binding, Bindings
from propagation.destinations.listing import DestinationInfo, list_destinations
from propagation.errors import ConfigurationError

SECRET = "s3cr3t-VALUE"
PASSWORD = "pa55-VALUE"
CPI = Binding(name="my-cpi", label="it-rt", source="VCAP_SERVICES", credentials={"oauth": {
    "url": "https://cpi.example.com/http/orders?token=QUERY-SECRET", "tokenurl": "https://cpi.example.com/oauth/token",
    "clientid": "cpi", "clientsecret": SECRET}})
XSUAA = Binding(name="my-xsuaa", label="xsuaa", source="VCAP_SERVICES", credentials={
    "clientid": "sb", "clientsecret": SECRET, "url": "https://sub.authentication.eu10.hana.ondemand.com",
    "uaadomain": "authentication.eu10.hana.ondemand.com"})
SHADOWED = Binding(name="S4", label="it-rt", source="VCAP_SERVICES", credentials={"oauth": {
    "url": "https://other.example.com", "tokenurl": "https://other.example.com/oauth/token", "clientid": "o", "clientsecret": SECRET}})
ENV_SOURCE = "destinations environment variable"


def test_environment_then_bindings() -> None:
    entries = [
        {"name": "S4", "url": "https://user:pw@s4.example.com:8443/sap/opu?x=1", "Authentication": "BasicAuthentication",
         "User": "u", "Password": PASSWORD},
        {"name": "Graph", "url": "https://graph.example.com", "forwardAuthToken": True},
        {"name": "Onprem", "url": "http://s4-virtual:44300", "Authentication": "PrincipalPropagation", "ProxyType": "OnPremise"},
    ]
    listed = list_destinations({"destinations": json.dumps(entries)}, Bindings([SHADOWED, CPI, XSUAA], ["VCAP_SERVICES"]))
    assert listed == [
        DestinationInfo("S4", ENV_SOURCE, "environment", "BasicAuthentication", False, "Internet", "https://s4.example.com:8443"),
        DestinationInfo("Graph", ENV_SOURCE, "environment", "NoAuthentication", True, "Internet", "https://graph.example.com"),
        DestinationInfo("Onprem", ENV_SOURCE, "environment", "PrincipalPropagation", True, "OnPremise", "http://s4-virtual:44300"),
        DestinationInfo("my-cpi", "service binding 'my-cpi' (VCAP_SERVICES)", "binding", "OAuth2JWTBearer", True, "Internet",
                        "https://cpi.example.com"),
    ]
    text = repr(listed) + json.dumps([dataclasses.asdict(i) for i in listed])
    for secret in (SECRET, PASSWORD, "QUERY-SECRET", "user:pw"):
        assert secret not in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        listed[0].name = "x"  # type: ignore[misc]


def test_first_binding_of_a_name_wins() -> None:
    duplicate = Binding(name="my-cpi", label="it-rt", source="SERVICE_BINDING_ROOT (/b/my-cpi)", credentials=CPI.credentials)
    listed = list_destinations({}, Bindings([CPI, duplicate]), cwd=None)
    assert [(i.name, i.source) for i in listed] == [("my-cpi", "service binding 'my-cpi' (VCAP_SERVICES)")]


def test_default_env_json(tmp_path: Path) -> None:
    (tmp_path / "default-env.json").write_text(json.dumps({"destinations": [{"name": "Local", "url": "http://localhost:4004"}]}))
    listed = list_destinations({}, Bindings(), tmp_path)
    assert [(i.name, i.kind, i.origin) for i in listed] == [("Local", "environment", "http://localhost:4004")]
    assert listed[0].source == f"default-env.json ({tmp_path / 'default-env.json'})"


def test_nothing_defined(tmp_path: Path) -> None:
    assert list_destinations({}, Bindings([XSUAA]), tmp_path) == []


def test_malformed_variable_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown key 'Authentification'; did you mean 'Authentication'"):
        list_destinations({"destinations": json.dumps([{"name": "A", "url": "https://a", "Authentification": "x"}])}, Bindings())
