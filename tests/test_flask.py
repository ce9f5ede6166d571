"""The Flask extension: direct and app-factory use, config keys, streaming, and a core
that never imports Flask."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import respx
from flask import Flask, Response, jsonify, request

import jwtkit
from propagation import current_token
from propagation.context import ENVIRON_KEY
from propagation.engine import Propagator
from propagation.errors import ConfigurationError
from propagation.flask import Propagation
from propagation.wsgi import PropagationMiddleware


def build_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config or {})

    @app.get("/me")
    def me() -> Any:
        token = current_token()
        environ_token = request.environ.get(ENVIRON_KEY)
        return jsonify(user=token.user if token else None, kind=token.kind if token else None,
                       same=environ_token is token)

    @app.get("/health")
    def health() -> Any:
        return {"status": "UP"}

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            for n in range(3):  # no stream_with_context: the middleware keeps the user
                token = current_token()
                yield f"{n}:{token.user if token else None};"

        return Response(chunks(), mimetype="text/plain")

    return app


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def test_direct_use(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    app = build_app()
    ext = Propagation(app, propagator=propagator, public_paths=["/health"])
    assert app.extensions["propagation"] is ext
    client = app.test_client()
    assert client.get("/me", headers=bearer(xsuaa.token())).json == {"user": "alice@example.com", "kind": "xsuaa",
                                                                       "same": True}
    assert client.get("/health").json == {"status": "UP"}
    refused = client.get("/me")
    assert refused.status_code == 401
    assert refused.json["error"] == "invalid_token"
    assert refused.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token", error_description="')


def test_app_factory(propagator: Propagator, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                     xssec_calls: Counter[str]) -> None:
    ext = Propagation(propagator=propagator, public_paths=["/health"])

    def create_app() -> Flask:
        app = build_app()
        ext.init_app(app)
        return app

    first, second = create_app(), create_app()
    assert first.extensions["propagation"] is ext is second.extensions["propagation"]
    assert isinstance(Propagation.middleware(first), PropagationMiddleware)
    raw = ias.token("bob@example.com", extra={"user_uuid": "bob-uuid"})
    for app in (first, second):
        for _ in range(5):
            assert app.test_client().get("/me", headers=bearer(raw)).json["user"] == "bob-uuid"
    assert xssec_calls == Counter({"ias": 1})  # one engine, one validation cache


def test_streamed_response_sees_the_user(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                         idp_keys: respx.MockRouter) -> None:
    app = build_app()
    Propagation(app, propagator=propagator)
    response = app.test_client().get("/stream", headers=bearer(xsuaa.token()))
    assert response.data == b"0:alice@example.com;1:alice@example.com;2:alice@example.com;"
    assert current_token() is None


@pytest.mark.parametrize(
    "config, path, authorization, status",
    [
        pytest.param({"PROPAGATION_PUBLIC_PATHS": ["/health"]}, "/health", False, 200, id="public-list"),
        pytest.param({"PROPAGATION_PUBLIC_PATHS": "/health, /static/"}, "/health", False, 200, id="public-csv"),
        pytest.param({}, "/health", False, 401, id="not-public-by-default"),
        pytest.param({"PROPAGATION_REQUIRE_TOKEN": False}, "/me", False, 200, id="anonymous-allowed"),
        pytest.param({"PROPAGATION_REQUIRE_TOKEN": "false"}, "/me", False, 200, id="anonymous-allowed-string"),
        pytest.param({"PROPAGATION_REQUIRE_TOKEN": False}, "/me", "Basic abc", 401, id="anonymous-but-bad-header"),
        pytest.param({"PROPAGATION_REQUIRE_TOKEN": "true"}, "/me", False, 401, id="required"),
    ],
)
def test_config_keys(propagator: Propagator, config: dict[str, Any], path: str, authorization: str | bool,
                     status: int) -> None:
    app = build_app(config)
    Propagation(app, propagator=propagator)
    headers = {"Authorization": authorization} if isinstance(authorization, str) else {}
    assert app.test_client().get(path, headers=headers).status_code == status


def test_bad_config_value(propagator: Propagator) -> None:
    with pytest.raises(ConfigurationError, match="PROPAGATION_REQUIRE_TOKEN must be a boolean"):
        Propagation(build_app({"PROPAGATION_REQUIRE_TOKEN": "maybe"}), propagator=propagator)


def test_init_app_twice_is_refused(propagator: Propagator) -> None:
    app = build_app()
    ext = Propagation(app, propagator=propagator)
    with pytest.raises(RuntimeError, match="already initialised"):
        ext.init_app(app)


def test_default_engine_from_environment(xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter,
                                         vcap_env: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    monkeypatch.setenv("VCAP_SERVICES", vcap_env(ias=None))
    app = build_app()
    Propagation(app, public_paths=["/health"])
    client = app.test_client()
    assert client.get("/me", headers=bearer(xsuaa.token())).json["user"] == "alice@example.com"


def test_core_never_imports_flask() -> None:
    root = Path(__file__).resolve().parent.parent
    code = (
        "import sys, propagation, propagation.inbound, propagation.wsgi, propagation.asgi, propagation.engine\n"
        "propagation.PropagationMiddleware\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'flask' or m.startswith('flask.'))))"
    )
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == []


def test_concurrent_requests_keep_their_users(propagator: Propagator, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                              idp_keys: respx.MockRouter) -> None:
    """Two users' requests inside the view at the same time (threads, a barrier: both are
    in before either answers) each see their own user, in the context and in require_scopes."""
    import threading

    from propagation.flask import require_scopes

    app = build_app()
    Propagation(app, propagator=propagator)
    barrier = threading.Barrier(2, timeout=10)

    @app.get("/both")
    @require_scopes("Read")
    def both() -> Any:
        before = current_token()
        barrier.wait()
        after = current_token()
        return {"before": before.user if before else None, "after": after.user if after else None}

    alice, bob = xsuaa.token("alice@example.com"), xsuaa.token("bob@example.com")
    results: dict[str, Any] = {}

    def run(name: str, raw: str) -> None:
        results[name] = app.test_client().get("/both", headers=bearer(raw)).json

    threads = [threading.Thread(target=run, args=("alice", alice)), threading.Thread(target=run, args=("bob", bob))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert results == {"alice": {"before": "alice@example.com", "after": "alice@example.com"},
                       "bob": {"before": "bob@example.com", "after": "bob@example.com"}}


# -- MissingUserTokenError in a view (issue 20 item 2) -------------------------------------------------
USER_DESTINATION = json.dumps([{"name": "S4", "url": "https://s4.example.com", "Authentication": "OAuth2JWTBearer",
                                "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c",
                                "clientSecret": "s-VALUE"}])
MISSING_USER_BODY = {"error": "invalid_token",
                     "error_description": "A signed-in user is required for this resource: send a Bearer token of a user."}


@pytest.mark.parametrize("config, status", [pytest.param({}, 401, id="default-401"),
                                            pytest.param({"PROPAGATION_MISSING_USER_401": False}, 500, id="opt-out")])
def test_missing_user_token_in_a_view_is_401(xsuaa: jwtkit.Xsuaa, config: dict[str, Any], status: int) -> None:
    from conftest import make_bindings

    engine = Propagator(bindings=make_bindings(xsuaa), environ={"destinations": USER_DESTINATION})
    app = Flask(__name__)
    app.config.update(config)
    Propagation(app, propagator=engine, public_paths=["/public"])
    app.get("/public")(lambda: engine.headers("S4"))  # a public route calling a user destination
    response = app.test_client().get("/public")
    assert response.status_code == status
    if status == 401:
        assert response.json == MISSING_USER_BODY
        assert response.headers["WWW-Authenticate"] == (
            'Bearer error="invalid_token", error_description="A signed-in user is required for this resource: send a '
            'Bearer token of a user."')
        assert response.headers["Cache-Control"] == "no-store"
        assert "S4" not in response.get_data(as_text=True)
