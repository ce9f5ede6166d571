"""Newcomer traps (issue 20 item 3): CORS pre-flight requests pass without a token, with the
CORS middleware before or after the integration; FastAPI's documentation is public with a
working "Authorize"; the unknown-kid 401 names the issuer and the likely cause."""

from __future__ import annotations

from typing import Any

import pytest
import respx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from starlette.middleware.cors import CORSMiddleware

import jwtkit
from propagation.engine import Propagator
from propagation.errors import ConfigurationError, InvalidTokenError
from propagation.fastapi import CurrentUser
from propagation.fastapi import Propagation as FastAPIPropagation
from propagation.flask import Propagation as FlaskPropagation

ORIGIN = "https://ui.example.com"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}


def fastapi_app(propagator: Propagator, order: str, **options: Any) -> FastAPI:
    app = FastAPI()
    cors = dict(allow_origins=[ORIGIN], allow_methods=["*"], allow_headers=["authorization"])
    if order == "cors-added-before":  # inside Propagation: the request meets propagation first
        app.add_middleware(CORSMiddleware, **cors)
    FastAPIPropagation(app, propagator=propagator, **options)
    if order == "cors-added-after":  # outermost: CORS answers pre-flights and decorates every answer
        app.add_middleware(CORSMiddleware, **cors)

    @app.get("/me")
    async def me(user: CurrentUser) -> dict[str, Any]:
        return {"user": user.user}

    return app


@pytest.mark.parametrize("order", ["cors-added-before", "cors-added-after"])
def test_fastapi_preflight_passes_without_a_token(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                                  idp_keys: respx.MockRouter, order: str) -> None:
    """Without the pass-through, "cors-added-before" answered every pre-flight 401 without CORS headers."""
    with TestClient(fastapi_app(propagator, order)) as client:
        preflight = client.options("/me", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        # The actual request still needs its token:
        assert client.get("/me", headers={"Origin": ORIGIN}).status_code == 401
        ok = client.get("/me", headers={"Origin": ORIGIN, "Authorization": f"Bearer {xsuaa.token()}"})
        assert ok.json() == {"user": "alice@example.com"}
        assert ok.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize("headers", [
    pytest.param({"Access-Control-Request-Method": "GET"}, id="no-origin"),
    pytest.param({"Origin": ORIGIN}, id="no-request-method"),
])
def test_an_options_request_that_is_not_a_preflight_needs_a_token(propagator: Propagator, headers: dict[str, str]) -> None:
    with TestClient(fastapi_app(propagator, "cors-added-before")) as client:
        assert client.options("/me", headers=headers).status_code == 401


def test_preflight_pass_through_can_be_turned_off(propagator: Propagator) -> None:
    with TestClient(fastapi_app(propagator, "cors-added-before", cors_preflight=False)) as client:
        assert client.options("/me", headers=PREFLIGHT).status_code == 401


@pytest.mark.parametrize("config, status", [pytest.param({}, 200, id="default"),
                                            pytest.param({"PROPAGATION_CORS_PREFLIGHT": False}, 401, id="off")])
def test_flask_cors_preflight(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter,
                              config: dict[str, Any], status: int) -> None:
    import flask_cors  # in the [test] extra
    app = Flask(__name__)
    app.config.update(config)
    FlaskPropagation(app, propagator=propagator)
    flask_cors.CORS(app, origins=[ORIGIN])
    app.get("/me")(lambda: {"ok": True})
    client = app.test_client()
    preflight = client.options("/me", headers=PREFLIGHT)
    assert preflight.status_code == status
    if status == 200:
        assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert client.get("/me", headers={"Origin": ORIGIN}).status_code == 401
    assert client.get("/me", headers={"Origin": ORIGIN, "Authorization": f"Bearer {xsuaa.token()}"}).status_code == 200


class CorsPreflightMiddleware:
    """Stands in for django-cors-headers' CorsMiddleware: answers pre-flights, never the view."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        from django.http import HttpResponse

        if request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.META:
            response = HttpResponse(status=200)
            response["Access-Control-Allow-Origin"] = request.META.get("HTTP_ORIGIN", "")
            return response
        return self.get_response(request)


@pytest.mark.parametrize("stack, extra, status", [
    pytest.param(["propagation.django.PropagationMiddleware", "test_traps.CorsPreflightMiddleware"], {}, 200,
                 id="cors-middleware-after-ours-passes"),
    pytest.param(["propagation.django.PropagationMiddleware"], {}, 401, id="no-cors-middleware-no-pass"),
    pytest.param(["propagation.django.PropagationMiddleware"], {"CORS_PREFLIGHT": True}, 200, id="forced-on"),
    pytest.param(["propagation.django.PropagationMiddleware", "test_traps.CorsPreflightMiddleware"],
                 {"CORS_PREFLIGHT": False}, 401, id="forced-off"),
])
def test_django_preflight(propagator: Propagator, stack: list[str], extra: dict[str, Any], status: int) -> None:
    import test_django
    from django.test import Client, override_settings

    with test_django.settings_for(propagator, **extra), override_settings(MIDDLEWARE=stack):
        response = Client().options("/me", HTTP_ORIGIN=ORIGIN, HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET")
        not_preflight = Client().options("/me", HTTP_ORIGIN=ORIGIN)
    assert response.status_code == status
    if status == 200 and len(stack) == 2:
        assert response["Access-Control-Allow-Origin"] == ORIGIN and response.content == b""  # not the view
    if status == 200 and len(stack) == 1:
        assert response.json() == {"user": None, "meta": True}  # forced on: the view ran, without a user
    assert not_preflight.status_code == 401


# -- FastAPI documentation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("public_docs, status", [pytest.param(True, 200, id="default-public"),
                                                 pytest.param(False, 401, id="opt-out")])
def test_fastapi_docs_are_public_and_authorize_works(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                                     idp_keys: respx.MockRouter, public_docs: bool, status: int) -> None:
    """Before: /docs and /openapi.json answered 401, so the "Authorize" button was never shown."""
    app = fastapi_app(propagator, "none", public_docs=public_docs)
    with TestClient(app) as client:
        assert [client.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")] == \
            [status] * 4
        if public_docs:
            schema = client.get("/openapi.json").json()
            assert schema["components"]["securitySchemes"]["BearerAuth"] == {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "A JWT of the app's XSUAA or SAP Cloud Identity Services (IAS)."}
            assert schema["paths"]["/me"]["get"]["security"] == [{"BearerAuth": []}]
        # What "Authorize" does: the token as a Bearer header on the calls made from the page.
        assert client.get("/me", headers={"Authorization": f"Bearer {xsuaa.token()}"}).status_code == 200
        assert client.get("/me").status_code == 401


def test_fastapi_docs_moved_or_off(propagator: Propagator) -> None:
    app = FastAPI(docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    FastAPIPropagation(app, propagator=propagator, public_paths=["/health"])
    with TestClient(app) as client:
        assert client.get("/api/docs").status_code == 200
        assert client.get("/api/openapi.json").status_code == 200
        assert client.get("/redoc").status_code == 401  # off: not a public path, no route either
        assert client.get("/docs").status_code == 401


# -- the unknown-kid 401 ------------------------------------------------------------------------------------
def test_unknown_kid_401_names_the_issuer_and_the_likely_cause(propagator: Propagator, ias: jwtkit.Ias,
                                                               idp_keys: respx.MockRouter) -> None:
    """Before: "Token signing key (kid) is not published by the issuer." — no issuer, no hint."""
    import jwt

    claims = jwt.decode(ias.token(), options={"verify_signature": False})
    restarted = jwt.encode(claims, jwtkit.rsa_key("sandbox-before-restart"), algorithm="RS256",
                           headers={"kid": "sandbox-key-1"})
    app = Flask(__name__)
    FlaskPropagation(app, propagator=propagator)
    app.get("/me")(lambda: "ok")
    response = app.test_client().get("/me", headers={"Authorization": f"Bearer {restarted}"})
    expected = ("Token signing key 'sandbox-key-1' is not published by issuer 'https://mytenant.accounts.ondemand.com' "
                "(keys read from mytenant.accounts.ondemand.com): likely a token of another landscape (another "
                "subaccount or identity tenant, or a restarted sandbox).")
    assert response.status_code == 401
    assert response.json == {"error": "invalid_token", "error_description": expected}
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer error="invalid_token", error_description="{expected}"')


# -- do the bound services fit the scopes the app checks? -----------------------------------------------------
FLASK_APP = '''
from flask import Flask
from propagation.flask import require_scopes

app = Flask(__name__)

@app.get("/orders")
@require_scopes("Read")
def orders():
    return "orders"
'''
FASTAPI_APP = '''
from fastapi import Depends, FastAPI
from propagation.fastapi import require_scopes

def create_app():
    app = FastAPI()

    @app.get("/orders", dependencies=[Depends(require_scopes("Read"))])
    async def orders():
        return "orders"

    return app
'''
ONLY_IAS = ("require_scopes checks XSUAA scopes on {route} (Read), but only an 'identity' binding is bound: scopes come "
            "from an XSUAA token, so every such route answers 403. Bind an XSUAA instance (and set "
            "PROPAGATION_IAS_TO_XSUAA=true for IAS users), or check IAS users another way.")


@pytest.mark.parametrize("source, spec, route", [
    pytest.param(FLASK_APP, "{module}:app", "orders", id="flask"),
    pytest.param(FASTAPI_APP, "{module}:create_app()", "/orders", id="fastapi-factory"),
])
@pytest.mark.parametrize("bound, code", [pytest.param("ias", 1, id="only-identity"),
                                         pytest.param("xsuaa", 0, id="xsuaa")])
def test_doctor_app_checks_scopes_against_the_bindings(tmp_path: Any, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                       source: str, spec: str, route: str, bound: str,
                                                       code: int, request: pytest.FixtureRequest) -> None:
    """Before: `doctor` said "No problems found" with only `identity` bound and require_scopes in use."""
    from conftest import vcap_services
    from test_cli import run

    module = f"doctor_app_{request.node.callspec.id.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(source)
    vcap = vcap_services(xsuaa, None) if bound == "xsuaa" else vcap_services(None, ias)
    rc, out, _ = run(["doctor", "--app", spec.format(module=module), "--dir", str(tmp_path)], {"VCAP_SERVICES": vcap})
    assert rc == code, out
    if code:
        assert f"  - {ONLY_IAS.format(route=route)}" in out.splitlines()
    else:
        assert "No problems found." in out


def test_doctor_app_that_cannot_be_found_is_a_usage_error(tmp_path: Any) -> None:
    from test_cli import run

    rc, _, err = run(["doctor", "--app", "no_such_module:app", "--dir", str(tmp_path)], {})
    assert rc == 2 and f"--app no_such_module:app: no module 'no_such_module' (looked in {tmp_path})." in err


def test_flask_app_with_scopes_and_only_identity_bound_refuses_to_serve(ias: jwtkit.Ias, idp_keys: respx.MockRouter) -> None:
    from conftest import make_bindings

    app = Flask(__name__)
    FlaskPropagation(app, propagator=Propagator(bindings=make_bindings(None, ias), environ={}))
    from propagation.flask import require_scopes

    app.get("/orders")(require_scopes("Read")(lambda: "orders"))
    app.testing = True
    with pytest.raises(ConfigurationError) as info:
        app.test_client().get("/orders", headers={"Authorization": f"Bearer {ias.token()}"})
    assert str(info.value).endswith(f"  - {ONLY_IAS.format(route='<lambda>')}")


def test_fastapi_app_with_scopes_and_only_identity_bound_refuses_to_start(ias: jwtkit.Ias) -> None:
    from fastapi import Depends

    from conftest import make_bindings
    from propagation.fastapi import require_scopes

    app = FastAPI()
    FastAPIPropagation(app, propagator=Propagator(bindings=make_bindings(None, ias), environ={}))
    app.get("/orders", dependencies=[Depends(require_scopes("Read"))])(lambda: "orders")
    with pytest.raises(ConfigurationError) as info:
        with TestClient(app):
            pass
    assert str(info.value).endswith(f"  - {ONLY_IAS.format(route='/orders')}")
