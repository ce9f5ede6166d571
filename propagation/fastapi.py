"""FastAPI (and Starlette) integration: the ASGI middleware, checked at startup, plus
dependencies for the current user and scope checks.

.. code-block:: python

    from fastapi import Depends, FastAPI
    from propagation.fastapi import CurrentUser, Propagation, require_scopes

    app = FastAPI()
    Propagation(app, public_paths=["/health"])

    @app.get("/orders", dependencies=[Depends(require_scopes("Read"))])
    async def orders(user: CurrentUser) -> dict:
        return {"user": user.user}

Why not just ``app.add_middleware(PropagationASGIMiddleware)``: Starlette builds its
middleware on the first ASGI call, which is the lifespan; a middleware whose constructor
raises there makes uvicorn report "ASGI 'lifespan' protocol appears unsupported", start
anyway, and answer every request — ``/health`` included — with a 500. :class:`Propagation`
reads the environment inside the app's lifespan startup instead (wrapping the app's own
lifespan, if any), so a missing binding stops the server with the ``ConfigurationError``.

This is the only module of the package that imports FastAPI.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from ._log import logger
from .asgi import ASGIApp, PropagationASGIMiddleware, Receive, Scope, Send
from .context import ENVIRON_EXCHANGED_KEY, ENVIRON_KEY
from .checks import built_from_env, check_scope_fit
from .engine import Propagator, default_propagator
from .errors import ConfigurationError, InvalidTokenError, MissingUserTokenError
from .inbound.responses import missing_user, refusal
from .inbound.scopes import GUARD, InsufficientScopeError, scope_names
from .tokens import UserToken

__all__ = ["Propagation", "CurrentUser", "OptionalUser", "require_scopes", "bearer_scheme"]

STATE_KEY = "propagation"

#: The OpenAPI security scheme (``Authorization: Bearer <JWT>``), so ``/docs`` offers
#: "Authorize". Validation is the middleware's; this only documents and reads the header.
bearer_scheme = HTTPBearer(
    scheme_name="BearerAuth",
    bearerFormat="JWT",
    description="A JWT of the app's XSUAA or SAP Cloud Identity Services (IAS).",
    auto_error=False,
)


class _Refused(Exception):
    """Raised by the dependencies; answered by the handler :class:`Propagation` installs."""

    def __init__(self, exc: InvalidTokenError | InsufficientScopeError) -> None:
        super().__init__(exc.error_description)
        self.exc = exc


class Propagation:
    """Authenticate every request of ``app`` (see :class:`~propagation.asgi.PropagationASGIMiddleware`).

    ``options`` are those of the ASGI middleware (``propagator``, ``public_paths``,
    ``require_token``, ``ias_to_xsuaa``, ``xsuaa_trust_client_id``, ``public_clients``,
    ``allow_technical``, ``validate_x5t``, ``clock_skew_leeway``); the default engine is
    :func:`propagation.default_propagator`. The environment is read in the app's lifespan
    startup (a bad one fails the startup with the ``ConfigurationError``); a server run
    without lifespan reads it on the first request instead.

    ``public_docs`` (default ``True``): ``app.docs_url``, ``redoc_url`` and ``openapi_url``
    (``/docs``, ``/redoc``, ``/openapi.json``) are public paths, so the Swagger UI loads and
    its "Authorize" button (the ``BearerAuth`` scheme) takes the token; ``False`` protects them.

    ``missing_user_401`` (default ``True``): a ``MissingUserTokenError`` raised in a route
    (a destination that needs a user, called without one) is answered 401 with the JSON body
    and ``WWW-Authenticate`` of the other refusals, not 500.
    """

    def __init__(self, app: FastAPI, *, missing_user_401: bool = True, public_docs: bool = True,
                 **options: Any) -> None:
        PropagationASGIMiddleware.check_options(options)
        if public_docs:
            options["public_paths"] = _with_docs(app, options.get("public_paths") or ())
        self.app = app
        self.options = options
        self.middleware: PropagationASGIMiddleware | None = None
        app.state.propagation = self
        app.add_middleware(_Deferred, integration=self)  # type: ignore[arg-type]
        app.add_exception_handler(_Refused, _answer)  # type: ignore[arg-type]
        if missing_user_401:
            app.add_exception_handler(MissingUserTokenError, _missing_user)  # type: ignore[arg-type]
        original = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
            self.start().propagator.warm_up()  # what the first connection imports, before the first request
            async with original(asgi_app) as state:
                yield state

        app.router.lifespan_context = lifespan

    def start(self) -> PropagationASGIMiddleware:
        """Read the environment and build the middleware (idempotent); raises
        ``ConfigurationError`` for a missing or broken binding. Without a ``propagator``
        option the process-wide default engine is used, so ``propagation.session()`` /
        ``async_client()`` in the routes share its caches and pools."""
        if self.middleware is None:
            options = dict(self.options)
            if options.get("propagator") is None:
                options["propagator"] = built_from_env(default_propagator)
            middleware = PropagationASGIMiddleware(_unreachable, **options)
            check_scope_fit(self.app, middleware.gate, strict=options.get("strict"))  # routes exist by now
            self.middleware = middleware
        return self.middleware

    @property
    def propagator(self) -> Propagator:
        return self.start().propagator


#: Why a configuration problem shows at a request instead of at start-up, and the fix.
LIFESPAN_DID_NOT_RUN = (
    "The app's lifespan did not run (uvicorn --lifespan off, or a TestClient used outside `with`), so "
    "propagation checked the configuration at the first request instead of at start-up. Let the lifespan run "
    "(uvicorn's default --lifespan auto or --lifespan on; `with TestClient(app) as client:`) and a bad "
    "configuration stops the server before it serves."
)


async def _unreachable(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover - replaced
    raise RuntimeError("propagation.fastapi: middleware used before it was placed in the stack")


class _Deferred:
    """The middleware in the Starlette stack: built by Starlette at the first ASGI call
    (the lifespan), so it must not read the environment itself; it delegates to the
    :class:`PropagationASGIMiddleware` that :meth:`Propagation.start` built."""

    def __init__(self, app: ASGIApp, integration: Propagation) -> None:
        self.app = app
        self.integration = integration
        self._inner: PropagationASGIMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = self._inner
        if inner is None:
            if scope.get("type") not in ("http", "websocket"):
                await self.app(scope, receive, send)
                return
            inner = self._inner = self._start_without_lifespan().bound_to(self.app)
        await inner(scope, receive, send)

    def _start_without_lifespan(self) -> PropagationASGIMiddleware:
        """The first request, and :meth:`Propagation.start` did not run: no lifespan. A bad
        configuration then fails this (and every) request saying so, never a bare 500."""
        if self.integration.middleware is not None:
            return self.integration.middleware
        try:
            started = self.integration.start()
        except ConfigurationError as exc:
            raise ConfigurationError(f"{LIFESPAN_DID_NOT_RUN} {exc}") from None
        logger.warning("propagation.fastapi: %s (The configuration has no problems.)", LIFESPAN_DID_NOT_RUN)
        return started


async def _answer(request: Request, exc: _Refused) -> Response:
    status, body, headers = refusal(exc.exc)
    logger.info("inbound request %s %s refused (%d): %s", request.method, request.url.path, status,
                exc.exc.error_description)
    return Response(content=body, status_code=status, headers=dict(headers))


def _with_docs(app: FastAPI, public_paths: Any) -> list[str]:
    """``public_paths`` plus the app's ``docs_url``, ``redoc_url``, ``openapi_url`` and the
    Swagger UI's OAuth2 redirect (those that are on): the API documentation is read before
    anyone has a token — its "Authorize" button is where the token is entered."""
    paths = [public_paths] if isinstance(public_paths, str) else list(public_paths)
    docs = (app.docs_url, app.redoc_url, app.openapi_url,
            app.swagger_ui_oauth2_redirect_url if app.docs_url else None)
    return paths + [p for p in docs if isinstance(p, str) and p.startswith("/") and p not in paths]


async def _missing_user(request: Request, exc: MissingUserTokenError) -> Response:
    status, body, headers = missing_user(exc, f"{request.method} {request.url.path}")
    return Response(content=body, status_code=status, headers=dict(headers))


async def _current_user(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> UserToken:
    token = request.scope.get(ENVIRON_KEY)
    if token is None:
        raise _Refused(InvalidTokenError("A Bearer token is required for this resource."))
    return token  # type: ignore[no-any-return]


async def _optional_user(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> UserToken | None:
    return request.scope.get(ENVIRON_KEY)


#: The validated caller (401 when there is none, e.g. on a public path).
CurrentUser = Annotated[UserToken, Depends(_current_user)]
#: The validated caller or ``None`` (public paths, ``require_token=False``).
OptionalUser = Annotated[UserToken | None, Depends(_optional_user)]


def require_scopes(*scopes: str) -> Callable[..., None]:
    """A dependency: the caller must hold every XSUAA local scope in ``scopes``
    (``<xsappname>.<scope>``, as sap-xssec's ``check_local_scope``; for an IAS caller the
    XSUAA token of the IAS→XSUAA flow). Missing → 403 ``insufficient_scope`` with the
    ``WWW-Authenticate`` challenge naming the scopes; no caller → 401.

    ``@app.get("/orders", dependencies=[Depends(require_scopes("Read"))])``

    Used as a plain decorator instead (``@require_scopes("Read")`` on the endpoint), the
    route would run unchecked: the dependency's parameters are keyword-only (FastAPI passes
    them by name), so that call fails at import with a ``TypeError`` that names the fix.
    """
    names = scope_names(scopes)

    async def check_scopes(
        *,
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
    ) -> None:
        integration = getattr(request.app.state, STATE_KEY, None)
        if not isinstance(integration, Propagation):
            raise RuntimeError("require_scopes() needs Propagation(app) installed on this app.")
        check = integration.start().gate.scope_check
        try:
            check.check(names, request.scope.get(ENVIRON_KEY), request.scope.get(ENVIRON_EXCHANGED_KEY))
        except (InvalidTokenError, InsufficientScopeError) as exc:
            raise _Refused(exc) from None

    check_scopes.__name__ = f"require_scopes_{'_'.join(names)}"
    setattr(check_scopes, GUARD, names)  # found by the start-up check (propagation.checks.scopes_in_use)
    # The TypeError of a positional call ("<qualname>() takes 0 positional arguments…")
    # starts with this text, so the mistake explains itself where it is written.
    spelled = ", ".join(repr(n) for n in names)
    check_scopes.__qualname__ = (
        f"require_scopes({spelled}) is a FastAPI dependency, not a decorator: declare it on the route as "
        f"@app.get(..., dependencies=[Depends(require_scopes({spelled}))]) — the dependency"
    )
    return check_scopes

