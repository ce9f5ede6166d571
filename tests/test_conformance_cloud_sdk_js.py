"""SAP's own client against our emulation: the SAP Cloud SDK for JavaScript
(``@sap-cloud-sdk/connectivity`` + ``@sap-cloud-sdk/http-client``, pinned below) calls the
sandbox's destinations with ``executeHttpRequest`` — on-premise PrincipalPropagation,
OAuth2JWTBearer and a technical one — for XSUAA and IAS users, provider and subscriber
tenants, and tenant selection by issuer URL on the labelled hosts (``<tenant>.localhost``,
resolved for Node by ``conformance/localhost_resolver.js`` where the OS does not). The
landscape's records say what the backend saw and which grants ran; when the SDK and the
emulation disagree, the emulation is what gets fixed (or the SDK's limit is documented here,
citing its source).

Needs ``node`` and ``npm`` (both on the CI machine). The packages are installed once with
``npm install`` into a cache folder (``~/.cache/propagation/conformance`` or
``$PROPAGATION_CONFORMANCE_CACHE``) and reused. Without node/npm the module FAILS, naming
what is missing, unless ``PROPAGATION_SKIP_JS_CONFORMANCE=1`` says to skip it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from propagation.sandbox import Sandbox
from propagation.testing import Landscape

SDK_VERSION = "4.9.1"
PACKAGES = {"@sap-cloud-sdk/connectivity": SDK_VERSION, "@sap-cloud-sdk/http-client": SDK_VERSION}
SKIP_ENV = "PROPAGATION_SKIP_JS_CONFORMANCE"
CACHE_ENV = "PROPAGATION_CONFORMANCE_CACHE"
SCRIPT = Path(__file__).resolve().parent / "conformance" / "cloud_sdk_js.js"
#: ``node -r``: resolves ``*.localhost`` to loopback where the OS does not (the labelled-host sandbox).
RESOLVER = Path(__file__).resolve().parent / "conformance" / "localhost_resolver.js"
FL_PATH = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation"


def _installed(folder: Path) -> bool:
    for name, version in PACKAGES.items():
        manifest = folder / "node_modules" / name / "package.json"
        try:
            if json.loads(manifest.read_text())["version"] != version:
                return False
        except (OSError, ValueError, KeyError):
            return False
    return True


@pytest.fixture(scope="module")
def node_path() -> str:
    return _node_modules()


def _node_modules() -> str:
    """The cached ``node_modules`` with the pinned SDK (installed on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if not p)
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"{missing} not installed and {SKIP_ENV}=1")
        pytest.fail(f"{missing} not found: the Cloud SDK conformance tests need Node.js and npm "
                    f"(or set {SKIP_ENV}=1 to skip them explicitly)", pytrace=False)
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "propagation" / "conformance")
    folder = root / f"cloud-sdk-js-{SDK_VERSION}"
    if not _installed(folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text(json.dumps(
            {"name": "propagation-conformance", "private": True, "dependencies": PACKAGES}, indent=2))
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                                cwd=folder, capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0 or not _installed(folder):
            pytest.fail(f"npm install of {PACKAGES} into {folder} failed:\n{result.stderr[-2000:]}", pytrace=False)
    return str(folder / "node_modules")


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox(tenants=("provider", "acme"), hosts="plain") as sandbox:  # subscribers by X-zid
        yield sandbox


def _call(box: Sandbox, node_path: str, destination: str, jwt: str = "", *, iss: str = "") -> dict[str, Any]:
    env = {**os.environ, **box.environ(), "NODE_EXTRA_CA_CERTS": str(box.ca_file), "NODE_PATH": node_path,
           "CONFORMANCE_JWT": jwt, "CONFORMANCE_ISS": iss}
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(key, None)  # loopback only
    preload = ["-r", str(RESOLVER)] if box.labelled else []
    result = subprocess.run(["node", *preload, str(SCRIPT), destination, FL_PATH], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not jwt or jwt not in result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


CASES = [
    pytest.param(kind, tenant, destination, id=f"{kind}-{tenant}-{destination}")
    for kind in ("xsuaa", "ias")
    for tenant in ("provider", "acme")
    for destination in ("S4", "S4_CLOUD", "S4_TECHNICAL")
]


@pytest.mark.parametrize("kind, tenant, destination", CASES)
def test_cloud_sdk_js_calls_reach_the_backend_as_the_user(box: Sandbox, land: Landscape, node_path: str, kind: str,
                                                          tenant: str, destination: str) -> None:
    token = land.user_token("alice", kind=kind, tenant=tenant)
    answer = _call(box, node_path, destination, token)

    # Every token request the SDK made was granted: the SDK and the emulation agree.
    assert [e for e in land.exchanges if not e.ok] == []
    # The Destination service: the SDK's first lookup asks for the type only (no token flow).
    lookups = land.calls.where(service="destination")
    assert lookups[0].query == {"$skipTokenRetrieval": "true"} and lookups[0].tenant == tenant
    # Its service token is the user's tenant's (X-zid at the uaadomain host for a subscriber or an IAS user).
    service_tokens = land.exchanges.where(client=land.destination_client, via="app")
    assert tenant in service_tokens.values("tenant")
    uaadomain_url = f"https://{land.origins.uaadomain}/oauth/token"
    if tenant != "provider":
        assert uaadomain_url in service_tokens.where(tenant=tenant).values("url")

    if destination == "S4":  # OnPremise PrincipalPropagation through the Connectivity proxy
        assert (answer["status"], answer["seenBy"], answer["service"]) == (200, "alice", "onprem")
        [onprem] = land.calls.where(service="onprem")
        assert (onprem.user, onprem.location, onprem.tenant, onprem.via_proxy) == ("alice", "LOC1", tenant, True)
        # The SDK's choice (4.9.1): a client_credentials proxy token of the user's tenant plus the user
        # in SAP-Connectivity-Authentication (the backward-compatible mode of DESIGN §5).
        assert onprem.carried_by == "connectivity-header"
        proxy_grants = land.exchanges.where(client=land.connectivity_client)
        assert set(proxy_grants.values("grant")) == {"client_credentials"} and set(proxy_grants.values("tenant")) == {tenant}
    elif destination == "S4_CLOUD":  # OAuth2JWTBearer: the Destination service exchanges the user's token
        assert (answer["status"], answer["seenBy"], answer["tenant"]) == (200, "alice", tenant)
        client = land.destinations["S4_CLOUD"].properties["clientId"]
        flows = land.exchanges.where(via="destination-service")
        assert [(e.grant, e.client, e.user, e.tenant) for e in flows] == [("jwt-bearer", client, "alice", tenant)]
        [backend] = land.calls.where(service="backend")
        assert (backend.user, backend.client, backend.carried_by) == ("alice", client, "bearer")
    else:  # S4_TECHNICAL: a technical user; the principal-propagation backend refuses it
        assert (answer["status"], answer["message"]) == (401, land_no_user_message())
        client = land.destinations["S4_TECHNICAL"].properties["clientId"]
        flows = land.exchanges.where(via="destination-service")
        assert [(e.grant, e.client, e.user) for e in flows] == [("client_credentials", client, None)]
        [backend] = land.calls.where(service="backend")
        assert (backend.user, backend.status, backend.error) == (None, 401, "technical user")


@pytest.fixture(scope="module")
def labelled() -> Iterator[Sandbox]:
    with Sandbox(tenants=("provider", "acme"), hosts="labelled") as sandbox:
        yield sandbox


@pytest.mark.parametrize("tenant", ["provider", "acme"])
def test_tenant_by_issuer_url_on_labelled_hosts(labelled: Sandbox, node_path: str, tenant: str) -> None:
    """``executeHttpRequest({destinationName, iss})``: the SDK takes the tenant from the first
    label of the issuer's host and asks that tenant's host for tokens — the sandbox's
    ``https://<tenant>.localhost:P`` hosts serve it (deviation 6)."""
    land = labelled.landscape
    assert isinstance(land, Landscape)
    land.reset()
    answer = _call(labelled, node_path, "S4_TECHNICAL", iss=land.tenant_url(tenant))
    assert (answer["status"], answer["message"]) == (401, land_no_user_message())  # technical: refused, as it should be
    service_tokens = land.exchanges.where(client=land.destination_client)
    assert (tenant, f"{land.tenant_url(tenant)}/oauth/token") in zip(service_tokens.values("tenant"),
                                                                      service_tokens.values("url"))
    [lookup] = land.calls.where(service="destination", query={})
    assert lookup.tenant == tenant
    assert land.exchanges.where(via="destination-service").values("tenant") == [tenant]
    assert land.calls.where(service="backend").values("tenant") == [tenant]


def test_tenant_by_issuer_url_needs_a_labelled_host(box: Sandbox, node_path: str) -> None:
    """Why the sandbox offers labelled hosts: SDK 4.9.1 refuses an issuer host without a dot
    (``dist/scp-cf/subdomain-replacer.js``, ``getHost``: "Failed to determine hostname: invalid
    host"), so ``iss``-based tenant selection cannot work with ``https://localhost:P``. A JWT
    works on both (the SDK reads ``ext_attr.zdn``), as the cases above show."""
    assert not box.labelled
    answer = _call(box, node_path, "S4_TECHNICAL", iss=box.origins["xsuaa"])
    assert answer["status"] is None and "Failed to determine hostname: invalid host" in (answer["cause"] or "")


def land_no_user_message() -> str:
    from propagation.testing.landscape import NO_USER_TOKEN_MESSAGE

    return NO_USER_TOKEN_MESSAGE


@pytest.mark.parametrize("skip, outcome", [pytest.param("", pytest.fail.Exception, id="missing-node-fails"),
                                           pytest.param("1", pytest.skip.Exception, id="explicit-skip")])
def test_missing_node_is_never_a_silent_pass(monkeypatch: pytest.MonkeyPatch, skip: str, outcome: type) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv(SKIP_ENV, skip)
    with pytest.raises(outcome, match="node and npm"):
        _node_modules()
