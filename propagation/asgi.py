"""ASGI middleware: validate the caller's bearer JWT and make it the current user.

No framework dependency: it speaks raw ASGI 3, so it wraps Starlette, FastAPI, Quart, or
Django's ASGI handler alike.

.. code-block:: python

    app = PropagationASGIMiddleware(app, public_paths=["/health"])
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from typing import Any, Awaitable, Callable, Iterable, Mapping, MutableMapping

from .context import ENVIRON_EXCHANGED_KEY, ENVIRON_KEY, ENVIRON_PUBLIC_KEY, reset_current_tokens, set_current_tokens
from .checks import built_from_env, startup_check
from .correlation import correlated_asgi
from .engine import Propagator
from .errors import InvalidTokenError
from .inbound import Authenticated, InboundGate, PublicPaths, unauthorized

__all__ = ["PropagationASGIMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: WebSocket close code for a refused handshake (RFC 6455 "policy violation"); servers
#: answer a close before ``websocket.accept`` with HTTP 403.
WS_POLICY_VIOLATION = 1008


class PropagationASGIMiddleware:
    """Authenticate every HTTP request and WebSocket handshake by its bearer JWT.

    Security stance and options are those of :class:`propagation.wsgi.PropagationMiddleware`:
    fail closed, 401 ``invalid_token`` JSON + ``WWW-Authenticate`` for every bad or missing
    token (never a 500, never the app), rejections logged with the fingerprint only.

    On success the :class:`~propagation.UserToken` is in ``scope["propagation.token"]`` and
    ``scope["state"]["propagation.token"]`` (what Starlette's ``request.state`` reads), and
    :func:`~propagation.current_token` returns it for the whole downstream call, streaming
    ``send``\\ s included (tasks the app spawns inherit it).

    WebSockets are validated the same way (``Authorization`` header of the handshake); a
    refused handshake is closed with code 1008, which servers turn into HTTP 403. Browsers
    cannot set that header on WebSockets; tokens in query strings are deliberately not read.
    ``lifespan`` and other scope types pass through untouched.

    Validation of a token not yet cached may block on sap-xssec's synchronous key fetch
    (the first request per IdP key, every 15 minutes), so a cache miss is validated in a
    worker thread (``asyncio.to_thread``); cached tokens are answered on the event loop.

    ``ias_to_xsuaa``, ``xsuaa_trust_client_id`` and ``public_clients`` are those of the WSGI
    middleware; the XSUAA token is in ``scope["propagation.xsuaa_token"]`` (and ``state``),
    a public client's original token in ``scope["propagation.public_token"]``. Exchanges
    run in the worker thread too. ``allow_technical``, ``validate_x5t``,
    ``clock_skew_leeway``, ``strict`` (the start-up check of the whole configuration) and
    ``cors_preflight`` are those of the WSGI middleware too.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        propagator: Propagator | None = None,
        public_paths: Iterable[str] = (),
        require_token: bool = True,
        ias_to_xsuaa: bool | None = None,
        xsuaa_trust_client_id: str | None = None,
        public_clients: Iterable[str] | str | None = None,
        allow_technical: bool = False,
        validate_x5t: bool = False,
        clock_skew_leeway: float | str | None = None,
        strict: bool | None = None,
        cors_preflight: bool = True,
    ) -> None:
        self.app = app
        self.propagator = propagator if propagator is not None else built_from_env(Propagator.from_env)
        #: Configuration problems tolerated with ``strict=False`` (else: refused right here).
        self.problems = startup_check(self.propagator, strict=strict)
        self.strict = strict
        self.gate = InboundGate(
            self.propagator,
            public_paths=public_paths,
            require_token=require_token,
            ias_to_xsuaa=ias_to_xsuaa,
            xsuaa_trust_client_id=xsuaa_trust_client_id,
            public_clients=public_clients,
            allow_technical=allow_technical,
            validate_x5t=validate_x5t,
            clock_skew_leeway=clock_skew_leeway,
            cors_preflight=cors_preflight,
        )

    @correlated_asgi
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path") or "/"
        if self.gate.is_public(path) or (kind == "http" and scope.get("method") == "OPTIONS" and self.gate.is_preflight(
            "OPTIONS", _header_or_none(scope, b"origin"), _header_or_none(scope, b"access-control-request-method")
        )):
            await self._run(scope, receive, send, None)
            return
        raw: str | None = None
        try:
            header = _authorization(scope)
            auth = self.gate.cached_header(header)
            if auth is None:
                raw = self.gate.raw_token(header)
                auth = await self._validate(raw) if raw is not None else None
            if auth is not None and self.gate.validate_x5t:
                self.gate.check_certificate(auth, _header(scope, b"x-forwarded-client-cert"))
        except InvalidTokenError as exc:
            method = scope.get("method", "WEBSOCKET") if kind == "http" else "WEBSOCKET"
            self.gate.rejected(exc, raw, f"{method} {path}")
            await self._refuse(kind, exc, receive, send)
            return
        if auth is not None:
            scope = dict(scope)
            found = {ENVIRON_KEY: auth.token}
            if auth.xsuaa_token is not None:
                found[ENVIRON_EXCHANGED_KEY] = auth.xsuaa_token
            if auth.public_token is not None:
                found[ENVIRON_PUBLIC_KEY] = auth.public_token
            scope.update(found)
            scope["state"] = {**(scope.get("state") or {}), **found}
        await self._run(scope, receive, send, auth)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` for an option this middleware does not take (integrations that
        build it later call this first, so a typo fails where it is written)."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "app"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"Unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")

    def bound_to(self, app: ASGIApp) -> "PropagationASGIMiddleware":
        """This middleware (same engine and gate) in front of another ``app``."""
        clone = copy.copy(self)
        clone.app = app
        return clone

    @property
    def public_paths(self) -> "PublicPaths":
        return self.gate.public_paths

    async def _validate(self, raw: str) -> Authenticated:
        hit = self.gate.cached_result(raw)
        if hit is not None:
            return hit
        return await asyncio.to_thread(self.gate.authenticate, raw)

    async def _run(self, scope: Scope, receive: Receive, send: Send, auth: Authenticated | None) -> None:
        handles = set_current_tokens(auth.token if auth else None, auth.xsuaa_token if auth else None)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_current_tokens(handles)

    @staticmethod
    async def _refuse(kind: str, exc: InvalidTokenError, receive: Receive, send: Send) -> None:
        if kind == "websocket":
            message = await receive()  # websocket.connect
            if message.get("type") == "websocket.connect":
                await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": ""})
            return
        body, headers = unauthorized(exc)
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _authorization(scope: Scope) -> str | None:
    """The ``Authorization`` header (latin-1, as WSGI does); several of them are refused."""
    return _header(scope, b"authorization")


def _header_or_none(scope: Scope, name: bytes) -> str | None:
    """:func:`_header` that answers ``None`` for a repeated header instead of raising."""
    try:
        return _header(scope, name)
    except InvalidTokenError:
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    """One request header (latin-1); several of them are refused (which one would count?)."""
    values = [v for k, v in scope.get("headers") or () if bytes(k).lower() == name]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidTokenError(f"More than one {name.decode('ascii').title()} header.")
    return bytes(values[0]).decode("latin-1")
