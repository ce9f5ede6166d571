"""PropagationMiddleware (WSGI): 401 for every bad or missing token, the validated user in
``environ`` and ``current_token()`` for the whole response, streaming included."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import jwt
import pytest
import respx
from werkzeug.test import EnvironBuilder

import jwtkit
from conftest import make_bindings
from propagation import current_token, use_token
from propagation.context import ENVIRON_KEY
from propagation.engine import Propagator
from propagation.errors import ConfigurationError
from propagation.tokens import UserToken, fingerprint
from propagation.wsgi import PropagationMiddleware

Header = Callable[[jwtkit.Xsuaa, jwtkit.Ias], "str | None"]


@dataclass
class Seen:
    """What the wrapped app observed, per request."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        token = current_token()
        self.calls.append({"environ": environ.get(ENVIRON_KEY), "current": token, "path": environ["PATH_INFO"]})
        body = json.dumps({"user": token.user if token else None}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


@dataclass
class Result:
    status: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def call(app: Any, path: str = "/api", authorization: str | None = None, method: str = "GET") -> Result:
    environ = EnvironBuilder(path=path, method=method).get_environ()
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization  # as a server puts it: latin-1 decoded str
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    iterable = app(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        getattr(iterable, "close", lambda: None)()
    return Result(captured["status"], dict(captured["headers"]), body)


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def app(seen: Seen, propagator: Propagator) -> PropagationMiddleware:
    return PropagationMiddleware(seen.app, propagator=propagator, public_paths=["/health", "/static/"])


def bearer(raw: str) -> str:
    return f"Bearer {raw}"


def hs256(xsuaa: jwtkit.Xsuaa) -> str:
    claims = jwt.decode(xsuaa.token(), options={"verify_signature": False})
    return jwt.encode(claims, "a-shared-secret-of-sufficient-length!", algorithm="HS256", headers={"kid": xsuaa.kid})


def assert_401(result: Result, description: str, *secrets: str) -> None:
    """The exact shape of a refusal: status, JSON body, content type, RFC 6750 challenge."""
    assert result.status == "401 Unauthorized"
    assert result.headers["Content-Type"] == "application/json"
    assert result.headers["Content-Length"] == str(len(result.body))
    body = result.json
    assert set(body) == {"error", "error_description"}
    assert body["error"] == "invalid_token"
    assert description in body["error_description"]
    challenge = result.headers["WWW-Authenticate"]
    escaped = body["error_description"].replace("\\", "\\\\").replace('"', '\\"')
    assert challenge == f'Bearer error="invalid_token", error_description="{escaped}"'
    assert challenge.isascii() and challenge.isprintable()
    for secret in filter(None, secrets):
        for part in (secret, *[p for p in secret.split(".") if len(p) >= 8]):
            assert part not in result.body.decode() and part not in challenge


BAD_HEADERS = [
    pytest.param(lambda x, i: None, "Missing Authorization header", id="missing"),
    pytest.param(lambda x, i: "", "Empty Authorization header", id="empty"),
    pytest.param(lambda x, i: "Bearer", "Bearer scheme but no token", id="bearer-only"),
    pytest.param(lambda x, i: "Bearer ", "Bearer scheme but no token", id="bearer-space"),
    pytest.param(lambda x, i: "Basic abc", "Authorization scheme is not Bearer", id="basic"),
    pytest.param(lambda x, i: bearer(x.token()).replace("Bearer", "Token"), "Authorization scheme is not Bearer",
                 id="other-scheme-with-jwt"),
    pytest.param(lambda x, i: "Bearer a.b", "expected three dot-separated segments", id="two-segments"),
    pytest.param(lambda x, i: f"Bearer {x.token()} {x.token()}", "Malformed Authorization header", id="two-tokens"),
    pytest.param(lambda x, i: "Bearer " + "a" * 20_000, "too long", id="20kB"),
    pytest.param(lambda x, i: "Bearer \xe9\xe9.\xe9.\xe9", "Malformed Authorization header", id="non-ascii"),
    pytest.param(lambda x, i: bearer(jwtkit.unsigned(jwt.decode(x.token(), options={"verify_signature": False}))),
                 "Token algorithm 'none' is not accepted", id="alg-none"),
    pytest.param(lambda x, i: bearer(hs256(x)), "Token algorithm 'HS256' is not accepted", id="hs256"),
    pytest.param(lambda x, i: bearer(x.token(ttl=-120)), "Token expired.", id="expired"),
    pytest.param(lambda x, i: bearer(x.token(key=jwtkit.rsa_key("attacker"))), "Token signature verification failed.",
                 id="xsuaa-forged"),
    pytest.param(lambda x, i: bearer(i.token(key=jwtkit.rsa_key("attacker"))), "Token signature verification failed.",
                 id="ias-forged"),
    pytest.param(lambda x, i: bearer(x.token(cid="sb-other!t9", extra={"aud": ["sb-other!t9"]})),
                 "Token audience does not match", id="xsuaa-wrong-audience"),
    pytest.param(lambda x, i: bearer(i.token(aud=["another-app"])), "Token audience does not match",
                 id="ias-wrong-audience"),
    pytest.param(lambda x, i: bearer(i.token(issuer="https://evil.example.com")), "Token issuer is not trusted",
                 id="ias-unknown-issuer"),
]


@pytest.mark.parametrize("header, description", BAD_HEADERS)
def test_bad_authorization_is_401(app: PropagationMiddleware, seen: Seen, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                  idp_keys: respx.MockRouter, header: Header, description: str) -> None:
    authorization = header(xsuaa, ias)
    result = call(app, "/api", authorization)
    assert_401(result, description, *([authorization.partition(" ")[2]] if authorization else []))
    assert seen.calls == []
    assert current_token() is None


def test_xsuaa_token_without_xsuaa_binding_is_401(seen: Seen, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                  idp_keys: respx.MockRouter) -> None:
    app = PropagationMiddleware(seen.app, propagator=Propagator(bindings=make_bindings(ias=ias), environ={}))
    result = call(app, "/api", bearer(xsuaa.token()))
    assert_401(result, "no 'xsuaa' binding to validate it against")
    assert seen.calls == []
    assert not idp_keys.calls


def test_key_endpoint_down_is_401_not_500(app: PropagationMiddleware, seen: Seen, xsuaa: jwtkit.Xsuaa,
                                          idp_keys: respx.MockRouter) -> None:
    idp_keys["xsuaa_token_keys"].respond(500)
    result = call(app, "/api", bearer(xsuaa.token()))
    assert_401(result, f"signing keys could not be fetched from {xsuaa.uaadomain} (HTTP 500)")
    assert seen.calls == []


def test_broken_validator_is_401_not_500(seen: Seen, bindings: Any, xsuaa: jwtkit.Xsuaa) -> None:
    class Broken:
        def validate(self, raw: str) -> UserToken:
            raise RuntimeError(f"bug while handling {raw}")

    app = PropagationMiddleware(seen.app, propagator=Propagator(bindings=bindings, environ={}, validator=Broken()))
    raw = xsuaa.token()
    assert_401(call(app, "/api", bearer(raw)), "Token could not be validated.", raw)


# -- accepted tokens ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, kind, user, tenant",
    [
        pytest.param(lambda x, i: x.token("alice@example.com"), "xsuaa", "alice@example.com", "tenant-provider-zid",
                     id="xsuaa"),
        pytest.param(lambda x, i: i.token("bob@example.com", extra={"user_uuid": "bob-uuid"}), "ias", "bob-uuid",
                     "ias-app-tid", id="ias"),
        pytest.param(lambda x, i: x.token("carol@example.com", zid="sub-zid", subdomain="sub"), "xsuaa",
                     "carol@example.com", "sub-zid", id="xsuaa-subscriber"),
    ],
)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_valid_token_reaches_the_app(app: PropagationMiddleware, seen: Seen, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                     idp_keys: respx.MockRouter, make: Callable[..., str], kind: str, user: str,
                                     tenant: str, scheme: str) -> None:
    raw = make(xsuaa, ias)
    result = call(app, "/api", f"{scheme} {raw}")
    assert result.status == "200 OK"
    assert result.json == {"user": user}
    [request] = seen.calls
    assert isinstance(request["environ"], UserToken)
    assert request["environ"] == request["current"]
    assert request["environ"].raw == raw
    assert (request["current"].kind, request["current"].user, request["current"].tenant) == (kind, user, tenant)
    assert current_token() is None


def test_streaming_response_sees_the_user_in_every_chunk(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                                         idp_keys: respx.MockRouter) -> None:
    closed: list[Any] = []

    def streaming(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            for n in range(3):
                token = current_token()
                yield f"{n}:{token.user if token else None};".encode()
        finally:
            closed.append(current_token())

    app = PropagationMiddleware(streaming, propagator=propagator)
    environ = EnvironBuilder(path="/stream", headers={"Authorization": bearer(xsuaa.token("alice@example.com"))}).get_environ()
    iterable = app(environ, lambda status, headers, exc_info=None: None)
    assert current_token() is None  # the server thread, between chunks, carries no user
    chunks = []
    for chunk in iterable:
        chunks.append(chunk)
        assert current_token() is None
    iterable.close()  # type: ignore[attr-defined]
    assert chunks == [b"0:alice@example.com;", b"1:alice@example.com;", b"2:alice@example.com;"]
    assert [t.user for t in closed] == ["alice@example.com"]
    assert current_token() is None


def test_what_a_streaming_body_sets_in_context_variables_stays_with_the_body(
        propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    """Each chunk is produced in the request's own context: a body's context variables carry
    from chunk to chunk and never reach the server's thread (which may serve other requests
    between the chunks)."""
    import contextvars

    step: contextvars.ContextVar[int] = contextvars.ContextVar("step", default=0)

    def streaming(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        for _ in range(3):
            step.set(step.get() + 1)
            yield str(step.get()).encode()

    app = PropagationMiddleware(streaming, propagator=propagator)
    environ = EnvironBuilder(path="/s", headers={"Authorization": bearer(xsuaa.token())}).get_environ()
    chunks = []
    for chunk in app(environ, lambda *a: None):
        chunks.append(chunk)
        assert step.get() == 0  # the server's context never sees the body's variables
    assert chunks == [b"1", b"2", b"3"]


def test_response_closed_early_still_runs_cleanup_as_the_user(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                                              idp_keys: respx.MockRouter) -> None:
    at_close: list[Any] = []

    def streaming(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            while True:
                yield b"x"
        finally:
            at_close.append(current_token())

    app = PropagationMiddleware(streaming, propagator=propagator)
    environ = EnvironBuilder(path="/s", headers={"Authorization": bearer(xsuaa.token())}).get_environ()
    iterable = app(environ, lambda *a: None)
    assert next(iter(iterable)) == b"x"
    iterable.close()  # type: ignore[attr-defined]
    assert at_close[0] is not None and at_close[0].user == "alice@example.com"
    assert current_token() is None


def test_app_exception_resets_the_user(propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    def failing(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        assert current_token() is not None
        raise LookupError("app bug")

    app = PropagationMiddleware(failing, propagator=propagator)
    with pytest.raises(LookupError):
        call(app, "/api", bearer(xsuaa.token()))
    assert current_token() is None


def test_repeated_token_is_validated_once(app: PropagationMiddleware, seen: Seen, xsuaa: jwtkit.Xsuaa,
                                          idp_keys: respx.MockRouter, xssec_calls: Counter[str]) -> None:
    raw = xsuaa.token()
    statuses = {call(app, "/api", bearer(raw)).status for _ in range(50)}
    assert statuses == {"200 OK"}
    assert len(seen.calls) == 50
    assert idp_keys["xsuaa_token_keys"].call_count == 1
    assert xssec_calls == Counter({"xsuaa": 1})


# -- public paths and anonymous access ----------------------------------------------------------
@pytest.mark.parametrize(
    "path, authorization, status",
    [
        pytest.param("/health", None, "200 OK", id="public-no-header"),
        pytest.param("/health", "Basic abc", "200 OK", id="public-ignores-header"),
        pytest.param("/static/app.js", None, "200 OK", id="public-prefix"),
        pytest.param("/healthz", None, "401 Unauthorized", id="not-exact"),
        pytest.param("/static/../api", None, "401 Unauthorized", id="dot-dot-escape"),
        pytest.param("/api", None, "401 Unauthorized", id="protected"),
    ],
)
def test_public_paths(app: PropagationMiddleware, seen: Seen, path: str, authorization: str | None,
                      status: str) -> None:
    result = call(app, path, authorization)
    assert result.status == status
    if status == "200 OK":
        assert seen.calls == [{"environ": None, "current": None, "path": path}]


def test_public_path_runs_without_a_leftover_user(app: PropagationMiddleware, seen: Seen) -> None:
    with use_token(jwtkit.unsigned({"user_name": "someone-else", "exp": 9999999999})):
        assert call(app, "/health").status == "200 OK"
    assert seen.calls[0]["current"] is None


@pytest.mark.parametrize(
    "authorization, status, user",
    [
        pytest.param(None, "200 OK", None, id="no-header-anonymous"),
        pytest.param("valid", "200 OK", "alice@example.com", id="valid"),
        pytest.param("", "401 Unauthorized", None, id="empty-header"),
        pytest.param("Basic abc", "401 Unauthorized", None, id="basic"),
        pytest.param("expired", "401 Unauthorized", None, id="expired"),
    ],
)
def test_require_token_false(seen: Seen, propagator: Propagator, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter,
                             authorization: str | None, status: str, user: str | None) -> None:
    app = PropagationMiddleware(seen.app, propagator=propagator, require_token=False)
    header = {"valid": bearer(xsuaa.token()), "expired": bearer(xsuaa.token(ttl=-120))}.get(authorization or "", authorization)
    result = call(app, "/api", header)
    assert result.status == status
    if status == "200 OK":
        assert result.json == {"user": user}


# -- construction ------------------------------------------------------------------------------
def test_default_propagator_reads_the_environment_at_construction(
    seen: Seen, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter, vcap_env: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    monkeypatch.setenv("VCAP_SERVICES", vcap_env())
    app = PropagationMiddleware(seen.app)
    monkeypatch.delenv("VCAP_SERVICES")  # read once, at construction
    assert call(app, "/api", bearer(xsuaa.token())).json == {"user": "alice@example.com"}


def test_missing_binding_fails_at_construction(seen: Seen, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    monkeypatch.setenv("VCAP_SERVICES", json.dumps({"destination": []}))
    with pytest.raises(ConfigurationError, match="No 'xsuaa' or 'identity' service binding"):
        PropagationMiddleware(seen.app)


def test_environ_is_not_stripped(app: PropagationMiddleware, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    environ = EnvironBuilder(path="/api", headers={"Authorization": bearer(xsuaa.token())}).get_environ()
    before = dict(environ)
    b"".join(app(environ, lambda *a: None))
    assert {k: v for k, v in environ.items() if k != ENVIRON_KEY} == before


# -- logging -----------------------------------------------------------------------------------
def test_logs_carry_fingerprints_never_tokens(app: PropagationMiddleware, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                              idp_keys: respx.MockRouter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good, ias_good = xsuaa.token(), ias.token()
    forged, expired = xsuaa.token(key=jwtkit.rsa_key("attacker")), ias.token(ttl=-120)
    for raw in (good, ias_good, forged, expired, good):
        call(app, "/api", bearer(raw))
    text = caplog.text
    for raw in (good, ias_good, forged, expired):
        for part in (raw, *raw.split(".")):
            assert part not in text
    assert "eyJ" not in text
    rejections = [r for r in caplog.records if r.name == "propagation" and "rejected (401)" in r.getMessage()]
    assert [r.levelno for r in rejections] == [logging.INFO, logging.INFO]
    assert fingerprint(forged) in rejections[0].getMessage()
    assert "Token signature verification failed." in rejections[0].getMessage()
    assert fingerprint(expired) in rejections[1].getMessage()
