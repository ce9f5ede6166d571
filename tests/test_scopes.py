"""require_scopes: the framework-neutral check (ScopeCheck) and the Flask view decorator.
(FastAPI: tests/test_fastapi.py; Django: tests/test_django.py.)"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import respx
import responses
from flask import Flask

import jwtkit
from propagation.bindings import Bindings
from propagation.engine import Propagator
from propagation.errors import ConfigurationError, InvalidTokenError
from propagation.flask import Propagation, require_scopes
from propagation.inbound.responses import forbidden
from propagation.inbound.scopes import InsufficientScopeError, ScopeCheck, scope_names
from propagation.exchange.oauth import OAuthClient
from propagation.tokens import UserToken

TRUST = "xsuaa-trust-ias-client-id"


@pytest.mark.parametrize(
    "claims, required, missing",
    [
        pytest.param({"scope": ["app!t1.Read"]}, ("Read",), None, id="list-granted"),
        pytest.param({"scope": "openid app!t1.Read app!t1.Write"}, ("Read", "Write"), None, id="string-granted"),
        pytest.param({"scope": ["app!t1.Read"]}, ("Read", "Write"), "app!t1.Write", id="one-missing"),
        pytest.param({"scope": ["Read"]}, ("Read",), "app!t1.Read", id="unqualified-is-not-local"),
        pytest.param({"scope": ["other!t2.Read"]}, ("Read",), "app!t1.Read", id="other-app"),
        pytest.param({"scope": ["app!t1.ReadAll"]}, ("Read",), "app!t1.Read", id="no-prefix-match"),
        pytest.param({}, ("Read",), "app!t1.Read", id="no-scope-claim"),
        pytest.param({"scope": 42}, ("Read",), "app!t1.Read", id="malformed-claim"),
    ],
)
def test_local_scopes_of_an_xsuaa_token(claims: dict[str, Any], required: tuple[str, ...], missing: str | None) -> None:
    token = UserToken("x.y.z", {"alg": "RS256"}, {"ext_attr": {"enhancer": "XSUAA"}, **claims})
    check = ScopeCheck("app!t1")
    if missing is None:
        check.check(required, token, None)
        return
    with pytest.raises(InsufficientScopeError) as caught:
        check.check(required, token, None)
    assert caught.value.error_description == f"Missing scope {missing}."
    assert caught.value.scopes == tuple(f"app!t1.{s}" for s in required)


def test_ias_user_is_checked_on_its_xsuaa_token() -> None:
    ias_token = UserToken("a.b.c", {}, {"iss": "https://t.accounts.ondemand.com", "scope": ["app!t1.Read"]})
    xsuaa_token = UserToken("d.e.f", {}, {"ext_attr": {"enhancer": "XSUAA"}, "scope": ["app!t1.Read"]})
    check = ScopeCheck("app!t1")
    check.check(("Read",), ias_token, xsuaa_token)
    with pytest.raises(InsufficientScopeError, match="IAS tokens carry no XSUAA scopes"):
        check.check(("Read",), ias_token, None)  # a scope-looking claim on the IAS token counts for nothing


def test_no_caller_is_401_and_no_xsuaa_binding_is_403() -> None:
    with pytest.raises(InvalidTokenError, match="A Bearer token is required"):
        ScopeCheck("app!t1").check(("Read",), None, None)
    token = UserToken("x.y.z", {}, {"ext_attr": {"enhancer": "XSUAA"}, "scope": ["Read"]})
    with pytest.raises(InsufficientScopeError, match="no XSUAA binding"):
        ScopeCheck(None).check(("Read",), token, None)


@pytest.mark.parametrize("names", [pytest.param((), id="none"), pytest.param(("Read Write",), id="space"),
                                   pytest.param(('Re"ad',), id="quote"), pytest.param((42,), id="not-a-string")])
def test_bad_scope_names_fail_at_decoration(names: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        scope_names(names)
    with pytest.raises(ValueError):
        require_scopes(*names)


def test_forbidden_answer_shape() -> None:
    body, headers = forbidden(InsufficientScopeError('Missing scope a"b.Read.', ("a.Read", "a.Write")))
    assert body == b'{"error": "insufficient_scope", "error_description": "Missing scope a\\"b.Read."}'
    assert dict(headers)["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", error_description="Missing scope a\\"b.Read.", scope="a.Read a.Write"')
    assert dict(headers)["Content-Type"] == "application/json"


# -- Flask ------------------------------------------------------------------------------------------
def flask_app(propagator: Propagator, **options: Any) -> Flask:
    app = Flask(__name__)
    Propagation(app, propagator=propagator, **options)

    @app.get("/orders")
    @require_scopes("Read")
    def orders() -> Any:
        return {"orders": []}

    @app.get("/admin")
    @require_scopes("Read", "Admin")
    async def admin() -> Any:
        return {"admin": True}

    return app


@pytest.mark.parametrize(
    "path, scopes, status, missing",
    [
        pytest.param("/orders", (), 200, None, id="sync-granted"),
        pytest.param("/admin", ("app!t123.Admin",), 200, None, id="async-granted"),
        pytest.param("/admin", (), 403, "app!t123.Admin", id="async-missing"),
        pytest.param("/admin", ("Admin",), 403, "app!t123.Admin", id="unqualified"),
    ],
)
def test_flask_require_scopes(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter, path: str,
                              scopes: tuple[str, ...], status: int, missing: str | None) -> None:
    client = flask_app(propagator).test_client()
    response = client.get(path, headers={"Authorization": f"Bearer {xsuaa.token(scopes=scopes)}"})
    assert response.status_code == status
    if missing:
        assert response.json == {"error": "insufficient_scope", "error_description": f"Missing scope {missing}."}
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer error="insufficient_scope", error_description="Missing scope {missing}.", '
            'scope="app!t123.Read app!t123.Admin"')


def test_flask_require_scopes_on_public_path_is_401(propagator: Propagator) -> None:
    response = flask_app(propagator, public_paths=["/orders"]).test_client().get("/orders")
    assert response.status_code == 401
    assert response.json == {"error": "invalid_token", "error_description": "A Bearer token is required for this resource."}


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.mark.parametrize("granted, status", [pytest.param(("app!t123.Admin",), 200, id="xsuaa-token-has-scope"),
                                             pytest.param((), 403, id="xsuaa-token-lacks-scope")])
def test_flask_ias_user_scopes_come_from_the_exchanged_xsuaa_token(
    bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
    rsps: responses.RequestsMock, granted: tuple[str, ...], status: int
) -> None:
    rsps.post(xsuaa.token_url, json={"access_token": xsuaa.token("bob@example.com", scopes=granted),
                                     "token_type": "bearer", "expires_in": 3600})
    propagator = Propagator(bindings=bindings, environ={}, oauth=OAuthClient(sleep=lambda s: None, retries=0))
    client = flask_app(propagator, ias_to_xsuaa=True, xsuaa_trust_client_id=TRUST).test_client()
    response = client.get("/admin", headers={"Authorization": f"Bearer {ias.token(aud=[ias.clientid, TRUST])}"})
    assert response.status_code == status
    assert len(rsps.calls) == 1


# -- decorator order and misuse (issue 17 item 1, issue 20 item 3) -------------------------------------
def wrong_order_app(propagator: Propagator, *, testing: bool) -> Flask:
    app = Flask(__name__)
    app.testing = testing
    Propagation(app, propagator=propagator)

    @require_scopes("Order")  # above the route decorator: the route registered the bare view
    @app.get("/orders")
    def orders() -> Any:
        return {"orders": []}

    @app.get("/fine")
    @require_scopes("Read")
    def fine() -> Any:
        return {"fine": True}

    return app


def test_flask_require_scopes_above_the_route_is_refused_before_the_view_runs(
    propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter
) -> None:
    """Without the check the user without the scope got 200 from /orders."""
    token = {"Authorization": f"Bearer {xsuaa.token(scopes=())}"}
    with pytest.raises(ConfigurationError) as info:
        wrong_order_app(propagator, testing=True).test_client().get("/orders", headers=token)
    assert str(info.value) == (
        "View 'orders' (endpoint 'orders') is registered without its require_scopes('Order') check: "
        "@require_scopes is above the route decorator, so the route calls the undecorated view and no scope would be "
        "checked. Put it below the route decorator: @app.get(...) first, then @require_scopes('Order'), "
        "then def orders(...).")
    # Served (not testing): every request fails, the unprotected view never answers.
    client = wrong_order_app(propagator, testing=False).test_client()
    for path in ("/orders", "/fine", "/orders"):
        response = client.get(path, headers=token)
        assert response.status_code == 500 and b"orders" not in response.data


def test_flask_routes_declared_before_init_app_are_checked_at_init_app(propagator: Propagator) -> None:
    app = Flask(__name__)

    @require_scopes("Read")
    @app.route("/a", endpoint="a_endpoint")
    def a() -> Any:
        return "a"

    with pytest.raises(ConfigurationError, match=r"View 'a' \(endpoint 'a_endpoint'\) is registered without"):
        Propagation(app, propagator=propagator)


def test_flask_stacked_decorators_in_the_right_order_pass(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                                          idp_keys: respx.MockRouter) -> None:
    import functools

    def logged(view: Any) -> Any:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)
        return wrapper

    app = Flask(__name__)
    Propagation(app, propagator=propagator)

    @app.get("/x")
    @logged
    @require_scopes("Read")
    @require_scopes("Admin")
    def x() -> Any:
        return "x"

    client = app.test_client()
    assert client.get("/x", headers={"Authorization": f"Bearer {xsuaa.token(scopes=('app!t123.Admin',))}"}).status_code == 200
    assert client.get("/x", headers={"Authorization": f"Bearer {xsuaa.token()}"}).status_code == 403


@pytest.mark.parametrize("names, message", [
    pytest.param(("app!t1.Read",), "Scope 'app!t1.Read' is fully qualified: require_scopes takes the local scope "
                 "name ('Read')", id="qualified"),
    pytest.param(("$XSAPPNAME.Read",), "Scope '$XSAPPNAME.Read' is fully qualified", id="xsappname-placeholder"),
    pytest.param((lambda: None,), "require_scopes was applied to '<lambda>' without scope names: write "
                 '@require_scopes("Read")', id="no-parentheses"),
])
def test_scope_declarations_refused_when_the_route_is_declared(names: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        require_scopes(*names)
    assert str(info.value).startswith(message)


def test_dotted_local_scope_names_are_local() -> None:
    assert scope_names(("Order.Read",)) == ("Order.Read",)
    assert ScopeCheck("app!t1").qualify("Order.Read") == "app!t1.Order.Read"
