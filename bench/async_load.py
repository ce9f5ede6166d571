"""Bench section (f): an ASGI app (``bench/async_app.py`` under uvicorn, one worker) calling an
on-premise destination through the Connectivity proxy with ``async_client``, as each of U users,
C calls each, from concurrent clients. Counts the user exchanges at the token endpoint, reads the
app's own event-loop lag, reports requests/s and latency percentiles.

Everything runs on loopback: a TLS stand-in for XSUAA (keys and exchanges, certificate from the
sandbox's ``Pki``) and a plain keep-alive server playing the Connectivity proxy and S/4HANA.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import jwtkit
from servers import LoopbackServer

from propagation.sandbox.pki import Pki
from propagation.sandbox.ports import free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def _environment(idp: LoopbackServer, proxy: LoopbackServer, xsuaa: jwtkit.Xsuaa, ca: str) -> dict[str, str]:
    vcap = {
        "xsuaa": [{"name": "app-xsuaa", "label": "xsuaa", "plan": "application", "tags": ["xsuaa"],
                   "credentials": {**xsuaa.credentials(), "url": idp.base}}],
        "connectivity": [{"name": "conn", "label": "connectivity", "plan": "lite", "tags": ["connectivity"],
                          "credentials": {"clientid": "conn-client", "clientsecret": "conn-secret-VALUE",
                                          "token_service_url": idp.base, "onpremise_proxy_host": "127.0.0.1",
                                          "onpremise_proxy_http_port": str(proxy.port)}}],
    }
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PROPAGATION_", "VCAP_", "SERVICE_BINDING"))},
        "VCAP_SERVICES": json.dumps(vcap),
        "destinations": json.dumps([{"name": "S4", "url": "http://s4-virtual:44300", "ProxyType": "OnPremise",
                                     "Authentication": "PrincipalPropagation", "CloudConnectorLocationId": "LOC1"}]),
        "SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH)]),
    }


def _get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            if _get(port, "/lag")[0] == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("uvicorn did not answer /lag in time")


async def _fire(port: int, work: list[str], concurrency: int) -> tuple[list[float], dict[int, int], float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(work))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30, trust_env=False) as http:
        async def worker() -> None:
            while queue:
                token = queue.pop()
                started = time.perf_counter()
                response = await http.get("/orders", headers={"Authorization": f"Bearer {token}"})
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, statuses, time.perf_counter() - started


def run(quick: bool) -> dict[str, Any]:
    users, calls, concurrency = (50, 3, 8) if quick else (200, 5, 8)
    pki = Pki(prefix="propagation-bench-async-pki-")
    try:
        with LoopbackServer(tls=(str(pki.cert_file), str(pki.key_file))) as idp, LoopbackServer() as proxy:
            xsuaa = jwtkit.Xsuaa(uaadomain=f"localhost:{idp.port}")
            idp.token_keys = xsuaa.token_keys()
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "async_app:app", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1", "--log-level", "warning", "--app-dir", str(BENCH)],
                env=_environment(idp, proxy, xsuaa, str(pki.ca_file)), cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            try:
                _wait_ready(proc, port)
                warm = _get(port, "/orders", xsuaa.token("warmup@example.com"))  # key fetch, first pools
                assert warm[0] == 200, warm
                tokens = [xsuaa.token(f"user{i}@example.com") for i in range(users)]
                work = [t for _ in range(calls) for t in tokens]
                before = idp.exchanges
                _get(port, "/lag?reset")
                latencies, statuses, elapsed = asyncio.run(_fire(port, work, concurrency))
                lag = json.loads(_get(port, "/lag")[1])["max_ms"]
                exchanges = idp.exchanges - before
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        pki.cleanup()
    latencies.sort()
    return {
        "users": users, "calls": calls, "concurrency": concurrency, "requests": len(work),
        "statuses": statuses, "seconds": elapsed, "throughput": len(work) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000, "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "exchanges": exchanges, "lag_ms": lag, "proxied": proxy.gets,
    }
