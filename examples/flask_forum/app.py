"""The forum's Flask API: reads S/4HANA functional locations as the calling user — and,
for contrast, the hand-wired call from the forum post that loses the user.

* ``GET /functional-locations`` — the fix: ``propagation.session(S4_DESTINATION)`` carries
  the caller's JWT to S/4HANA (jwt-bearer for an ``OAuth2JWTBearer`` destination, the
  Connectivity proxy for an on-premise ``PrincipalPropagation`` one — the code is the same).
* ``GET /naive`` — the forum's code: a ``client_credentials`` token of the destination's
  OAuth client, i.e. a *technical* user; S/4HANA answers 401 "No user token (JWT) has been
  provided…" (or, worse, 200 as the wrong user). Do not copy it.

Needs an ``xsuaa`` binding and two destinations (``destinations`` variable or Destination
service): ``S4_DESTINATION`` (default ``S4``; a type that carries the user) and
``S4_TECHNICAL_DESTINATION`` (default ``S4_TECHNICAL``; ``OAuth2ClientCredentials`` with
``clientId``, ``clientSecret`` and ``tokenServiceURL``). Locally, against the emulated
landscape: ``python -m propagation.sandbox exec -- python examples/flask_forum/app.py``
(see README.md next to this file).
"""

from __future__ import annotations

import os
from typing import Any

import requests
from flask import Flask, jsonify

import propagation
from propagation.flask import Propagation

#: The destination that carries the user (the fix).
S4_DESTINATION = os.environ.get("S4_DESTINATION", "S4")
#: The destination of the forum's hand-wired call: an OAuth client with client_credentials.
S4_TECHNICAL_DESTINATION = os.environ.get("S4_TECHNICAL_DESTINATION", "S4_TECHNICAL")
FUNCTIONAL_LOCATIONS = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation"


def naive_call() -> requests.Response:
    """What the forum's code does: read the destination's OAuth client, fetch a
    client_credentials token, call S/4HANA with it. The user is lost on the way."""
    s4 = propagation.destination(S4_TECHNICAL_DESTINATION)
    props = s4.properties  # the same names in the Destination service and the `destinations` variable
    token_url, client_id, secret = (props.text("tokenServiceURL"), props.text("clientId"), props.text("clientSecret"))
    if not (token_url and client_id and secret):
        raise propagation.ConfigurationError(
            f"Destination '{S4_TECHNICAL_DESTINATION}' needs tokenServiceURL, clientId and clientSecret.")
    token = requests.post(token_url, data={"grant_type": "client_credentials"}, auth=(client_id, secret),
                          timeout=10).json()["access_token"]
    return requests.get(s4.url + FUNCTIONAL_LOCATIONS, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def create_app() -> Flask:
    """The app; the bindings and destinations are read from the environment now."""
    app = Flask(__name__)
    Propagation(app, public_paths=["/health"])  # every other path needs a valid JWT

    @app.get("/functional-locations")
    def functional_locations() -> Any:
        """The fix: S/4HANA sees the same user who called this API."""
        r = propagation.session(S4_DESTINATION).get(FUNCTIONAL_LOCATIONS)
        return jsonify(r.json()), r.status_code

    @app.get("/naive")
    def naive() -> Any:
        """The forum's hand-wired call, kept for contrast (a technical user)."""
        r = naive_call()
        return jsonify(r.json()), r.status_code

    @app.get("/health")
    def health() -> Any:
        return {"status": "UP"}

    @app.errorhandler(propagation.MissingUserTokenError)
    def missing_user(exc: propagation.MissingUserTokenError) -> Any:
        """No user known: nothing was sent, and no technical user was used instead."""
        return jsonify(error="unauthorized", error_description=str(exc)), 401

    @app.errorhandler(propagation.TokenExchangeError)
    def exchange_failed(exc: propagation.TokenExchangeError) -> Any:
        """The identity provider refused the exchange: the backend was never called."""
        return jsonify(error="bad_gateway", idp_error=exc.error, error_description=exc.error_description), 502

    return app


if __name__ == "__main__":  # local runs only (the sandbox, a laptop): loopback, no debugger
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
