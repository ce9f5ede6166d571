"""The sandbox's transport (propagation/sandbox): real TLS servers on loopback, a real
Connectivity proxy, the CLI as a real process. The landscape model is faked in the
transport tests (the sandbox must not decide anything itself) and real in the CLI tests."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import jwt
import pytest
import requests

from propagation.sandbox import STATE_ENV, Sandbox
from propagation.sandbox.servers import SimpleReply, TUNNEL_HEADER


class FakeModel:
    """Echoes what reached it; the proxy check accepts only ``Bearer good``."""

    def __init__(self, origins: Mapping[str, Any]) -> None:
        self.origins = dict(origins)
        self.requests: list[Any] = []
        self.checked: list[Any] = []
        self.destinations: list[str] = []

    def handle(self, request: Any) -> SimpleReply:
        self.requests.append(request)
        if request.url.endswith("/boom"):
            raise RuntimeError("model bug")
        body = {
            "method": request.method, "url": request.url, "via_proxy": request.via_proxy,
            "body": request.body.decode(), "auth": request.headers.get("authorization"),
            "proxy_auth": request.headers.get("proxy-authorization"),
            "location": request.headers.get("sap-connectivity-scc-location_id"),
            "tunnel": request.headers.get(TUNNEL_HEADER),
        }
        return SimpleReply(201, {"Content-Type": "application/json", "X-Model": "yes"}, json.dumps(body).encode())

    def check_proxy(self, request: Any) -> SimpleReply | None:
        self.checked.append(request)
        if request.headers.get("Proxy-Authorization") == "Bearer good":
            return None
        return SimpleReply(407, {"Proxy-Authenticate": 'Bearer realm="connectivity"'}, b'{"error":"proxy"}')

    def environ(self) -> dict[str, str]:
        return {"VCAP_SERVICES": json.dumps({"xsuaa": []}), "destinations": "[]"}

    def default_env(self) -> dict[str, Any]:
        return {"VCAP_SERVICES": {"xsuaa": []}, "destinations": []}

    def destination(self, spec: str) -> None:
        self.destinations.append(spec)


def fake(origins: Mapping[str, Any]) -> tuple[FakeModel, Any]:
    from propagation.sandbox.servers import Incoming

    return FakeModel(origins), Incoming


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox(model=fake, destinations=["S4 OnPremise PrincipalPropagation"]) as sandbox:
        yield sandbox


@pytest.fixture()
def model(box: Sandbox) -> FakeModel:
    assert isinstance(box.landscape, FakeModel)
    box.landscape.requests.clear()
    box.landscape.checked.clear()
    return box.landscape


@pytest.fixture()
def http(box: Sandbox) -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(box.ca_file)
    yield s
    s.close()


def test_origins_follow_the_rules_sap_xssec_needs(box: Sandbox) -> None:
    o = box.origins
    xsuaa_port = int(o["xsuaa"].rsplit(":", 1)[1])
    ias_port = int(o["ias"].rsplit(":", 1)[1])
    assert o["xsuaa"] == f"https://localhost:{xsuaa_port}" and o["uaadomain"] == f"localhost:{xsuaa_port}"
    assert o["ias"] == f"https://127.0.0.1:{ias_port}" and o["ias_domain"] == f"0.0.1:{ias_port}"
    assert re.match(r"^https://[a-zA-Z0-9-]{1,63}\." + re.escape(o["ias_domain"]) + "$", o["ias"])
    assert o["proxy_host"] == "127.0.0.1" and o["onprem"] == "http://s4-virtual:44300"
    assert len({o[k] for k in ("xsuaa", "ias", "destination", "backend", "iflow")}) == 5
    assert box.landscape.destinations == ["S4 OnPremise PrincipalPropagation"]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["xsuaa", "ias", "destination", "backend", "iflow"])
def test_each_origin_hands_the_request_to_the_model(box: Sandbox, model: FakeModel, http: requests.Session,
                                                    name: str) -> None:
    url = box.origins[name] + "/some/path?x=1"
    r = http.post(url, data={"grant_type": "password"}, headers={"Authorization": "Bearer abc"}, timeout=10)
    assert (r.status_code, r.headers["X-Model"]) == (201, "yes")
    seen = r.json()
    assert seen == {"method": "POST", "url": url, "via_proxy": False, "body": "grant_type=password",
                    "auth": "Bearer abc", "proxy_auth": None, "location": None, "tunnel": None}


def test_tls_is_verified_against_the_sandbox_ca_only(box: Sandbox) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(box.origins["xsuaa"] + "/token_keys", timeout=10, verify=True)  # system CAs only
    ctx = ssl.create_default_context(cafile=str(box.ca_file))
    port = int(box.origins["ias"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:  # IP SAN for the IAS issuer
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_a_model_crash_is_a_500_without_details(box: Sandbox, model: FakeModel, http: requests.Session) -> None:
    r = http.get(box.origins["backend"] + "/boom", timeout=10)
    assert r.status_code == 500 and r.json()["error"] == "server_error" and "model bug" not in r.text


def _proxy(box: Sandbox) -> dict[str, str]:
    return {"http": f"http://127.0.0.1:{box.origins['proxy_port']}"}


def test_proxy_forwards_to_the_on_premise_system_over_a_socket(box: Sandbox, model: FakeModel,
                                                               http: requests.Session) -> None:
    url = "http://s4-virtual:44300/sap/opu/odata/sap/API?$top=2"
    r = http.patch(url, json={"a": 1}, proxies=_proxy(box), timeout=10,
                   headers={"Proxy-Authorization": "Bearer good", "SAP-Connectivity-SCC-Location_ID": "LOC1"})
    assert r.status_code == 201, r.text
    seen = r.json()
    assert seen["url"] == url and seen["via_proxy"] is True and seen["method"] == "PATCH"
    assert (seen["proxy_auth"], seen["location"], seen["body"]) == ("Bearer good", "LOC1", '{"a": 1}')
    assert seen["tunnel"] is None  # the tunnel secret is the transport's, the model never sees it
    assert [c.url for c in model.checked] == [url] and model.checked[0].via_proxy


def test_proxy_answers_407_when_the_model_refuses(box: Sandbox, model: FakeModel, http: requests.Session) -> None:
    r = http.get("http://s4-virtual:44300/x", proxies=_proxy(box), timeout=10,
                 headers={"Proxy-Authorization": "Bearer bad"})
    assert r.status_code == 407 and r.headers["Proxy-Authenticate"].startswith("Bearer")
    assert model.requests == []  # nothing forwarded


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        pytest.param(b"GET /x HTTP/1.1", 400, id="origin-form"),
        pytest.param(b"GET https://s4-virtual:44300/x HTTP/1.1", 400, id="https-target"),
        pytest.param(b"CONNECT s4-virtual:44300 HTTP/1.1", 405, id="connect"),
    ],
)
def test_proxy_refuses_what_connectivity_would(box: Sandbox, model: FakeModel, request_line: bytes,
                                               status: int) -> None:
    with socket.create_connection(("127.0.0.1", box.origins["proxy_port"]), timeout=5) as s:
        s.sendall(request_line + b"\r\nHost: x\r\nProxy-Authorization: Bearer good\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.split(b" ", 2)[1] == str(status).encode(), answer[:200]
    assert model.requests == []


def test_proxy_hands_an_unmapped_virtual_host_to_the_model(box: Sandbox, model: FakeModel,
                                                            http: requests.Session) -> None:
    r = http.get("http://other-host:8080/x", proxies=_proxy(box), timeout=10,
                 headers={"Proxy-Authorization": "Bearer good"})
    assert r.status_code == 201 and r.json()["url"] == "http://other-host:8080/x" and r.json()["via_proxy"]
    assert r.json()["tunnel"] is None  # answered in place, not forwarded


def test_on_premise_system_is_not_reachable_directly(box: Sandbox, model: FakeModel,
                                                     http: requests.Session) -> None:
    onprem = box.services["onprem"]
    r = http.get(f"https://127.0.0.1:{onprem.port}/x", headers={TUNNEL_HEADER: "guess"}, timeout=10)
    assert r.status_code == 403 and model.requests == []


def test_stop_closes_ports_and_removes_the_folder() -> None:
    box = Sandbox(model=fake, destinations=[]).start()
    folder, ports = box.directory, [s.port for s in box.services.values()] + [box.origins["proxy_port"]]
    assert (folder / "ca.pem").is_file() and (folder / "default-env.json").is_file()
    assert oct((folder / "sandbox.env").stat().st_mode)[-3:] == "600"
    box.stop()
    box.stop()  # idempotent
    assert not folder.exists()
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --------------------------------------------------------------------------- the CLI, as real processes
ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop(STATE_ENV, None)
    return subprocess.Popen([sys.executable, "-m", "propagation.sandbox", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 20) -> str:
    """stdout up to the line holding ``marker``; raw reads polled with a deadline (a text
    wrapper would buffer lines the selector cannot see)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline and marker.encode() not in data:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    if marker.encode() not in data:
        proc.kill()
        raise AssertionError(f"no {marker!r} within {timeout} s:\n{data.decode()}")
    return data.decode()


def _secrets(default_env: dict[str, Any]) -> list[str]:
    """Every client secret of the sandbox's bindings (what must never be printed)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("clientsecret", "clientSecret", "Password") and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(default_env)
    assert found
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_run_writes_default_env_serves_tokens_and_stops_cleanly(tmp_path: Path, stop: signal.Signals) -> None:
    target = tmp_path / "default-env.json"
    env_file = tmp_path / "sandbox.env"
    proc = _cli("run", "--default-env", str(target), "--env-file", str(env_file))
    try:
        out = _read_until(proc, "sandbox ready")
        content = json.loads(target.read_text())
        assert {"xsuaa", "identity", "destination", "connectivity", "it-rt"} <= set(content["VCAP_SERVICES"])
        assert oct(target.stat().st_mode)[-3:] == "600"
        folder = Path(re.search(r"CA certificate\s+(\S+)/ca\.pem", out).group(1))  # type: ignore[union-attr]
        assert (folder / "ca.pem").is_file()
        sourced = subprocess.run(["bash", "-c", f"set -a; . {env_file}; set +a; echo \"$SSL_CERT_FILE\""],
                                 capture_output=True, text=True, timeout=10)
        assert sourced.stdout.strip() == str(folder / "ca.pem")

        token = subprocess.run([sys.executable, "-m", "propagation.sandbox", "token", "alice", "--dir", str(folder)],
                               capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert token.returncode == 0, token.stderr
        claims = jwt.decode(token.stdout.strip(), options={"verify_signature": False})
        assert (claims["user_name"], claims["cid"]) == ("alice", content["VCAP_SERVICES"]["xsuaa"][0]["credentials"]["clientid"])
        unknown = subprocess.run([sys.executable, "-m", "propagation.sandbox", "token", "mallory", "--dir", str(folder)],
                                 capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert unknown.returncode == 1 and "mallory" in unknown.stderr and not unknown.stdout

        proc.send_signal(stop)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "sandbox stopped" in rest
    assert not folder.exists() and not target.exists() and not env_file.exists()
    printed = out + rest + err
    assert "eyJ" not in printed and not any(s in printed for s in _secrets(content))


def test_run_refuses_to_overwrite_a_file(tmp_path: Path) -> None:
    target = tmp_path / "default-env.json"
    target.write_text("{}")
    proc = _cli("--default-env", str(target))  # `run` is the default subcommand
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "exists" in err and target.read_text() == "{}"


CHILD = """
import json, os, subprocess, sys
import requests, propagation
vcap = json.loads(os.environ["VCAP_SERVICES"])
assert os.environ["SSL_CERT_FILE"] == os.environ["REQUESTS_CA_BUNDLE"]
xsuaa = vcap["xsuaa"][0]["credentials"]
assert requests.get("https://" + xsuaa["uaadomain"] + "/token_keys", timeout=10).status_code == 200
token = subprocess.run([sys.executable, "-m", "propagation.sandbox", "token", "bob"], capture_output=True,
                       text=True, check=True).stdout.strip()
print("validated as", propagation.Propagator.from_env().validate(token).user)
sys.exit(7)
"""


def test_exec_gives_the_child_the_sandbox_and_returns_its_code() -> None:
    proc = _cli("exec", "--", sys.executable, "-c", CHILD)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert "validated as bob" in out
    assert "eyJ" not in out + err


@pytest.mark.parametrize(
    ("args", "code"),
    [
        pytest.param(["exec"], 2, id="no-command"),
        pytest.param(["exec", "--", "/nonexistent/program"], 127, id="not-found"),
        pytest.param(["exec", "--", sys.executable, "-c", "import os; os.kill(os.getpid(), 15)"], 128 + 15,
                     id="killed-by-signal"),
    ],
)
def test_exec_exit_codes(args: list[str], code: int) -> None:
    proc = _cli(*args)
    proc.communicate(timeout=60)
    assert proc.returncode == code


def test_exec_passes_ctrl_c_on_to_the_child_then_stops() -> None:
    child = ("import os, signal, sys, time\n"
             "signal.signal(signal.SIGINT, lambda *a: sys.exit(5))\n"
             "print('child up', os.environ['PROPAGATION_SANDBOX'], 'end', flush=True)\n"
             "time.sleep(60)\n")
    proc = _cli("exec", "--", sys.executable, "-c", child)
    try:
        folder = Path(_read_until(proc, " end\n").split()[-2])
        assert folder.is_dir()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 5 and not folder.exists()


# -- free ports for child processes -----------------------------------------------------
def _listen(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_free_port_is_below_the_ephemeral_range_so_port_0_servers_cannot_take_it() -> None:
    from propagation.sandbox import ports

    low = ports._ephemeral_low()
    for _ in range(20):
        port = ports.free_port()
        assert 1024 <= port < low
        _listen(port)  # free right now


@pytest.mark.parametrize("content", [pytest.param("1024\t65535\n", id="no-room-below"),
                                     pytest.param("garbage", id="unreadable")])
def test_free_port_with_an_unusual_or_unreadable_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       content: str) -> None:
    from propagation.sandbox import ports

    (tmp_path / "range").write_text(content)
    monkeypatch.setattr(ports, "_RANGE_FILE", tmp_path / "range")
    port = ports.free_port()
    if content == "garbage":  # the Linux default is assumed
        assert 1024 <= port < ports._DEFAULT_EPHEMERAL_LOW
    _listen(port)
