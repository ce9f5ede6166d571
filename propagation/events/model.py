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

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

__all__ = ["KINDS", "Event", "Sink", "Events", "NULL_EVENTS"]

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
        self._lock = threading.Lock()
        self.user_names = user_names
        self.clock = clock

    @property
    def enabled(self) -> bool:
        """Whether any sink listens (producers may skip building attributes when not)."""
        return bool(self._sinks)

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        """Add ``sink``; returns the function that removes it again."""
        with self._lock:
            self._sinks = (*self._sinks, sink)

        def unsubscribe() -> None:
            with self._lock:
                self._sinks = tuple(s for s in self._sinks if s is not sink)

        return unsubscribe

    @contextmanager
    def span(self, kind: str, **attributes: Any) -> Iterator[Event]:
        """Report a ``span`` kind around a block; an exception leaving the block ends the event
        with ``outcome="error"`` and ``error_type`` = its class name, and propagates."""
        event = Event(kind, attributes, self.clock())
        sinks = self._sinks
        if not sinks:
            yield event
            return
        handles = [_safe(sink.begin, event) for sink in sinks]
        try:
            yield event
        except BaseException as exc:
            event.outcome, event.error_type = "error", type(exc).__name__
            raise
        else:
            event.outcome = event.outcome or "ok"
        finally:
            event.ended = self.clock()
            for sink, handle in zip(sinks, handles):
                _safe(sink.end, event, handle)

    def point(self, kind: str, **attributes: Any) -> None:
        """Report a ``point`` kind (cache lookup, refusal, breaker change)."""
        sinks = self._sinks
        if not sinks:
            return
        now = self.clock()
        event = Event(kind, attributes, now, now, "ok")
        for sink in sinks:
            _safe(sink.point, event)


def _safe(method: Callable[..., Any], *args: Any) -> Any:
    try:
        return method(*args)
    except Exception:  # a broken sink never breaks a request
        from .._log import logger

        logger.exception("propagation event sink %r failed", getattr(method, "__self__", method))
        return None


#: A hub without sinks, for producers built outside an engine (tests, tools).
NULL_EVENTS = Events()
