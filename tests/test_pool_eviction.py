"""More principals than the pool bound: an evicted pool is closed only when its last request is
done, so eviction never fails a call in flight (issue 17: 300 users through a proxy answering in
2 s → 44 httpx calls failed). A real loopback Connectivity proxy holds every answer (an Event, no
sleeps); the engine's bound is 4, the principals 7, and each new principal's call starts once
the earlier ones wait for their answers — so pools in use are evicted, deterministically."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import propagation
from propagation import Propagator
from propagation.bindings import Binding, Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.exchange.oauth import OAuthClient
from propagation.outbound.pools import Pools

from test_outbound_core import TRANSPORTS, Transport, user

PRINCIPALS = 7
BOUND = 4


class HeldProxy:
    """Token endpoint (answers at once) and forward proxy (answers when ``release`` is set)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = threading.Condition()
        self.held = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path.endswith("/oauth/token"):
                    self._reply({"access_token": "proxy-token", "expires_in": 3600})
                    return
                with outer.arrived:
                    outer.held += 1
                    outer.arrived.notify_all()
                outer.release.wait(30)
                self._reply({"ok": True})

            do_GET = do_POST = _handle  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def all_held(self, n: int) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: self.held >= n, timeout=20)

    def __enter__(self) -> "HeldProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def onprem_engine(proxy: HeldProxy) -> Propagator:
    port = proxy.server.server_address[1]
    connectivity = Binding(name="conn", label="connectivity", credentials={
        "clientid": "conn-client", "clientsecret": "conn-secret", "token_service_url": f"http://127.0.0.1:{port}",
        "onpremise_proxy_host": "127.0.0.1", "onpremise_proxy_http_port": str(port)})
    engine = Propagator(
        environ={"destinations": json.dumps([{
            "name": "S4", "url": "http://s4-virtual:44300/api", "ProxyType": "OnPremise",
            "Authentication": "PrincipalPropagation"}])},
        bindings=Bindings([connectivity]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0))
    engine.pools = Pools(maxsize=BOUND)
    return engine


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_more_principals_than_the_pool_bound_never_fail_a_call_in_flight(transport: Transport) -> None:
    tokens = [user(f"user{i}") for i in range(PRINCIPALS)]
    with HeldProxy() as proxy:
        engine = onprem_engine(proxy)
        if transport.name == "async_client":
            async def run() -> list[Any]:
                async def call(token: str) -> int:
                    with propagation.use_token(token):
                        return (await engine.async_client("S4").get("Items")).status_code

                calls = []
                for n, token in enumerate(tokens, 1):  # one more principal once the others are in flight
                    calls.append(asyncio.ensure_future(call(token)))
                    assert await asyncio.to_thread(proxy.all_held, n)
                proxy.release.set()
                results = await asyncio.gather(*calls, return_exceptions=True)
                assert results == [200] * PRINCIPALS, results
                lru = engine.pools._async_lru()
                assert not lru._retired and not lru._leases  # every evicted pool closed once done
                await engine.aclose()
                return results

            results = asyncio.run(run())
        else:
            results = [None] * PRINCIPALS

            def call(i: int) -> None:
                try:
                    results[i] = transport.call(transport.make(engine, "S4", user_token=tokens[i]), "GET", "Items").status_code
                except Exception as exc:  # noqa: BLE001 - reported below
                    results[i] = exc

            threads = [threading.Thread(target=call, args=(i,)) for i in range(PRINCIPALS)]
            for n, thread in enumerate(threads, 1):  # one more principal once the others are in flight
                thread.start()
                assert proxy.all_held(n)
            proxy.release.set()
            for thread in threads:
                thread.join(30)
            assert results == [200] * PRINCIPALS, results
            if transport.name == "client":
                assert not engine.pools._transports._retired and not engine.pools._transports._leases
            engine.close()
    assert results == [200] * PRINCIPALS, results


def test_a_pool_evicted_while_in_use_is_closed_by_its_last_release() -> None:
    from propagation.outbound.pools import _Lru

    closed: list[str] = []
    lru: _Lru[str] = _Lru(maxsize=1, idle=1e9, clock=lambda: 0.0)
    a, stale = lru.get("a", lambda: "pool-a", lease=True)
    assert stale == []
    lru.get("a", lambda: "unused", lease=True)  # a second request on the same pool
    b, stale = lru.get("b", lambda: "pool-b")
    assert stale == []  # "a" is evicted but in use: retired, not closed
    assert lru.release(a) is False  # one request of two done
    if lru.release(a):
        closed.append(a)
    assert closed == ["pool-a"]
    assert lru.get("c", lambda: "pool-c")[1] == ["pool-b"]  # an unused pool is closed at once
