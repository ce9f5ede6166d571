"""Django integration: a middleware for ``MIDDLEWARE`` (sync and async), settings in
``PROPAGATION``, and the ``require_scopes`` view decorator.

.. code-block:: python

    # settings.py
    MIDDLEWARE = [..., "propagation.django.PropagationMiddleware"]
    PROPAGATION = {"PUBLIC_PATHS": ["/health"], "IAS_TO_XSUAA": False}
    INSTALLED_APPS = [..., "propagation.django.PropagationConfig"]   # optional: `manage.py check`

    # views.py
    from propagation.django import require_scopes

    @require_scopes("Read")
    def orders(request): ...

``PROPAGATION`` keys (all optional) are the WSGI middleware's options in upper case:
``PUBLIC_PATHS``, ``REQUIRE_TOKEN``, ``IAS_TO_XSUAA``, ``XSUAA_TRUST_CLIENT_ID``,
``PUBLIC_CLIENTS``, ``ALLOW_TECHNICAL``, ``VALIDATE_X5T``, ``CLOCK_SKEW_LEEWAY`` (seconds),
``CORS_PREFLIGHT`` (CORS pre-flight requests pass without a token: ``True``, ``False``, or by
default only when a CORS middleware — ``corsheaders.middleware.CorsMiddleware`` — comes after
this one in ``MIDDLEWARE`` to answer them: a Django function view answers every method, and a
pre-flight must not run it without a user),
``MISSING_USER_401`` (default ``True``: a ``MissingUserTokenError`` from a view is a 401 like
the other refusals, not a 500), ``STRICT`` (default ``True``: any configuration problem
``python -m propagation doctor`` would list stops the start; ``False`` logs them), and
``PROPAGATOR`` (a
:class:`~propagation.Propagator`, or the dotted path of one or of a callable returning one;
default: the process-wide engine of ``propagation.session()``). The environment is read
when Django loads the middleware (``get_wsgi_application()`` / ``get_asgi_application()``, i.e. at server start),
so a missing binding fails the start with the ``ConfigurationError``; with
``PropagationConfig`` installed, ``manage.py check`` reports it as ``propagation.E001`` too.

This is the only module of the package that imports Django.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from ._log import logger
from .context import (
    CURRENT_TOKENS,
    ENVIRON_EXCHANGED_KEY,
    ENVIRON_KEY,
    ENVIRON_PUBLIC_KEY,
    current_token,
    current_xsuaa_token,
)
from .checks import built_from_env, scope_fit, startup_check, startup_message
from .engine import Propagator, default_propagator
from .errors import ConfigurationError, InvalidTokenError, MissingUserTokenError
from .inbound import Authenticated, InboundGate
from .inbound.responses import missing_user, refusal
from .inbound.scopes import GUARD, InsufficientScopeError, ScopeCheck, mark_guard, scope_names, unguarded_views

__all__ = ["PropagationMiddleware", "PropagationConfig", "require_scopes", "gate_from_settings"]

_View = TypeVar("_View", bound=Callable[..., Any])
#: ``request`` attribute holding the scope check of the middleware that saw the request.
_REQUEST_CHECK = "_propagation_scope_check"
_OPTIONS = {
    "PUBLIC_PATHS": "public_paths",
    "REQUIRE_TOKEN": "require_token",
    "IAS_TO_XSUAA": "ias_to_xsuaa",
    "XSUAA_TRUST_CLIENT_ID": "xsuaa_trust_client_id",
    "PUBLIC_CLIENTS": "public_clients",
    "ALLOW_TECHNICAL": "allow_technical",
    "VALIDATE_X5T": "validate_x5t",
    "CLOCK_SKEW_LEEWAY": "clock_skew_leeway",
    "CORS_PREFLIGHT": "cors_preflight",
}
_FLAGS = {"REQUIRE_TOKEN", "ALLOW_TECHNICAL", "VALIDATE_X5T", "CORS_PREFLIGHT"}
#: Settings of the Django integration itself (not middleware options).
_OWN = {"PROPAGATOR", "MISSING_USER_401", "STRICT"}


def gate_from_settings(config: Mapping[str, Any] | None = None) -> InboundGate:
    """The inbound gate for ``settings.PROPAGATION`` (or ``config``); raises
    ``ConfigurationError`` for unknown keys, bad values or a missing binding."""
    if config is None:
        config = getattr(settings, "PROPAGATION", None) or {}
    if not isinstance(config, Mapping):
        raise ConfigurationError("settings.PROPAGATION must be a dict.")
    unknown = sorted(set(config) - set(_OPTIONS) - _OWN)
    if unknown:
        raise ConfigurationError(
            f"settings.PROPAGATION has unknown key(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted([*_OPTIONS, *_OWN]))}."
        )
    for own in ("MISSING_USER_401", "STRICT"):
        if config.get(own) is not None and not isinstance(config[own], bool):
            raise ConfigurationError(f"settings.PROPAGATION['{own}'] must be True or False, not {config[own]!r}.")
    options: dict[str, Any] = {}
    for key, name in _OPTIONS.items():
        if config.get(key) is None:
            continue
        value = config[key]
        if key in _FLAGS and not isinstance(value, bool):
            raise ConfigurationError(f"settings.PROPAGATION['{key}'] must be True or False, not {value!r}.")
        options[name] = [value] if key == "PUBLIC_PATHS" and isinstance(value, str) else value
    if config.get("CORS_PREFLIGHT") is None:
        options["cors_preflight"] = _cors_middleware_follows()
    propagator = _propagator(config.get("PROPAGATOR"))
    startup_check(propagator, strict=config.get("STRICT"))  # doctor's problems: refuse to start
    return InboundGate(propagator, **options)


def _cors_middleware_follows() -> bool:
    """Whether a CORS middleware comes after this one in ``settings.MIDDLEWARE`` (it answers
    the pre-flights this one lets through; without one they would reach the views)."""
    stack = [str(m) for m in getattr(settings, "MIDDLEWARE", None) or ()]
    ours = next((i for i, m in enumerate(stack) if m.endswith("propagation.django.PropagationMiddleware")), None)
    return ours is not None and any("cors" in m.lower() for m in stack[ours + 1:])


def _propagator(value: Any) -> Propagator:
    if value is None:
        return built_from_env(default_propagator)  # shared with propagation.session() in the views
    if isinstance(value, str):
        value = import_string(value)
    if callable(value) and not isinstance(value, Propagator):
        value = value()
    if not isinstance(value, Propagator):
        raise ConfigurationError("settings.PROPAGATION['PROPAGATOR'] must be a Propagator, or the dotted path of "
                                 "one or of a callable returning one.")
    return value


class PropagationMiddleware:
    """Authenticate every request by its ``Authorization: Bearer <JWT>`` header.

    The security stance of :class:`propagation.wsgi.PropagationMiddleware`: fail closed;
    every bad or missing token (outside ``PUBLIC_PATHS``) is answered here with 401
    ``{"error": "invalid_token", "error_description": ...}`` and a ``WWW-Authenticate``
    challenge, never a 500 and never the view. On success :func:`~propagation.current_token`
    is the caller while the view runs (and while a streaming response is produced), and
    ``request.META["propagation.token"]`` holds it. Sync and async capable: under ASGI a
    token not yet validated is validated in a worker thread, never on the event loop.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any], gate: InboundGate | None = None) -> None:
        self.get_response = get_response
        self.gate = gate if gate is not None else gate_from_settings()
        config = getattr(settings, "PROPAGATION", None) or {}
        self._missing_user_401 = bool(config.get("MISSING_USER_401", True)) if isinstance(config, Mapping) else True
        self._strict = config.get("STRICT") is not False if isinstance(config, Mapping) else True
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        self._views_checked = False

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        try:
            auth = self._cached_or_none(request)
            if auth is _MISS:
                auth = self._authenticate(request)
        except InvalidTokenError as exc:
            return self._refuse(request, exc)
        current = (auth.token, auth.xsuaa_token) if auth is not None else (None, None)
        handle = CURRENT_TOKENS.set(current)
        try:
            response = self.get_response(request)
        finally:
            CURRENT_TOKENS.reset(handle)
        return _keep_user(response, current)

    async def __acall__(self, request: HttpRequest) -> Any:
        try:
            auth = self._cached_or_none(request)
            if auth is _MISS:
                auth = await sync_to_async(self._authenticate, thread_sensitive=False)(request)
        except InvalidTokenError as exc:
            return self._refuse(request, exc)
        current = (auth.token, auth.xsuaa_token) if auth is not None else (None, None)
        handle = CURRENT_TOKENS.set(current)
        try:
            response = await self.get_response(request)
        finally:
            CURRENT_TOKENS.reset(handle)
        return _keep_user(response, current)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A view called a destination that needs a user, without one (``MissingUserTokenError``):
        401 with the JSON body and challenge of the other refusals (``MISSING_USER_401``,
        default ``True``), not Django's 500 page."""
        if self._missing_user_401 and isinstance(exception, MissingUserTokenError):
            status, body, headers = missing_user(exception, f"{request.method} {request.path_info}")
            return _response_of(status, body, headers)
        return None

    # -- steps ------------------------------------------------------------------------
    def _cached_or_none(self, request: HttpRequest) -> Any:
        """Anonymous (``None``), a cached result, or ``_MISS`` (validation needed); no I/O."""
        if not self._views_checked:
            self._check_views()
        setattr(request, _REQUEST_CHECK, self.gate.scope_check)
        if self.gate.is_public(request.path_info or "/") or self.gate.is_preflight(
            request.method, request.META.get("HTTP_ORIGIN"), request.META.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD")
        ):
            return None
        auth = self.gate.cached_header(request.META.get("HTTP_AUTHORIZATION"))
        if auth is None:
            return _MISS
        return self._admitted(request, auth)

    def _check_views(self) -> None:
        """Before the first request (the URLconf is loaded by then): refuse to serve while a
        route calls a view undecorated that ``require_scopes`` wrapped (``propagation.E002``)."""
        found = unguarded_url_views()
        if found:
            raise ConfigurationError(found[0])
        problems, warnings = _scope_fit(self.gate)
        for warning in warnings:
            logger.warning("%s", warning)
        if problems and self._strict:
            raise ConfigurationError(startup_message(problems))
        self._views_checked = True

    def _authenticate(self, request: HttpRequest) -> Authenticated | None:
        raw: str | None = None
        try:
            raw = self.gate.raw_token(request.META.get("HTTP_AUTHORIZATION"))
            auth = self.gate.authenticate(raw) if raw is not None else None
        except InvalidTokenError as exc:
            self.gate.rejected(exc, raw, f"{request.method} {request.path_info}")
            raise _Logged(exc.error_description) from None
        return self._admitted(request, auth) if auth is not None else None

    def _admitted(self, request: HttpRequest, auth: Authenticated) -> Authenticated:
        if self.gate.validate_x5t:
            self.gate.check_certificate(auth, request.META.get("HTTP_X_FORWARDED_CLIENT_CERT"))
        request.META[ENVIRON_KEY] = auth.token
        if auth.xsuaa_token is not None:
            request.META[ENVIRON_EXCHANGED_KEY] = auth.xsuaa_token
        if auth.public_token is not None:
            request.META[ENVIRON_PUBLIC_KEY] = auth.public_token
        return auth

    def _refuse(self, request: HttpRequest, exc: InvalidTokenError) -> HttpResponse:
        if not isinstance(exc, _Logged):
            self.gate.rejected(exc, None, f"{request.method} {request.path_info}")
        return _response(exc)


class _Logged(InvalidTokenError):
    """An InvalidTokenError already logged (with the token's fingerprint)."""


_MISS: Any = object()


def _response(exc: InvalidTokenError | InsufficientScopeError) -> HttpResponse:
    return _response_of(*refusal(exc))


def _response_of(status: int, body: bytes, headers: list[tuple[str, str]]) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type="application/json")
    for name, value in headers:
        if name != "Content-Type":
            response[name] = value
    return response


def _keep_user(response: Any, current: Any) -> Any:
    """A streamed body is produced after the middleware returned (by the server, maybe in a
    worker thread): each chunk is produced with the user set, sync or async alike."""
    if getattr(response, "streaming", False):
        content = response.streaming_content
        response.streaming_content = (
            _with_user_async(content, current) if response.is_async else _with_user(content, current)
        )
    return response


def _with_user(chunks: Iterator[bytes], current: Any) -> Iterator[bytes]:
    """A streamed body produced with the user set (reset between chunks, like the WSGI middleware)."""
    iterator = iter(chunks)
    while True:
        handle = CURRENT_TOKENS.set(current)
        try:
            chunk = next(iterator, _MISS)
        finally:
            CURRENT_TOKENS.reset(handle)
        if chunk is _MISS:
            return
        yield chunk


async def _with_user_async(chunks: AsyncIterator[bytes], current: Any) -> AsyncIterator[bytes]:
    iterator = aiter(chunks)
    while True:
        handle = CURRENT_TOKENS.set(current)
        try:
            chunk = await anext(iterator, _MISS)
        finally:
            CURRENT_TOKENS.reset(handle)
        if chunk is _MISS:
            return
        yield chunk


def require_scopes(*scopes: str) -> Callable[[_View], _View]:
    """View decorator (sync and async views): the caller must hold every XSUAA local scope
    in ``scopes`` (``<xsappname>.<scope>``, as sap-xssec's ``check_local_scope``; for an IAS
    caller the XSUAA token of the IAS→XSUAA flow). Missing → 403 ``insufficient_scope`` JSON
    with the ``WWW-Authenticate`` challenge naming the scopes; no caller → 401. Needs
    :class:`PropagationMiddleware` in ``MIDDLEWARE``. For class-based views use
    ``django.utils.decorators.method_decorator``."""
    names = scope_names(scopes)

    def refused(request: HttpRequest) -> HttpResponse | None:
        check: ScopeCheck | None = getattr(request, _REQUEST_CHECK, None)
        if check is None:
            raise ConfigurationError(
                "require_scopes() needs 'propagation.django.PropagationMiddleware' in settings.MIDDLEWARE."
            )
        try:
            check.check(names, current_token(), current_xsuaa_token())
        except (InvalidTokenError, InsufficientScopeError) as exc:
            logger.info("inbound request %s %s refused: %s", request.method, request.path_info[:200],
                        exc.error_description)
            return _response(exc)
        return None

    def decorate(view: _View) -> _View:
        _refuse_misuse(view, names)
        if iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                answer = refused(request)
                return answer if answer is not None else await view(request, *args, **kwargs)

            mark_guard(async_guarded, view, names)
            return markcoroutinefunction(async_guarded)  # type: ignore[return-value]

        @functools.wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            answer = refused(request)
            return answer if answer is not None else view(request, *args, **kwargs)

        mark_guard(guarded, view, names)
        return guarded  # type: ignore[return-value]

    return decorate


def _refuse_misuse(view: Any, names: tuple[str, ...]) -> None:
    """``require_scopes`` on a class-based view or on one of its methods would never see the
    request as its first argument (the class would be replaced by a function, the method
    gets ``self``): refused where it is written, with the right spelling."""
    spelled = ", ".join(repr(n) for n in names)
    fix = (f"decorate the class with @method_decorator(require_scopes({spelled}), name=\"dispatch\") "
           "(django.utils.decorators.method_decorator)")
    if isinstance(view, type):
        raise ConfigurationError(f"require_scopes({spelled}) cannot decorate the class {view.__name__!r}: {fix}.")
    try:
        first = next(iter(inspect.signature(view, follow_wrapped=False).parameters), None)
    except (TypeError, ValueError):
        return
    if first in ("self", "cls"):
        raise ConfigurationError(
            f"require_scopes({spelled}) decorates the method {getattr(view, '__qualname__', view)!r}, whose first "
            f"argument is {first!r}, not the request: {fix}, or use method_decorator on the method."
        )


def _url_routes() -> dict[str, Any]:
    """``{route: view}`` of the URLconf."""
    from django.urls import URLPattern, URLResolver, get_resolver

    routes: dict[str, Any] = {}

    def walk(patterns: Any, prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                routes[prefix + str(entry.pattern)] = entry.callback

    walk(get_resolver().url_patterns, "/")
    return routes


def _scope_fit(gate: InboundGate) -> tuple[list[str], list[str]]:
    """:func:`propagation.checks.scope_fit` for the URLconf's ``require_scopes`` views."""
    scopes = {route: tuple(getattr(view, GUARD)) for route, view in _url_routes().items() if getattr(view, GUARD, None)}
    flows = gate.flows
    return scope_fit(scopes, gate.propagator.bindings, ias_to_xsuaa=bool(flows is not None and flows.options.ias_to_xsuaa))


def unguarded_url_views() -> list[str]:
    """Views in the URLconf that ``require_scopes`` wrapped but that are routed undecorated
    (``protected = require_scopes("Read")(orders)`` with ``path("orders", orders)``)."""
    routes = _url_routes()
    return [
        f"URL {route!r} calls the view {getattr(view, '__qualname__', view)!r} without its require_scopes("
        f"{', '.join(repr(n) for n in names)}) check: route the decorated view (put @require_scopes(...) on the "
        "view function itself)."
        for route, view, names in unguarded_views(routes)
    ]


class PropagationConfig(AppConfig):
    """Optional ``INSTALLED_APPS`` entry: ``manage.py check`` then reports an unusable
    ``PROPAGATION`` setting or a missing binding as ``propagation.E001``."""

    name = "propagation"
    label = "propagation"
    verbose_name = "Principal propagation"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        checks.register(check_settings, "propagation")


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The system check: can the middleware be built from the settings and the environment?"""
    try:
        gate = gate_from_settings()
    except ConfigurationError as exc:
        return [checks.Error(str(exc), hint="See the Django page of the propagation documentation (docs/inbound/django.md).",
                             id="propagation.E001")]
    problems, warnings = _scope_fit(gate)
    return ([checks.Error(text, id="propagation.E002") for text in unguarded_url_views()]
            + [checks.Error(text, id="propagation.E003") for text in problems]
            + [checks.Warning(text, id="propagation.W001") for text in warnings])
