"""The app ``bench/loadtest.py`` serves with gunicorn: a small Flask API under
``PropagationMiddleware`` whose route calls a destination for the caller.

Everything is configured the way a deployed app is, by environment: ``VCAP_SERVICES`` (the
XSUAA binding the middleware validates against), ``destinations`` (OAuth2JWTBearer per
destination), ``PROPAGATION_CACHE_URL`` / ``PROPAGATION_CACHE_KEY`` (the shared Redis token
cache). ``LOADTEST_READY_DIR``: each worker drops a file named by its pid there once the app
is imported, so the driver knows when every worker is up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify

import propagation
from propagation import current_token
from propagation.engine import default_propagator
from propagation.wsgi import PropagationMiddleware

app = Flask("loadtest")


@app.get("/health")
def health() -> Any:
    return jsonify(pid=os.getpid())


@app.get("/api/<name>")
def call(name: str) -> Any:
    """One outbound call as the caller; reports which worker served it and whether the
    backend got *this* user's exchanged token (``at-<user>-client-<name>-<n>``)."""
    user = current_token()
    assert user is not None  # the middleware lets nobody else in
    with propagation.session(name) as session:
        response = session.get("items")
    sent = response.request.headers.get("Authorization", "")
    return jsonify(pid=os.getpid(), user=user.user, destination=name, backend=response.status_code,
                   own_token=sent.startswith(f"Bearer at-{user.user}-client-{name}-")), 200 if response.ok else 502


app.wsgi_app = PropagationMiddleware(app.wsgi_app, propagator=default_propagator(), public_paths=["/health"])  # type: ignore[method-assign]

_ready = os.environ.get("LOADTEST_READY_DIR")
if _ready:
    (Path(_ready) / str(os.getpid())).touch()
