"""Flask extension: :class:`PropagationMiddleware` wired into an app, app-factory friendly.

.. code-block:: python

    from propagation.flask import Propagation

    propagation_ext = Propagation(public_paths=["/health"])

    def create_app() -> Flask:
        app = Flask(__name__)
        propagation_ext.init_app(app)
        return app

Config keys read by :meth:`Propagation.init_app` (optional): ``PROPAGATION_PUBLIC_PATHS``
(list, or comma-separated string; added to the constructor's ``public_paths``) and
``PROPAGATION_REQUIRE_TOKEN`` (bool or ``"true"``/``"false"``; overrides ``require_token``),
and for the IAS flows ``PROPAGATION_IAS_TO_XSUAA``, ``PROPAGATION_XSUAA_TRUST_CLIENT_ID`` and
``PROPAGATION_PUBLIC_CLIENTS`` (used when the constructor argument is not given; else the
propagator's setting / environment variable of the same name applies), and
``PROPAGATION_ALLOW_TECHNICAL`` / ``PROPAGATION_VALIDATE_X5T`` (booleans, default false), and
``PROPAGATION_CLOCK_SKEW_LEEWAY`` (seconds; default: the engine's, 60), and
``PROPAGATION_MISSING_USER_401`` (default true: a ``MissingUserTokenError`` raised in a view is
answered 401 with the JSON body and ``WWW-Authenticate`` of the other refusals, not 500),
``PROPAGATION_CORS_PREFLIGHT`` (default true: CORS pre-flight requests pass without a token)
and ``PROPAGATION_STRICT`` (default true: configuration problems stop ``init_app``).

``require_scopes("Read")`` is the view decorator for XSUAA local scopes.

This is the only module of the package that imports Flask.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable, TypeVar

from flask import Flask, Response, current_app

from ._log import logger
from .checks import check_scope_fit
from .context import current_token, current_xsuaa_token
from .engine import Propagator
from .errors import ConfigurationError, InvalidTokenError, MissingUserTokenError
from .inbound.responses import missing_user, refusal
from .inbound.scopes import InsufficientScopeError, mark_guard, scope_names, unguarded_views
from .wsgi import PropagationMiddleware

__all__ = ["Propagation", "current_token", "require_scopes"]

_View = TypeVar("_View", bound=Callable[..., Any])

EXTENSION_KEY = "propagation"


class Propagation:
    """Authenticates every request of the app (see :class:`PropagationMiddleware`).

    Wrapping ``app.wsgi_app`` (rather than a ``before_request`` hook) means the user is
    known before Flask routes the request and stays set while a streamed response is
    generated.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        propagator: Propagator | None = None,
        public_paths: Iterable[str] = (),
        require_token: bool = True,
        ias_to_xsuaa: bool | None = None,
        xsuaa_trust_client_id: str | None = None,
        public_clients: Iterable[str] | str | None = None,
        allow_technical: bool | None = None,
        validate_x5t: bool | None = None,
        clock_skew_leeway: float | None = None,
        missing_user_401: bool | None = None,
        strict: bool | None = None,
        cors_preflight: bool | None = None,
    ) -> None:
        self.strict = strict
        self.cors_preflight = cors_preflight
        self.propagator = propagator
        self.clock_skew_leeway = clock_skew_leeway
        self.missing_user_401 = missing_user_401
        self.public_paths = tuple([public_paths] if isinstance(public_paths, str) else public_paths)
        self.require_token = require_token
        self.ias_to_xsuaa = ias_to_xsuaa
        self.xsuaa_trust_client_id = xsuaa_trust_client_id
        self.public_clients = public_clients
        self.allow_technical = allow_technical
        self.validate_x5t = validate_x5t
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` and register as ``app.extensions["propagation"]``.

        The middleware reads the environment now (unless a ``propagator`` was given) and
        checks the whole configuration (bindings, every ``destinations`` entry, the token
        cache: the problems ``python -m propagation doctor`` lists), so a problem fails here,
        at startup, with a ``ConfigurationError`` (``strict=False`` / ``PROPAGATION_STRICT``:
        logged instead).
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("Propagation is already initialised for this app.")
        public_paths = self.public_paths + _paths(app.config.get("PROPAGATION_PUBLIC_PATHS"))
        require_token = _flag(app.config.get("PROPAGATION_REQUIRE_TOKEN"), self.require_token, "PROPAGATION_REQUIRE_TOKEN")
        middleware = PropagationMiddleware(
            app.wsgi_app,  # type: ignore[arg-type]
            propagator=self.propagator,
            public_paths=public_paths,
            require_token=require_token,
            ias_to_xsuaa=_first(self.ias_to_xsuaa, app.config.get("PROPAGATION_IAS_TO_XSUAA")),
            xsuaa_trust_client_id=_first(self.xsuaa_trust_client_id, app.config.get("PROPAGATION_XSUAA_TRUST_CLIENT_ID")),
            public_clients=_first(self.public_clients, app.config.get("PROPAGATION_PUBLIC_CLIENTS")),
            allow_technical=_flag(_first(self.allow_technical, app.config.get("PROPAGATION_ALLOW_TECHNICAL")), False,
                                  "PROPAGATION_ALLOW_TECHNICAL"),
            validate_x5t=_flag(_first(self.validate_x5t, app.config.get("PROPAGATION_VALIDATE_X5T")), False,
                               "PROPAGATION_VALIDATE_X5T"),
            clock_skew_leeway=_first(self.clock_skew_leeway, app.config.get("PROPAGATION_CLOCK_SKEW_LEEWAY")),
            cors_preflight=_flag(_first(self.cors_preflight, app.config.get("PROPAGATION_CORS_PREFLIGHT")), True,
                                 "PROPAGATION_CORS_PREFLIGHT"),
            strict=_first(self.strict, None if app.config.get("PROPAGATION_STRICT") is None else
                          _flag(app.config.get("PROPAGATION_STRICT"), True, "PROPAGATION_STRICT")),
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = self
        if _flag(_first(self.missing_user_401, app.config.get("PROPAGATION_MISSING_USER_401")), True,
                 "PROPAGATION_MISSING_USER_401"):
            app.register_error_handler(MissingUserTokenError, _missing_user)
        self.check_views(app)  # the routes declared so far; the rest before the first request
        checked = False

        def check_views_once() -> None:
            nonlocal checked
            if not checked:  # Flask refuses new routes after the first request: once is enough
                self.check_views(app)
                checked = True

        app.before_request(check_views_once)

    @staticmethod
    def check_views(app: Flask) -> None:
        """Raise ``ConfigurationError`` when a route calls a view that ``require_scopes``
        wrapped, undecorated: ``@require_scopes`` above ``@app.get(...)`` (the route
        registered the function before the check was put around it), or when the app checks
        scopes that no bound service can grant (:func:`propagation.checks.scope_fit`). Runs in
        :meth:`init_app` and before the first request, which it fails until that is fixed."""
        middleware = Propagation.middleware(app)
        check_scope_fit(app, middleware.gate, strict=middleware.strict)  # e.g. scopes, but only IAS bound
        found = unguarded_views(app.view_functions)
        if found:
            endpoint, view, names = found[0]
            name = getattr(view, "__name__", endpoint)
            scopes = ", ".join(repr(n) for n in names)
            others = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise ConfigurationError(
                f"View {name!r} (endpoint {endpoint!r}){others} is registered without its require_scopes({scopes}) "
                "check: @require_scopes is above the route decorator, so the route calls the undecorated view and "
                f"no scope would be checked. Put it below the route decorator: @app.get(...) first, then "
                f"@require_scopes({scopes}), then def {name}(...)."
            )

    @staticmethod
    def middleware(app: Flask) -> PropagationMiddleware:
        """The middleware installed on ``app`` (its propagator, gate, public paths)."""
        wsgi_app: Any = app.wsgi_app
        while wsgi_app is not None and not isinstance(wsgi_app, PropagationMiddleware):
            wsgi_app = getattr(wsgi_app, "app", None)
        if wsgi_app is None:
            raise RuntimeError("Propagation.init_app() was not called for this app.")
        return wsgi_app


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _paths(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return tuple(value)


def _flag(value: Any, default: bool, name: str) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be a boolean, not {value!r}.")


def require_scopes(*scopes: str) -> Callable[[_View], _View]:
    """View decorator: the caller must hold every XSUAA local scope in ``scopes``.

    ``@require_scopes("Read")`` checks ``<xsappname>.Read`` as sap-xssec's
    ``check_local_scope`` does (for an IAS caller: the XSUAA token of the IAS→XSUAA flow).
    Missing → 403 ``insufficient_scope`` with ``WWW-Authenticate: Bearer
    error="insufficient_scope", scope="..."``; no caller (public path, anonymous) → 401.
    Works for sync and ``async def`` views; put it below ``@app.get(...)`` — above it the route
    would call the undecorated view, which :class:`Propagation` refuses with a
    ``ConfigurationError`` at ``init_app`` or before the first request.
    """
    names = scope_names(scopes)

    def decorate(view: _View) -> _View:
        if inspect.iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_guarded(*args: Any, **kwargs: Any) -> Any:
                refused = _refused(names)
                return refused if refused is not None else await view(*args, **kwargs)

            mark_guard(async_guarded, view, names)
            return async_guarded  # type: ignore[return-value]

        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            refused = _refused(names)
            return refused if refused is not None else view(*args, **kwargs)

        mark_guard(guarded, view, names)
        return guarded  # type: ignore[return-value]

    return decorate


def _missing_user(exc: MissingUserTokenError) -> Response:
    """A view called a destination that needs a user, without one: 401 like every refusal."""
    from flask import request

    status, body, headers = missing_user(exc, f"{request.method} {request.path}")
    return current_app.response_class(body, status=status, headers=headers)


def _refused(names: tuple[str, ...]) -> Response | None:
    check = Propagation.middleware(current_app._get_current_object()).gate.scope_check  # type: ignore[attr-defined]
    try:
        check.check(names, current_token(), current_xsuaa_token())
    except (InvalidTokenError, InsufficientScopeError) as exc:
        status, body, headers = refusal(exc)
        logger.info("inbound request refused (%d): %s", status, exc.error_description)
        return current_app.response_class(body, status=status, headers=headers)
    return None
