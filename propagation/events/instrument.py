"""The seams where producers report to the engine's :class:`~.model.Events` hub.

Producers carry a decorator or a one-line call from here instead of event code of their own:
:func:`traced_call` (outbound ``request`` methods: the ``call`` span, the refusal points and the
correlation header), :func:`traced_token_flow` (the ``token`` span around one token request,
all attempts), :func:`traced_resolve_flow` (the ``destination`` span), :func:`note_plan` (what the
plan decided, on the running call), :func:`note_cache` / :func:`cache_point` (cache
hit/miss/wait), :func:`point_here` (a point reported to the hub of the running event).

Every attribute goes through :meth:`Events._checked`: no token, secret or certificate.
"""

from __future__ import annotations

import functools
import inspect
from contextvars import ContextVar
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from ..correlation import correlation_id
from ..errors import MissingUserTokenError, PathOutsideDestinationError
from .model import NULL_EVENTS, Events, annotate, current_event

__all__ = [
    "traced_call",
    "traced_token_flow",
    "traced_resolve_flow",
    "traced_lookup_flow",
    "traced_authenticate",
    "note_plan",
    "note_cache",
    "cache_point",
    "point_here",
    "breaker_changed",
    "note_reexchange",
    "note_csrf_fetch",
    "safe_url",
]

#: Errors that mean "the library refused to send" (a ``refusal`` point and ``error.type``).
REFUSALS = (MissingUserTokenError, PathOutsideDestinationError)

#: The event hub of the running call (producers without a hub of their own report to it).
_HUB: ContextVar[Events | None] = ContextVar("propagation.events_hub", default=None)
#: A cache's own word on the lookup it is doing ("wait"), read by :func:`cache_point`.
_CACHE_NOTE: ContextVar[str | None] = ContextVar("propagation.cache_note", default=None)


def safe_url(url: str) -> str:
    """``url.full`` without user info, query values or fragment (those may carry secrets):
    query parameter *names* stay, their values become ``REDACTED``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "&".join(f"{p.partition('=')[0]}=REDACTED" for p in parts.query.split("&") if p) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _events(owner: Any) -> Events:
    return (getattr(owner, "events", None) or getattr(getattr(owner, "oauth", None), "events", None)
            or _HUB.get() or NULL_EVENTS)


def _drive(inner: Any, event: Any) -> Any:
    """Run the flow ``inner`` step by step inside ``event``: counts its HTTP attempts, keeps the
    last answer's status, and notes an open breaker."""
    attempts, value, error = 0, None, None
    try:
        while True:
            try:
                step = inner.throw(error) if error is not None else inner.send(value)
            except StopIteration as stop:
                return stop.value
            if type(step).__name__ == "HttpCall":  # (flow.py imports this module)
                attempts += 1
            try:
                value, error = (yield step), None
            except Exception as exc:
                value, error = None, exc
            if type(value).__name__ == "Answer":
                event.set(**{"http.response.status_code": value.status})
    except Exception as exc:
        if type(exc).__name__ == "CircuitOpenError":
            event.set(**{"propagation.breaker": "open"})
        raise
    finally:
        event.set(**{"propagation.attempts": attempts})


def _reset(var: ContextVar[Any], handle: Any) -> None:
    try:
        var.reset(handle)
    except ValueError:  # a flow closed in another context (abandoned generator): leave it
        pass


def breaker_changed(key: Any, state: str) -> None:
    """A breaker (key: host, tenant) changed to ``state`` (open / half-open / closed)."""
    host, tenant = key if isinstance(key, tuple) and len(key) == 2 else (key, None)
    point_here("breaker", **{"propagation.breaker": state, "server.address": str(host), "propagation.tenant": tenant})
    annotate("token", **{"propagation.breaker": state})


def point_here(kind: str, **attributes: Any) -> None:
    """Report a point to the hub of the running call or token request (none: nothing)."""
    hub = _HUB.get()
    if hub is not None:
        hub.point(kind, **attributes)


# -- outbound calls ---------------------------------------------------------------------------
def _with_header(headers: Any, name: str, value: str) -> Any:
    if headers is None:
        return {name: value}
    if isinstance(headers, Mapping):
        if any(str(k).lower() == name.lower() for k in headers):
            return headers  # the application set its own
        return {**dict(headers.items()), name: value}
    if isinstance(headers, (list, tuple)):
        if any(str(k).lower() == name.lower() for k, _ in headers):
            return headers
        return [*headers, (name, value)]
    return headers


def _call_start(bound: Any, method: Any, kwargs: dict[str, Any]) -> tuple[Events, dict[str, Any]]:
    engine = getattr(bound, "propagator", None) or getattr(bound, "engine", None)
    header = getattr(engine, "correlation_header", "X-CorrelationID")
    cid = correlation_id()
    if header and cid:
        kwargs["headers"] = _with_header(kwargs.get("headers"), header, cid)
    attrs = {"propagation.destination": bound.name, "http.request.method": str(method).upper(),
             "propagation.correlation_id": cid}
    return _events(engine), attrs


def _trace_context(kwargs: dict[str, Any]) -> None:
    """W3C ``traceparent`` (and whatever else OTel's global propagator writes) of the running
    call span, for a backend behind no instrumented client. With
    ``opentelemetry-instrumentation-requests``/``-httpx`` installed, their client span's context
    replaces it when the request is sent. Not a secret: it goes with every hop, like the
    correlation id."""
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return
    carrier: dict[str, str] = {}
    inject(carrier)
    for name, value in carrier.items():
        kwargs["headers"] = _with_header(kwargs.get("headers"), name, value)


def _call_end(event: Any, response: Any) -> None:
    status = getattr(response, "status_code", None)
    if status is not None:
        event.set(**{"http.response.status_code": status})
        if status >= 400:
            event.set(**{"error.type": str(status)})


def _refused(events: Events, name: str, exc: BaseException) -> None:
    events.point("refusal", **{"propagation.destination": name, "propagation.refusal": type(exc).__name__,
                               "error.type": type(exc).__name__})


def traced_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a destination client's ``request(method, url, **kw)``: one ``call`` span around
    planning and sending (token and lookup spans nest inside), the status, a ``refusal``
    point for MissingUserTokenError/PathOutsideDestinationError, and the correlation header."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def acall(self: Any, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            events, attrs = _call_start(self, method, kwargs)
            if not events.enabled:
                return await fn(self, method, url, *args, **kwargs)
            hub = _HUB.set(events)
            try:
                with events.span("call", **attrs) as event:
                    _trace_context(kwargs)
                    try:
                        response = await fn(self, method, url, *args, **kwargs)
                    except REFUSALS as exc:
                        _refused(events, self.name, exc)
                        raise
                    _call_end(event, response)
                    return response
            finally:
                _reset(_HUB, hub)

        return acall

    @functools.wraps(fn)
    def call(self: Any, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        events, attrs = _call_start(self, method, kwargs)
        if not events.enabled:
            return fn(self, method, url, *args, **kwargs)
        hub = _HUB.set(events)
        try:
            with events.span("call", **attrs) as event:
                _trace_context(kwargs)
                try:
                    response = fn(self, method, url, *args, **kwargs)
                except REFUSALS as exc:
                    _refused(events, self.name, exc)
                    raise
                _call_end(event, response)
                return response
        finally:
            _reset(_HUB, hub)

    return call


def note_plan(destination: Any, user: Any, target: str) -> None:
    """What the plan of the running call decided (called by ``plan_flow``): authentication,
    origin, proxy and location, the principal's fingerprint; an ``off-origin`` refusal point
    when the target is elsewhere (sent without any of the destination's credentials)."""
    event = current_event()
    if event is None:
        return
    parts, base = urlsplit(target), urlsplit(destination.url)
    same = (parts.scheme, parts.hostname, parts.port) == (base.scheme, base.hostname, base.port)
    annotate(
        "call",
        **{
            "url.full": safe_url(target),
            "server.address": parts.hostname,
            "server.port": parts.port,
            "propagation.authentication": destination.authentication if same else "none (other origin)",
            "propagation.proxy_type": destination.proxy_type,
            "propagation.location": destination.location_id if destination.on_premise else None,
            "propagation.destination.source": destination.source or None,
            "propagation.tenant": getattr(user, "tenant", None),
            "propagation.user.fingerprint": getattr(user, "fingerprint", None),
        },
    )
    if not same:
        point_here("refusal", **{"propagation.destination": destination.name, "propagation.refusal": "off-origin",
                                 "server.address": parts.hostname})


def note_reexchange(status: int) -> None:
    """The running call got ``status`` (401/407): the cached token is dropped and re-exchanged."""
    annotate("call", **{"propagation.reexchange": status})


def note_csrf_fetch() -> None:
    """The running call fetched a CSRF token first."""
    annotate("call", **{"propagation.csrf_fetch": True})


# -- token cache ------------------------------------------------------------------------------
def note_cache(what: str) -> None:
    """A cache says what it is doing for this caller (``wait`` for another's single flight)."""
    _CACHE_NOTE.set(what)


def cache_point(step: Any, value: Any) -> None:
    """After a :class:`~propagation.exchange.flow.Cached` step: a ``cache`` point, hit / miss / wait."""
    hub = _HUB.get()
    note = _CACHE_NOTE.get()
    if note is not None:
        _CACHE_NOTE.set(None)
    if hub is None or not hub.enabled:
        return
    hit = bool(value[1]) if isinstance(value, tuple) and len(value) == 2 else False
    outcome = "miss" if not hit else ("wait" if note == "wait" else "hit")
    key = step.key
    hub.point("cache", **{
        "propagation.cache": outcome,
        "propagation.destination": getattr(key, "destination", None),
        "propagation.grant": getattr(key, "grant", None),
        "propagation.client": getattr(key, "client", None),
        "propagation.tenant": getattr(key, "tenant", None),
        "propagation.user.fingerprint": getattr(key, "user", None),
    })
    annotate("call", **{"propagation.cache": outcome})


# -- token requests ---------------------------------------------------------------------------
def _user_of(form: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    raw = (form or {}).get("assertion") or (form or {}).get("subject_token")
    if not raw:
        return None, None
    from ..tokens import fingerprint

    tenant = None
    try:
        from ..context import as_user_token

        tenant = as_user_token(raw).tenant
    except Exception:  # an opaque token: fingerprint only
        pass
    return fingerprint(raw), tenant


def traced_token_flow(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``OAuthClient.token_flow``: one ``token`` span around the request and all its
    attempts (grant, IdP host, client, tenant, user fingerprint, status, attempts, breaker)."""

    @functools.wraps(fn)
    def flow(self: Any, token_url: str, client: Any, grant_type: str, form: Any = None, **kw: Any) -> Any:
        events = _events(self)
        if not events.enabled:
            return (yield from fn(self, token_url, client, grant_type, form, **kw))
        user, tenant = _user_of(form)
        host = urlsplit(token_url).hostname
        zid = (kw.get("headers") or {}).get("X-zid")
        attrs = {
            "server.address": host,
            "url.full": safe_url(token_url),
            "propagation.grant": grant_type.rpartition(":")[2] if grant_type.startswith("urn:") else grant_type,
            "propagation.client": getattr(client, "client_id", None),
            "propagation.tenant": tenant or zid,
            "propagation.user.fingerprint": user,
        }
        breakers = getattr(self, "breakers", None)
        if breakers is not None and getattr(breakers, "threshold", 0) > 0:
            attrs["propagation.breaker"] = "closed"
        hub = _HUB.set(events)
        try:
            with events.span("token", **attrs) as event:
                return (yield from _drive(fn(self, token_url, client, grant_type, form, **kw), event))
        finally:
            _reset(_HUB, hub)

    return flow


# -- Destination-service lookups and inbound validation ----------------------------------------
def traced_lookup_flow(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``DestinationService._fetch``: one ``lookup`` span per find call (destination,
    level, tenant, user fingerprint, authentication, status, attempts)."""

    @functools.wraps(fn)
    def flow(self: Any, base: str, level: Any, tenant: Any, headers: Any, **kw: Any) -> Any:
        events = _events(self)
        if not events.enabled:
            return (yield from fn(self, base, level, tenant, headers, **kw))
        user = kw.get("user")
        uri = getattr(getattr(self, "config", None), "uri", None)
        attrs = {
            "propagation.destination": base + (f"@{level}" if level else ""),
            "server.address": urlsplit(uri).hostname if isinstance(uri, str) else None,
            "propagation.tenant": getattr(tenant, "id", None),
            "propagation.user.fingerprint": getattr(user, "fingerprint", None),
            "propagation.authentication": kw.get("authentication"),
            "propagation.lookup": "configuration" if kw.get("skip") else "tokens",
        }
        hub = _HUB.set(events)
        try:
            with events.span("lookup", **attrs) as event:
                return (yield from _drive(fn(self, base, level, tenant, headers, **kw), event))
        finally:
            _reset(_HUB, hub)

    return flow


def traced_authenticate(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``InboundGate.authenticate`` (validation that was not answered from the cache):
    one ``inbound`` span (token kind, tenant, user fingerprint, outcome; user name on opt-in)."""

    @functools.wraps(fn)
    def authenticate(self: Any, raw: str) -> Any:
        events = _events(getattr(self, "propagator", None))
        if not events.enabled:
            return fn(self, raw)
        from ..tokens import fingerprint

        with events.span("inbound", **{"propagation.user.fingerprint": fingerprint(raw)}) as event:
            result = fn(self, raw)
            token = result.token
            event.set(**{"propagation.token.kind": getattr(token, "kind", None),
                         "propagation.tenant": getattr(token, "tenant", None),
                         "propagation.user.fingerprint": getattr(token, "fingerprint", None),
                         "propagation.user.name": getattr(token, "user", None),
                         "propagation.xsuaa_exchange": result.xsuaa_token is not None or None})
            return result

    return authenticate


# -- destination resolution -------------------------------------------------------------------
def traced_resolve_flow(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``DestinationResolver.resolve_flow``: one ``destination`` span (name, source,
    selection, tenant, authentication)."""

    @functools.wraps(fn)
    def flow(self: Any, name: str, user: Any = None, options: Any = None) -> Any:
        events = _events(self)
        if not events.enabled:
            return (yield from fn(self, name, user, options))
        attrs = {
            "propagation.destination": name,
            "propagation.selection": getattr(options, "selection", None),
            "propagation.tenant": getattr(user, "tenant", None),
        }
        with events.span("destination", **attrs) as event:
            destination = yield from fn(self, name, user, options)
            event.set(**{"propagation.destination.source": getattr(destination, "source", None) or None,
                         "propagation.authentication": getattr(destination, "authentication", None)})
            return destination

    return flow
