"""The README's demo runs green end to end (real TLS, real token exchange, real Flask app),
and the token server stand-in it relies on answers OAuth errors like XSUAA does."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from standins import GRANT_JWT_BEARER, StandIns  # noqa: E402


def test_demo_runs_green() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True, text=True, timeout=120, cwd=str(EXAMPLES.parent.parent),
    )
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed\n--- stdout\n{out}\n--- stderr\n{proc.stderr}"
    assert "FAIL" not in out
    # (b) the forum failure: the hand-wired call reaches the backend as a technical user
    assert "backend   401 technical user sb-s4-dest!t1" in out
    assert "No user token (JWT) has been provided. This is strictly necessary for 'PrincipalPropagation'" in out
    # (c)/(d) propagation: the backend sees the calling user, once per user exchanged
    assert "backend   200 saw alice@example.com" in out
    assert "backend   200 saw bob@example.com" in out
    assert "jwt-bearer [client sb-s4-dest!t1, user alice@example.com] 200 -> backend 200, saw alice@example.com" in out
    assert "alice@example.com -> cached token (no exchange) -> backend 200, saw alice@example.com" in out
    assert "jwt-bearer exchanges so far: alice@example.com=1 bob@example.com=1" in out
    assert "demo OK: 4 of 4 steps passed" in out
    # tokens appear as fingerprints only
    assert "eyJ" not in out + proc.stderr


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[StandIns, str, Any]]:
    with StandIns() as standins:
        secret = standins.token_server.register_client("sb-client!t1", "s3cret")
        standins.token_server.register_client("sb-app!t1", xsappname="app!t1")
        session = requests.Session()
        session.trust_env = False
        session.verify = str(standins.pki.ca_file)
        yield standins, secret, session


def _basic(client: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client}:{secret}".encode()).decode()


@pytest.mark.parametrize(
    ("form", "authorization", "status", "error"),
    [
        pytest.param({"grant_type": "client_credentials"}, None, 401, "invalid_client", id="no-client-auth"),
        pytest.param({"grant_type": "client_credentials", "client_id": "sb-client!t1", "client_secret": "nope"},
                     None, 401, "invalid_client", id="wrong-secret-form"),
        pytest.param({"grant_type": "client_credentials"}, _basic("unknown", "s3cret"), 401, "invalid_client",
                     id="unknown-client-basic"),
        pytest.param({"grant_type": "password", "username": "u", "password": "p"}, _basic("sb-client!t1", "s3cret"),
                     400, "unsupported_grant_type", id="password-grant"),
        pytest.param({}, _basic("sb-client!t1", "s3cret"), 400, "invalid_request", id="no-grant"),
        pytest.param({"grant_type": GRANT_JWT_BEARER, "assertion": "a.b.c"}, _basic("sb-client!t1", "s3cret"),
                     400, "invalid_grant", id="garbage-assertion"),
    ],
)
def test_token_server_errors(idp: tuple[StandIns, str, Any], form: dict[str, str], authorization: str | None,
                             status: int, error: str) -> None:
    standins, _, session = idp
    headers = {"Authorization": authorization} if authorization else {}
    r = session.post(standins.token_server.token_url, data=form, headers=headers, timeout=10)
    assert (r.status_code, r.json()["error"]) == (status, error)
    assert "access_token" not in r.json()


def test_token_server_refuses_expired_and_technical_assertions(idp: tuple[StandIns, str, Any]) -> None:
    standins, secret, session = idp
    ts = standins.token_server
    auth = ("sb-client!t1", secret)
    expired = ts.login("alice@example.com", "sb-app!t1", ttl=-10)
    r = session.post(ts.token_url, data={"grant_type": GRANT_JWT_BEARER, "assertion": expired}, auth=auth, timeout=10)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")
    technical = session.post(ts.token_url, data={"grant_type": "client_credentials"}, auth=auth, timeout=10)
    assert technical.status_code == 200
    r = session.post(ts.token_url, data={"grant_type": GRANT_JWT_BEARER,
                                         "assertion": technical.json()["access_token"]}, auth=auth, timeout=10)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")


def test_jwt_bearer_keeps_the_user_and_backend_sees_it(idp: tuple[StandIns, str, Any]) -> None:
    standins, secret, session = idp
    ts = standins.token_server
    user_jwt = ts.login("carol@example.com", "sb-app!t1")
    r = session.post(ts.token_url, data={"grant_type": GRANT_JWT_BEARER, "assertion": user_jwt,
                                         "client_id": "sb-client!t1", "client_secret": secret}, timeout=10)
    assert r.status_code == 200
    claims = ts.verify(r.json()["access_token"])
    assert (claims["user_name"], claims["cid"], claims["zid"]) == ("carol@example.com", "sb-client!t1", ts.zid)
    odata = session.get(standins.backend.url + "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation",
                        headers={"Authorization": f"Bearer {r.json()['access_token']}"}, timeout=10)
    assert (odata.status_code, odata.json()["seenBy"]) == (200, "carol@example.com")
