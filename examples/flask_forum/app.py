"""The forum's Flask API: reads S/4HANA functional locations as the calling user.

Needs an ``xsuaa`` binding in ``VCAP_SERVICES`` and the destinations ``S4``
(``OAuth2JWTBearer``) and ``S4_TECHNICAL`` (``OAuth2ClientCredentials``) in ``destinations``;
``examples/demo.py`` provides both locally.
"""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask, jsonify

import propagation
from propagation.flask import Propagation

FUNCTIONAL_LOCATIONS = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation"

app = Flask(__name__)
Propagation(app, public_paths=["/health"])  # every other path needs a valid XSUAA JWT


@app.get("/functional-locations")
def functional_locations() -> Any:
    """The fix: S4 exchanges the caller's JWT (jwt-bearer), so S/4HANA sees that same user."""
    r = propagation.session("S4").get(FUNCTIONAL_LOCATIONS)
    return jsonify(r.json()), r.status_code


@app.get("/naive")
def naive() -> Any:
    """The forum's hand-wired call, kept for contrast: a client_credentials token is a
    *technical* user, so a backend that needs the principal answers 401 (or, worse, 200
    as the wrong user). Do not copy this."""
    s4 = propagation.destination("S4_TECHNICAL")
    assert s4.client is not None and s4.token_service_url
    token = requests.post(
        s4.token_service_url,
        data={"grant_type": "client_credentials"},
        auth=(s4.client.client_id, s4.client.client_secret or ""),
        timeout=10,
    ).json()["access_token"]
    r = requests.get(s4.url + FUNCTIONAL_LOCATIONS, headers={"Authorization": f"Bearer {token}"}, timeout=10)
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
