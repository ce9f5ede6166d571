"""Persistent connections (HTTP/1.1 keep-alive) in the sandbox, as BTP's endpoints keep them:
a pooling client reuses its connection and the landscape's records show it (``connection``),
through the Connectivity proxy too; ``Connection: close`` and refused requests end it; a
stopped sandbox ends connections kept alive."""

from __future__ import annotations

import re
import socket
import ssl
from typing import Iterator
from urllib.parse import urlencode

import pytest
import requests

from propagation.sandbox import Sandbox
from propagation.testing import Landscape


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


def _session(box: Sandbox) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(box.ca_file)
    return s


def _client_credentials(land: Landscape, session: requests.Session, headers: dict[str, str] | None = None) -> None:
    form = {"grant_type": "client_credentials", "client_id": land.app_client,
            "client_secret": land.client_secret(land.app_client)}
    r = session.post(f"{land.origins.xsuaa}/oauth/token", data=form, headers=headers or {}, timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize("sessions, per_session, connections", [
    pytest.param(1, 3, 1, id="one-pooled-client-one-connection"),
    pytest.param(3, 1, 3, id="three-clients-three-connections"),
    pytest.param(2, 2, 2, id="two-clients-two-each"),
])
def test_token_requests_reuse_the_clients_connection(box: Sandbox, land: Landscape, sessions: int, per_session: int,
                                                     connections: int) -> None:
    for _ in range(sessions):
        with _session(box) as s:
            for _ in range(per_session):
                _client_credentials(land, s)
    used = land.exchanges.where(client=land.app_client).distinct("connection")
    assert len(used) == connections and all(c.startswith("xsuaa#") for c in used)
    assert land.traffic.distinct("connection") == used
    assert [len(land.exchanges.where(connection=c)) for c in used] == [per_session] * sessions


def test_connection_close_from_the_client_ends_it(box: Sandbox, land: Landscape) -> None:
    with _session(box) as s:
        _client_credentials(land, s, {"Connection": "close"})
        _client_credentials(land, s)
    assert len(land.exchanges.distinct("connection")) == 2


def test_through_the_proxy_the_on_premise_record_names_the_apps_connection(box: Sandbox, land: Landscape) -> None:
    form = {"grant_type": "client_credentials", "client_id": land.connectivity_client,
            "client_secret": land.client_secret(land.connectivity_client)}
    user = land.user_token("alice")
    with _session(box) as s:
        r = s.post(f"{land.origins.xsuaa}/oauth/token", timeout=10, data={
            **form, "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": user})
        proxy_token = r.json()["access_token"]
        proxies = {"http": land.origins.proxy_url}
        for _ in range(2):
            answer = s.get("http://s4-virtual:44300/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation",
                           proxies=proxies, timeout=10, headers={"Proxy-Authorization": f"Bearer {proxy_token}"})
            assert answer.status_code == 200 and answer.json()["seenBy"] == "alice"
    onprem = land.calls.where(service="onprem")
    assert len(onprem) == 2 and len(onprem.distinct("connection")) == 1
    assert onprem[0].connection.startswith("connectivity-proxy#")


@pytest.mark.parametrize("raw, status", [
    pytest.param(b"CONNECT s4-virtual:44300 HTTP/1.1\r\nHost: x\r\n\r\n", b"405", id="connect"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", b"400", id="origin-form"),
])
def test_refused_proxy_requests_close_the_connection(box: Sandbox, raw: bytes, status: bytes) -> None:
    assert box.proxy is not None
    with socket.create_connection(("127.0.0.1", box.proxy.port), timeout=5) as s:
        s.sendall(raw)
        answer = b""
        while chunk := s.recv(65536):  # EOF: the proxy closed the connection
            answer += chunk
    assert answer.split(b" ", 2)[1] == status and b"Connection: close" in answer


def test_stop_ends_kept_alive_connections() -> None:
    box = Sandbox(destinations=[]).start()
    try:
        xsuaa = box.services["xsuaa"]
        ctx = ssl.create_default_context(cafile=str(box.ca_file))
        raw = socket.create_connection(("127.0.0.1", xsuaa.port), timeout=10)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"GET /token_keys HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first:
            first += tls.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += tls.recv(65536)
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
    finally:
        box.stop()
    tls.settimeout(5)
    try:
        rest = tls.recv(65536)
    except TimeoutError:  # still open: the stopped sandbox left it kept alive
        rest = b"<still open>"
    except (ssl.SSLError, OSError):
        rest = b""
    finally:
        tls.close()
    assert rest == b""  # closed by stop(), not left serving a stopped sandbox


def test_in_process_records_have_no_connection() -> None:
    land = Landscape()
    body = urlencode({"grant_type": "client_credentials", "client_id": land.app_client,
                      "client_secret": land.client_secret(land.app_client)}).encode()
    from propagation.testing import Request

    assert land.handle(Request("POST", f"{land.origins.xsuaa}/oauth/token", {}, body)).status == 200
    assert land.exchanges.values("connection") == [None] and land.exchanges.distinct("connection") == []
