"""Subscriber tenants in the sandbox (``X-zid`` at the ``uaadomain`` host; their own
``<tenant>.localhost`` host where it resolves), the host naming modes, and the live trace
(``--trace``)."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import jwt
import pytest

from propagation.sandbox import Sandbox
from propagation.sandbox import runtime
from propagation.sandbox.client import password_login
from propagation.sandbox.servers import Forwarded
from propagation.sandbox.trace import Tracer, format_record
from propagation.testing import Call, Exchange, Landscape

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["plain", "labelled"])
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    with Sandbox(tenants=("provider", "acme"), hosts=request.param, destinations=[]) as sandbox:
        yield sandbox


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_hosts_follow_the_mode(box: Sandbox) -> None:
    port = box.services["xsuaa"].port
    expected = f"https://provider.localhost:{port}" if box.hosts == "labelled" else f"https://localhost:{port}"
    assert box.origins["xsuaa"] == expected and box.origins["uaadomain"] == f"localhost:{port}"
    assert box.labelled is (box.hosts == "labelled")
    assert json.loads(box.environ()[runtime.TENANTS_ENV]) == {n: t.zid for n, t in box.landscape.tenants.items()}  # type: ignore[union-attr]


@pytest.mark.parametrize("tenant", ["provider", "acme"])
def test_token_of_a_tenant_by_x_zid(box: Sandbox, land: Landscape, tenant: str) -> None:
    token = password_login(box.environ(), "alice", tenant=tenant)
    claims = _claims(token)
    assert (claims["user_name"], claims["ext_attr"]["zdn"], claims["zid"]) == ("alice", tenant, land.tenants[tenant].zid)
    assert claims["iss"] == f"{land.tenant_url(tenant)}/oauth/token"
    url = f"https://localhost:{box.services['xsuaa'].port}/oauth/token"  # the uaadomain host, whatever the tenant
    assert [(e.grant, e.user, e.tenant, e.url) for e in land.exchanges] == [("password", "alice", tenant, url)]


def _post_as_host(box: Sandbox, host: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A request to the XSUAA server naming ``host`` (TLS SNI and Host), as a client that
    resolves ``*.localhost`` sends it."""
    port = box.services["xsuaa"].port
    ctx = ssl.create_default_context(cafile=str(box.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=host)
    try:
        conn.request("POST", "/oauth/token", body=urlencode(form),
                     headers={"Host": f"{host}:{port}", "Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


@pytest.mark.parametrize("host, tenant", [pytest.param("acme.localhost", "acme", id="subscriber-host"),
                                          pytest.param("provider.localhost", "provider", id="provider-host")])
def test_tenant_hosts_where_they_resolve(box: Sandbox, land: Landscape, host: str, tenant: str) -> None:
    form = {"grant_type": "client_credentials", "client_id": land.app_client, "client_secret": land.client_secret(land.app_client)}
    status, body = _post_as_host(box, host, form)
    assert status == 200, body
    assert _claims(body["access_token"])["ext_attr"]["zdn"] == tenant
    assert land.exchanges.values("url") == [f"https://{host}:{box.services['xsuaa'].port}/oauth/token"]


def test_bare_uaadomain_without_x_zid_names_no_zone_in_labelled_mode(box: Sandbox, land: Landscape) -> None:
    form = {"grant_type": "client_credentials", "client_id": land.app_client, "client_secret": land.client_secret(land.app_client)}
    status, body = _post_as_host(box, "localhost", form)
    if box.hosts == "labelled":
        assert (status, body["error"]) == (400, "invalid_request")
    else:  # plain: the bare host is the provider's XSUAA URL
        assert status == 200 and _claims(body["access_token"])["ext_attr"]["zdn"] == "provider"


@pytest.mark.parametrize("answer, expected", [
    pytest.param([(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 443))], True, id="loopback"),
    pytest.param([(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 443, 0, 0))], True, id="loopback-v6"),
    pytest.param([(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 443))], False, id="not-loopback"),
    pytest.param(socket.gaierror(-2, "Name or service not known"), False, id="unresolvable"),
])
def test_labelled_hosts_resolve(monkeypatch: pytest.MonkeyPatch, answer: Any, expected: bool) -> None:
    def fake(host: str, *args: Any, **kwargs: Any) -> Any:
        assert host == "provider.localhost"
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(runtime.socket, "getaddrinfo", fake)
    assert runtime.labelled_hosts_resolve() is expected
    assert Sandbox(hosts="auto").hosts == "auto"


@pytest.mark.parametrize("kwargs, message", [
    pytest.param({"tenants": ()}, "tenants", id="no-tenant"),
    pytest.param({"tenants": ("provider", "provider")}, "distinct", id="duplicate"),
    pytest.param({"hosts": "fancy"}, "hosts", id="bad-mode"),
])
def test_sandbox_arguments_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sandbox(**kwargs)


# ----------------------------------------------------------------------------- trace
def _exchange(**kw: Any) -> Exchange:
    base = dict(service="xsuaa", grant="jwt-bearer", client="sb-conn", user="alice", status=200, tenant="provider",
                subject="xsuaa", assertion="a" * 64, issued="b" * 64, connection="xsuaa#2")
    return Exchange(**{**base, **kw})


@pytest.mark.parametrize("record, line", [
    pytest.param(_exchange(), "token   xsuaa jwt-bearer  client=sb-conn user=alice tenant=provider subject=xsuaa -> 200 "
                 "assertion #aaaaaaaaaaaa issued #bbbbbbbbbbbb [xsuaa#2]", id="exchange"),
    pytest.param(_exchange(via="destination-service", status=400, error="invalid_grant", issued=None, connection=None),
                 "token*  xsuaa jwt-bearer  client=sb-conn user=alice tenant=provider subject=xsuaa -> 400 invalid_grant "
                 "assertion #aaaaaaaaaaaa", id="exchange-by-the-destination-service"),
    pytest.param(Call(service="destination", method="GET", path="/destination-configuration/v1/destinations/S4",
                      status=200, user="alice", tenant="acme", destination="S4", query={"$skipTokenRetrieval": "true"}),
                 "lookup  v1 name=S4 user=alice tenant=acme query=$skipTokenRetrieval=true -> 200", id="lookup"),
    pytest.param(Call(service="destination", method="GET", status=404, tenant="acme", destination="S4",
                      path="/destination-configuration/v2/destinations/S4@provider_subaccount", error="not found"),
                 "lookup  v2 name=S4@provider_subaccount tenant=acme -> 404 (not found)", id="lookup-v2-level"),
    pytest.param(Call(service="onprem", method="GET", path="/sap/x", status=401, tenant="provider", via_proxy=True,
                      error="no principal", location="LOC1", connection="connectivity-proxy#1"),
                 "backend onprem GET /sap/x user=(none) tenant=provider location=LOC1 -> 401 (no principal) "
                 "[connectivity-proxy#1]", id="onprem-without-user"),
    pytest.param(Call(service="connectivity-proxy", method="GET", path="/x", status=407, token="c" * 64,
                      error="bad token"),
                 "proxy   refused GET /x  token #cccccccccccc -> 407 (bad token)", id="proxy-refusal"),
    pytest.param(Forwarded("GET", "http://s4-virtual:44300/x", "d" * 64, True, "LOC1", 200, "connectivity-proxy#3"),
                 "proxy   GET http://s4-virtual:44300/x location=LOC1 proxy-token #dddddddddddd "
                 "+SAP-Connectivity-Authentication -> 200 [connectivity-proxy#3]", id="proxy-hop-answered"),
    pytest.param(Forwarded("GET", "http://s4-virtual:44300/x", "d" * 64, False, None, 0, "connectivity-proxy#3"),
                 "proxy   GET http://s4-virtual:44300/x  proxy-token #dddddddddddd -> forwarded to the Cloud Connector "
                 "[connectivity-proxy#3]", id="proxy-hop-under-way"),
])
def test_trace_lines(record: Any, line: str) -> None:
    assert format_record(record) == line


def test_tracer_stamps_and_skips_raw_traffic() -> None:
    from propagation.testing import Traffic

    out = io.StringIO()
    tracer = Tracer(out, clock=lambda: 0.25)
    tracer(Traffic("GET", "https://x/token_keys", 200))
    tracer(_exchange())
    (only,) = out.getvalue().splitlines()
    assert only.endswith(".250 " + format_record(_exchange()))  # type: ignore[operator]


def test_exec_trace_prints_every_hop_live_without_tokens() -> None:
    child = (
        "import subprocess, sys, propagation\n"
        "run = lambda *a: subprocess.run([sys.executable, '-m', 'propagation.sandbox', 'token', *a],"
        " capture_output=True, text=True, check=True).stdout.strip()\n"
        "print('acme token', len(run('alice', '--tenant', 'acme')) > 100)\n"
        "with propagation.use_token(run('bob')):\n"
        "    r = propagation.session('S4').get('/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation')\n"
        "print('S4 saw', r.json()['seenBy'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(runtime.STATE_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "propagation.sandbox", "exec", "--tenant", "acme", "--trace", "--",
                           sys.executable, "-c", child], capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["acme token True", "S4 saw bob"]
    lines = [line[13:] for line in proc.stderr.splitlines() if line[:2].isdigit() and line[2] == ":"]
    kinds = [line.split()[0] for line in lines]
    assert lines[0].startswith("token   xsuaa password") and "user=alice tenant=acme" in lines[0], proc.stderr
    assert "lookup" in kinds and "user=bob" in lines[kinds.index("proxy") + 1]
    proxy, backend = kinds.index("proxy"), next(i for i, line in enumerate(lines) if line.startswith("backend onprem"))
    assert proxy < backend and "location=LOC1" in lines[proxy] and "user=bob" in lines[backend]
    assert lines[proxy].endswith(lines[backend].rsplit(" ", 1)[1])  # the same client connection to the proxy
    assert "eyJ" not in proc.stdout + proc.stderr


def test_token_for_an_unknown_tenant_is_refused_by_name() -> None:
    with Sandbox(destinations=[]) as box:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-m", "propagation.sandbox", "token", "alice", "--tenant", "nowhere",
                               "--dir", str(box.directory)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "no tenant 'nowhere'" in proc.stderr and not proc.stdout


# ----------------------------------------------------------------------------- exec: a child that served nothing
@pytest.mark.parametrize("quick_exit, code, warned", [
    pytest.param(1.0, 0, True, id="quick-success-warns"),
    pytest.param(0.0, 0, False, id="long-enough-no-warning"),
    pytest.param(1.0, 3, False, id="failure-speaks-for-itself"),
])
def test_exec_warns_when_the_command_exits_at_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                   quick_exit: float, code: int, warned: bool) -> None:
    from propagation.sandbox import cli

    monkeypatch.setattr(cli, "QUICK_EXIT", quick_exit)
    monkeypatch.setattr(runtime, "labelled_hosts_resolve", lambda label="provider": False)
    rc = cli.main(["exec", "--", sys.executable, "-c", f"raise SystemExit({code})"])
    err = capsys.readouterr().err
    assert rc == code
    assert ("never listened" in err) is warned
    if warned:
        assert "app.run(" in err and "$PORT" in err
