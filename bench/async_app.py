"""The ASGI app of bench section (f): raw ASGI under ``PropagationASGIMiddleware``, calling the
on-premise destination ``S4`` as the user through one module-level ``async_client``, and
measuring its own event-loop lag with a ticker task (``GET /lag``; ``?reset`` starts a window).

Run by ``bench/run.py`` with ``uvicorn async_app:app`` (one worker); the environment
(``VCAP_SERVICES``, ``destinations``, CA bundle) comes from the benchmark.
"""

from __future__ import annotations

import asyncio
import json
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
        last = now


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
