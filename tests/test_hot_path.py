"""The cached hot path does no import work: 200 sync and 200 async calls through the engine's
clients (real loopback server, real httpx/httpcore/anyio stack) trigger zero import-system
lookups. A *failed* import is not cached by Python and searches ``sys.path`` on every call —
what httpcore's ``import sniffio`` did on every lock before ``sniffio`` was declared."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Iterator

import pytest

from propagation.bindings import Bindings
from propagation.engine import Propagator
from redis_server import TokenEndpoint, destinations


class Lookups:
    """A meta-path finder in front of all others: records every module the import system
    searched for (i.e. not found in ``sys.modules``), finds nothing itself."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.names.append(name)
        return None


@pytest.fixture
def lookups() -> Iterator[Lookups]:
    recorder = Lookups()
    sys.meta_path.insert(0, recorder)
    yield recorder
    sys.meta_path.remove(recorder)


@pytest.fixture
def engine_and_user(xsuaa) -> Iterator[tuple[Propagator, str, TokenEndpoint]]:
    with TokenEndpoint() as idp:
        dests = destinations(idp.url, ["S4"])
        dests[0]["url"] = idp.base + "/api"
        engine = Propagator(environ={"destinations": json.dumps(dests)}, bindings=Bindings([]))
        yield engine, xsuaa.token("alice@example.com"), idp
        engine.close()


def test_200_sync_and_200_async_cached_calls_do_no_import_lookup(engine_and_user, lookups):
    engine, user, idp = engine_and_user
    session, client = engine.session("S4", user_token=user), engine.client("S4", user_token=user)

    async def run_async(calls: int) -> list[int]:
        async with engine.async_client("S4", user_token=user) as s4:
            statuses = [(await s4.get("items")).status_code for _ in range(calls)]
        await engine.aclose()
        return statuses

    # First calls: connections, exchange, and whatever these imports for the first time.
    assert session.get("items").status_code == client.get("items").status_code == 200
    assert asyncio.run(run_async(1)) == [200]
    lookups.names.clear()
    statuses = [session.get("items").status_code for _ in range(100)] + [client.get("items").status_code for _ in range(100)]
    statuses += asyncio.run(run_async(200))
    assert lookups.names == [], sorted(set(lookups.names))
    assert statuses == [200] * 400
    assert idp.total == 1  # cached: one exchange for all of it


_FIRST_CALL = """
import asyncio, json, sys
from propagation.bindings import Bindings
from propagation.engine import Propagator
from redis_server import TokenEndpoint, destinations

class Lookups:
    names = []
    def find_spec(self, name, path=None, target=None):
        self.names.append(name)

with TokenEndpoint() as idp:
    dests = destinations(idp.url, ["S4"])
    dests[0]["url"] = idp.base + "/api"
    engine = Propagator(environ={"destinations": json.dumps(dests)}, bindings=Bindings([]))
    engine._warm = sys.argv[1] == "cold"  # "cold": skip the warm-up async_client() runs
    s4 = engine.async_client("S4", user_token=sys.argv[2])
    sys.meta_path.insert(0, Lookups())

    async def first():
        response = await s4.get("items")
        await engine.aclose()
        return response.status_code

    status = asyncio.run(first())
    print(json.dumps({"status": status, "lookups": sorted(set(Lookups.names))}))
"""


@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_the_first_async_call_imports_nothing_after_warm_up(xsuaa, mode):
    """A fresh process: ``async_client()`` warms up (imports httpcore's and anyio's machinery,
    builds the TLS context) so the first call on the event loop imports nothing; the cold
    control shows the same first call does import work without it."""
    import os
    import subprocess
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL, mode, xsuaa.token("alice@example.com")],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tests)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    if mode == "warm":
        assert result["lookups"] == []
    else:
        assert "httpcore._async.connection_pool" in result["lookups"] or "anyio._backends._asyncio" in result["lookups"]
