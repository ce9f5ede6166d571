"""``bench/loadtest.py --quick``: gunicorn workers, the middleware and the Redis token cache
under concurrent load, on loopback, checked by the figures it reports.

The claims checked are exact, not timings: one jwt-bearer exchange per (user, destination)
although several worker processes missed the cache for the same key at once (the run
proves they did: pairs served by more than one worker), every request answered 2xx with the
caller's identity and the caller's exchanged token, and nothing the run started left
running. The control run without Redis shows the same workload does make duplicate
exchanges when the caches are per process, so the first check can fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 90  # seconds; the quick run takes ~10 s on the project's 2-vCPU machine


def run_loadtest(*args: str) -> dict[str, Any]:
    """Run the quick load test in its own process group; on timeout, ask it to clean up
    (SIGTERM unwinds its ExitStack), then kill that group: only what this run started."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "loadtest.py"), "--quick", "--json", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"load test did not finish within {LIMIT} s:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        pytest.fail(f"no JSON report (exit {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
    report["_elapsed"] = elapsed
    report["_returncode"] = proc.returncode
    report["_stderr"] = err
    return report


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie is gone for our purposes (exited, not yet reaped by its parent).
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def assert_common(report: dict[str, Any]) -> None:
    context = json.dumps({k: v for k, v in report.items() if k != "_stderr"}, indent=1)[:3000]
    assert report["requests"] == report["pairs"] * 8 == 640, context
    assert report["pairs_seen"] == report["pairs"] == 80, context
    assert report["statuses"] == {"200": 640}, context
    assert report["non_2xx"] == 0 and report["failures"] == 0, context
    assert report["wrong_user"] == 0, context
    assert report["backend_calls"] == report["requests"], context
    assert report["workers_seen"] >= 2, context  # several processes really served
    assert 1 <= report["key_fetches"] <= report["workers"], context  # sap-xssec fetched keys over TLS, per worker
    assert report["throughput"] > 0 and 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"], context
    assert report["_elapsed"] < 60, context
    assert report["server_pids"] and all(gone(pid) for pid in report["server_pids"]), context


def test_redis_cache_makes_one_exchange_per_user_and_destination_across_workers() -> None:
    report = run_loadtest()
    assert_common(report)
    context = json.dumps({k: v for k, v in report.items() if k != "_stderr"}, indent=1)[:3000]
    # The control arm (same gunicorn and route, static bearer, no library) ran beside it and
    # the ratio of worker CPU per request is reported (a figure for people: no bound here).
    assert report["control"]["statuses"] == {"200": 640} and report["control"]["failures"] == 0, context
    assert report["control"]["cpu_per_request_us"] > 0 and report["cpu_per_request_us"] > 0, context
    assert report["cpu_ratio"] == round(report["cpu_per_request_us"] / report["control"]["cpu_per_request_us"], 3), context
    # The race happened: the same pair was served by several worker processes ...
    assert report["pairs_served_by_several_workers"] > 0, context
    assert report["worker_pair_combinations"] > report["pairs"], context
    # ... and still exactly one exchange per pair: cross-process single-flight via Redis.
    assert report["exchanges"] == report["pairs"] == 80, context
    assert report["max_exchanges_per_pair"] == 1, context
    assert report["redis_fallbacks"] == 0, context
    assert report["ok"] is True and report["_returncode"] == 0, context


def test_without_redis_the_same_load_exchanges_once_per_worker_and_pair() -> None:
    """The control: per-process caches make one exchange per (worker, pair) — more than the
    pairs — so the Redis test's ``exchanges == pairs`` is a claim that can fail."""
    report = run_loadtest("--cache", "memory", "--no-control")
    assert_common(report)
    context = json.dumps({k: v for k, v in report.items() if k != "_stderr"}, indent=1)[:3000]
    assert report["exchanges"] == report["worker_pair_combinations"] > report["pairs"], context
    assert report["_returncode"] == 0, context


def test_redis_cluster_makes_one_exchange_per_user_and_destination_across_workers() -> None:
    """The same load against a real 3-master Redis Cluster (``?cluster=true``): the lock and
    value of a key share a slot, so the cross-process single-flight holds there too."""
    report = run_loadtest("--cache", "redis-cluster", "--no-control")
    assert_common(report)
    context = json.dumps({k: v for k, v in report.items() if k != "_stderr"}, indent=1)[:3000]
    assert report["mode"] == "redis-cluster" and "control" not in report, context
    assert report["pairs_served_by_several_workers"] > 0, context
    assert report["exchanges"] == report["pairs"] == 80 and report["max_exchanges_per_pair"] == 1, context
    assert report["redis_fallbacks"] == 0, context
    assert len(report["server_pids"]) == 1 + 4 + 3, context  # master, workers, three cluster nodes: all gone
    assert report["ok"] is True and report["_returncode"] == 0, context
