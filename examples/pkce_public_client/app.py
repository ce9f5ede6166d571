"""The backend API of a mobile app or SPA whose users log on at SAP Cloud Identity Services
(IAS) with a *public* client (authorization code + PKCE, no client secret).

Such a token is issued to the public client, not to this API: its ``aud`` is the public
client's id. Listed in ``public_clients`` (``PROPAGATION_PUBLIC_CLIENTS``), it is verified
(signature, issuer = the bound IAS tenant, expiry) and exchanged once per token at
``{ias}/oauth2/token`` (jwt-bearer, this API's IAS client with its secret or X.509
certificate) for a token of this API's own IAS application. That private token is the
user from then on: ``current_token()``, and the assertion or bearer of every call to a
destination.

Bindings: ``identity`` (this API's IAS application). Destination: ``BACKEND_DESTINATION``
(default ``BACKEND``), e.g. from the ``destinations`` environment variable. See README.md
next to this file for the IAS setup.

Run on Cloud Foundry with ``gunicorn "app:create_app()"`` (see manifest.yml); locally
against the emulated landscape with
``python -m propagation.sandbox exec -- python examples/pkce_public_client/app.py``.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from flask import Blueprint, Flask, current_app, jsonify, request

import propagation
from propagation.context import ENVIRON_PUBLIC_KEY
from propagation.flask import Propagation

BACKEND_DESTINATION = os.environ.get("BACKEND_DESTINATION", "BACKEND")
#: The backend resource this API reads for the user.
ORDERS_PATH = "/api/orders"
MAX_TOP = 100

api = Blueprint("pkce_api", __name__)


class InvalidInput(Exception):
    """The caller's request is malformed (400)."""


class BackendError(Exception):
    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        super().__init__(f"the backend answered {self.status}")


def backend() -> Any:
    """A session to the backend as the user of this request (the exchanged IAS token)."""
    session = Propagation.middleware(current_app).propagator.session(BACKEND_DESTINATION, csrf=False)
    session.headers["Accept"] = "application/json"
    return session


# -- routes ------------------------------------------------------------------------------
@api.get("/me")
def me() -> Any:
    """The user, and which public client they came through (``None`` for a token issued to
    this API directly)."""
    user = propagation.current_token()
    assert user is not None  # the middleware let the request in
    public = request.environ.get(ENVIRON_PUBLIC_KEY)
    return jsonify(
        user=user.user,
        email=user.claims.get("email"),
        user_uuid=user.claims.get("user_uuid"),
        tenant=user.tenant,
        client=user.client_id,
        public_client=public.client_id if public is not None else None,
    )


@api.get("/orders")
def orders() -> Any:
    try:
        top = int(request.args.get("top", 20))
    except ValueError:
        raise InvalidInput("top must be an integer") from None
    r = backend().get(ORDERS_PATH, params={"top": max(1, min(top, MAX_TOP))})
    if not r.ok:
        raise BackendError(r)
    return jsonify(r.json())


@api.get("/health")
def health() -> Any:
    return {"status": "UP"}


# -- errors: a safe message each, never a token ------------------------------------------
@api.app_errorhandler(InvalidInput)
def bad_request(exc: InvalidInput) -> Any:
    return jsonify(error="bad_request", error_description=str(exc)), 400


@api.app_errorhandler(propagation.MissingUserTokenError)
def missing_user(exc: propagation.MissingUserTokenError) -> Any:
    return jsonify(error="unauthorized", error_description=str(exc)), 401


@api.app_errorhandler(propagation.TokenExchangeError)
def exchange_failed(exc: propagation.TokenExchangeError) -> Any:
    return jsonify(error="bad_gateway", idp_error=exc.error, error_description=exc.error_description), 502


@api.app_errorhandler(propagation.ConfigurationError)
@api.app_errorhandler(propagation.DestinationNotFoundError)
def misconfigured(exc: propagation.PropagationError) -> Any:
    current_app.logger.error("destination %s: %s", BACKEND_DESTINATION, exc)  # library messages hold no secrets
    return jsonify(error="server_error", error_description="The backend connection is not configured; see the log."), 500


@api.app_errorhandler(BackendError)
def backend_failed(exc: BackendError) -> Any:
    return jsonify(error="backend_error", backend_status=exc.status), 502


@api.app_errorhandler(requests.RequestException)
def unreachable(exc: requests.RequestException) -> Any:
    current_app.logger.warning("destination %s unreachable: %s", BACKEND_DESTINATION, type(exc).__name__)
    return jsonify(error="backend_unreachable", error_description="The backend could not be reached."), 502


def create_app(propagator: propagation.Propagator | None = None) -> Flask:
    """The app; ``propagator`` defaults to one built from the environment.

    The public client ids come from ``PROPAGATION_PUBLIC_CLIENTS`` (comma-separated, see
    manifest.yml); without any, the app accepts only tokens issued to its own IAS client.
    """
    app = Flask(__name__)
    Propagation(app, propagator=propagator, public_paths=["/health"])
    app.register_blueprint(api)
    return app


if __name__ == "__main__":  # local runs only (the sandbox, a laptop): loopback, no debugger
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
