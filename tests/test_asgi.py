"""PropagationASGIMiddleware, driven by a tiny in-test ASGI harness (no framework)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import jwt
import pytest
import respx

import jwtkit
from conftest import make_bindings
from propagation import current_token
from propagation.asgi import PropagationASGIMiddleware
from propagation.context import ENVIRON_KEY
from propagation.engine import Propagator
from propagation.tokens import UserToken

Headers = list[tuple[bytes, bytes]]


def http_scope(path: str = "/api", headers: Headers = (), kind: str = "http") -> dict[str, Any]:  # type: ignore[assignment]
    scope: dict[str, Any] = {
        "type": kind, "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http" if kind == "http" else "ws",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": list(headers),
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }
    if kind == "http":
        scope["method"] = "GET"
    return scope


@dataclass
class Exchange:
    """Everything sent by the app, with the current user at the moment of each ``send``."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    users_at_send: list[str | None] = field(default_factory=list)

    @property
    def status(self) -> int:
        return self.messages[0]["status"]

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.messages[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


def run(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]] | None = None) -> Exchange:
    exchange = Exchange()
    inbox = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        token = current_token()
        exchange.users_at_send.append(token.user if token else None)
        exchange.messages.append(message)

    asyncio.run(app(scope, receive, send))
    return exchange


@dataclass
class Downstream:
    """A raw ASGI app that streams three chunks, each naming the current user."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            self.calls.append({"type": "lifespan"})
            return
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            token = current_token()
            await send({"type": "websocket.send", "text": token.user if token else "anonymous"})
            self.calls.append({"type": "websocket", "current": token, "scope": scope.get(ENVIRON_KEY)})
            return
        in_task = await asyncio.create_task(self._current())
        self.calls.append({"scope": scope.get(ENVIRON_KEY), "state": scope.get("state", {}).get(ENVIRON_KEY),
                           "current": current_token(), "in_task": in_task, "path": scope["path"]})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for n in range(3):
            await asyncio.sleep(0)
            token = current_token()
            await send({"type": "http.response.body", "body": f"{n}:{token.user if token else None};".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _current() -> UserToken | None:
        return current_token()


@pytest.fixture
def downstream() -> Downstream:
    return Downstream()


@pytest.fixture
def app(downstream: Downstream, propagator: Propagator) -> PropagationASGIMiddleware:
    return PropagationASGIMiddleware(downstream, propagator=propagator, public_paths=["/health"])


def auth(value: str | bytes) -> Headers:
    return [(b"authorization", value if isinstance(value, bytes) else value.encode("latin-1"))]


@pytest.mark.parametrize(
    "headers, description",
    [
        pytest.param(lambda x, i: [], "Missing Authorization header", id="missing"),
        pytest.param(lambda x, i: auth(""), "Empty Authorization header", id="empty"),
        pytest.param(lambda x, i: auth("Basic abc"), "Authorization scheme is not Bearer", id="basic"),
        pytest.param(lambda x, i: auth("Bearer a.b"), "expected three dot-separated segments", id="two-segments"),
        pytest.param(lambda x, i: auth(b"Bearer \xe9\xe9.\xe9.\xe9"), "Malformed Authorization header", id="non-ascii"),
        pytest.param(lambda x, i: auth("Bearer " + "a" * 20_000), "too long", id="20kB"),
        pytest.param(lambda x, i: auth("Bearer " + jwtkit.unsigned(jwt.decode(x.token(), options={"verify_signature": False}))),
                     "Token algorithm 'none' is not accepted", id="alg-none"),
        pytest.param(lambda x, i: auth("Bearer " + x.token(ttl=-120)), "Token expired.", id="expired"),
        pytest.param(lambda x, i: auth("Bearer " + x.token(key=jwtkit.rsa_key("attacker"))),
                     "Token signature verification failed.", id="forged"),
        pytest.param(lambda x, i: auth("Bearer " + i.token(aud=["other"])), "Token audience does not match",
                     id="ias-wrong-audience"),
        pytest.param(lambda x, i: auth("Bearer " + i.token(issuer="https://evil.example.com")),
                     "Token issuer is not trusted", id="ias-unknown-issuer"),
        pytest.param(lambda x, i: auth("Bearer " + x.token()) + auth("Bearer " + x.token("mallory@example.com")),
                     "More than one Authorization header", id="two-headers"),
    ],
)
def test_bad_authorization_is_401(app: PropagationASGIMiddleware, downstream: Downstream, xsuaa: jwtkit.Xsuaa,
                                  ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                  headers: Callable[..., Headers], description: str) -> None:
    exchange = run(app, http_scope("/api", headers(xsuaa, ias)))
    assert exchange.status == 401
    assert exchange.headers["content-type"] == "application/json"
    assert exchange.headers["content-length"] == str(len(exchange.body))
    body = json.loads(exchange.body)
    assert set(body) == {"error", "error_description"} and body["error"] == "invalid_token"
    assert description in body["error_description"]
    escaped = body["error_description"].replace("\\", "\\\\").replace('"', '\\"')
    assert exchange.headers["www-authenticate"] == f'Bearer error="invalid_token", error_description="{escaped}"'
    assert b"eyJ" not in exchange.body
    assert downstream.calls == []


@pytest.mark.parametrize(
    "make, user",
    [
        pytest.param(lambda x, i: x.token("alice@example.com"), "alice@example.com", id="xsuaa"),
        pytest.param(lambda x, i: i.token("bob@example.com", extra={"user_uuid": "bob-uuid"}), "bob-uuid", id="ias"),
    ],
)
def test_valid_token_streams_as_the_user(app: PropagationASGIMiddleware, downstream: Downstream, xsuaa: jwtkit.Xsuaa,
                                         ias: jwtkit.Ias, idp_keys: respx.MockRouter, make: Callable[..., str],
                                         user: str) -> None:
    raw = make(xsuaa, ias)
    exchange = run(app, http_scope("/api", auth(f"Bearer {raw}")))
    assert exchange.status == 200
    assert exchange.body == f"0:{user};1:{user};2:{user};".encode()
    assert exchange.users_at_send == [user] * 5  # every send of the stream ran as the user
    [seen] = downstream.calls
    assert seen["scope"] == seen["state"] == seen["current"] == seen["in_task"]
    assert seen["scope"].raw == raw and seen["scope"].user == user
    assert current_token() is None


def test_scope_of_the_server_is_not_mutated(app: PropagationASGIMiddleware, xsuaa: jwtkit.Xsuaa,
                                            idp_keys: respx.MockRouter) -> None:
    scope = http_scope("/api", auth("Bearer " + xsuaa.token()))
    scope["state"] = {"db": "pool"}
    run(app, scope)
    assert ENVIRON_KEY not in scope and scope["state"] == {"db": "pool"}


def test_repeated_token_is_validated_once_and_in_a_thread_only_on_miss(
    app: PropagationASGIMiddleware, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter, xssec_calls: Counter[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    real_to_thread = asyncio.to_thread

    async def to_thread(func: Any, *args: Any) -> Any:
        threads.append(threading.get_ident())
        return await real_to_thread(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    raw = xsuaa.token()
    statuses = {run(app, http_scope("/api", auth(f"Bearer {raw}"))).status for _ in range(50)}
    assert statuses == {200}
    assert idp_keys["xsuaa_token_keys"].call_count == 1
    assert xssec_calls == Counter({"xsuaa": 1})
    assert len(threads) == 1


@pytest.mark.parametrize(
    "path, headers, status",
    [
        pytest.param("/health", [], 200, id="public"),
        pytest.param("/health", auth("Basic abc"), 200, id="public-ignores-header"),
        pytest.param("/health/../api", [], 401, id="dot-dot"),
    ],
)
def test_public_paths(app: PropagationASGIMiddleware, downstream: Downstream, path: str, headers: Headers,
                      status: int) -> None:
    exchange = run(app, http_scope(path, headers))
    assert exchange.status == status
    if status == 200:
        assert downstream.calls[0]["current"] is None and downstream.calls[0]["scope"] is None


@pytest.mark.parametrize(
    "headers, status, body",
    [
        pytest.param(lambda x: [], 200, b"0:None;1:None;2:None;", id="anonymous"),
        pytest.param(lambda x: auth("Bearer " + x.token()), 200,
                     b"0:alice@example.com;1:alice@example.com;2:alice@example.com;", id="valid"),
        pytest.param(lambda x: auth("Bearer " + x.token(ttl=-120)), 401, None, id="present-but-expired"),
    ],
)
def test_require_token_false(downstream: Downstream, propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                             idp_keys: respx.MockRouter, headers: Callable[..., Headers], status: int,
                             body: bytes | None) -> None:
    app = PropagationASGIMiddleware(downstream, propagator=propagator, require_token=False)
    exchange = run(app, http_scope("/api", headers(xsuaa)))
    assert exchange.status == status
    if body is not None:
        assert exchange.body == body


def test_lifespan_passes_through(app: PropagationASGIMiddleware, downstream: Downstream) -> None:
    run(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, [{"type": "lifespan.startup"}])
    assert downstream.calls == [{"type": "lifespan"}]


def test_websocket_with_valid_token(app: PropagationASGIMiddleware, downstream: Downstream, xsuaa: jwtkit.Xsuaa,
                                    idp_keys: respx.MockRouter) -> None:
    exchange = run(app, http_scope("/ws", auth("Bearer " + xsuaa.token()), kind="websocket"),
                   [{"type": "websocket.connect"}])
    assert [m["type"] for m in exchange.messages] == ["websocket.accept", "websocket.send"]
    assert exchange.messages[1]["text"] == "alice@example.com"
    assert downstream.calls[0]["scope"].user == "alice@example.com"


@pytest.mark.parametrize("headers", [pytest.param([], id="missing"), pytest.param(auth("Bearer a.b.c"), id="bad")])
def test_websocket_without_valid_token_is_closed(app: PropagationASGIMiddleware, downstream: Downstream,
                                                 headers: Headers) -> None:
    exchange = run(app, http_scope("/ws", headers, kind="websocket"), [{"type": "websocket.connect"}])
    assert exchange.messages == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    assert downstream.calls == []


def test_xsuaa_token_without_xsuaa_binding_is_401(downstream: Downstream, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                  idp_keys: respx.MockRouter) -> None:
    app = PropagationASGIMiddleware(downstream, propagator=Propagator(bindings=make_bindings(ias=ias), environ={}))
    exchange = run(app, http_scope("/api", auth("Bearer " + xsuaa.token())))
    assert exchange.status == 401
    assert "no 'xsuaa' binding to validate it against" in json.loads(exchange.body)["error_description"]
