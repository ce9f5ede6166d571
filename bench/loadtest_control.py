"""The control arm of ``bench/loadtest.py``: the same gunicorn, the same Flask app shape and
route as ``bench/loadtest_app.py``, calling the same backend — with a static bearer and one
pooled ``requests.Session`` per thread, and no ``propagation`` at all (no inbound validation,
no destination, no exchange). What a request costs without the library, to divide by.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import requests
from flask import Flask, jsonify

app = Flask("loadtest-control")
_BACKENDS = {d["name"]: d["url"].rstrip("/") for d in json.loads(os.environ["destinations"])}
_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        session.headers["Authorization"] = "Bearer static-control-token"
    return session


@app.get("/health")
def health() -> Any:
    return jsonify(pid=os.getpid())


@app.get("/api/<name>")
def call(name: str) -> Any:
    response = _session().get(f"{_BACKENDS[name]}/items")
    return jsonify(pid=os.getpid(), control=True, destination=name, backend=response.status_code), \
        200 if response.ok else 502


_ready = os.environ.get("LOADTEST_READY_DIR")
if _ready:
    (Path(_ready) / str(os.getpid())).touch()
