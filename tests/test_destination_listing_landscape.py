"""``propagation.destinations()`` and ``doctor --service`` against the emulations (issue 20
item 4): the pytest landscape and a running sandbox serve the Destination service's list APIs
(``/destination-configuration/v1/instanceDestinations`` and ``/subaccountDestinations``), so
the listing works there as it does on BTP — and says which tenant and level each came from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import propagation
from propagation.testing import Landscape

ROOT = Path(__file__).resolve().parents[1]
LISTS = ["/destination-configuration/v1/instanceDestinations", "/destination-configuration/v1/subaccountDestinations"]


def _service_rows(listed: list) -> list[tuple[str, str | None, str | None, str, bool]]:
    return [(d.name, d.level, d.tenant, d.authentication, d.needs_user) for d in listed if d.kind == "service"]


@pytest.mark.btp_landscape("S4 OnPremise PrincipalPropagation", "CC OAuth2ClientCredentials",
                           "LOCAL NoAuthentication source=env", "INST NoAuthentication level=instance")
def test_destinations_lists_the_emulated_service(btp_landscape: Landscape) -> None:
    listed = propagation.destinations()
    zone = btp_landscape.provider.zid
    assert _service_rows(listed) == [
        ("INST", "instance", zone, "NoAuthentication", False),
        ("CC", "subaccount", zone, "OAuth2ClientCredentials", False),
        ("S4", "subaccount", zone, "PrincipalPropagation", True),
    ]
    assert "LOCAL" in {d.name for d in listed if d.kind == "environment"}
    assert [(c.path, c.status, c.tenant) for c in btp_landscape.calls] == [
        (LISTS[0], 200, "provider"), (LISTS[1], 200, "provider")]


@pytest.mark.btp_landscape("SHARED NoAuthentication /provider tenant=provider",
                           "SHARED NoAuthentication /acme tenant=acme", "ONLYPROVIDER NoAuthentication tenant=provider",
                           tenants=("provider", "acme"))
def test_a_subscribers_listing_asks_its_tenant_first(btp_landscape: Landscape) -> None:
    user = btp_landscape.user_token("alice", tenant="acme")
    rows = _service_rows(propagation.destinations(user_token=user))
    acme, provider = btp_landscape.tenants["acme"].zid, btp_landscape.provider.zid
    assert rows == [("SHARED", "subaccount", acme, "NoAuthentication", False),
                    ("ONLYPROVIDER", "subaccount", provider, "NoAuthentication", False)]
    assert [(c.path, c.tenant) for c in btp_landscape.calls] == [
        (LISTS[0], "acme"), (LISTS[1], "acme"), (LISTS[0], "provider"), (LISTS[1], "provider")]


def test_doctor_service_against_a_running_sandbox() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("PROPAGATION_SANDBOX", None)
    proc = subprocess.run(
        [sys.executable, "-m", "propagation.sandbox", "exec", "--", sys.executable, "-m", "propagation", "doctor",
         "--service"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Destination service destinations (3):" in proc.stdout
    for name, authentication in (("S4", "PrincipalPropagation"), ("S4_CLOUD", "OAuth2JWTBearer"),
                                 ("S4_TECHNICAL", "OAuth2ClientCredentials")):
        assert f"  {name}  level=subaccount" in proc.stdout
        assert f"Authentication={authentication}" in proc.stdout
    assert "No problems found." in proc.stdout
    assert "NotFound" not in proc.stdout + proc.stderr and "eyJ" not in proc.stdout + proc.stderr
