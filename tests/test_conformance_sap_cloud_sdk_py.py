"""SAP's ``sap-cloud-sdk`` for Python against our emulation: its ``DestinationClient`` uses
the Destination service's v2 consume API (``get_destination``: user token, level, fragment,
``$skipTokenRetrieval``) and its ``DestinationHttpClient`` calls the target with the
``authTokens`` — on the Internet destinations it supports (OAuth2JWTBearer, a technical
OAuth2ClientCredentials one), for XSUAA and IAS users of the provider tenant.

The SDK pulls in a large dependency tree (OpenTelemetry, gRPC, ...), so it lives in its own
virtual environment in the cache folder (``~/.cache/propagation/conformance`` or
``$PROPAGATION_CONFORMANCE_CACHE``), made with ``pip`` on first use (about 40 s) and reused.
Subscriber tenants are not covered: the SDK builds a subscriber's token URL from its
subdomain (``https://acme.localhost:P``), which does not resolve on hosts without
``*.localhost`` resolution (see the README's sandbox section).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from propagation.sandbox import Sandbox
from propagation.testing import Landscape

SDK = "sap-cloud-sdk==0.62.0"
CACHE_ENV = "PROPAGATION_CONFORMANCE_CACHE"
SCRIPT = Path(__file__).resolve().parent / "conformance" / "sap_cloud_sdk_py.py"


def _venv_python() -> str:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "propagation" / "conformance")
    venv = root / SDK.replace("==", "-")
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('sap-cloud-sdk'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip() == SDK.split("==")[1]:
        return str(python)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SDK]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            pytest.fail(f"installing {SDK} into {venv} failed ({' '.join(step[-2:])}):\n{result.stderr[-2000:]}",
                        pytrace=False)
    return str(python)


@pytest.fixture(scope="module")
def sdk_python() -> str:
    return _venv_python()


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        assert isinstance(sandbox.landscape, Landscape)
        sandbox.landscape.fragment("prod sap-client=200")
        yield sandbox


def _run(box: Sandbox, python: str, case: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HTTP_PROXY", "HTTPS_PROXY")}
    env.update(box.environ())
    result = subprocess.run([python, str(SCRIPT)], input=json.dumps(case), env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    token = case.get("user_token")
    assert not token or token not in result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["xsuaa", "ias"])
def test_jwt_bearer_destination_reaches_the_backend_as_the_user(box: Sandbox, land: Landscape, sdk_python: str,
                                                               kind: str) -> None:
    answer = _run(box, sdk_python, {"destination": "S4_CLOUD", "user_token": land.user_token("alice", kind=kind),
                                    "call": True})
    assert answer == {"found": True, "authentication": "OAuth2JWTBearer", "url": land.origins.backend,
                      "fragment_name": None, "auth_tokens": 1, "status": 200, "seenBy": "alice"}
    [lookup] = land.calls.where(service="destination")
    assert (lookup.path, lookup.user, lookup.status) == ("/destination-configuration/v2/destinations/S4_CLOUD", "alice", 200)
    client = land.destinations["S4_CLOUD"].properties["clientId"]
    assert [(e.grant, e.client, e.user, e.subject) for e in land.exchanges.where(via="destination-service")] == [
        ("jwt-bearer", client, "alice", kind)]
    [backend] = land.calls.where(service="backend")
    assert (backend.user, backend.client) == ("alice", client)


def test_technical_destination_is_refused_by_the_backend(box: Sandbox, land: Landscape, sdk_python: str) -> None:
    answer = _run(box, sdk_python, {"destination": "S4_TECHNICAL", "call": True})
    assert (answer["authentication"], answer["status"], answer["seenBy"]) == ("OAuth2ClientCredentials", 401, None)
    assert land.exchanges.where(via="destination-service").values("grant") == ["client_credentials"]
    assert land.calls.where(service="backend").values("error") == ["technical user"]


@pytest.mark.parametrize("case, expected, path_suffix, flows", [
    pytest.param({"destination": "S4_TECHNICAL", "level": "provider_subaccount"},
                 {"found": True, "auth_tokens": 1}, "S4_TECHNICAL@provider_subaccount", 1, id="level"),
    pytest.param({"destination": "S4_CLOUD", "skip_token_retrieval": True},
                 {"found": True, "auth_tokens": 0}, "S4_CLOUD", 0, id="skip-token-retrieval"),
    pytest.param({"destination": "S4_TECHNICAL", "fragment": "prod"},
                 {"found": True, "fragment_name": "prod"}, "S4_TECHNICAL", 1, id="fragment"),
    pytest.param({"destination": "S4_TECHNICAL", "fragment": "nope", "fragment_optional": True},
                 {"found": True, "fragment_name": None}, "S4_TECHNICAL", 1, id="fragment-optional-missing"),
    pytest.param({"destination": "S4_TECHNICAL", "fragment": "nope"}, {"found": False}, "S4_TECHNICAL", 0,
                 id="fragment-missing"),
    pytest.param({"destination": "NOPE"}, {"found": False}, "NOPE", 0, id="unknown"),
])
def test_v2_options(box: Sandbox, land: Landscape, sdk_python: str, case: dict[str, Any], expected: dict[str, Any],
                    path_suffix: str, flows: int) -> None:
    answer = _run(box, sdk_python, case)
    assert {k: answer.get(k) for k in expected} == expected
    [lookup] = land.calls.where(service="destination")
    assert lookup.path == f"/destination-configuration/v2/destinations/{path_suffix}"
    assert len(land.exchanges.where(via="destination-service")) == flows
