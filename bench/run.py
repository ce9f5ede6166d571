"""Performance and scale figures for ``propagation``, measured side by side in one run.

    python bench/run.py            # full run
    python bench/run.py --quick    # CI-sized
    python bench/run.py --strict   # exit 1 when a target is missed

Sections:

(a) inbound: requests/s of a small Flask app called as a WSGI loop — bare, under
    ``PropagationMiddleware`` with a repeated valid token, and validating with sap-xssec on
    every request (naive). Target: middleware >= 0.95 x bare (issue 18).
(b) outbound cache hit: ``session(name).get`` vs plain ``requests.Session.get`` against a
    loopback server. Target: <= 1.10 x the plain time per call.
(c) 64 threads, U users x 3 destinations, thousands of requests: exactly U x 3 exchanges,
    counted at a loopback token endpoint.
(d) memory per cached token (tracemalloc) with 100,000 users, and the LRU bound that caps it.
(e) a new session()/client() per call; (f) async: an ASGI app calling on premise; (g) SAP's
    clients (Cloud SDK for JS, sap-cloud-sdk for Python) vs session()/client() on one sandbox
    destination (``bench/sdk_compare.py``).

The load test across processes (gunicorn workers, Redis token cache) is ``bench/loadtest.py``.

Targets print PASS/MISS with the figure; the exit code is 0 whatever the figures unless
``--strict``. Test IdPs (``tests/jwtkit.py``) sign real RS256 tokens; sap-xssec's key fetch
is answered by ``respx``; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import statistics
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import requests  # noqa: E402
import respx  # noqa: E402

import jwtkit  # noqa: E402
from servers import LoopbackServer, rate  # noqa: E402

from propagation.bindings import Binding, Bindings  # noqa: E402
from propagation.caches.memory import CacheKey, MemoryTokenCache  # noqa: E402
from propagation.engine import Propagator  # noqa: E402
from propagation.exchange.oauth import OAuthClient, TokenResponse  # noqa: E402
from propagation.tokens import fingerprint  # noqa: E402

RESULTS: list[tuple[str, bool]] = []


def verdict(name: str, ok: bool, figure: str) -> None:
    RESULTS.append((name, ok))
    print(f"  {'PASS' if ok else 'MISS'}  {name}: {figure}")


def best_of(rounds: int, variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Run every variant once per round, interleaved (drift hits all alike); best rate each."""
    seen: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            seen[name].append(run())
    return {name: max(values) for name, values in seen.items()}


def xsuaa_bindings(xsuaa: jwtkit.Xsuaa) -> Bindings:
    return Bindings([Binding(name="my-xsuaa", label="xsuaa", credentials=xsuaa.credentials(), plan="application",
                             tags=("xsuaa",), source="bench")])


# -- (a) inbound --------------------------------------------------------------------------------
def inbound(quick: bool) -> None:
    print("(a) inbound: Flask app as a WSGI call loop")
    import sap.xssec
    from flask import Flask, jsonify
    from werkzeug.test import EnvironBuilder

    from propagation import current_token
    from propagation.wsgi import PropagationMiddleware

    xsuaa = jwtkit.Xsuaa()
    token = xsuaa.token("alice@example.com")

    def make_app() -> Flask:
        app = Flask("bench")

        @app.get("/items")
        def items() -> Any:
            user = current_token()
            return jsonify(user=user.user if user is not None else None, items=[1, 2, 3])

        return app

    bare = make_app().wsgi_app
    wrapped = PropagationMiddleware(make_app().wsgi_app, propagator=Propagator(bindings=xsuaa_bindings(xsuaa), environ={}))
    credentials = xsuaa.credentials()
    inner = make_app().wsgi_app

    def naive(environ: dict[str, Any], start_response: Any) -> Any:
        header = environ.get("HTTP_AUTHORIZATION", "")
        sap.xssec.create_security_context_xsuaa(header[7:], credentials)  # every request
        return inner(environ, start_response)

    base_environ = EnvironBuilder(path="/items", headers={"Authorization": f"Bearer {token}"}).get_environ()
    statuses: set[str] = set()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.add(status)
        return lambda data: None

    def call(app: Any) -> None:
        environ = dict(base_environ)
        environ["wsgi.input"] = io.BytesIO()
        result = app(environ, start_response)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    n = 1500 if quick else 10_000
    n_naive = 100 if quick else 1000
    with respx.mock(assert_all_called=False) as router:
        router.get(host=xsuaa.uaadomain, path="/token_keys").respond(json=xsuaa.token_keys())
        for app in (bare, wrapped, naive):  # warm up: imports, key fetch, validation cache
            for _ in range(50):
                call(app)
        assert statuses == {"200 OK"}, statuses
        rates = best_of(2 if quick else 5, {
            "bare": lambda: rate(lambda: call(bare), n),
            "middleware": lambda: rate(lambda: call(wrapped), n),
            "naive": lambda: rate(lambda: call(naive), n_naive),
        })
    assert statuses == {"200 OK"}, statuses
    for name, value in rates.items():
        print(f"        {name:<11} {value:10,.0f} req/s  ({1e6 / value:7.1f} us/req)")
    ratio = rates["middleware"] / rates["bare"]
    print(f"        middleware overhead {1e6 / rates['middleware'] - 1e6 / rates['bare']:.1f} us/req")
    print(f"        naive / bare = {rates['naive'] / rates['bare']:.3f}; middleware / naive = {rates['middleware'] / rates['naive']:.1f}x")
    verdict("middleware >= 0.95 x bare", ratio >= 0.95, f"{ratio:.3f} x bare")


# -- (b) outbound cache hit ---------------------------------------------------------------------
def outbound(quick: bool) -> None:
    print("(b) outbound cache hit: session(name).get vs requests.Session.get, loopback target")
    xsuaa = jwtkit.Xsuaa()
    user = xsuaa.token("alice@example.com")
    with LoopbackServer() as srv:
        engine = Propagator(
            environ={"destinations": json.dumps([{
                "name": "S4", "url": f"{srv.base}/odata", "Authentication": "OAuth2JWTBearer",
                "tokenServiceURL": srv.token_url, "clientId": "dest-client", "clientSecret": "secret-VALUE"}])},
            bindings=Bindings([]), oauth=OAuthClient(retries=0),
        )
        plain = requests.Session()
        ours = engine.session("S4", user_token=user)
        url = f"{srv.base}/odata/Items"

        def get_plain() -> None:
            plain.get(url).raise_for_status()

        def get_ours() -> None:
            ours.get("Items").raise_for_status()

        def get_fresh_session() -> None:
            engine.session("S4", user_token=user).get("Items").raise_for_status()

        for fn in (get_plain, get_ours):
            for _ in range(50):
                fn()
        assert srv.exchanges == 1
        n = 300 if quick else 3000
        rates = best_of(2 if quick else 5, {"plain": lambda: rate(get_plain, n), "session": lambda: rate(get_ours, n)})
        fresh = rate(get_fresh_session, max(50, n // 10))
        authorize = rate(lambda: engine.plan("S4", url="Items", user_token=user), n * 10)  # in-process part, no network
        assert srv.exchanges == 1, srv.exchanges
    for name, value in rates.items():
        print(f"        {name:<11} {1e6 / value:7.1f} us/call")
    print(f"        plan() on a cache hit {1e6 / authorize:7.1f} us (in-process share of each call)")
    print(f"        new session per call {1e6 / fresh:7.1f} us/call (the engine's pooled connection)")
    ratio = rates["plain"] / rates["session"]
    verdict("session(name).get <= 1.10 x requests.Session.get", ratio <= 1.10, f"{ratio:.3f} x plain")


# -- (e) a new session/client per call over TLS keep-alive ----------------------------------------
def per_call(quick: bool) -> None:
    print("(e) a new session()/client() per call vs one reused requests.Session, TLS keep-alive loopback")
    from propagation.sandbox.pki import Pki

    xsuaa = jwtkit.Xsuaa()
    user = xsuaa.token("alice@example.com")
    pki = Pki(prefix="propagation-bench-pki-")
    saved = {k: os.environ.get(k) for k in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(pki.ca_file)
    try:
        with LoopbackServer(tls=(str(pki.cert_file), str(pki.key_file))) as srv:
            engine = Propagator(
                environ={"destinations": json.dumps([{
                    "name": "S4", "url": f"{srv.base}/odata", "Authentication": "OAuth2JWTBearer",
                    "tokenServiceURL": srv.token_url, "clientId": "dest-client", "clientSecret": "secret-VALUE"}])},
                bindings=Bindings([]), oauth=OAuthClient(retries=0),
            )
            plain = requests.Session()
            url = f"{srv.base}/odata/Items"

            def get_plain() -> None:
                plain.get(url).raise_for_status()

            def new_session() -> None:
                engine.session("S4", user_token=user).get("Items").raise_for_status()

            def new_client() -> None:
                engine.client("S4", user_token=user).get("Items").raise_for_status()

            for fn in (get_plain, new_session, new_client):
                for _ in range(30):
                    fn()
            n = 200 if quick else 2000
            rates = best_of(2 if quick else 5, {"plain": lambda: rate(get_plain, n), "session": lambda: rate(new_session, n),
                                                "client": lambda: rate(new_client, n)})
            assert srv.exchanges == 1, srv.exchanges
            engine.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        pki.cleanup()
    for name, value in rates.items():
        print(f"        {name:<11} {1e6 / value:7.1f} us/call")
    ratio = rates["plain"] / rates["session"]
    print(f"        new client() per call = {rates['plain'] / rates['client']:.3f} x plain")
    verdict("new session() per call <= 1.10 x reused requests.Session (TLS)", ratio <= 1.10, f"{ratio:.3f} x plain")


# -- (f) async: an ASGI app calling on premise with async_client ------------------------------------
def async_onprem(quick: bool) -> None:
    import async_load

    print("(f) async: ASGI app (uvicorn, 1 worker) -> async_client -> Connectivity proxy -> on-premise, per user")
    r = async_load.run(quick)
    print(f"        {r['users']} users x {r['calls']} calls, {r['concurrency']} concurrent clients: {r['requests']:,} requests "
          f"in {r['seconds']:.2f} s = {r['throughput']:,.0f} req/s; p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; "
          f"statuses {r['statuses']}")
    print(f"        {r['exchanges']} connectivity exchanges for {r['users']} users; event-loop max lag {r['lag_ms']:.1f} ms "
          f"(sync figure for comparison: bench/loadtest.py, gunicorn)")
    ok = r["statuses"] == {200: r["requests"]} and r["proxied"] >= r["requests"]
    verdict("exchanges == users (on-premise, async)", ok and r["exchanges"] == r["users"],
            f"{r['exchanges']} exchanges for {r['users']} users")
    verdict("event-loop max lag <= 10 ms", r["lag_ms"] <= 10.0, f"{r['lag_ms']:.1f} ms")


# -- (c) concurrency ------------------------------------------------------------------------------
def concurrency(quick: bool) -> None:
    users_n = 20 if quick else 100
    rounds = 4 if quick else 10
    names = ["S4", "CRM", "HR"]
    print(f"(c) 64 threads, {users_n} users x {len(names)} destinations: exchanges counted at the token endpoint")
    xsuaa = jwtkit.Xsuaa()
    users = [xsuaa.token(f"user{i}@example.com") for i in range(users_n)]
    with LoopbackServer() as srv:
        engine = Propagator(
            environ={"destinations": json.dumps([{
                "name": name, "url": f"{srv.base}/{name}", "Authentication": "OAuth2JWTBearer",
                "tokenServiceURL": srv.token_url, "clientId": f"client-{name}", "clientSecret": "secret-VALUE"}
                for name in names])},
            bindings=Bindings([]), oauth=OAuthClient(retries=0),
        )
        work = [(u, n) for _ in range(rounds) for u in users for n in names]
        import random

        random.Random(7).shuffle(work)

        def one(item: tuple[str, str]) -> int:
            return engine.session(item[1], user_token=item[0]).get("x").status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(64) as pool:
            codes = list(pool.map(one, work))
        elapsed = time.perf_counter() - start
    expected = users_n * len(names)
    ok = codes.count(200) == len(work) and srv.exchanges == expected and set(srv.counts.values()) == {1}
    print(f"        {len(work):,} requests in {elapsed:.2f} s ({len(work) / elapsed:,.0f} req/s), "
          f"{srv.exchanges} exchanges, max per (user, destination) {max(srv.counts.values())}")
    verdict(f"exactly {expected} exchanges", ok, f"{srv.exchanges} exchanges for {len(work):,} requests")


# -- (d) memory ------------------------------------------------------------------------------------
def memory(quick: bool) -> None:
    users_n = 20_000 if quick else 100_000
    print(f"(d) memory per cached token, {users_n:,} users (tracemalloc)")
    now = time.time()
    # A realistic exchanged token: ~1 KB JWT-shaped string, distinct per user.
    pad = "x" * 900

    def entry(i: int) -> tuple[CacheKey, TokenResponse]:
        key = CacheKey(destination="S4", grant="jwt-bearer", client="dest-client", tenant="tenant-zid",
                       user=fingerprint(f"user-{i}"))
        return key, TokenResponse(access_token=f"eyJ.{i:08d}.{pad}", expires_at=now + 3600, scope="read")

    def fill(cache: MemoryTokenCache) -> float:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(users_n):
            key, token = entry(i)
            cache.get_or_fetch(key, lambda token=token: token)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return after - before

    unbounded = MemoryTokenCache(maxsize=users_n)
    total = fill(unbounded)
    per = total / users_n
    token_bytes = sys.getsizeof(entry(0)[1].access_token)
    print(f"        unbounded (maxsize={users_n:,}): {total / 2**20:,.1f} MiB, {per:,.0f} B per token "
          f"(of which the ~1 KB token string {token_bytes} B)")
    default = MemoryTokenCache()
    capped = fill(default)
    print(f"        default LRU bound maxsize={default.maxsize:,}: {len(default):,} entries, {capped / 2**20:,.1f} MiB "
          f"(cap ~ {per * default.maxsize / 2**20:,.1f} MiB)")
    del unbounded
    verdict("LRU bound caps memory", len(default) == default.maxsize and capped < total,
            f"{len(default):,} entries kept of {users_n:,}; {per:,.0f} B/token")


def sdk_clients(quick: bool) -> None:
    import sdk_compare

    print("(g) SAP's clients vs propagation on the same sandbox destination (S4_CLOUD, alice), per cached call")
    r = sdk_compare.run(quick)
    for name in ("cloud-sdk-js", "sap-cloud-sdk", "propagation.session", "propagation.client"):
        print(f"        {name:<20} {r[name]['us_per_call']:9.0f} us/call")
    ratios = r["ratios"]
    verdict("session() per call <= 0.75 x the Cloud SDK for JS", ratios["session_vs_cloud_sdk_js"] <= 0.75,
            f"{ratios['session_vs_cloud_sdk_js']:.2f} x (client() {ratios['client_vs_cloud_sdk_js']:.2f} x)")
    verdict("sap-cloud-sdk per call >= 2 x session()", ratios["sap_cloud_sdk_vs_session"] >= 2.0,
            f"{ratios['sap_cloud_sdk_vs_session']:.1f} x")


SECTIONS: dict[str, Callable[[bool], None]] = {
    "a": inbound, "b": outbound, "c": concurrency, "d": memory, "e": per_call, "f": async_onprem, "g": sdk_clients,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized runs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    args = parser.parse_args(argv)
    logging.getLogger("propagation").setLevel(logging.WARNING)
    print(f"propagation bench ({'quick' if args.quick else 'full'}), Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    chosen = [SECTIONS[k] for k in args.only] if args.only else list(SECTIONS.values())
    for section in chosen:
        started = time.perf_counter()
        section(args.quick)
        print(f"        [{time.perf_counter() - started:.1f} s]")
    missed = [name for name, ok in RESULTS if not ok]
    print(f"summary: {len(RESULTS) - len(missed)}/{len(RESULTS)} targets met" + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
