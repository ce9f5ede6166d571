"""Every example in ``examples/`` against the sandbox, end to end, as real processes.

One sandbox per module (real TLS servers on loopback, a real Connectivity proxy) and each
example app as a real child process on its own loopback port, with the environment
``python -m propagation.sandbox exec`` gives it. Users log in at the sandbox's XSUAA or IAS
(password grant, as ``python -m propagation.sandbox token`` does); each test calls the app
over HTTP and asserts, from the landscape's records, what the backend, the on-premise
system or the iFlow saw — the principal — and one failure each. The last test runs each
example's documented command (``exec -- python examples/<name>/app.py``) and the ``token``
CLI exactly as the READMEs say.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from propagation.sandbox import STATE_ENV, Sandbox
from propagation.sandbox.client import ias_login, password_login
from propagation.sandbox.demo import AppProcess
from propagation.sandbox.ports import free_port
from propagation.testing.landscape import NO_USER_TOKEN_MESSAGE, PUBLIC_CLIENT_ID

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ROWS = ["1010-PLT-01", "1010-PLT-01-PMP", "1010-PLT-01-CMP"]

#: Per example: extra environment of the app (what its README's sandbox section sets).
APPS: dict[str, dict[str, str]] = {
    "flask_odata": {},
    "flask_forum": {"S4_DESTINATION": "S4_CLOUD"},  # the Internet jwt-bearer destination (the default S4 is on premise)
    "ias_iflow": {},
    "pkce_public_client": {},
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as box:
        yield box


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False  # the apps are plain HTTP on loopback
    yield s
    s.close()


@pytest.fixture(scope="module")
def apps(sandbox: Sandbox, http: requests.Session, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, AppProcess]]:
    """Every example app started at once (they start in parallel), stopped at the end."""
    with ExitStack() as stack:
        started: dict[str, AppProcess] = {}
        for name, extra in APPS.items():
            env = {**os.environ, **sandbox.environ(), **extra}
            started[name] = stack.enter_context(AppProcess(EXAMPLES / name / "app.py", env, tmp_path_factory.mktemp(name)))
        for name, app in started.items():
            try:
                app.wait_healthy(http, 30)
            except RuntimeError as exc:
                pytest.fail(f"{name}: {exc}\n{app.log_tail()}")
        yield started
    for name, app in started.items():  # no token in any app log
        assert "eyJ" not in app.log_file.read_text(errors="replace"), name


class Seen:
    """What one call caused in the landscape (records are appended in order)."""

    def __init__(self, landscape: Any, response: requests.Response, marks: tuple[int, int, int]) -> None:
        self.response = response
        self.exchanges = list(landscape.exchanges[marks[0]:])
        self.calls = list(landscape.calls[marks[1]:])
        self.traffic = list(landscape.traffic[marks[2]:])

    def at(self, *services: str) -> list[tuple[str, str, str | None, int]]:
        """(method, path, user, status) of each call the given services recorded."""
        return [(c.method, c.path, c.user, c.status) for c in self.calls if c.service in services]

    def grants(self) -> list[tuple[str, str | None, str | None, str | None, int]]:
        """(service, grant, client, user, status) of each token request."""
        return [(e.service, e.grant, e.client, e.user, e.status) for e in self.exchanges]

    @property
    def nothing_sent(self) -> bool:
        return not self.exchanges and not self.calls and not self.traffic


@pytest.fixture()
def call(sandbox: Sandbox, apps: dict[str, AppProcess], http: requests.Session) -> Callable[..., Seen]:
    def run(app: str, method: str, path: str, token: str | None = None, **kwargs: Any) -> Seen:
        ls: Any = sandbox.landscape
        marks = len(ls.exchanges), len(ls.calls), len(ls.traffic)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = http.request(method, apps[app].url + path, headers=headers, timeout=30, **kwargs)
        assert "eyJ" not in r.text  # no answer carries a token
        return Seen(ls, r, marks)

    return run


@pytest.fixture(scope="module")
def env(sandbox: Sandbox) -> dict[str, str]:
    return sandbox.environ()


# --------------------------------------------------------------------------- flask_odata
def test_flask_odata_on_premise_system_sees_each_user(call: Callable[..., Seen], env: dict[str, str],
                                                      sandbox: Sandbox) -> None:
    ls: Any = sandbox.landscape
    for user in ("alice", "bob"):
        seen = call("flask_odata", "GET", "/functional-locations?$top=2", password_login(env, user))
        assert seen.response.status_code == 200, seen.response.text
        assert [row["FunctionalLocation"] for row in seen.response.json()] == ROWS[:2]
        assert seen.response.headers["X-Backend-User"] == user  # what the on-premise system saw, shown to the caller
        assert seen.at("onprem") == [("GET", "/sap/opu/odata/sap/API_FUNCTIONALLOCATION_SRV/A_FunctionalLocation", user, 200)]
        assert [(c.via_proxy, c.location, c.carried_by) for c in seen.calls if c.service == "onprem"] == [(True, "LOC1", "proxy-token")]
        assert ("xsuaa", "jwt-bearer", ls.connectivity_client, user, 200) in seen.grants()


def test_flask_odata_without_a_token_sends_nothing(call: Callable[..., Seen]) -> None:
    seen = call("flask_odata", "GET", "/functional-locations")
    assert seen.response.status_code == 401 and seen.response.json()["error"] == "invalid_token"
    assert "X-Backend-User" not in seen.response.headers
    assert seen.nothing_sent


# --------------------------------------------------------------------------- flask_forum
def test_flask_forum_backend_sees_the_user_and_the_naive_call_loses_it(call: Callable[..., Seen], env: dict[str, str],
                                                                       sandbox: Sandbox) -> None:
    ls: Any = sandbox.landscape
    alice = password_login(env, "alice")
    seen = call("flask_forum", "GET", "/functional-locations", alice)
    assert seen.response.status_code == 200, seen.response.text
    body = seen.response.json()
    assert (body["seenBy"], body["service"], body["carriedBy"]) == ("alice", "backend", "bearer")
    assert [row["FunctionalLocation"] for row in body["d"]["results"]] == ROWS
    s4_cloud = ls.destinations["S4_CLOUD"].properties["clientId"]
    assert [(e.grant, e.client, e.user, e.via) for e in seen.exchanges if e.client == s4_cloud] == [
        ("jwt-bearer", s4_cloud, "alice", "destination-service")]
    assert seen.at("backend") == [("GET", "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation", "alice", 200)]

    naive = call("flask_forum", "GET", "/naive", alice)
    assert naive.response.status_code == 401 and naive.response.json()["error"]["message"] == NO_USER_TOKEN_MESSAGE
    technical = ls.destinations["S4_TECHNICAL"].properties["clientId"]
    assert [(e.grant, e.client, e.user) for e in naive.exchanges if e.via == "app"] == [("client_credentials", technical, None)]
    assert naive.at("backend") == [("GET", "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation", None, 401)]


def test_flask_forum_without_a_token_sends_nothing(call: Callable[..., Seen]) -> None:
    seen = call("flask_forum", "GET", "/functional-locations")
    assert seen.response.status_code == 401 and seen.nothing_sent


# --------------------------------------------------------------------------- ias_iflow
def test_ias_iflow_iflow_is_called_as_the_ias_user(call: Callable[..., Seen], env: dict[str, str],
                                                   sandbox: Sandbox) -> None:
    ls: Any = sandbox.landscape
    alice = ias_login(env, "alice")  # IAS password grant, app's IAS client: aud has the XSUAA trust client
    me = call("ias_iflow", "GET", "/me", alice).response.json()
    assert (me["user"]["kind"], me["xsuaa"]["user"], me["can_order"]) == ("ias", "alice", True)

    seen = call("ias_iflow", "POST", "/orders", alice, json={"customer": "C-100", "items": [{"material": "M-1"}]})
    assert seen.response.status_code == 201, seen.response.text
    answer = seen.response.json()
    assert (answer["seenBy"], answer["service"], answer["client"]) == ("alice", "iflow", ls.iflow_client)
    # IAS → XSUAA was done by /me (cached per token); the it-rt exchange uses the user's XSUAA token
    assert [(e.grant, e.client, e.user, e.subject) for e in seen.exchanges] == [
        ("jwt-bearer", ls.iflow_client, "alice", "xsuaa")]
    assert seen.at("iflow") == [("POST", "/http/orders", "alice", 201)]


def test_ias_iflow_token_without_the_trust_audience_is_refused_with_the_hint(call: Callable[..., Seen],
                                                                             sandbox: Sandbox) -> None:
    ls: Any = sandbox.landscape
    token = ls.user_token("alice", kind="ias", cross_consumption=False)  # binding without xsuaa-cross-consumption
    seen = call("ias_iflow", "POST", "/orders", token, json={"customer": "C-100"})
    assert seen.response.status_code == 401
    assert "xsuaa-cross-consumption" in seen.response.json()["error_description"]
    assert not seen.exchanges and not seen.calls  # neither XSUAA nor the iFlow was asked


def test_ias_iflow_without_the_scope_or_a_token_sends_nothing_to_the_iflow(call: Callable[..., Seen],
                                                                           env: dict[str, str]) -> None:
    bob = call("ias_iflow", "POST", "/orders", ias_login(env, "bob"), json={"customer": "C-100"})
    assert bob.response.status_code == 403 and bob.response.json()["error"] == "insufficient_scope"
    assert bob.at("iflow") == [] and [e.grant for e in bob.exchanges] == ["jwt-bearer"]  # only IAS → XSUAA
    anonymous = call("ias_iflow", "POST", "/orders", json={"customer": "C-100"})
    assert anonymous.response.status_code == 401 and anonymous.nothing_sent


# --------------------------------------------------------------------------- pkce_public_client
def test_pkce_public_token_is_exchanged_at_ias_first_then_the_backend_sees_the_user(
        call: Callable[..., Seen], env: dict[str, str], sandbox: Sandbox) -> None:
    ls: Any = sandbox.landscape
    public = ias_login(env, "alice", public_client=PUBLIC_CLIENT_ID)  # client_id only, no secret
    seen = call("pkce_public_client", "GET", "/orders?top=5", public)
    assert seen.response.status_code == 200, seen.response.text
    assert [(e.service, e.grant, e.client, e.user, e.subject) for e in seen.exchanges] == [
        ("ias", "jwt-bearer", ls.ias_client, "alice", "ias")]
    backend = [c for c in seen.calls if c.service == "backend"]
    assert [(c.path, c.user, c.client, c.carried_by, c.query) for c in backend] == [
        ("/api/orders", "alice", ls.ias_client, "bearer", {"top": "5"})]
    assert backend[0].token == seen.exchanges[0].issued  # the private token, not the public one
    me = call("pkce_public_client", "GET", "/me", public)
    assert (me.response.json()["public_client"], me.response.json()["client"]) == (PUBLIC_CLIENT_ID, ls.ias_client)
    assert me.exchanges == []  # exchanged once per public token


def test_pkce_without_a_token_sends_nothing(call: Callable[..., Seen]) -> None:
    seen = call("pkce_public_client", "GET", "/orders")
    assert seen.response.status_code == 401 and seen.nothing_sent


# --------------------------------------------------------------------------- the documented command
def _wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text(errors="replace"))
        if match:
            return match
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # polling a starting process
    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{path.read_text(errors='replace')}")


@pytest.mark.parametrize(
    ("example", "login", "method", "path", "body"),
    [
        pytest.param("flask_odata", [], "GET", "/functional-locations", None, id="flask_odata"),
        pytest.param("flask_forum", [], "GET", "/functional-locations", None, id="flask_forum"),
        pytest.param("ias_iflow", ["--ias"], "POST", "/orders", {"customer": "C-100"}, id="ias_iflow"),
        pytest.param("pkce_public_client", ["--public-client"], "GET", "/orders", None, id="pkce_public_client"),
    ],
)
def test_documented_command_runs_the_example(tmp_path: Path, http: requests.Session, example: str, login: list[str],
                                             method: str, path: str, body: Any) -> None:
    with documented_example(tmp_path, http, example) as (app, token):
        r = http.request(method, app + path, json=body, timeout=30, headers={"Authorization": f"Bearer {token(*login)}"})
        assert r.status_code in (200, 201), r.text
        answer = r.json()
        if example == "flask_odata":  # the API returns S/4HANA's rows only
            assert [row["FunctionalLocation"] for row in answer] == ROWS
        else:
            assert answer["seenBy"] == "alice"


@contextmanager
def documented_example(tmp_path: Path, http: requests.Session, example: str) -> Iterator[tuple[str, Callable[..., str]]]:
    """``python -m propagation.sandbox exec -- python examples/<example>/app.py``, the README's
    command, as a real process tree: yields the app's URL and ``token(*login_args)`` (alice's
    token from ``sandbox token``). On leaving, the tree is stopped through ``exec`` (SIGINT, so
    the app stops too, also after a failed assertion); then the sandbox's state folder is gone and
    no token was logged."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop(STATE_ENV, None)
    log = tmp_path / "exec.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "propagation.sandbox", "exec", "--", "python",
                                 f"examples/{example}/app.py"], cwd=str(ROOT), env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        folder = Path(_wait_for(log, rf"{STATE_ENV}=(\S+)", proc).group(1))
        app = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get(app + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)  # polling a starting process

        def token(*login: str) -> str:
            done = subprocess.run([sys.executable, "-m", "propagation.sandbox", "token", "alice", *login],
                                  capture_output=True, text=True, timeout=30, env={**env, STATE_ENV: str(folder)})
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        yield app, token
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:  # a failed assertion: still stop through exec, so the app stops too
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    assert not folder.exists()  # the sandbox cleaned up after the app stopped
    assert "eyJ" not in log.read_text(errors="replace")
