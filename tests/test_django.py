"""propagation.django: the middleware under WSGI (sync) and ASGI (async), settings,
require_scopes on sync and async views, start-up failure, isolation, streaming."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import django
import httpx
import pytest
import respx
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["propagation.django.PropagationMiddleware"],
        INSTALLED_APPS=["propagation.django.PropagationConfig"],
        PROPAGATION={},
        USE_TZ=True,
    )
    django.setup()

from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

import jwtkit  # noqa: E402
from propagation import current_token  # noqa: E402
from propagation.django import check_settings, require_scopes  # noqa: E402
from propagation.engine import Propagator  # noqa: E402
from propagation.errors import ConfigurationError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BOTH_INSIDE: dict[str, asyncio.Event] = {}


def me(request: HttpRequest) -> JsonResponse:
    token = current_token()
    return JsonResponse({"user": token.user if token else None,
                         "meta": request.META.get("propagation.token") is token})


async def ame(request: HttpRequest) -> JsonResponse:
    token = current_token()
    return JsonResponse({"user": token.user if token else None, "async": True})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "UP"})


@require_scopes("Read")
def orders(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"orders": []})


@require_scopes("Read", "Admin")
async def admin(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"admin": True})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        for n in range(3):
            token = current_token()
            yield f"{n}:{token.user if token else None};".encode()
    return StreamingHttpResponse(chunks(), content_type="text/plain")


async def slow(request: HttpRequest) -> JsonResponse:
    event = BOTH_INSIDE["event"]
    BOTH_INSIDE.setdefault("arrived", []).append(1)  # type: ignore[attr-defined]
    if len(BOTH_INSIDE["arrived"]) == 2:  # type: ignore[arg-type]
        event.set()
    await event.wait()
    token = current_token()
    return JsonResponse({"user": token.user if token else None})


urlpatterns = [path("me", me), path("ame", ame), path("health", health), path("orders", orders),
               path("admin", admin), path("stream", stream), path("slow", slow)]


def settings_for(propagator: Propagator, **extra: Any) -> override_settings:
    return override_settings(PROPAGATION={"PROPAGATOR": propagator, **extra})


def bearer(raw: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


@pytest.mark.parametrize(
    "url, authorization, status, error",
    [
        pytest.param("/me", "valid", 200, None, id="valid"),
        pytest.param("/me", None, 401, "Missing Authorization header", id="missing"),
        pytest.param("/me", "Basic YWxpY2U6cHc=", 401, "Authorization scheme is not Bearer", id="basic"),
        pytest.param("/me", "forged", 401, "Token signature verification failed.", id="forged"),
        pytest.param("/me", "expired", 401, "Token expired.", id="expired"),
        pytest.param("/health", None, 200, None, id="public-path"),
        pytest.param("/ame", "valid", 200, None, id="async-view"),
    ],
)
def test_sync_stack(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter, url: str,
                    authorization: str | None, status: int, error: str | None) -> None:
    tokens = {"valid": xsuaa.token(), "forged": xsuaa.token(key=jwtkit.rsa_key("attacker")),
              "expired": xsuaa.token(ttl=-120)}
    header = f"Bearer {tokens[authorization]}" if authorization in tokens else authorization
    with settings_for(propagator, PUBLIC_PATHS=["/health"]):
        response = Client().get(url, **({"HTTP_AUTHORIZATION": header} if header else {}))
    assert response.status_code == status, response.content
    if error is None:
        if url != "/health":
            assert response.json()["user"] == "alice@example.com"
        return
    assert response.json()["error"] == "invalid_token"
    assert error in response.json()["error_description"]
    assert response["WWW-Authenticate"].startswith('Bearer error="invalid_token", error_description="')
    assert response["Content-Type"] == "application/json"
    assert current_token() is None


def asgi_get(handler: ASGIHandler, *requests: tuple[str, dict[str, str]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=handler), base_url="http://testserver") as c:
            return list(await asyncio.gather(*(c.get(url, headers=headers) for url, headers in requests)))
    return asyncio.run(main())


@pytest.mark.parametrize(
    "url, token, status",
    [
        pytest.param("/ame", "valid", 200, id="async-view"),
        pytest.param("/me", "valid", 200, id="sync-view-under-asgi"),
        pytest.param("/me", None, 401, id="missing"),
        pytest.param("/me", "forged", 401, id="forged"),
        pytest.param("/health", None, 200, id="public"),
    ],
)
def test_async_stack(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter, url: str,
                     token: str | None, status: int) -> None:
    tokens = {"valid": xsuaa.token(), "forged": xsuaa.token(key=jwtkit.rsa_key("attacker"))}
    with settings_for(propagator, PUBLIC_PATHS=["/health"]):
        handler = ASGIHandler()
        assert handler._middleware_chain is not None
        [response] = asgi_get(handler, (url, {"Authorization": f"Bearer {tokens[token]}"} if token else {}))
    assert response.status_code == status, response.text
    if status == 200 and url != "/health":
        assert response.json()["user"] == "alice@example.com"
    if status == 401:
        assert response.json()["error"] == "invalid_token"
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_async_middleware_mode_is_used_under_asgi(propagator: Propagator) -> None:
    from propagation.django import PropagationMiddleware

    async def downstream(request: HttpRequest) -> Any:
        return None

    with settings_for(propagator):
        assert PropagationMiddleware(downstream).async_mode is True
        assert PropagationMiddleware(lambda r: None).async_mode is False


def test_concurrent_async_requests_keep_their_users(propagator: Propagator, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                    idp_keys: respx.MockRouter) -> None:
    alice, bob = xsuaa.token("alice@example.com"), ias.token("bob@example.com", extra={"user_uuid": "bob-uuid"})
    BOTH_INSIDE.clear()

    async def main() -> list[httpx.Response]:
        BOTH_INSIDE["event"] = asyncio.Event()
        handler = ASGIHandler()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=handler), base_url="http://testserver") as c:
            return list(await asyncio.gather(c.get("/slow", headers={"Authorization": f"Bearer {alice}"}),
                                             c.get("/slow", headers={"Authorization": f"Bearer {bob}"})))

    with settings_for(propagator):
        answers = asyncio.run(main())
    assert [a.json() for a in answers] == [{"user": "alice@example.com"}, {"user": "bob-uuid"}]


@pytest.mark.parametrize(
    "url, scopes, status, missing",
    [
        pytest.param("/orders", (), 200, None, id="sync-granted"),
        pytest.param("/admin", ("app!t123.Admin",), 200, None, id="async-granted"),
        pytest.param("/admin", (), 403, "app!t123.Admin", id="async-missing"),
    ],
)
@pytest.mark.parametrize("stack", ["wsgi", "asgi"])
def test_require_scopes(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter, stack: str,
                        url: str, scopes: tuple[str, ...], status: int, missing: str | None) -> None:
    raw = xsuaa.token(scopes=scopes)
    with settings_for(propagator):
        if stack == "wsgi":
            response: Any = Client().get(url, **bearer(raw))
            body, header = response.json(), response.get("WWW-Authenticate")
        else:
            [response] = asgi_get(ASGIHandler(), (url, {"Authorization": f"Bearer {raw}"}))
            body, header = response.json(), response.headers.get("www-authenticate")
    assert response.status_code == status
    if missing:
        assert body == {"error": "insufficient_scope", "error_description": f"Missing scope {missing}."}
        assert header == (f'Bearer error="insufficient_scope", error_description="Missing scope {missing}.", '
                          'scope="app!t123.Read app!t123.Admin"')


def test_require_scopes_on_public_path_is_401(propagator: Propagator) -> None:
    with settings_for(propagator, PUBLIC_PATHS=["/orders"]):
        response = Client().get("/orders")
    assert response.status_code == 401
    assert response.json()["error_description"] == "A Bearer token is required for this resource."


def test_streaming_response_sees_the_user(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                          idp_keys: respx.MockRouter) -> None:
    with settings_for(propagator):
        response = Client().get("/stream", **bearer(xsuaa.token()))
        assert b"".join(response.streaming_content) == b"0:alice@example.com;1:alice@example.com;2:alice@example.com;"
    assert current_token() is None


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
def test_streaming_response_under_asgi_sees_the_user(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                                     idp_keys: respx.MockRouter) -> None:
    """A sync streaming view under ASGI: Django iterates it later in a worker thread."""
    with settings_for(propagator):
        [response] = asgi_get(ASGIHandler(), ("/stream", {"Authorization": f"Bearer {xsuaa.token()}"}))
    assert response.content == b"0:alice@example.com;1:alice@example.com;2:alice@example.com;"


@pytest.mark.parametrize(
    "config, message",
    [
        pytest.param({"PUBLIC_PATH": ["/health"]}, "unknown key(s) PUBLIC_PATH", id="typo"),
        pytest.param({"REQUIRE_TOKEN": "no"}, "REQUIRE_TOKEN'] must be True or False", id="not-a-bool"),
        pytest.param({"PROPAGATOR": 42}, "must be a Propagator", id="bad-propagator"),
        pytest.param({}, "No 'xsuaa' or 'identity' service binding", id="no-binding"),
    ],
)
def test_bad_settings_fail_the_load_and_the_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  config: dict[str, Any], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("VCAP_SERVICES", "SERVICE_BINDING_ROOT"):
        monkeypatch.delenv(name, raising=False)
    with override_settings(PROPAGATION=config):
        with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            WSGIHandler()
        [error] = check_settings()
    assert error.id == "propagation.E001"
    assert message in error.msg


def test_check_passes_with_a_good_setting(propagator: Propagator) -> None:
    with settings_for(propagator, IAS_TO_XSUAA=True, XSUAA_TRUST_CLIENT_ID="trust"):
        assert check_settings() == []


@pytest.mark.parametrize("bound, ids", [
    pytest.param(("xsuaa", "ias"), ["propagation.W001"], id="ias-users-without-the-flow-warning"),
    pytest.param(("ias",), ["propagation.E003"], id="only-identity-bound-error"),
    pytest.param(("xsuaa",), [], id="only-xsuaa-fine"),
])
def test_check_compares_the_scopes_with_the_bindings(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, bound: tuple[str, ...],
                                                      ids: list[str]) -> None:
    """Issue 20 item 3: only `identity` bound and require_scopes in use said nothing; every scoped route was a 403."""
    from conftest import make_bindings

    engine = Propagator(bindings=make_bindings(xsuaa if "xsuaa" in bound else None, ias if "ias" in bound else None),
                        environ={})
    with settings_for(engine):
        found = check_settings()
    assert [m.id for m in found] == ids
    if "propagation.E003" in ids:
        assert found[0].msg == (
            "require_scopes checks XSUAA scopes on /orders (Read), /admin (Read, Admin), but only an 'identity' binding "
            "is bound: scopes come from an XSUAA token, so every such route answers 403. Bind an XSUAA instance (and "
            "set PROPAGATION_IAS_TO_XSUAA=true for IAS users), or check IAS users another way.")


def test_manage_py_check_reports_a_missing_binding(tmp_path: Path) -> None:
    """The real command: `manage.py check` exits non-zero naming the missing binding."""
    (tmp_path / "site_settings.py").write_text(textwrap.dedent("""
        SECRET_KEY = "x"
        ROOT_URLCONF = "site_settings"
        urlpatterns = []
        MIDDLEWARE = ["propagation.django.PropagationMiddleware"]
        INSTALLED_APPS = ["propagation.django.PropagationConfig"]
        PROPAGATION = {"PUBLIC_PATHS": ["/health"]}
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("VCAP_SERVICES", "SERVICE_BINDING_ROOT")}
    env.update(DJANGO_SETTINGS_MODULE="site_settings",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "django", "check"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "propagation.E001" in done.stderr
    assert "No 'xsuaa' or 'identity' service binding" in done.stderr


def test_technical_caller(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    raw = xsuaa.token("sb-app!t123", grant_type="client_credentials")
    with settings_for(propagator):
        refused = Client().get("/me", **bearer(raw))
    with settings_for(propagator, ALLOW_TECHNICAL=True):
        allowed = Client().get("/me", **bearer(raw))
    assert refused.status_code == 401
    assert "carries no user" in refused.json()["error_description"]
    assert allowed.status_code == 200


def test_core_never_imports_django() -> None:
    code = ("import sys, json, propagation, propagation.inbound, propagation.wsgi, propagation.asgi, propagation.engine\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'django')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_concurrent_sync_requests_keep_their_users(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                                   idp_keys: respx.MockRouter) -> None:
    """WSGI (threads): both requests are inside the view before either answers."""
    import threading

    barrier = threading.Barrier(2, timeout=10)
    results: dict[str, Any] = {}

    def view(request: HttpRequest) -> JsonResponse:
        before = current_token()
        barrier.wait()
        after = current_token()
        return JsonResponse({"before": before.user if before else None, "after": after.user if after else None})

    module = type(sys)("both_urls")
    module.urlpatterns = [path("both", require_scopes("Read")(view))]  # type: ignore[attr-defined]
    sys.modules["both_urls"] = module
    try:
        with settings_for(propagator), override_settings(ROOT_URLCONF="both_urls"):
            def run(user: str) -> None:
                results[user] = Client().get("/both", **bearer(xsuaa.token(f"{user}@example.com"))).json()

            threads = [threading.Thread(target=run, args=(u,)) for u in ("alice", "bob")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=20)
    finally:
        del sys.modules["both_urls"]
    assert results == {u: {"before": f"{u}@example.com", "after": f"{u}@example.com"} for u in ("alice", "bob")}


# -- require_scopes misuse (issue 17 item 1) ---------------------------------------------------------
def test_require_scopes_on_a_class_or_a_method_is_refused_where_written() -> None:
    from django.views import View

    with pytest.raises(ConfigurationError) as on_class:
        @require_scopes("Read")
        class Orders(View):
            def get(self, request: HttpRequest) -> JsonResponse:
                return JsonResponse({})
    assert str(on_class.value) == (
        "require_scopes('Read') cannot decorate the class 'Orders': decorate the class with "
        "@method_decorator(require_scopes('Read'), name=\"dispatch\") (django.utils.decorators.method_decorator).")

    with pytest.raises(ConfigurationError, match=r"decorates the method '.*Items.get', whose first argument is 'self', "
                                                 r"not the request: decorate the class with @method_decorator"):
        class Items(View):
            @require_scopes("Read")
            def get(self, request: HttpRequest) -> JsonResponse:
                return JsonResponse({})


def test_method_decorator_on_a_class_based_view_checks(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                                        idp_keys: respx.MockRouter) -> None:
    from django.utils.decorators import method_decorator
    from django.views import View

    @method_decorator(require_scopes("Admin"), name="dispatch")
    class Orders(View):
        def get(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"orders": []})

    module = type(sys)("cbv_urls")
    module.urlpatterns = [path("cbv", Orders.as_view())]  # type: ignore[attr-defined]
    sys.modules["cbv_urls"] = module
    try:
        with settings_for(propagator), override_settings(ROOT_URLCONF="cbv_urls"):
            refused = Client().get("/cbv", **bearer(xsuaa.token()))
            allowed = Client().get("/cbv", **bearer(xsuaa.token(scopes=("app!t123.Admin",))))
    finally:
        del sys.modules["cbv_urls"]
    assert (refused.status_code, allowed.status_code) == (403, 200)


def test_a_route_to_the_undecorated_view_is_refused(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                                    idp_keys: respx.MockRouter) -> None:
    """The Django twin of the Flask order mistake: the decorated view exists, the URLconf routes the bare one."""
    def bare(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"secret": True})

    protected = require_scopes("Admin")(bare)  # noqa: F841 - made, then not routed
    module = type(sys)("bare_urls")
    module.urlpatterns = [path("bare", bare)]  # type: ignore[attr-defined]
    sys.modules["bare_urls"] = module
    try:
        with settings_for(propagator), override_settings(ROOT_URLCONF="bare_urls"):
            [error] = check_settings()
            with pytest.raises(ConfigurationError, match="URL '/bare' calls the view"):
                Client(raise_request_exception=True).get("/bare", **bearer(xsuaa.token()))
    finally:
        del sys.modules["bare_urls"]
    assert error.id == "propagation.E002"
    assert error.msg.startswith("URL '/bare' calls the view 'test_a_route_to_the_undecorated_view_is_refused.<locals>"
                                ".bare' without its require_scopes('Admin') check")


# -- MissingUserTokenError in a view (issue 20 item 2) -------------------------------------------------
@pytest.mark.parametrize("extra, status", [pytest.param({}, 401, id="default-401"),
                                           pytest.param({"MISSING_USER_401": False}, 500, id="opt-out")])
@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
def test_missing_user_token_in_a_view_is_401(xsuaa: jwtkit.Xsuaa, extra: dict[str, Any], status: int,
                                             handler: str) -> None:
    from conftest import make_bindings

    destinations = json.dumps([{"name": "S4", "url": "https://s4.example.com", "Authentication": "OAuth2JWTBearer",
                                "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c",
                                "clientSecret": "s-VALUE"}])
    engine = Propagator(bindings=make_bindings(xsuaa), environ={"destinations": destinations})

    def public(request: HttpRequest) -> JsonResponse:
        return JsonResponse(engine.headers("S4"))

    module = type(sys)("missing_user_urls")
    module.urlpatterns = [path("public", public)]  # type: ignore[attr-defined]
    sys.modules["missing_user_urls"] = module
    try:
        with settings_for(engine, PUBLIC_PATHS=["/public"], **extra), override_settings(ROOT_URLCONF="missing_user_urls"):
            if handler == "wsgi":
                response = Client(raise_request_exception=False).get("/public")
            else:
                from django.test import AsyncClient

                response = asyncio.run(AsyncClient(raise_request_exception=False).get("/public"))
    finally:
        del sys.modules["missing_user_urls"]
    assert response.status_code == status
    if status == 401:
        assert json.loads(response.content) == {"error": "invalid_token", "error_description": "A signed-in user is "
                                                "required for this resource: send a Bearer token of a user."}
        assert response["WWW-Authenticate"].startswith('Bearer error="invalid_token", error_description="A signed-in')


def test_missing_user_setting_must_be_a_bool(propagator: Propagator) -> None:
    with settings_for(propagator, MISSING_USER_401="yes"):
        with pytest.raises(ConfigurationError, match=r"MISSING_USER_401'\] must be True or False"):
            WSGIHandler()
