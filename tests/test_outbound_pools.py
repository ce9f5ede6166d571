"""Real sockets: connections pooled by the engine (a session or client made per call opens no
new connection), kept-alive connections through the Connectivity proxy never carry a second
user, and a slow IdP never stalls the event loop of an ``async_client``."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

import propagation
from propagation import Propagator
from propagation.bindings import Binding, Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.exchange.oauth import OAuthClient
from propagation.outbound.pools import PoolKey, Pools

from loopback import Loopback, principal_of
from test_outbound_core import TRANSPORTS, Transport, user


@pytest.fixture
def server() -> Any:
    with Loopback() as srv:
        yield srv


def jwt_engine(srv: Loopback) -> Propagator:
    return Propagator(
        environ={"destinations": json.dumps([{
            "name": "S4", "url": f"{srv.base}/odata", "Authentication": "OAuth2JWTBearer",
            "tokenServiceURL": f"{srv.base}/oauth/token", "clientId": "c", "clientSecret": "s"}])},
        bindings=Bindings([]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0),
    )


def onprem_engine(srv: Loopback) -> Propagator:
    connectivity = Binding(name="conn", label="connectivity", credentials={
        "clientid": "conn-client", "clientsecret": "conn-secret", "token_service_url": srv.base,
        "onpremise_proxy_host": "127.0.0.1", "onpremise_proxy_http_port": str(srv.port)})
    return Propagator(
        environ={"destinations": json.dumps([{
            "name": "S4", "url": "http://s4-virtual:44300/sap/opu/odata/sap/API_SRV", "ProxyType": "OnPremise",
            "Authentication": "PrincipalPropagation", "CloudConnectorLocationId": "LOC1"}])},
        bindings=Bindings([connectivity]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0),
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_30_calls_each_with_a_new_session_use_at_most_2_connections(server: Loopback, transport: Transport) -> None:
    engine = jwt_engine(server)
    token = user("alice")

    def calls() -> None:
        for _ in range(30):
            response = transport.call(transport.make(engine, "S4", user_token=token), "GET", "Items")
            assert response.status_code == 200

    if transport.name == "async_client":  # one event loop, as in an ASGI server
        async def run() -> None:
            for _ in range(30):
                assert (await engine.async_client("S4", user_token=token).get("Items")).status_code == 200
            await engine.aclose()

        asyncio.run(run())
    else:
        calls()
        engine.close()
    assert len(server.seen) == 30
    assert len(server.connections()) <= 2, server.connections()
    assert len(server.exchanges) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_connection_through_the_connectivity_proxy_never_carries_a_second_user(server: Loopback, transport: Transport) -> None:
    engine = onprem_engine(server)
    tokens = {"alice": user("alice"), "bob": user("bob")}
    s4 = transport.make(engine, "S4")  # one client for everybody
    order = ["alice", "bob"] * 10

    if transport.name == "async_client":
        async def run() -> None:
            for who in order:
                with propagation.use_token(tokens[who]):
                    assert (await s4.get("Items")).status_code == 200
            await engine.aclose()

        asyncio.run(run())
    else:
        for who in order:
            with propagation.use_token(tokens[who]):
                assert transport.call(s4, "GET", "Items").status_code == 200
    assert all(s.proxied and s.target.startswith("http://s4-virtual:44300/") for s in server.seen)
    per_connection = server.principals_per_connection()
    assert all(len(principals) == 1 for principals in per_connection.values()), per_connection
    assert set().union(*per_connection.values()) == {"alice", "bob"}
    assert len(per_connection) <= 4  # pooled per principal, not one connection per call
    assert [s.header("SAP-Connectivity-SCC-Location_ID") for s in server.seen] == ["LOC1"] * 20
    assert [principal_of(s.header("Proxy-Authorization") or "") for s in server.seen] == order


def test_a_slow_idp_does_not_stall_the_event_loop() -> None:
    with Loopback(delay=0.3) as srv:
        engine = jwt_engine(srv)
        users = [user(f"user{i}") for i in range(5)]
        gaps: list[float] = []

        async def ticker(stop: asyncio.Event) -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        async def run() -> float:
            stop = asyncio.Event()
            tick = asyncio.create_task(ticker(stop))
            s4 = engine.async_client("S4")
            started = time.perf_counter()

            async def one(token: str) -> int:
                with propagation.use_token(token):
                    return (await s4.get("Items")).status_code

            statuses = await asyncio.gather(*(one(t) for t in users))
            elapsed = time.perf_counter() - started
            stop.set()
            await tick
            await engine.aclose()
            assert statuses == [200] * 5
            return elapsed

        elapsed = asyncio.run(run())
    assert len(srv.exchanges) == 5
    assert max(gaps) < 0.15, f"event loop stalled for {max(gaps):.3f} s"
    assert elapsed < 5 * 0.3  # the five exchanges overlapped instead of queueing


def test_pools_are_bounded_and_idle_pools_are_closed() -> None:
    now = [0.0]
    pools = Pools(maxsize=2, idle=10.0, clock=lambda: now[0])
    keys = [PoolKey("https", f"h{i}.example.com", 443) for i in range(3)]
    adapters = [pools.adapter(k) for k in keys]
    assert pools.adapter(keys[2]) is adapters[2] and pools.adapter(keys[1]) is adapters[1]
    again = pools.adapter(keys[0])
    assert again is not adapters[0]  # keys[0] was evicted (LRU, maxsize 2) when keys[2] came
    now[0] = 100.0
    assert pools.adapter(keys[0]) is again  # the one in use stays
    assert len(pools._adapters) == 1  # the idle other (keys[1]) was closed
    pools.close()
    assert len(pools._adapters) == 0


# -- TrustStoreLocation: the target's TLS trusts the destination's own CA bundle ---------------------
@pytest.mark.parametrize("with_trust", [pytest.param(True, id="trust-store"), pytest.param(False, id="no-trust-store")])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_trust_store_of_the_destination_is_what_the_target_tls_is_checked_against(
    transport: Transport, with_trust: bool
) -> None:
    import base64

    import httpx
    import requests
    import responses
    import respx

    from propagation.sandbox.pki import Pki

    pki = Pki(prefix="propagation-test-trust-")
    try:
        with Loopback(tls=pki.server_context()) as backend, responses.RequestsMock(assert_all_requests_are_fired=False) as rsps, \
                respx.mock(assert_all_called=False) as router:
            configuration = {"Name": "S4", "Type": "HTTP", "URL": f"{backend.base}/api",
                             "Authentication": "NoAuthentication", "ProxyType": "Internet"}
            if with_trust:
                configuration["TrustStoreLocation"] = "backend-ca.pem"
            answer = {"destinationConfiguration": configuration, "certificates": [
                {"Name": "backend-ca.pem", "Type": "CERTIFICATE", "Content": base64.b64encode(pki.ca_file.read_bytes()).decode()}]}
            token = {"access_token": "svc", "expires_in": 3600}
            for mock in ("requests", "httpx"):
                if mock == "requests":
                    rsps.add(responses.POST, "https://provider.auth.example.com/oauth/token", json=token)
                    rsps.add(responses.GET, re.compile(r"https://destination\.example\.com/.*"), json=answer)
                    rsps.add_passthru(backend.base)
                else:
                    router.post("https://provider.auth.example.com/oauth/token").respond(json=token)
                    router.get(url__startswith="https://destination.example.com/").respond(json=answer)
                    router.route(host="localhost").pass_through()
            binding = Binding(name="dest", label="destination", credentials={
                "clientid": "dest-client", "clientsecret": "dest-secret", "url": "https://provider.auth.example.com",
                "uri": "https://destination.example.com", "tenantid": "provider-zid"})
            engine = Propagator(environ={}, bindings=Bindings([binding]), cache=MemoryTokenCache(),
                                oauth=OAuthClient(retries=0))
            s4 = transport.make(engine, "S4")
            if with_trust:
                assert transport.call(s4, "GET", "Items").status_code == 200
                assert [s.path for s in backend.seen] == ["/api/Items"]
            else:
                with pytest.raises((requests.exceptions.SSLError, httpx.ConnectError)):
                    transport.call(s4, "GET", "Items")
                assert backend.seen == []
            engine.close()
    finally:
        pki.cleanup()


# -- ClientCertificateAuthentication: the destination's certificate on the wire (mTLS) -----------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_certificate_destination_presents_its_certificate_to_the_target(transport: Transport) -> None:
    """A real loopback TLS server that requires a client certificate: every transport presents
    the destination's key store (PEM from the Destination service), and the pooled connection
    is reused for the next call."""
    import base64
    import ssl

    import responses
    import respx

    import jwtkit
    from propagation.sandbox.pki import Pki

    cert_pem, key_pem = jwtkit.self_signed_certificate("s4-comm-user")
    pki = Pki(prefix="propagation-test-mtls-")
    server = pki.server_context()
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=cert_pem)
    try:
        with Loopback(tls=server) as backend, responses.RequestsMock(assert_all_requests_are_fired=False) as rsps, \
                respx.mock(assert_all_called=False) as router:
            store = base64.b64encode((cert_pem + key_pem).encode()).decode()
            ca = base64.b64encode(pki.ca_file.read_bytes()).decode()
            answer = {"destinationConfiguration": {
                "Name": "S4", "Type": "HTTP", "URL": f"{backend.base}/api", "Authentication": "ClientCertificateAuthentication",
                "ProxyType": "Internet", "KeyStoreLocation": "client.pem", "TrustStoreLocation": "ca.pem"},
                "certificates": [{"Name": "client.pem", "Type": "CERTIFICATE", "Content": store},
                                 {"Name": "ca.pem", "Type": "CERTIFICATE", "Content": ca}]}
            token = {"access_token": "svc", "expires_in": 3600}
            rsps.add(responses.POST, "https://provider.auth.example.com/oauth/token", json=token)
            rsps.add(responses.GET, re.compile(r"https://destination\.example\.com/.*"), json=answer)
            rsps.add_passthru(backend.base)
            router.post("https://provider.auth.example.com/oauth/token").respond(json=token)
            router.get(url__startswith="https://destination.example.com/").respond(json=answer)
            router.route(host="localhost").pass_through()
            binding = Binding(name="dest", label="destination", credentials={
                "clientid": "dest-client", "clientsecret": "dest-secret", "url": "https://provider.auth.example.com",
                "uri": "https://destination.example.com", "tenantid": "provider-zid"})
            engine = Propagator(environ={}, bindings=Bindings([binding]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0))
            s4 = transport.make(engine, "S4")
            from propagation.exchange import flow

            key_files: list[str] = []
            enter = flow.ClientCertFiles.__enter__

            def counting(self: Any) -> Any:
                key_files.append("written")
                return enter(self)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(flow.ClientCertFiles, "__enter__", counting)
                if transport.name == "async_client":
                    async def twice() -> list[int]:
                        return [(await s4.get("Items")).status_code for _ in range(2)]

                    assert asyncio.run(twice()) == [200, 200]
                else:
                    assert [transport.call(s4, "GET", "Items").status_code for _ in range(2)] == [200, 200]
            assert [s.client_subject for s in backend.seen] == ["s4-comm-user", "s4-comm-user"]
            # Pooled on every transport (session() too: one SSL context per certificate, no key files per call).
            assert len(backend.connections()) == 1
            assert len(key_files) <= 1  # the certificate is loaded once (into the shared context), if not yet
            engine.close()
    finally:
        pki.cleanup()


# -- a total deadline for the call itself ---------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_target_dripping_its_answer_cannot_stretch_the_call_past_the_deadline(transport: Transport) -> None:
    """Headers and body one byte every 0.2 s: each read is well within the 5 s read timeout,
    the whole answer would take ~14 s; the call ends at its 1 s deadline with the client's own
    timeout error, and the next call on the same engine works."""
    import httpx
    import requests

    with Loopback(drip=0.2) as backend:
        engine = Propagator(
            environ={"destinations": json.dumps([{"name": "S4", "url": f"{backend.base}/api", "Authentication": "NoAuthentication",
                                                  "timeout": 5000}])},
            bindings=Bindings([]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0), call_deadline=1.0)
        s4 = transport.make(engine, "S4")
        started = time.monotonic()
        with pytest.raises((requests.exceptions.Timeout, requests.exceptions.ConnectionError, httpx.TimeoutException)):
            transport.call(s4, "GET", "slow")
        elapsed = time.monotonic() - started
        assert 0.9 < elapsed < 1.8, elapsed
        assert transport.call(s4, "GET", "fast").status_code == 200  # the deadline was this call's only
        engine.close()


def test_the_call_deadline_is_configured_by_environment() -> None:
    from propagation.errors import ConfigurationError

    assert Propagator(environ={"PROPAGATION_CALL_DEADLINE": "7.5"}, bindings=Bindings([])).call_deadline == 7.5
    assert Propagator(environ={}, bindings=Bindings([])).call_deadline == 120.0
    for bad in ("soon", "0", "-1"):
        with pytest.raises(ConfigurationError, match="seconds"):
            Propagator(environ={"PROPAGATION_CALL_DEADLINE": bad}, bindings=Bindings([]))
