"""The ASGI app of bench section (f): raw ASGI under ``PropagationASGIMiddleware``, calling the
on-premise destination ``S4`` as the user through one module-level ``async_client``, and
measuring its own event-loop lag with a ticker task (``GET /lag``; ``?reset`` starts a window).

Run by ``bench/run.py`` with ``uvicorn async_app:app`` (one worker); the environment
(``VCAP_SERVICES``, ``destinations``, CA bundle) comes from the benchmark.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import propagation
from propagation.asgi import PropagationASGIMiddleware

S4 = propagation.async_client("S4")  # made once, at import: safe across users and tenants
LAG = {"max": 0.0}
TICK = 0.002


async def _ticker() -> None:
    last = time.perf_counter()
    while True:
        await asyncio.sleep(TICK)
        now = time.perf_counter()
        LAG["max"] = max(LAG["max"], now - last - TICK)
        LAG["beat"] = last = now


def _stall_sampler(path: str, loop_thread: int) -> None:
    """Diagnostics (``BENCH_LAG_PROFILE=<file>``): while the ticker is late by more than 3 ms,
    sample the loop thread's stack every millisecond; the file gets the most frequent frames."""
    import collections
    import sys
    import threading
    import traceback

    seen: collections.Counter[str] = collections.Counter()

    def run() -> None:
        while True:
            time.sleep(0.001)
            if time.perf_counter() - LAG.get("beat", time.perf_counter()) > 0.003 + TICK:
                frame = sys._current_frames().get(loop_thread)
                if frame is not None:
                    stack = traceback.extract_stack(frame)[-8:]
                    seen[" <- ".join(f"{f.name}@{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in reversed(stack))] += 1
                    if sum(seen.values()) % 20 == 0:
                        with open(path, "w") as out:
                            out.writelines(f"{n} {s}\n" for s, n in seen.most_common(30))

    threading.Thread(target=run, daemon=True).start()


async def _reply(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                LAG["task"] = asyncio.get_running_loop().create_task(_ticker())  # type: ignore[assignment]
                if os.environ.get("BENCH_LAG_PROFILE"):
                    import threading

                    _stall_sampler(os.environ["BENCH_LAG_PROFILE"], threading.get_ident())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/lag":
        payload = {"max_ms": round(LAG["max"] * 1000, 2)}
        if scope.get("query_string") == b"reset":
            LAG["max"] = 0.0
        await _reply(send, 200, payload)
        return
    response = await S4.get("/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation")
    await _reply(send, response.status_code, {"status": response.status_code})


app = PropagationASGIMiddleware(inner, public_paths=["/lag"])
