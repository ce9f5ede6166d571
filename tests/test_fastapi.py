"""propagation.fastapi: the middleware checked at lifespan startup, CurrentUser /
OptionalUser, require_scopes, the OpenAPI bearer scheme, and per-request isolation."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import respx
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

import jwtkit
from conftest import make_bindings
from propagation import current_token
from propagation.engine import Propagator
from propagation.errors import ConfigurationError
from propagation.fastapi import CurrentUser, OptionalUser, Propagation, require_scopes

ROOT = Path(__file__).resolve().parent.parent


def build_app(propagator: Propagator | None, lifespan: Any = None, **options: Any) -> FastAPI:
    app = FastAPI(lifespan=lifespan)
    if propagator is not None:
        options["propagator"] = propagator
    Propagation(app, **options)

    @app.get("/me")
    async def me(user: CurrentUser) -> dict[str, Any]:
        current = current_token()
        return {"user": user.user, "kind": user.kind, "same": current is user, "is_user": user.is_user}

    @app.get("/maybe")
    async def maybe(user: OptionalUser) -> dict[str, Any]:
        return {"user": user.user if user else None}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.get("/orders", dependencies=[Depends(require_scopes("Read"))])
    async def orders(user: CurrentUser) -> dict[str, Any]:
        return {"orders": [], "user": user.user}

    @app.get("/admin", dependencies=[Depends(require_scopes("Read", "Admin"))])
    def admin() -> dict[str, bool]:  # a sync route: runs in the thread pool
        return {"admin": True, "user_seen": current_token() is not None}

    return app


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


@pytest.mark.parametrize(
    "path, authorization, status, error",
    [
        pytest.param("/me", "valid", 200, None, id="valid"),
        pytest.param("/me", None, 401, "Missing Authorization header", id="missing"),
        pytest.param("/me", "Basic YWxpY2U6cHc=", 401, "Authorization scheme is not Bearer", id="basic"),
        pytest.param("/me", "forged", 401, "Token signature verification failed.", id="forged"),
        pytest.param("/me", "expired", 401, "Token expired.", id="expired"),
        pytest.param("/health", None, 200, None, id="public-path"),
        pytest.param("/health", "Bearer junk", 200, None, id="public-path-ignores-token"),
        pytest.param("/maybe", None, 401, "Missing Authorization header", id="optional-user-still-needs-token"),
    ],
)
def test_tokens_and_public_paths(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter,
                                 path: str, authorization: str | None, status: int, error: str | None) -> None:
    tokens = {"valid": xsuaa.token(), "forged": xsuaa.token(key=jwtkit.rsa_key("attacker")),
              "expired": xsuaa.token(ttl=-120)}
    header = f"Bearer {tokens[authorization]}" if authorization in tokens else authorization
    with TestClient(build_app(propagator, public_paths=["/health"])) as client:
        response = client.get(path, headers={"Authorization": header} if header else {})
    assert response.status_code == status, response.text
    if error is None:
        return
    assert response.json()["error"] == "invalid_token"
    assert error in response.json()["error_description"]
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token", error_description="')


def test_current_user_on_a_public_path_is_401_and_optional_user_none(propagator: Propagator) -> None:
    with TestClient(build_app(propagator, public_paths=["/me", "/maybe"])) as client:
        refused = client.get("/me")
        assert refused.status_code == 401
        assert refused.json() == {"error": "invalid_token",
                                  "error_description": "A Bearer token is required for this resource."}
        assert client.get("/maybe").json() == {"user": None}


def test_valid_user_reaches_the_route(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    with TestClient(build_app(propagator)) as client:
        assert client.get("/me", headers=bearer(xsuaa.token())).json() == {
            "user": "alice@example.com", "kind": "xsuaa", "same": True, "is_user": True}


@pytest.mark.parametrize(
    "path, scopes, status, missing",
    [
        pytest.param("/orders", (), 200, None, id="read-granted"),  # jwtkit always grants <xsappname>.Read
        pytest.param("/admin", (), 403, "app!t123.Admin", id="admin-missing"),
        pytest.param("/admin", ("app!t123.Admin",), 200, None, id="admin-granted"),
        pytest.param("/admin", ("other!t9.Admin",), 403, "app!t123.Admin", id="foreign-app-scope"),
        pytest.param("/admin", ("Admin",), 403, "app!t123.Admin", id="unqualified-scope"),
    ],
)
def test_require_scopes(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter, path: str,
                        scopes: tuple[str, ...], status: int, missing: str | None) -> None:
    with TestClient(build_app(propagator)) as client:
        response = client.get(path, headers=bearer(xsuaa.token(scopes=scopes)))
    assert response.status_code == status, response.text
    if missing is None:
        if path == "/admin":  # the sync route runs in the thread pool and still sees the user
            assert response.json() == {"admin": True, "user_seen": True}
        return
    assert response.json() == {"error": "insufficient_scope", "error_description": f"Missing scope {missing}."}
    assert response.headers["www-authenticate"] == (
        f'Bearer error="insufficient_scope", error_description="Missing scope {missing}.", '
        'scope="app!t123.Read app!t123.Admin"')


def test_require_scopes_without_token_is_401(propagator: Propagator) -> None:
    with TestClient(build_app(propagator, public_paths=["/orders"])) as client:
        response = client.get("/orders")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


def test_openapi_declares_the_bearer_scheme(propagator: Propagator) -> None:
    with TestClient(build_app(propagator, public_paths=["/openapi.json"])) as client:
        spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["BearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "A JWT of the app's XSUAA or SAP Cloud Identity Services (IAS)."}
    assert spec["paths"]["/orders"]["get"]["security"] == [{"BearerAuth": []}]
    assert spec["paths"]["/me"]["get"]["security"] == [{"BearerAuth": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


# -- startup ----------------------------------------------------------------------------------------
def _no_bindings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("VCAP_SERVICES", "SERVICE_BINDING_ROOT"):
        monkeypatch.delenv(name, raising=False)


@asynccontextmanager
async def user_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    app.state.events.append("startup")
    yield {"db": "connected"}
    app.state.events.append("shutdown")


@pytest.mark.parametrize("lifespan", [pytest.param(None, id="default-lifespan"),
                                      pytest.param(user_lifespan, id="user-lifespan")])
def test_bad_environment_fails_the_startup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lifespan: Any) -> None:
    _no_bindings(monkeypatch, tmp_path)
    app = build_app(None, lifespan=lifespan)  # constructing reads nothing yet
    app.state.events = []
    with pytest.raises(ConfigurationError, match="No 'xsuaa' or 'identity' service binding"):
        with TestClient(app):
            pass
    assert app.state.events == []  # the app's own startup never ran


def test_user_lifespan_still_runs(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    app = build_app(propagator, lifespan=user_lifespan)
    app.state.events = []

    @app.get("/state")
    async def state(user: CurrentUser) -> dict[str, Any]:
        return {"events": app.state.events}

    with TestClient(app) as client:
        assert client.get("/state", headers=bearer(xsuaa.token())).json() == {"events": ["startup"]}
    assert app.state.events == ["startup", "shutdown"]


def test_unknown_option_fails_where_written(propagator: Propagator) -> None:
    with pytest.raises(TypeError, match="Unknown option"):
        Propagation(FastAPI(), propagator=propagator, public_path=["/health"])


def test_uvicorn_stops_on_a_bad_environment(tmp_path: Path) -> None:
    """The real failure mode: uvicorn must exit with the message, not serve 500s."""
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        from fastapi import FastAPI
        from propagation.fastapi import Propagation
        app = FastAPI()
        Propagation(app, public_paths=["/health"])
        @app.get("/health")
        def health():
            return {"status": "UP"}
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("VCAP_SERVICES", "SERVICE_BINDING_ROOT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "uvicorn", "app:app", "--port", "0", "--lifespan", "auto"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "No 'xsuaa' or 'identity' service binding" in done.stderr
    assert "Application startup failed. Exiting." in done.stderr
    assert "appears unsupported" not in done.stderr


# -- isolation and technical callers ------------------------------------------------------------------
def test_concurrent_requests_keep_their_users(propagator: Propagator, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                              idp_keys: respx.MockRouter) -> None:
    app = build_app(propagator)
    both_inside = asyncio.Event()
    arrived: list[str] = []

    @app.get("/slow")
    async def slow(user: CurrentUser) -> dict[str, Any]:
        arrived.append(user.user or "")
        if len(arrived) == 2:
            both_inside.set()
        await both_inside.wait()  # each request waits until the other one is inside too
        await asyncio.sleep(0)
        token = current_token()
        return {"dependency": user.user, "context": token.user if token else None}

    alice, bob = xsuaa.token("alice@example.com"), ias.token("bob@example.com", extra={"user_uuid": "bob-uuid"})

    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            answers = await asyncio.gather(client.get("/slow", headers=bearer(alice)),
                                           client.get("/slow", headers=bearer(bob)))
        return [a.json() for a in answers]

    assert asyncio.run(main()) == [{"dependency": "alice@example.com", "context": "alice@example.com"},
                                   {"dependency": "bob-uuid", "context": "bob-uuid"}]
    assert sorted(arrived) == ["alice@example.com", "bob-uuid"]


@pytest.mark.parametrize("allow, status", [pytest.param(False, 401, id="refused-by-default"),
                                           pytest.param(True, 200, id="allowed")])
def test_technical_ias_caller(propagator: Propagator, ias: jwtkit.Ias, idp_keys: respx.MockRouter, allow: bool,
                             status: int) -> None:
    raw = ias.token("client", extra={"sap_id_type": "app", "sub": ias.clientid})
    with TestClient(build_app(propagator, allow_technical=allow)) as client:
        response = client.get("/me", headers=bearer(raw))
    assert response.status_code == status
    if allow:
        assert response.json()["is_user"] is False
    else:
        assert "carries no user" in response.json()["error_description"]


def test_core_never_imports_fastapi() -> None:
    code = ("import sys, json, propagation, propagation.inbound, propagation.asgi, propagation.engine\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


@pytest.mark.parametrize("order", ["decorator-above-route", "decorator-below-route"])
def test_require_scopes_as_a_plain_decorator_fails_at_import(propagator: Propagator, order: str) -> None:
    """Issue 17 item 1 for FastAPI: @require_scopes("Order") on the endpoint left the route unchecked
    (above @app.get) — the call returned an un-awaited coroutine and nothing ran."""
    app = FastAPI()
    Propagation(app, propagator=propagator)

    async def orders() -> dict[str, Any]:
        return {"orders": []}

    with pytest.raises(TypeError) as info:
        if order == "decorator-above-route":
            require_scopes("Order")(app.get("/orders")(orders))
        else:
            app.get("/orders")(require_scopes("Order")(orders))
    assert str(info.value).startswith(
        "require_scopes('Order') is a FastAPI dependency, not a decorator: declare it on the route as "
        "@app.get(..., dependencies=[Depends(require_scopes('Order'))])")


# -- MissingUserTokenError in a route (issue 20 item 2) ------------------------------------------------
@pytest.mark.parametrize("option, status", [pytest.param({}, 401, id="default-401"),
                                            pytest.param({"missing_user_401": False}, 500, id="opt-out")])
def test_missing_user_token_in_a_route_is_401(xsuaa: jwtkit.Xsuaa, option: dict[str, Any], status: int) -> None:
    destinations = json.dumps([{"name": "S4", "url": "https://s4.example.com", "Authentication": "OAuth2JWTBearer",
                                "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c",
                                "clientSecret": "s-VALUE"}])
    engine = Propagator(bindings=make_bindings(xsuaa), environ={"destinations": destinations})
    app = FastAPI()
    Propagation(app, propagator=engine, public_paths=["/public"], **option)

    @app.get("/public")
    async def public() -> dict[str, str]:
        return await engine.async_headers("S4")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/public")
    assert response.status_code == status
    if status == 401:
        assert response.json() == {"error": "invalid_token", "error_description": "A signed-in user is required for "
                                   "this resource: send a Bearer token of a user."}
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token", error_description="A')
