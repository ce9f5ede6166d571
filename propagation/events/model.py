"""One model of what the library did (DESIGN §2c): inbound validation, destination resolution,
token requests, cache lookups, outbound calls, refusals and breaker changes.

Producers (the validator, the resolver, the token flow, the caches, the outbound clients)
report to an :class:`Events` hub that the engine owns and hands to them; sinks (log records,
OpenTelemetry spans and metrics, the sandbox's trace) subscribe to the hub. Producers never
know which sinks exist, and a hub without sinks costs one attribute check per report.

Rules for every attribute (enforced by :meth:`Events._checked`): never a token, secret,
assertion, password, key or client certificate — user tokens appear as fingerprints
(``propagation.user.fingerprint``), URLs without their query values; user names only when the
application opts in (``Events(user_names=True)``).
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

__all__ = ["KINDS", "Event", "Sink", "Events", "NULL_EVENTS", "current_event", "annotate"]

#: The innermost running span event of this thread/task (parent of the next one).
_CURRENT: ContextVar["Event | None"] = ContextVar("propagation.event", default=None)

#: Attribute names that may never be reported (whatever the value), and values shaped like a JWT.
_SECRET_NAMES = re.compile(r"(token|secret|assertion|password|passwd|private|credential|certificate|authorization|cookie)"
                           r"(?!\.fingerprint|_fingerprint|\.type|_type|\.kind)", re.IGNORECASE)
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{8,}\.")
_PEM = "-----BEGIN"
#: Attributes that carry a user's name: dropped unless the application opted in.
USER_NAME_ATTRIBUTES = frozenset({"propagation.user.name", "enduser.id"})


def current_event() -> "Event | None":
    """The innermost running span event of this thread or task, else ``None``."""
    return _CURRENT.get()


def annotate(kind: str, **attributes: Any) -> None:
    """Add ``attributes`` to the innermost running event of ``kind`` (e.g. the outbound call a
    CSRF fetch or a 401 re-exchange belongs to); nothing when there is none."""
    event = _CURRENT.get()
    while event is not None and event.kind != kind:
        event = event.parent
    if event is not None:
        event.attributes.update(attributes)

#: What an event is about. ``span`` kinds have a duration; ``point`` kinds are instants.
KINDS: Mapping[str, str] = {
    "inbound": "span",        # validation of the inbound bearer token
    "destination": "span",    # resolution of a destination name
    "token": "span",          # one token request to an IdP (all attempts)
    "lookup": "span",         # one Destination-service request
    "call": "span",           # one outbound call to a destination (all its hops)
    "cache": "point",         # a token-cache lookup: hit / miss / wait / invalidate
    "refusal": "point",       # the library refused to send (MissingUserTokenError, origin, dot segments…)
    "breaker": "point",       # a circuit breaker changed state (open / half-open / closed)
}


@dataclass(slots=True)
class Event:
    """One thing the library did. ``attributes`` use OTel semantic-convention names where one
    exists (``url.full``, ``server.address``, ``http.response.status_code``, ``error.type``) and
    ``propagation.*`` otherwise. ``started``/``ended`` are ``time.monotonic()`` values."""

    kind: str
    attributes: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    ended: float | None = None
    #: ``None`` while running; ``"ok"`` or ``"error"`` when ended (points: ``"ok"``).
    outcome: str | None = None
    #: The exception's class name when it ended with one (OTel ``error.type``), else ``None``.
    error_type: str | None = None
    #: The event this one happened inside (same thread/task), or ``None``.
    parent: "Event | None" = None

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def set(self, **attributes: Any) -> None:
        """Add attributes while the event runs (e.g. the answer's status)."""
        self.attributes.update(attributes)


class Sink(Protocol):
    """A consumer of events. ``begin`` may return a handle (e.g. an OTel span) that ``end``
    receives; points arrive at ``point``. Sinks must not raise (the hub swallows and logs)."""

    def begin(self, event: Event) -> Any: ...

    def end(self, event: Event, handle: Any) -> None: ...

    def point(self, event: Event) -> None: ...


class Events:
    """The engine's hub of sinks. Thread-safe subscription; reporting takes no lock."""

    def __init__(self, sinks: "tuple[Sink, ...] | list[Sink]" = (), *, user_names: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sinks: tuple[Sink, ...] = tuple(sinks)
        self._dynamic = any(hasattr(type(s), "active") for s in self._sinks)
        self._lock = threading.Lock()
        self.user_names = user_names
        self.clock = clock

    @property
    def enabled(self) -> bool:
        """Whether any sink listens (producers may skip building attributes when not). A sink
        with an ``active`` attribute (the OTel sink: is an SDK configured?) counts only while
        that is true."""
        return bool(self._live())

    def _live(self) -> "tuple[Sink, ...]":
        sinks = self._sinks
        if not self._dynamic:
            return sinks
        return tuple(s for s in sinks if getattr(s, "active", True))

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        """Add ``sink``; returns the function that removes it again."""
        with self._lock:
            self._sinks = (*self._sinks, sink)
            self._dynamic = self._dynamic or hasattr(type(sink), "active")

        def unsubscribe() -> None:
            with self._lock:
                self._sinks = tuple(s for s in self._sinks if s is not sink)

        return unsubscribe

    @contextmanager
    def span(self, kind: str, **attributes: Any) -> Iterator[Event]:
        """Report a ``span`` kind around a block; an exception leaving the block ends the event
        with ``outcome="error"`` and ``error_type`` = its class name, and propagates."""
        sinks = self._live()
        if not sinks:
            yield Event(kind, attributes)
            return
        event = Event(kind, self._checked(attributes), self.clock(), parent=_CURRENT.get())
        handles = [_safe(sink.begin, event) for sink in sinks]
        current = _CURRENT.set(event)
        try:
            yield event
        except BaseException as exc:
            event.outcome, event.error_type = "error", type(exc).__name__
            raise
        else:
            event.outcome = event.outcome or "ok"
        finally:
            _reset(current)
            event.ended = self.clock()
            event.attributes = self._checked(event.attributes)
            for sink, handle in zip(sinks, handles):
                _safe(sink.end, event, handle)

    def point(self, kind: str, **attributes: Any) -> None:
        """Report a ``point`` kind (cache lookup, refusal, breaker change)."""
        sinks = self._live()
        if not sinks:
            return
        now = self.clock()
        event = Event(kind, self._checked(attributes), now, now, "ok", parent=_CURRENT.get())
        for sink in sinks:
            _safe(sink.point, event)


    def _checked(self, attributes: dict[str, Any]) -> dict[str, Any]:
        """The attributes a sink may see: ``None`` values dropped, user names only on opt-in,
        and anything named or shaped like a token, secret, key or certificate refused (replaced
        by ``"[refused]"`` and logged by name, so a producer's mistake shows up in tests)."""
        clean: dict[str, Any] = {}
        for name, value in attributes.items():
            if value is None or (name in USER_NAME_ATTRIBUTES and not self.user_names):
                continue
            if _SECRET_NAMES.search(name) or (isinstance(value, str) and (_JWT_LIKE.search(value) or _PEM in value)):
                from .._log import logger

                logger.warning("propagation event attribute %s refused: it looks like a secret", name)
                value = "[refused]"
            clean[name] = value
        return clean


def _reset(handle: Any) -> None:
    try:
        _CURRENT.reset(handle)
    except ValueError:  # ended in another context (a generator closed elsewhere): leave it
        pass


def _safe(method: Callable[..., Any], *args: Any) -> Any:
    try:
        return method(*args)
    except Exception:  # a broken sink never breaks a request
        from .._log import logger

        logger.exception("propagation event sink %r failed", getattr(method, "__self__", method))
        return None


#: A hub without sinks, for producers built outside an engine (tests, tools).
NULL_EVENTS = Events()
