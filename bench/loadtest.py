"""Load test on loopback: gunicorn workers, the middleware, the Redis token cache.

    python bench/loadtest.py              # 200 users x 2 destinations, 4,000 requests
    python bench/loadtest.py --quick      # CI-sized (tests/test_loadtest.py runs this)
    python bench/loadtest.py --json       # the figures as one JSON object on stdout
    python bench/loadtest.py --cache memory   # per-process caches, no Redis
    python bench/loadtest.py --cache redis-cluster   # a real 3-master Redis Cluster
    python bench/loadtest.py --cache all      # memory, redis and redis-cluster, one table
    python bench/loadtest.py --no-control     # skip the control arm

What runs, all on 127.0.0.1:

* ``redis-server`` (``tests/redis_server.py`` starts it; installed from Debian's packages
  when missing), no persistence — or, with ``--cache redis-cluster``, a 3-master Redis Cluster
  (``tests/redis_cluster.py``, ``PROPAGATION_CACHE_URL=redis://…?cluster=true``);
* an XSUAA stand-in over TLS (``bench/servers.py``): ``GET /token_keys`` for sap-xssec's
  key fetch and ``POST /oauth/token`` (jwt-bearer) with a 20 ms delay, counting exchanges
  per (user, client); a self-signed certificate that the workers trust via
  ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` and nothing else;
* a backend (plain HTTP) the destinations point at;
* ``gunicorn`` (gthread workers) serving ``bench/loadtest_app.py``: Flask under
  ``PropagationMiddleware``; its route calls ``propagation.session(NAME).get(...)``.

The users' tokens are RS256 JWTs signed by ``tests/jwtkit.py``'s XSUAA key, validated by
every worker with sap-xssec (keys fetched over TLS from the stand-in). Client threads send
each (user, destination) ``--rounds`` times over keep-alive connections; each pair's first
requests go out as a burst of ``--burst`` concurrent copies, so different worker processes
miss the cache for the same key at the same moment — what the cross-process single-flight
(Redis ``SET NX`` lock) has to absorb.

The control arm (unless ``--no-control``): the same gunicorn, Flask app shape and route
(``bench/loadtest_control.py``) calling the same backend with a static bearer and one pooled
``requests.Session`` per thread — no library. Both arms get the same request list; the figure
that matters is gunicorn *worker CPU per request*, library arm / control arm (the ratio). With
the default 10 requests per (user, destination) spread over 4 workers, much of the library
arm's CPU is one-time work — each worker's first validation of each user's token (RS256) and
the exchanges; ``--users 20 --rounds 100`` (same 4,000 requests) shows the cached steady state.

Reported: throughput, latency percentiles (client side, queueing included), exchanges at
the token endpoint against distinct (user, destination) pairs — equal with Redis —, how
many pairs more than one worker served (the races that single-flight had to win), key
fetches, non-2xx answers and responses whose outbound token was not the caller's.
Exit code 1 when a check fails. Everything started is stopped on exit, failure included.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(BENCH)]

import jwtkit  # noqa: E402
from redis_server import RedisServer, ensure_redis_server, free_port  # noqa: E402
from servers import Gunicorn, LoopbackServer  # noqa: E402

from propagation.sandbox.pki import Pki  # noqa: E402

DESTINATIONS = ("S4", "CRM")
EXCHANGE_DELAY = 0.02  # seconds per jwt-bearer answer: an IdP is not instant


@dataclass
class Plan:
    users: int
    rounds: int
    burst: int
    clients: int
    workers: int
    threads: int
    cache: str

    @property
    def pairs(self) -> int:
        return self.users * len(DESTINATIONS)

    @property
    def requests(self) -> int:
        return self.pairs * self.rounds


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0  # no HTTP answer at all
    wrong_user: int = 0  # answered, but not this user or not this user's outbound token
    pids: Counter[int] = field(default_factory=Counter)
    workers_of_pair: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))
    lock: threading.Lock = field(default_factory=threading.Lock)


def say(text: str, *, quiet: bool) -> None:
    print(text, file=sys.stderr if quiet else sys.stdout, flush=True)


# -- client -------------------------------------------------------------------------------------
def work_list(tokens: list[tuple[str, str]], plan: Plan, seed: int = 7) -> list[tuple[str, str, str]]:
    """(user, token, destination) requests: per pair a burst of ``plan.burst`` adjacent copies
    (concurrent first misses), then the remaining rounds shuffled."""
    rng = random.Random(seed)
    pairs = [(user, token, name) for user, token in tokens for name in DESTINATIONS]
    rng.shuffle(pairs)
    burst = min(plan.burst, plan.rounds)
    head = [pair for pair in pairs for _ in range(burst)]
    tail = [pair for pair in pairs for _ in range(plan.rounds - burst)]
    rng.shuffle(tail)
    return head + tail


def fire(port: int, work: list[tuple[str, str, str]], clients: int, outcome: Outcome) -> float:
    """``clients`` threads, one keep-alive connection each, draining ``work`` in order."""
    jobs: queue.SimpleQueue[tuple[str, str, str] | None] = queue.SimpleQueue()
    for item in work:
        jobs.put(item)
    for _ in range(clients):
        jobs.put(None)

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        while (item := jobs.get()) is not None:
            user, token, name = item
            start = time.perf_counter()
            status, body = 0, b""
            for attempt in (1, 2):  # a keep-alive connection the server closed: reconnect once
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("GET", f"/api/{name}", headers={"Authorization": f"Bearer {token}"})
                    response = conn.getresponse()
                    status, body = response.status, response.read()
                    if response.will_close:
                        conn.close()
                        conn = None
                    break
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
                    if attempt == 2:
                        status = 0
            elapsed = time.perf_counter() - start
            ok_user = False
            pid = 0
            if status == 200:
                try:
                    answer = json.loads(body)
                    pid = int(answer["pid"])
                    ok_user = answer.get("control") is True or (
                        answer["user"] == user and answer["destination"] == name and answer["own_token"] is True)
                except (ValueError, KeyError, TypeError):
                    ok_user = False
            with outcome.lock:
                outcome.latencies.append(elapsed)
                if status == 0:
                    outcome.failures += 1
                else:
                    outcome.statuses[status] += 1
                if status == 200:
                    outcome.pids[pid] += 1
                    outcome.workers_of_pair[(user, name)].add(pid)
                    if not ok_user:
                        outcome.wrong_user += 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process so far (``/proc``; 0.0 when it is gone)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# -- the run ------------------------------------------------------------------------------------
@contextlib.contextmanager
def stack_on_signals() -> Iterator[contextlib.ExitStack]:
    """An ExitStack that also unwinds on SIGTERM/SIGINT, so nothing started outlives us."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with contextlib.ExitStack() as stack:
            yield stack
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_and_fire(plan: Plan, env: dict[str, str], scratch: Path, app: str, work: list[tuple[str, str, str]],
                   others: dict[str, list[int]], *, quiet: bool) -> dict[str, Any]:
    """One arm: gunicorn with ``app``, every worker up, ``work`` fired; CPU seconds per side."""
    ready = scratch / f"ready-{app.partition(':')[0]}"
    ready.mkdir()
    port = free_port()
    server = Gunicorn(port, plan.workers, plan.threads, {**env, "LOADTEST_READY_DIR": str(ready)},
                      scratch / f"gunicorn-{app.partition(':')[0]}.log", ready, app=app)
    try:
        server.wait_ready()
        say(f"  {app}: gunicorn up, {plan.workers} workers x {plan.threads} threads (gthread); "
            f"firing {len(work):,} requests from {plan.clients} client threads ...", quiet=quiet)
        # CPU seconds spent while firing, per side: where the machine's 2 vCPUs went.
        processes = {"workers": [int(p.name) for p in ready.iterdir()], **others}
        before = {side: sum(cpu_seconds(pid) for pid in pids) for side, pids in processes.items()}
        before["driver"] = cpu_seconds()
        outcome = Outcome()
        elapsed = fire(port, work, plan.clients, outcome)
        cpu = {side: round(sum(cpu_seconds(pid) for pid in pids) - before[side], 3) for side, pids in processes.items()}
        cpu["driver"] = round(cpu_seconds() - before["driver"], 3)
        log = server.log_tail(200)
    finally:
        server.stop()
    return {"outcome": outcome, "elapsed": elapsed, "cpu": cpu, "log": log,
            "pids": [server.proc.pid, *processes["workers"]]}


def start_cache(plan: Plan, stack: contextlib.ExitStack) -> tuple[str, str, list[int]]:
    """The shared cache of ``plan.cache``: (URL, redis version, server pids)."""
    if plan.cache == "memory":
        return "", "-", []
    binary = ensure_redis_server()
    if binary is None:
        raise RuntimeError("redis-server is not installed and could not be installed (apt-get).")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()[2]
    if plan.cache == "redis-cluster":
        from redis_cluster import RedisCluster

        cluster = RedisCluster(binary, 3)
        stack.callback(cluster.close)
        cluster.start()
        return cluster.url, version, [p.pid for p in cluster.procs.values()]
    redis = RedisServer(binary).start()
    stack.callback(redis.close)
    return redis.url, version, [redis.proc.pid] if redis.proc is not None else []


def run(plan: Plan, *, quiet: bool, control: bool = True) -> dict[str, Any]:
    with stack_on_signals() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="propagation-loadtest-"))
        stack.callback(shutil.rmtree, scratch, True)
        cache_url, redis_version, redis_pids = start_cache(plan, stack)

        pki = Pki(prefix="propagation-loadtest-pki-")  # the sandbox's throw-away CA and loopback certificate
        stack.callback(pki.cleanup)
        cert = str(pki.ca_file)
        idp = stack.enter_context(LoopbackServer(delay=EXCHANGE_DELAY, tls=(str(pki.cert_file), str(pki.key_file))))
        # sap-xssec fetches https://{uaadomain}/token_keys: the stand-in's address is the uaadomain.
        xsuaa = jwtkit.Xsuaa(uaadomain=f"localhost:{idp.port}")
        idp.token_keys = xsuaa.token_keys()
        backend = stack.enter_context(LoopbackServer())

        credentials = {**xsuaa.credentials(), "url": idp.base}
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PROPAGATION_", "VCAP_", "SERVICE_BINDING"))},
            "VCAP_SERVICES": json.dumps({"xsuaa": [{"name": "app-xsuaa", "label": "xsuaa", "plan": "application",
                                                   "tags": ["xsuaa"], "credentials": credentials}]}),
            "destinations": json.dumps([{
                "name": name, "url": f"{backend.base}/{name}", "Authentication": "OAuth2JWTBearer",
                "tokenServiceURL": idp.token_url, "clientId": f"client-{name}", "clientSecret": "dest-secret-VALUE",
            } for name in DESTINATIONS]),
            "SSL_CERT_FILE": cert,  # httpx (sap-xssec's key fetch) trusts the stand-in, and only it
            "REQUESTS_CA_BUNDLE": cert,  # requests (the token exchange) likewise
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
        if cache_url:
            env["PROPAGATION_CACHE_URL"] = cache_url
            env["PROPAGATION_CACHE_KEY"] = base64.b64encode(os.urandom(32)).decode()

        say(f"  minting {plan.users} user tokens (RS256) ...", quiet=quiet)
        tokens = [(f"user{i}@example.com", xsuaa.token(f"user{i}@example.com")) for i in range(plan.users)]
        work = work_list(tokens, plan)

        arm = serve_and_fire(plan, env, scratch, "loadtest_app:app", work, {"redis": redis_pids}, quiet=quiet)
        exchanges, counts, key_fetches, backend_gets = idp.exchanges, dict(idp.counts), idp.key_fetches, backend.gets
        outcome, elapsed, cpu, log = arm["outcome"], arm["elapsed"], arm["cpu"], arm["log"]
        control_arm = None
        if control:
            control_arm = serve_and_fire(plan, env, scratch, "loadtest_control:app", work, {}, quiet=quiet)

    latencies = sorted(outcome.latencies)
    served_by_many = sum(1 for workers in outcome.workers_of_pair.values() if len(workers) > 1)
    worker_pairs = sum(len(workers) for workers in outcome.workers_of_pair.values())
    non_2xx = sum(n for status, n in outcome.statuses.items() if not 200 <= status < 300)
    shared = plan.cache != "memory"
    expected = plan.pairs if shared else worker_pairs
    report = {
        "mode": plan.cache,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "redis": redis_version,
        "workers": plan.workers,
        "threads": plan.threads,
        "clients": plan.clients,
        "users": plan.users,
        "destinations": len(DESTINATIONS),
        "pairs": plan.pairs,
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "throughput": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p90_ms": round(percentile(latencies, 90) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "exchanges": exchanges,
        "expected_exchanges": expected,
        "max_exchanges_per_pair": max(counts.values(), default=0),
        "pairs_seen": len(outcome.workers_of_pair),
        "pairs_served_by_several_workers": served_by_many,
        "worker_pair_combinations": worker_pairs,
        "workers_seen": len(outcome.pids),
        "requests_per_worker": sorted(outcome.pids.values(), reverse=True),
        "key_fetches": key_fetches,
        "backend_calls": backend_gets,
        "statuses": {str(k): v for k, v in sorted(outcome.statuses.items())},
        "non_2xx": non_2xx,
        "failures": outcome.failures,
        "wrong_user": outcome.wrong_user,
        "redis_fallbacks": log.count("token cache: Redis at"),
        "cpu_seconds": cpu,  # driver = client threads + XSUAA stand-in + backend, one process
        # Everything this run started, all stopped by now (tests/test_loadtest.py checks).
        "server_pids": [*arm["pids"], *redis_pids, *(control_arm["pids"] if control_arm else [])],
        "cpu_per_request_us": round(cpu["workers"] / max(1, len(latencies)) * 1e6, 1),
    }
    if control_arm is not None:
        c_outcome = control_arm["outcome"]
        c_requests = len(c_outcome.latencies)
        c_sorted = sorted(c_outcome.latencies)
        report["control"] = {
            "requests": c_requests,
            "statuses": {str(k): v for k, v in sorted(c_outcome.statuses.items())},
            "failures": c_outcome.failures,
            "throughput": round(c_requests / control_arm["elapsed"], 1),
            "p50_ms": round(percentile(c_sorted, 50) * 1000, 2),
            "cpu_seconds": control_arm["cpu"],
            "cpu_per_request_us": round(control_arm["cpu"]["workers"] / max(1, c_requests) * 1e6, 1),
        }
        report["cpu_ratio"] = round(report["cpu_per_request_us"] / max(0.1, report["control"]["cpu_per_request_us"]), 3)
    checks = {
        f"exchanges == {'pairs' if shared else 'worker x pair combinations'}": exchanges == expected,
        "every pair was requested": report["pairs_seen"] == plan.pairs,
        "no errors (non-2xx, failures, wrong user)": non_2xx == 0 and outcome.failures == 0 and outcome.wrong_user == 0,
        "every request reached the backend": backend_gets == len(latencies),
    }
    if control_arm is not None:
        checks["control arm: every request answered 200"] = report["control"]["statuses"] == {"200": len(work)}
    report["checks"] = checks
    report["ok"] = all(checks.values())
    if not report["ok"]:
        report["gunicorn_log_tail"] = log[-4000:]
    return report


def describe(r: dict[str, Any]) -> None:
    print(f"  throughput   {r['throughput']:,.0f} req/s ({r['requests']:,} requests in {r['seconds']:.2f} s)")
    print(f"  latency      p50 {r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
          f"max {r['max_ms']:.1f} ms (client side)")
    print(f"  exchanges    {r['exchanges']} at the token endpoint for {r['pairs']} (user, destination) pairs "
          f"(expected {r['expected_exchanges']}); max per pair {r['max_exchanges_per_pair']}")
    print(f"  workers      {r['workers_seen']} served requests {r['requests_per_worker']}; "
          f"{r['pairs_served_by_several_workers']} of {r['pairs']} pairs were served by more than one worker")
    print(f"  cpu          gunicorn workers {r['cpu_seconds']['workers']:.1f} s, redis {r['cpu_seconds']['redis']:.1f} s, "
          f"driver (clients, stand-ins) {r['cpu_seconds']['driver']:.1f} s, in {r['seconds']:.1f} s on {r['cpus']} CPUs")
    if "control" in r:
        c = r["control"]
        print(f"  control arm  {c['throughput']:,.0f} req/s, p50 {c['p50_ms']:.1f} ms (static bearer, no library)")
        print(f"  worker CPU   {r['cpu_per_request_us']:.0f} us/request with propagation vs {c['cpu_per_request_us']:.0f} us "
              f"control = {r['cpu_ratio']:.2f} x (target <= 1.15 x)")
    print(f"  key fetches  {r['key_fetches']} (sap-xssec, per worker); Redis fallbacks {r['redis_fallbacks']}")
    print(f"  errors       {r['non_2xx']} non-2xx, {r['failures']} without answer, "
          f"{r['wrong_user']} with another user's identity or token")
    for name, ok in r["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if not r["ok"]:
        print(r.get("gunicorn_log_tail", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized: 40 users, 8 rounds (640 requests)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (progress on stderr)")
    parser.add_argument("--cache", choices=("redis", "redis-cluster", "memory", "all"), default="redis",
                        help="memory: per-process caches (exchanges = worker x pair combinations); "
                             "redis-cluster: a 3-master cluster; all: the three, one after the other")
    parser.add_argument("--no-control", action="store_true", help="skip the control arm (no library)")
    parser.add_argument("--users", type=int)
    parser.add_argument("--rounds", type=int, help="requests per (user, destination)")
    parser.add_argument("--burst", type=int, default=4, help="adjacent first requests per pair")
    parser.add_argument("--clients", type=int, help="client threads (one keep-alive connection each)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="gthread threads per worker")
    args = parser.parse_args(argv)
    modes = ["memory", "redis", "redis-cluster"] if args.cache == "all" else [args.cache]
    quiet = args.json
    reports = {}
    for mode in modes:
        plan = Plan(
            users=args.users or (40 if args.quick else 200),
            rounds=args.rounds or (8 if args.quick else 10),
            burst=args.burst,
            clients=args.clients or (16 if args.quick else 32),
            workers=args.workers,
            threads=args.threads,
            cache=mode,
        )
        say(f"propagation load test ({'quick' if args.quick else 'full'}, cache={plan.cache}): "
            f"{plan.users} users x {len(DESTINATIONS)} destinations, {plan.requests:,} requests; "
            f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs", quiet=quiet)
        reports[mode] = run(plan, quiet=quiet, control=not args.no_control)
        if not args.json:
            describe(reports[mode])
    if args.json:
        print(json.dumps(reports[modes[0]] if len(modes) == 1 else reports, indent=2))
    elif len(modes) > 1:
        print("summary: worker CPU per request, propagation / control (target <= 1.15 x); exchanges / pairs")
        for mode, r in reports.items():
            ratio = f"{r['cpu_ratio']:.2f} x" if "cpu_ratio" in r else "-"
            print(f"  {mode:<14} {r['cpu_per_request_us']:7.0f} us  {ratio:>8}   "
                  f"{r['exchanges']} / {r['pairs']} (expected {r['expected_exchanges']})  {'ok' if r['ok'] else 'FAIL'}")
    return 0 if all(r["ok"] for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
