"""A Flask API protected by SAP Cloud Identity Services (IAS) that sends orders to an SAP
Cloud Integration iFlow as the calling user.

The caller sends an IAS token. The middleware validates it and exchanges it for an XSUAA
token of this app (``ias_to_xsuaa=True``, the IAS→XSUAA "cross-consumption" flow), so the
app's XSUAA roles apply: ``POST /orders`` needs the scope ``<xsappname>.Order``. The order
then goes to the iFlow's HTTPS endpoint (``POST /http/<path>``) through the Cloud
Integration runtime binding (service ``it-rt``, plan ``integration-flow``): the library
exchanges the user's XSUAA token (jwt-bearer) at the binding's token URL, so the iFlow is
called as that user, never as a technical client.

Bindings: ``identity`` (with the binding parameter ``xsuaa-cross-consumption: true``),
``xsuaa`` and the ``it-rt`` instance named by ``IFLOW_DESTINATION``. See README.md next
to this file for the BTP setup.

Run on Cloud Foundry with ``gunicorn "app:create_app()"`` (see manifest.yml); locally
against the emulated landscape with
``python -m propagation.sandbox exec -- python examples/ias_iflow/app.py``.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from flask import Blueprint, Flask, current_app, jsonify, request

import propagation
from propagation.flask import Propagation
from propagation.tokens import UserToken

#: The instance name of the Cloud Integration runtime binding (it-rt, plan integration-flow):
#: a service binding is a destination of that name (URL and OAuth client from the binding).
IFLOW_DESTINATION = os.environ.get("IFLOW_DESTINATION", "order-iflow")
#: The iFlow's address: ``/http`` + the path of its HTTPS sender adapter.
IFLOW_PATH = os.environ.get("IFLOW_PATH", "/http/orders")
#: The XSUAA scope (without the ``<xsappname>.`` prefix) needed to place an order.
ORDER_SCOPE = "Order"
#: Largest order accepted (bytes of JSON), so the API cannot be used to flood the iFlow.
MAX_ORDER_BYTES = 64 * 1024

api = Blueprint("orders", __name__)


class InvalidOrder(Exception):
    """The caller's order is malformed (400)."""


class InsufficientScope(Exception):
    """The user lacks the XSUAA scope the route needs (403)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__(f"The scope '{scope}' is required.")


class IflowError(Exception):
    """Cloud Integration answered with an error (502, its status is reported)."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        super().__init__(f"Cloud Integration answered {self.status}")


def engine() -> propagation.Propagator:
    return Propagation.middleware(current_app).propagator


def xsappname() -> str:
    """The app's ``xsappname`` as XSUAA issued it (with its ``!t…`` suffix): the prefix of its scopes."""
    binding = engine().bindings.find(label="xsuaa")
    if binding is None or not binding.credentials.get("xsappname"):
        raise propagation.ConfigurationError("No 'xsuaa' binding with an 'xsappname'.")
    return str(binding.credentials["xsappname"])


def xsuaa_token() -> UserToken | None:
    """The user's XSUAA token: the one the middleware obtained for an IAS token, or the
    inbound token itself when the caller already sent an XSUAA token (e.g. an approuter)."""
    exchanged = propagation.current_xsuaa_token()
    if exchanged is not None:
        return exchanged
    user = propagation.current_token()
    return user if user is not None and user.kind == "xsuaa" else None


def scopes(token: UserToken | None) -> list[str]:
    value = token.claims.get("scope") if token is not None else None
    if isinstance(value, str):
        return value.split()
    return [s for s in value if isinstance(s, str)] if isinstance(value, list) else []


def require_scope(local: str) -> UserToken:
    """The XSUAA token of the user if it has ``<xsappname>.<local>``; else :class:`InsufficientScope`."""
    scope = f"{xsappname()}.{local}"
    token = xsuaa_token()
    if scope not in scopes(token):
        raise InsufficientScope(scope)
    assert token is not None
    return token


def order_body() -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_ORDER_BYTES:
        raise InvalidOrder(f"an order is limited to {MAX_ORDER_BYTES} bytes")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body:
        raise InvalidOrder("expected a JSON object")
    return body


# -- routes ------------------------------------------------------------------------------
@api.get("/me")
def me() -> Any:
    """Who called (the inbound IAS claims) and what XSUAA grants them here."""
    user = propagation.current_token()
    assert user is not None  # the middleware let the request in
    exchanged = xsuaa_token()
    prefix = f"{xsappname()}."
    granted = scopes(exchanged)
    return jsonify(
        user={
            "kind": user.kind,
            "user": user.user,
            "email": user.claims.get("email"),
            "user_uuid": user.claims.get("user_uuid"),
            "tenant": user.tenant,
            "issuer": user.issuer,
        },
        xsuaa={
            "user": exchanged.user if exchanged else None,
            "scopes": granted,
            "app_scopes": sorted(s[len(prefix):] for s in granted if s.startswith(prefix)),
        },
        can_order=f"{prefix}{ORDER_SCOPE}" in granted,
    )


@api.post("/orders")
def create_order() -> Any:
    token = require_scope(ORDER_SCOPE)  # 403 before anything is sent
    order = order_body()
    # The XSUAA token is the assertion: the it-rt token URL is the subaccount's XSUAA, and
    # its jwt-bearer grant answers with a token for the same user and the it-rt client.
    # CSRF: the HTTPS sender adapter's "CSRF Protected" is off for this iFlow (README).
    iflow = engine().session(IFLOW_DESTINATION, user_token=token, csrf=False)
    r = iflow.post(IFLOW_PATH, json=order, headers={"Accept": "application/json"})
    if not r.ok:
        raise IflowError(r)
    answer: Any = {}
    if r.content and "json" in r.headers.get("Content-Type", ""):
        try:
            answer = r.json()
        except ValueError:
            answer = {}
    return jsonify(answer), 201


@api.get("/health")
def health() -> Any:
    return {"status": "UP"}


# -- errors: a safe message each, never a token ------------------------------------------
@api.app_errorhandler(InvalidOrder)
def bad_request(exc: InvalidOrder) -> Any:
    return jsonify(error="bad_request", error_description=str(exc)), 400


@api.app_errorhandler(InsufficientScope)
def forbidden(exc: InsufficientScope) -> Any:
    response = jsonify(error="insufficient_scope", error_description=str(exc), scope=exc.scope)
    response.headers["WWW-Authenticate"] = f'Bearer error="insufficient_scope", scope="{exc.scope}"'
    return response, 403


@api.app_errorhandler(propagation.MissingUserTokenError)
def missing_user(exc: propagation.MissingUserTokenError) -> Any:
    """No user known: nothing was sent, and no technical user was used instead."""
    return jsonify(error="unauthorized", error_description=str(exc)), 401


@api.app_errorhandler(propagation.TokenExchangeError)
def exchange_failed(exc: propagation.TokenExchangeError) -> Any:
    """XSUAA refused the it-rt jwt-bearer exchange for this user: the iFlow was never called."""
    return jsonify(error="bad_gateway", idp_error=exc.error, error_description=exc.error_description), 502


@api.app_errorhandler(propagation.ConfigurationError)
@api.app_errorhandler(propagation.DestinationNotFoundError)
def misconfigured(exc: propagation.PropagationError) -> Any:
    current_app.logger.error("iFlow %s: %s", IFLOW_DESTINATION, exc)  # library messages hold no secrets
    return jsonify(error="server_error", error_description="The iFlow connection is not configured; see the log."), 500


@api.app_errorhandler(IflowError)
def iflow_failed(exc: IflowError) -> Any:
    # 401/403: the user's token lacks the role the sender adapter checks (README, step 3).
    return jsonify(error="iflow_error", iflow_status=exc.status), 502


@api.app_errorhandler(requests.RequestException)
def unreachable(exc: requests.RequestException) -> Any:
    current_app.logger.warning("iFlow %s unreachable: %s", IFLOW_DESTINATION, type(exc).__name__)
    return jsonify(error="iflow_unreachable", error_description="Cloud Integration could not be reached."), 502


def create_app(propagator: propagation.Propagator | None = None) -> Flask:
    """The app; ``propagator`` defaults to one built from the environment (VCAP_SERVICES,
    ``PROPAGATION_*``), read now so a missing binding fails at startup.

    ``ias_to_xsuaa=True`` is fixed here: the app's authorizations are XSUAA scopes. The
    XSUAA trust client id comes from ``PROPAGATION_XSUAA_TRUST_CLIENT_ID`` (manifest.yml).
    """
    app = Flask(__name__)
    Propagation(app, propagator=propagator, public_paths=["/health"], ias_to_xsuaa=True)
    app.register_blueprint(api)
    return app


if __name__ == "__main__":  # local runs only (the sandbox, a laptop): loopback, no debugger
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
