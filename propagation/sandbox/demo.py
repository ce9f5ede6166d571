"""``python -m propagation.sandbox demo``: principal propagation end to end, on this machine.

Starts the sandbox (XSUAA, Destination service, Connectivity proxy, on-premise S/4HANA,
Cloud Integration — real TLS servers on loopback), starts ``examples/flask_odata/app.py``
as a real child process with the sandbox's environment, and calls it: without a token, as
the forum's hand-wired code would (a technical token through the proxy), as alice, as bob,
as alice again (cached) and once through the iFlow. Each step prints the chain from the
landscape's records — inbound user → exchange(s) → proxy → what the backend saw — and
checks it. Exit code 0 when every check held, 1 otherwise; children and temporary files
are always cleaned up. Tokens appear only as fingerprints (``#`` + 12 hex digits).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import requests

from ..events.trace import TRACE_ENV
from ..tokens import fingerprint
from .client import password_login
from .ports import free_port
from .runtime import Sandbox
from .servers import Forwarded

__all__ = ["run_demo", "default_app"]

USERS = ("alice", "bob")
LOCATIONS = "/functional-locations"
#: What the hand-wired call asks the on-premise system for (the forum post's request).
NAIVE_PATH = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation"
NO_USER = "No user token (JWT) has been provided. This is strictly necessary for 'PrincipalPropagation'"


def fp(raw: str | None) -> str:
    """``#`` + the first 12 hex digits of the library's token fingerprint."""
    return "#" + (fingerprint(raw)[:12] if raw else "-")


def short(fingerprint_: str | None) -> str:
    return "#" + fingerprint_[:12] if fingerprint_ else "#-"


def default_app() -> Path:
    """``examples/flask_odata/app.py`` of the clone this package was installed from."""
    import propagation

    return Path(propagation.__file__).resolve().parent.parent / "examples" / "flask_odata" / "app.py"


def _redact(text: str) -> str:
    """Log lines shown on failure: anything that looks like a JWT is cut."""
    import re

    return re.sub(r"eyJ[\w-]+\.[\w-]+\.[\w-]*", "<jwt>", text)


# --------------------------------------------------------------------------- the app process
class AppProcess:
    """The example app as a real child process on a free loopback port."""

    def __init__(self, app: Path, env: dict[str, str], log_dir: Path) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_dir / "app.log"
        import propagation

        root = str(Path(propagation.__file__).resolve().parent.parent)  # a clone without `pip install -e .`
        path = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.env = {**env, "PORT": str(self.port), "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "AppProcess":
        log = open(self.log_file, "wb")  # noqa: SIM115 - closed once the child has it
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.app)], cwd=str(self.app.parent), env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def wait_healthy(self, http: requests.Session, timeout: float) -> float:
        """Seconds until ``GET /health`` answered 200; raises ``RuntimeError`` otherwise."""
        assert self.proc is not None
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {self.proc.returncode}")
            try:
                if http.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.1)  # polling a starting process
        raise RuntimeError(f"the app was not healthy within {timeout:.0f} s")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return _redact("\n".join(text.splitlines()[-lines:]))


# --------------------------------------------------------------------------- steps
@dataclass
class Seen:
    """One call and everything it caused in the landscape."""

    status: int
    text: str
    body: Any
    exchanges: list[Any]
    calls: list[Any]
    traffic: list[Any]
    forwarded: list[Forwarded]
    #: The app's own trace lines for this call (its engine's events: ``PROPAGATION_TRACE``).
    library: list[str] = field(default_factory=list)

    def token_requests(self, **where: Any) -> list[Any]:
        return [e for e in self.exchanges if all(getattr(e, k) == v for k, v in where.items())]

    def at(self, service: str) -> list[Any]:
        return [c for c in self.calls if c.service == service]


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


class Demo:
    """Calls the app (and, for the forum failure, the proxy by hand) and prints the chain."""

    def __init__(self, sandbox: Sandbox, api_url: str, out: TextIO) -> None:
        assert sandbox.landscape is not None and sandbox.proxy is not None
        self.sandbox = sandbox
        self.landscape: Any = sandbox.landscape
        self.proxy = sandbox.proxy
        self.api_url = api_url
        self.out = out
        self.env = sandbox.environ()
        self.steps: list[Step] = []
        self.responses: list[str] = []
        self.http = requests.Session()
        self.http.trust_env = False  # the app is plain HTTP on loopback
        self.tokens: dict[str, str] = {}
        #: Where the app appends its trace lines (``PROPAGATION_TRACE``), if it does.
        self.events_file: Path | None = None

    def say(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    # -- observing ---------------------------------------------------------------------
    def observe(self, action: Callable[[], requests.Response | None]) -> Seen:
        """Run ``action`` and collect what it caused (records are appended in order, so a
        slice from before to after is exactly this step's; the demo calls one at a time)."""
        ls = self.landscape
        marks = len(ls.exchanges), len(ls.calls), len(ls.traffic), len(self.proxy.forwarded)
        offset = self._events_size()
        r = action()
        status, text, body = 0, "", None
        if r is not None:
            status, text = r.status_code, r.text
            try:
                body = r.json()
            except ValueError:
                pass
            self.responses.append(text)
        return Seen(status, text, body, list(ls.exchanges[marks[0]:]), list(ls.calls[marks[1]:]),
                    list(ls.traffic[marks[2]:]), list(self.proxy.forwarded[marks[3]:]), self._events_since(offset))

    def _events_size(self) -> int:
        try:
            return self.events_file.stat().st_size if self.events_file is not None else 0
        except OSError:
            return 0

    def _events_since(self, offset: int) -> list[str]:
        """The app's trace lines written since ``offset`` (time stamp and ``lib`` label cut)."""
        if self.events_file is None:
            return []
        try:
            with open(self.events_file, "rb") as handle:
                handle.seek(offset)
                text = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        return [line.split(None, 2)[2] for line in text.splitlines() if len(line.split(None, 2)) == 3]

    def call(self, method: str, path: str, user: str | None = None, **kwargs: Any) -> Seen:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return self.observe(lambda: self.http.request(method, self.api_url + path, headers=headers, timeout=30, **kwargs))

    def show(self, seen: Seen, user: str | None) -> None:
        """The chain of one call, from the records: inbound → keys → lookups → exchanges → proxy → backend."""
        if user:
            self.say(f"    inbound    {user} {fp(self.tokens[user])} (XSUAA user token, client {self.landscape.app_client})")
        for line in seen.library:  # what the library did, from its events (the same lines as exec --trace)
            self.say(f"    library    {_redact(line)}")
        for t in seen.traffic:
            if t.url.endswith("/token_keys") or t.url.endswith("/oauth2/certs"):
                self.say(f"    keys       GET {t.url} -> {t.status} (sap-xssec verifies the inbound token)")
        service_token = [e for e in seen.exchanges if e.client == self.landscape.destination_client]
        for e in service_token:
            self.say(f"    exchange   {e.service} {e.grant} client={e.client} -> {e.status} {short(e.issued)}"
                     " (the Destination service's own token)")
        for c in seen.calls:
            if c.service == "destination":
                who = f"X-user-token of {c.user}" if c.user else "no user header"
                self.say(f"    lookup     Destination service {c.path.rsplit('/', 1)[-1]} ({who}) -> {c.status}")
        for e in seen.exchanges:
            if e in service_token:
                continue
            by = " by the Destination service" if e.via == "destination-service" else ""
            issued = f" {short(e.issued)}" if e.issued else f" {e.error}"
            self.say(f"    exchange   {e.service} {e.grant}{by} client={e.client} user={e.user or '-'} -> {e.status}{issued}")
        for f in seen.forwarded:
            header = " + SAP-Connectivity-Authentication" if f.user_header else ""
            self.say(f"    proxy      {f.method} {f.url} Proxy-Authorization {short(f.proxy_token)}{header}"
                     f" location={f.location or '-'} -> forwarded, {f.status}")
        for c in seen.calls:
            if c.service == "connectivity-proxy":
                self.say(f"    proxy      refused {c.status}: {c.error}")
            elif c.service in ("onprem", "backend", "iflow"):
                name = {"onprem": "on-premise", "backend": "cloud OData", "iflow": "iFlow"}[c.service]
                saw = f"saw {c.user} (carried by {c.carried_by})" if c.user else f"saw no user ({c.error})"
                where = f" location={c.location}" if c.location else ""
                why = " (X-CSRF-Token fetch before the write)" if c.method == "HEAD" else ""
                self.say(f"    backend    {name} {c.method} {c.path}{where} {saw} -> {c.status}{why}")
        if not (seen.exchanges or seen.calls or seen.forwarded):
            self.say("    outbound   none: nothing reached XSUAA, the Destination service, the proxy or a backend")
        if isinstance(seen.body, list):
            ids = ", ".join(str(item.get("FunctionalLocation")) for item in seen.body if isinstance(item, dict))
            summary = f"{len(seen.body)} functional location(s)" + (f": {ids}" if ids else "")
        else:
            summary = " ".join(seen.text.split())
        self.say(f"    answer     {seen.status} {summary[:100]}{'...' if len(summary) > 100 else ''}")
        self.say(f"    chain      {self.chain(seen, user)}")

    def chain(self, seen: Seen, user: str | None) -> str:
        parts = [user or "anonymous"]
        app_exchanges = [e for e in seen.exchanges if e.grant != "client_credentials" and e.grant != "password"]
        for e in app_exchanges:
            parts.append(f"{e.grant} [{e.client}, user {e.user or '-'}] {e.status}")
        if user and not app_exchanges and any(c.service in ("onprem", "backend", "iflow") for c in seen.calls):
            parts.append("cached token (no exchange)")
        for f in seen.forwarded:
            parts.append(f"proxy {short(f.proxy_token)} location {f.location or '-'}")
        for c in seen.calls:
            if c.service in ("onprem", "backend", "iflow") and c.method != "HEAD":
                parts.append(f"{c.service} saw {c.user or 'no user'} ({c.status})")
        if len(parts) == 1:
            parts.append(f"app {seen.status}, nothing sent")
        return " -> ".join(parts)

    def step(self, title: str, body: Callable[[Step], None]) -> None:
        step = Step(title)
        self.steps.append(step)
        self.say()
        self.say(f"({len(self.steps)}) {title}")
        try:
            body(step)
        except Exception as exc:  # noqa: BLE001 - a demo reports, it does not crash
            step.check(f"no exception ({type(exc).__name__}: {_redact(str(exc))[:200]})", False)
        for what, ok in step.checks:
            self.say(f"    {'ok  ' if ok else 'FAIL'}  {what}")

    # -- the story -------------------------------------------------------------------------
    def run(self) -> bool:
        ls = self.landscape
        conn = ls.connectivity_client

        def anonymous(step: Step) -> None:
            seen = self.call("GET", LOCATIONS)
            self.show(seen, None)
            step.check("401 from the middleware", seen.status == 401)
            step.check("nothing sent to any token endpoint, the proxy or a backend",
                       not seen.exchanges and not seen.calls and not seen.forwarded)

        def naive(step: Step) -> None:
            self.say("    the forum's code: a client_credentials token of the connectivity client as")
            self.say("    Proxy-Authorization, no user (what most hand-wired on-premise calls do)")
            seen = self.observe(self.hand_wired)
            self.show(seen, None)
            step.check("a client_credentials token, i.e. a technical user",
                       [(e.grant, e.client, e.user, e.status) for e in seen.exchanges]
                       == [("client_credentials", conn, None, 200)])
            step.check("the proxy let it through (a valid connectivity token), the on-premise system answered 401",
                       [f.status for f in seen.forwarded] == [401]
                       and [(c.user, c.status) for c in seen.at("onprem")] == [(None, 401)])
            step.check("with the S/4HANA text: no user token", seen.status == 401 and NO_USER in seen.text)

        def login(step: Step) -> None:
            for user in USERS:
                seen = self.observe(lambda u=user: self.login(u))  # type: ignore[misc]
                for e in seen.exchanges:
                    self.say(f"    exchange   {e.service} {e.grant} client={e.client} user={e.user} -> {e.status}"
                             f" {short(e.issued)}")
                step.check(f"{user} logged in (password grant, client {ls.app_client})",
                           user in self.tokens and [(e.grant, e.user, e.status) for e in seen.exchanges]
                           == [("password", user, 200)])

        def as_user(user: str, first: bool) -> Callable[[Step], None]:
            def body(step: Step) -> None:
                seen = self.call("GET", LOCATIONS, user)
                self.show(seen, user)
                step.check("200 from the app", seen.status == 200)
                step.check("with the functional locations S/4HANA returned to that user",
                           isinstance(seen.body, list) and len(seen.body) > 0)
                jwt_bearer = seen.token_requests(grant="jwt-bearer")
                if first:
                    step.check(f"one jwt-bearer exchange for {user} with the connectivity client",
                               [(e.client, e.user, e.status) for e in jwt_bearer] == [(conn, user, 200)])
                    step.check("the proxy got exactly that exchanged token",
                               [f.proxy_token for f in seen.forwarded] == [e.issued for e in jwt_bearer])
                else:
                    step.check("no new exchange: the proxy token came from the cache", not jwt_bearer)
                onprem = seen.at("onprem")
                step.check(f"the on-premise system saw {user}, through the proxy, location LOC1",
                           [(c.user, c.via_proxy, c.location, c.status) for c in onprem] == [(user, True, "LOC1", 200)])
                step.check("no user token went to the on-premise system itself (only the proxy token)",
                           all(not f.user_header for f in seen.forwarded) and len(seen.forwarded) == 1)
            return body

        def iflow(step: Step) -> None:
            seen = self.call("POST", "/maintenance-orders", "alice",
                             json={"FunctionalLocation": "1010-PLT-01-PMP", "Description": "Pump leaks"})
            self.show(seen, "alice")
            step.check("202 from the app", seen.status == 202)
            calls = seen.at("iflow")
            step.check("the iFlow saw alice (jwt-bearer with the it-rt client)",
                       [c.user for c in calls if c.method == "POST"] == ["alice"]
                       and [(e.client, e.user) for e in seen.token_requests(grant="jwt-bearer")]
                       == [(ls.iflow_client, "alice")])

        self.step("GET /functional-locations without a token", anonymous)
        self.step("the forum failure: an on-premise call wired by hand", naive)
        self.step("alice and bob log in at XSUAA (password grant, as a browser login would)", login)
        self.step("GET /functional-locations as alice: principal propagation", as_user("alice", True))
        self.step("GET /functional-locations as bob", as_user("bob", True))
        self.step("GET /functional-locations as alice again", as_user("alice", False))
        self.step("POST /maintenance-orders as alice: the iFlow is called as alice", iflow)
        final = Step("")
        self.steps.append(final)
        final.title = "no token in any answer"
        self.say()
        self.say(f"({len(self.steps)}) {final.title}")
        leaked = [t for t in self.responses if "eyJ" in t or any(tok in t for tok in self.tokens.values())]
        final.check("the app's and the proxy's answers carry no token", not leaked)
        for what, ok in final.checks:
            self.say(f"    {'ok  ' if ok else 'FAIL'}  {what}")
        return all(step.ok for step in self.steps)

    def login(self, user: str) -> None:
        """The user's XSUAA token for the app's client, as a browser login would give it."""
        self.tokens[user] = password_login(self.env, user)

    def hand_wired(self) -> requests.Response:
        """What the forum's code does: a technical token, and the user is lost on the way."""
        import json as _json

        services = _json.loads(self.env["VCAP_SERVICES"])
        creds = services["connectivity"][0]["credentials"]
        s = requests.Session()
        s.trust_env = False
        s.verify = self.env["REQUESTS_CA_BUNDLE"]
        token = s.post(creds["token_service_url"] + "/oauth/token", data={"grant_type": "client_credentials"},
                       auth=(creds["clientid"], creds["clientsecret"]), timeout=10).json()["access_token"]
        proxy = f"http://{creds['onpremise_proxy_host']}:{creds['onpremise_proxy_http_port']}"
        return s.get("http://s4-virtual:44300" + NAIVE_PATH, proxies={"http": proxy}, timeout=10,
                     headers={"Proxy-Authorization": f"Bearer {token}", "SAP-Connectivity-SCC-Location_ID": "LOC1"})

    def summary(self) -> None:
        ls = self.landscape
        grants: dict[str, int] = {}
        for e in ls.exchanges:
            key = f"{e.grant} ({e.client})"
            grants[key] = grants.get(key, 0) + 1
        seen: dict[str, int] = {}
        for c in ls.calls:
            if c.service in ("onprem", "backend", "iflow"):
                key = f"{c.service} saw {c.user or 'no user'}"
                seen[key] = seen.get(key, 0) + 1
        self.say()
        self.say("summary")
        self.say("  token requests  " + ", ".join(f"{k} x{n}" for k, n in grants.items()))
        self.say("  backends        " + ", ".join(f"{k} x{n}" for k, n in seen.items()))


def run_demo(app: Path | None = None, *, timeout: float = 30.0, out: TextIO | None = None) -> int:
    """Run the whole demo; 0 when every check held, 1 otherwise."""
    out = out or sys.stdout
    started = time.monotonic()
    app = (app or default_app()).resolve()
    print("propagation demo: principal propagation end to end, on 127.0.0.1", file=out, flush=True)
    if not app.is_file():
        print(f"FAIL  {app} not found: run the demo from a clone of the repository (or pass --app)", file=out)
        return 1
    demo: Demo | None = None
    ok = False
    with Sandbox() as sandbox:
        for name, url in sandbox.urls().items():
            print(f"  {name:<19} {url}", file=out)
        events_file = Path(sandbox.directory) / "events.log"
        with AppProcess(app, {**os.environ, **sandbox.environ(), TRACE_ENV: str(events_file)}, sandbox.directory) as api:
            demo = Demo(sandbox, api.url, out)
            demo.events_file = events_file
            try:
                took = api.wait_healthy(demo.http, timeout)
            except RuntimeError as exc:
                print(f"FAIL  {exc}\n--- app log (last lines)\n{api.log_tail()}", file=out)
                return 1
            rel = os.path.relpath(app, Path.cwd()) if app.is_relative_to(Path.cwd()) else str(app)
            print(f"  {'app':<19} {api.url}  ({rel}, child process, healthy after {took:.1f} s)", file=out)
            ok = demo.run()
            demo.summary()
            if not ok:
                print(f"--- app log (last lines)\n{api.log_tail()}", file=out)
    passed = sum(step.ok for step in demo.steps)
    print(f"\ndemo {'OK' if ok else 'FAILED'}: {passed} of {len(demo.steps)} steps passed "
          f"in {time.monotonic() - started:.1f} s", file=out, flush=True)
    return 0 if ok else 1

