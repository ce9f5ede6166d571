"""The forum failure, reproduced and fixed, on this machine: ``python examples/demo.py``.

Starts TLS stand-ins for XSUAA and an S/4HANA OData service (``standins.py``), sets the
environment the way Cloud Foundry would (``VCAP_SERVICES``, ``destinations``, a CA bundle),
serves the Flask API of ``flask_forum/app.py`` and calls it as nobody, as alice and as bob.
Each step prints the chain inbound user -> token exchange -> whom the backend saw, checks
it, and the exit code says whether every check held (0) or not (1). Tokens are shown only
as fingerprints (first 12 hex digits of their SHA-256).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if importlib.util.find_spec("propagation") is None:  # a clone without `pip install -e .`
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import requests  # noqa: E402

from standins import (  # noqa: E402
    FUNCTIONAL_LOCATION_PATH,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    NO_USER_TOKEN_MESSAGE,
    BackendCall,
    StandIns,
    TokenCall,
    fingerprint,
)

APP_CLIENT = "sb-forum-api!t1"
XSAPPNAME = "forum-api!t1"
DEST_CLIENT = "sb-s4-dest!t1"  # the OAuth client the S4 destinations use at the token server
ALICE = "alice@example.com"
BOB = "bob@example.com"
GRANT_NAMES = {GRANT_JWT_BEARER: "jwt-bearer", GRANT_CLIENT_CREDENTIALS: "client_credentials"}


# --------------------------------------------------------------------------- environment
def btp_environment(standins: StandIns, app_secret: str, dest_secret: str) -> dict[str, str]:
    """What Cloud Foundry would put in the app's environment: the xsuaa binding, the
    approuter-style ``destinations`` and a CA bundle for the stand-ins' certificate."""
    ts = standins.token_server
    xsuaa = {
        "name": "forum-uaa",
        "instance_name": "forum-uaa",
        "label": "xsuaa",
        "plan": "application",
        "tags": ["xsuaa"],
        "credentials": {
            "clientid": APP_CLIENT,
            "clientsecret": app_secret,
            "url": ts.url,
            "uaadomain": ts.uaadomain,
            "xsappname": XSAPPNAME,
            "identityzone": ts.subdomain,
            "identityzoneid": ts.zid,
            "tenantid": ts.zid,
            "tenantmode": "dedicated",
        },
    }
    s4 = {
        "url": standins.backend.url,
        "tokenServiceURL": ts.token_url,
        "clientId": DEST_CLIENT,
        "clientSecret": dest_secret,
    }
    destinations = [
        {"name": "S4", "Authentication": "OAuth2JWTBearer", **s4},
        {"name": "S4_TECHNICAL", "Authentication": "OAuth2ClientCredentials", **s4},
    ]
    ca = str(standins.pki.ca_file)
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "localhost", "127.0.0.1"]))
    return {
        "VCAP_SERVICES": json.dumps({"xsuaa": [xsuaa]}),
        "destinations": json.dumps(destinations),
        "SSL_CERT_FILE": ca,  # httpx (sap-xssec's key fetch)
        "REQUESTS_CA_BUNDLE": ca,  # requests (token exchange, OData call)
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }


def load_app() -> Any:
    """Import ``flask_forum/app.py`` by path, after the environment is in place."""
    spec = importlib.util.spec_from_file_location("flask_forum_app", HERE / "flask_forum" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve the WSGI app on an ephemeral loopback port (werkzeug, threaded); yields its URL."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the demo prints its own trace
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- one step
@dataclass
class Observed:
    """One API call and everything it caused at the stand-ins."""

    status: int
    body: Any
    text: str
    token_calls: list[TokenCall]
    backend_calls: list[BackendCall]


@dataclass
class Step:
    title: str
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, bool(ok)))
        return bool(ok)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok in self.checks)


def describe_token_call(call: TokenCall) -> str:
    if call.path == "/token_keys":
        return f"keys      GET /token_keys -> {call.status}  (sap-xssec fetching the verification key)"
    grant = GRANT_NAMES.get(call.grant or "", call.grant or "-")
    result = f"token#{call.issued}" if call.issued else f"{call.error}"
    return (
        f"exchange  POST /oauth/token grant={grant} client={call.client or '-'} ({call.client_auth or 'no auth'})"
        f" user={call.user or '-'} -> {call.status} {result}"
    )


def describe_backend_call(call: BackendCall) -> str:
    if call.status == 200:
        return f"backend   200 saw {call.user} (token#{call.token}, client {call.client})"
    if call.error == "technical user":
        return f"backend   {call.status} technical user {call.client} (token#{call.token}): {NO_USER_TOKEN_MESSAGE}"
    return f"backend   {call.status} {call.error}"


def chain(who: str | None, seen: Observed) -> str:
    """One line: inbound user -> exchange (grant, client, user) -> whom the backend saw."""
    parts = [who or "anonymous"]
    exchanges = [c for c in seen.token_calls if c.path == "/oauth/token"]
    for c in exchanges:
        grant = GRANT_NAMES.get(c.grant or "", c.grant or "-")
        parts.append(f"{grant} [client {c.client}, user {c.user or 'none'}] {c.status}")
    if not exchanges and seen.backend_calls:
        parts.append("cached token (no exchange)")
    for b in seen.backend_calls:
        parts.append(f"backend {b.status}, saw {b.user or 'no user'}")
    if not seen.token_calls and not seen.backend_calls:
        parts.append(f"API {seen.status}, nothing sent")
    return " -> ".join(parts)


class Demo:
    """Calls the API and prints/checks what happened behind it."""

    def __init__(self, api_url: str, standins: StandIns) -> None:
        self.api_url = api_url
        self.standins = standins
        self.steps: list[Step] = []
        self.http = requests.Session()
        self.http.trust_env = False  # the API is plain HTTP on loopback: no proxy, no CA needed

    def call(self, path: str, token: str | None = None) -> Observed:
        ts, backend = self.standins.token_server, self.standins.backend
        t0, b0 = len(ts.calls), len(backend.calls)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = self.http.get(self.api_url + path, headers=headers, timeout=30)
        try:
            body: Any = r.json()
        except ValueError:
            body = None
        return Observed(r.status_code, body, r.text, ts.calls[t0:], backend.calls[b0:])

    def show(self, who: str | None, token: str | None, seen: Observed) -> None:
        print("    chain     " + chain(who, seen))
        print(f"    inbound   {who} jwt#{fingerprint(token)}" if who and token else "    inbound   no Authorization header")
        for call in seen.token_calls:
            print("    " + describe_token_call(call))
        for bcall in seen.backend_calls:
            print("    " + describe_backend_call(bcall))
        if not seen.token_calls and not seen.backend_calls:
            print("    outbound  none (nothing reached the token server or the backend)")
        summary = seen.text.strip().replace("\n", " ")
        print(f"    API       {seen.status} {summary[:110]}{'...' if len(summary) > 110 else ''}")

    def step(self, title: str, body: Callable[[Step], None]) -> None:
        step = Step(title)
        self.steps.append(step)
        print(f"\n{title}")
        try:
            body(step)
        except Exception as exc:  # noqa: BLE001 - a demo reports, it does not crash
            step.check(f"no exception ({type(exc).__name__}: {exc})", False)
        for what, ok in step.checks:
            print(f"    {'ok  ' if ok else 'FAIL'}  {what}")

    @staticmethod
    def no_token_leak(step: Step, observed: list[Observed], *tokens: str) -> None:
        """Responses may name users and errors, never carry a token (ours or an exchanged one)."""
        step.check(
            "no token in any response body",
            not any("eyJ" in o.text or any(t in o.text for t in tokens) for o in observed),
        )

    # -- the scenario -------------------------------------------------------------
    def run(self) -> bool:
        ts = self.standins.token_server
        alice = ts.login(ALICE, APP_CLIENT)
        bob = ts.login(BOB, APP_CLIENT)

        def anonymous(step: Step) -> None:
            seen = self.call("/functional-locations")
            self.show(None, None, seen)
            step.check("401 from the middleware", seen.status == 401)
            step.check("nothing sent to the token server or the backend",
                       not [c for c in seen.token_calls if c.path == "/oauth/token"] and not seen.backend_calls)

        def naive(step: Step) -> None:
            seen = self.call("/naive", alice)
            self.show(ALICE, alice, seen)
            cc = [c for c in seen.token_calls if c.grant == GRANT_CLIENT_CREDENTIALS and c.status == 200]
            step.check("the hand-wired call fetched a client_credentials token (technical user)", len(cc) == 1)
            step.check("backend answered 401: no user token, alice is lost",
                       [c.status for c in seen.backend_calls] == [401]
                       and seen.backend_calls[0].user is None
                       and NO_USER_TOKEN_MESSAGE in seen.text)
            self.no_token_leak(step, [seen], alice)

        def as_alice(step: Step) -> None:
            seen = self.call("/functional-locations", alice)
            self.show(ALICE, alice, seen)
            exchanges = [c for c in seen.token_calls if c.path == "/oauth/token"]
            step.check(f"one jwt-bearer exchange for {ALICE} with client {DEST_CLIENT}",
                       [(c.grant, c.user, c.client, c.status) for c in exchanges]
                       == [(GRANT_JWT_BEARER, ALICE, DEST_CLIENT, 200)])
            step.check(f"backend saw {ALICE}",
                       seen.status == 200 and [c.user for c in seen.backend_calls] == [ALICE]
                       and isinstance(seen.body, dict) and seen.body.get("seenBy") == ALICE)
            step.check("the backend got exactly the exchanged token",
                       bool(exchanges) and [c.token for c in seen.backend_calls] == [exchanges[0].issued])
            self.no_token_leak(step, [seen], alice)

        def bob_then_alice(step: Step) -> None:
            seen = self.call("/functional-locations", bob)
            self.show(BOB, bob, seen)
            step.check(f"backend saw {BOB}",
                       seen.status == 200 and [c.user for c in seen.backend_calls] == [BOB])
            step.check(f"one jwt-bearer exchange for {BOB}",
                       [(c.grant, c.user) for c in seen.token_calls if c.path == "/oauth/token"]
                       == [(GRANT_JWT_BEARER, BOB)])
            print(f"    -- 3 more calls as {ALICE} --")
            again = [self.call("/functional-locations", alice) for _ in range(3)]
            seen_users = [c.user for o in again for c in o.backend_calls]
            new_exchanges = [c for o in again for c in o.token_calls if c.path == "/oauth/token"]
            for o in again:
                print("    chain     " + chain(ALICE, o))
                for bcall in o.backend_calls:
                    print("    " + describe_backend_call(bcall))
            print(f"    exchange  {len(new_exchanges)} new token requests for these 3 calls")
            step.check(f"backend saw {ALICE} three times", [o.status for o in again] == [200] * 3
                       and seen_users == [ALICE] * 3)
            step.check("no new exchange: alice's token came from the cache", not new_exchanges)
            counts = {u: len(ts.exchanges(grant=GRANT_JWT_BEARER, user=u)) for u in (ALICE, BOB)}
            print(f"    jwt-bearer exchanges so far: {ALICE}={counts[ALICE]} {BOB}={counts[BOB]}")
            step.check("still exactly 1 exchange per user", counts == {ALICE: 1, BOB: 1})
            self.no_token_leak(step, [seen, *again], alice, bob)

        self.step("(a) GET /functional-locations without a token", anonymous)
        self.step(f"(b) GET /naive as {ALICE}: the forum failure (hand-wired client_credentials)", naive)
        self.step(f"(c) GET /functional-locations as {ALICE}: propagation (jwt-bearer for the same user)", as_alice)
        self.step(f"(d) GET /functional-locations as {BOB}, then 3 more times as {ALICE} (cache)", bob_then_alice)
        return all(step.ok for step in self.steps)

    def summary(self) -> None:
        ts, backend = self.standins.token_server, self.standins.backend
        keys = sum(1 for c in ts.calls if c.path == "/token_keys")
        grants: dict[str, int] = {}
        for c in ts.exchanges():
            name = GRANT_NAMES.get(c.grant or "", str(c.grant))
            grants[name] = grants.get(name, 0) + 1
        seen: dict[str, int] = {}
        for bcall in backend.calls:
            who = bcall.user or f"technical {bcall.client}"
            seen[who] = seen.get(who, 0) + 1
        print("\nsummary")
        print(f"  token server  {keys} key fetch(es), token requests: "
              + ", ".join(f"{g} x{n}" for g, n in sorted(grants.items())))
        print("  backend saw   " + ", ".join(f"{who} x{n}" for who, n in seen.items()))


def main() -> int:
    started = time.monotonic()
    print("propagation demo: the forum failure, reproduced and fixed, on 127.0.0.1")
    with StandIns() as standins:
        ts = standins.token_server
        app_secret = ts.register_client(APP_CLIENT, xsappname=XSAPPNAME)
        dest_secret = ts.register_client(DEST_CLIENT)
        os.environ.update(btp_environment(standins, app_secret, dest_secret))
        try:
            app = load_app()
        except Exception as exc:  # noqa: BLE001
            print(f"FAIL  could not import examples/flask_forum/app.py: {type(exc).__name__}: {exc}")
            return 1
        with serve(app) as api_url:
            print(f"  XSUAA stand-in  {ts.url}  (app client {APP_CLIENT}, xsappname {XSAPPNAME})")
            print(f"  S/4 stand-in    {standins.backend.url}{FUNCTIONAL_LOCATION_PATH}")
            print(f"  destinations    S4 = OAuth2JWTBearer, S4_TECHNICAL = OAuth2ClientCredentials (client {DEST_CLIENT})")
            print(f"  Flask API       {api_url}  (examples/flask_forum/app.py)")
            demo = Demo(api_url, standins)
            ok = demo.run()
            demo.summary()
    passed = sum(step.ok for step in demo.steps)
    elapsed = time.monotonic() - started
    print(f"\ndemo {'OK' if ok else 'FAILED'}: {passed} of {len(demo.steps)} steps passed in {elapsed:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
