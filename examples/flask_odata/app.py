"""A Flask API on SAP BTP that reads and writes S/4HANA functional locations on premise,
as the calling user (principal propagation through the Connectivity service).

S/4HANA (``API_FUNCTIONALLOCATION_SRV``, OData V2) sees the user who called this API, not
a technical user: its own authorizations apply, and its change documents name that user.
Needs the bindings ``xsuaa`` and ``connectivity`` (plus ``destination`` when the
destination lives in the BTP cockpit) and a destination with ``ProxyType: OnPremise`` and
``Authentication: PrincipalPropagation``, named by ``S4_DESTINATION`` (default
``S4``). Optionally, maintenance orders go to a Cloud Integration iFlow as the same user
(the ``it-rt`` binding named by ``IFLOW_DESTINATION``). See README.md next to this file
for the BTP, Cloud Connector and S/4HANA setup.

Run on Cloud Foundry with ``gunicorn "app:create_app()"`` (see manifest.yml); locally
against the emulated landscape with
``python -m propagation.sandbox exec -- python examples/flask_odata/app.py`` (port ``$PORT``,
default 5000; answers carry ``X-Backend-User``, the user the sandbox's S/4HANA saw).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import requests
from flask import Blueprint, Flask, current_app, g, jsonify, request

import propagation
from propagation.flask import Propagation
from propagation.outbound.session import DestinationSession

DESTINATION = os.environ.get("S4_DESTINATION", "S4")
#: Optional: the Cloud Integration runtime binding (it-rt) whose iFlow takes maintenance
#: orders; a service binding is a destination of its instance name.
IFLOW_DESTINATION = os.environ.get("IFLOW_DESTINATION", "order-iflow")
IFLOW_PATH = os.environ.get("IFLOW_PATH", "/http/maintenance-orders")
SERVICE = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION_SRV"
ENTITY_SET = f"{SERVICE}/A_FunctionalLocation"
MAX_TOP = 500

# What callers may write. Property names from the service's $metadata: check yours, and
# keep these lists short: everything else is refused, never forwarded.
UPDATABLE = frozenset({"FunctionalLocationName"})
CREATABLE = frozenset(
    {"FunctionalLocation", "FunctionalLocationName", "FunctionalLocationCategory",
     "SuperiorFunctionalLocation", "MaintenancePlant"}
)
ORDER_FIELDS = frozenset({"FunctionalLocation", "Description"})
# Backend answers that are the caller's business; anything else becomes 502.
PASSED_THROUGH = frozenset({400, 403, 404, 409, 412, 428})

api = Blueprint("functional_locations", __name__)


class BackendError(Exception):
    """S/4HANA (or the Cloud Connector on its way) refused the call."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        self.message = odata_message(response)
        super().__init__(f"S/4HANA answered {self.status}")


class InvalidInput(Exception):
    """The caller's request is malformed (400)."""


def odata_message(response: requests.Response) -> str:
    """The message of an OData V2 error body; never the body itself (it may echo anything)."""
    try:
        message = response.json()["error"]["message"]
        text = message["value"] if isinstance(message, dict) else message
        if isinstance(text, str) and text:
            return text[:500]
    except (ValueError, KeyError, TypeError):
        pass
    return f"S/4HANA answered HTTP {response.status_code}"


def entity_path(location: str) -> str:
    """``A_FunctionalLocation('<id>')``: a quote in the id is doubled (OData string
    literal), then the id is percent-encoded, ``/`` included."""
    literal = quote(location.replace("'", "''"), safe="")
    return f"{ENTITY_SET}('{literal}')"


def s4() -> DestinationSession:
    """A session to the on-premise S/4HANA for the user of this request.

    It goes through the Connectivity proxy with the user in ``Proxy-Authorization``; no
    ``Authorization`` header reaches S/4HANA (the Cloud Connector logs the user on with a
    short-lived X.509 certificate). Writes get an ``X-CSRF-Token`` fetched first.
    """
    session = Propagation.middleware(current_app).propagator.session(DESTINATION)
    session.headers["Accept"] = "application/json"
    return session


def result(response: requests.Response) -> Any:
    if not response.ok:
        raise BackendError(response)
    if not response.content:
        return None
    body = response.json()
    seen = body.get("seenBy")  # the sandbox's S/4HANA says whom it saw; a real one does not
    if isinstance(seen, str) and seen:
        g.backend_user = seen
    return body["d"]


def fields(allowed: frozenset[str]) -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body:
        raise InvalidInput("expected a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"fields not writable here: {', '.join(unknown)}")
    return body


# -- routes ------------------------------------------------------------------------------
@api.get("/functional-locations")
def list_locations() -> Any:
    try:
        top = int(request.args.get("$top", 50))
    except ValueError:
        raise InvalidInput("$top must be an integer") from None
    params: dict[str, Any] = {"$top": max(1, min(top, MAX_TOP))}
    if "$filter" in request.args:  # a query parameter, encoded by requests: no URL injection
        params["$filter"] = request.args["$filter"]
    return jsonify(result(s4().get(ENTITY_SET, params=params))["results"])


@api.get("/functional-locations/<path:location>")
def get_location(location: str) -> Any:
    r = s4().get(entity_path(location))
    response = jsonify(result(r))
    if r.headers.get("ETag"):  # send it back as If-Match on PATCH (optimistic locking)
        response.headers["ETag"] = r.headers["ETag"]
    return response


@api.patch("/functional-locations/<path:location>")
def update_location(location: str) -> Any:
    body = fields(UPDATABLE)
    headers = {"If-Match": request.headers["If-Match"]} if "If-Match" in request.headers else {}
    result(s4().patch(entity_path(location), json=body, headers=headers))
    return "", 204


@api.post("/functional-locations")
def create_location() -> Any:
    return jsonify(result(s4().post(ENTITY_SET, json=fields(CREATABLE)))), 201


@api.post("/maintenance-orders")
def create_maintenance_order() -> Any:
    """Hand a maintenance order to the iFlow as the calling user (jwt-bearer with the
    it-rt binding's client): Cloud Integration, and whatever it calls, sees that user."""
    order = fields(ORDER_FIELDS)
    propagator = Propagation.middleware(current_app).propagator
    try:
        session = propagator.session(IFLOW_DESTINATION)
        r = session.post(IFLOW_PATH, json=order)
    except propagation.DestinationNotFoundError:
        return jsonify(error="not_configured",
                       error_description=f"No Cloud Integration binding '{IFLOW_DESTINATION}': maintenance orders are off."), 501
    if not r.ok:
        return jsonify(error="iflow_error", iflow_status=r.status_code), 502
    return jsonify(status="accepted"), 202


@api.after_request
def show_backend_user(response: Any) -> Any:
    """``X-Backend-User``: the user the backend saw, when it tells (the sandbox does) — the
    quickest check that the call carried the caller, not a technical user."""
    seen = g.get("backend_user")
    if seen:
        response.headers["X-Backend-User"] = seen
    return response


@api.get("/health")
def health() -> Any:
    return {"status": "UP"}


# -- errors: a safe message each, never a token ------------------------------------------
@api.app_errorhandler(InvalidInput)
def bad_request(exc: InvalidInput) -> Any:
    return jsonify(error="bad_request", error_description=str(exc)), 400


@api.app_errorhandler(propagation.MissingUserTokenError)
def missing_user(exc: propagation.MissingUserTokenError) -> Any:
    """No user known: nothing was sent, and no technical user was used instead."""
    return jsonify(error="unauthorized", error_description=str(exc)), 401


@api.app_errorhandler(propagation.TokenExchangeError)
def exchange_failed(exc: propagation.TokenExchangeError) -> Any:
    """The Connectivity token endpoint refused the user: S/4HANA was never called."""
    return jsonify(error="bad_gateway", idp_error=exc.error, error_description=exc.error_description), 502


@api.app_errorhandler(propagation.ConfigurationError)
@api.app_errorhandler(propagation.DestinationNotFoundError)
def misconfigured(exc: propagation.PropagationError) -> Any:
    current_app.logger.error("destination %s: %s", DESTINATION, exc)  # library messages hold no secrets
    return jsonify(error="server_error", error_description="The S/4HANA connection is not configured; see the log."), 500


@api.app_errorhandler(BackendError)
def backend_failed(exc: BackendError) -> Any:
    status = exc.status if exc.status in PASSED_THROUGH else 502
    return jsonify(error="backend_error", backend_status=exc.status, message=exc.message), status


@api.app_errorhandler(requests.RequestException)
def unreachable(exc: requests.RequestException) -> Any:
    current_app.logger.warning("destination %s unreachable: %s", DESTINATION, type(exc).__name__)
    return jsonify(error="backend_unreachable", error_description="S/4HANA could not be reached."), 502


def create_app(propagator: propagation.Propagator | None = None) -> Flask:
    """The app; ``propagator`` defaults to one built from the environment (VCAP_SERVICES,
    ``destinations``), read now so a missing binding fails at startup."""
    app = Flask(__name__)
    Propagation(app, propagator=propagator, public_paths=["/health"])  # every other path needs a valid JWT
    app.register_blueprint(api)
    return app


if __name__ == "__main__":  # local runs only (the sandbox, a laptop): loopback, no debugger
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
