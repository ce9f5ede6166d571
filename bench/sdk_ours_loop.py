"""Bench (g): ``propagation`` calling one destination as the user, N times — a new
``session()`` (requests) or ``client()`` (httpx) per call, as a request handler does; the engine
caches the exchanged token and the Destination-service answer. stdin: ``{"destination", "path",
"user_token", "warmup", "n", "kind"}``; stdout: one JSON line ``{calls, seconds, statuses}``."""

from __future__ import annotations

import json
import sys
import time

import propagation


def main() -> None:
    case = json.load(sys.stdin)
    name, path, user = case["destination"], case["path"], case["user_token"]
    statuses: dict[str, int] = {}

    def session_call() -> int:
        with propagation.session(name, user_token=user) as s:
            return s.get(path).status_code

    def client_call() -> int:
        with propagation.client(name, user_token=user) as c:
            return c.get(path).status_code

    one = session_call if case["kind"] == "session" else client_call
    for _ in range(case["warmup"]):
        one()
    started = time.perf_counter()
    for _ in range(case["n"]):
        status = one()
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    print(json.dumps({"calls": case["n"], "seconds": time.perf_counter() - started, "statuses": statuses}))


if __name__ == "__main__":
    main()
