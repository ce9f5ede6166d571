"""The engine's default hub: the OpenTelemetry sink when ``opentelemetry-api`` is importable
(idle until the app configures an SDK), the log sink when ``propagation.events`` logs at DEBUG,
the trace sink when ``PROPAGATION_TRACE`` says where (all decided when the engine is built)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from .._settings import env_flag
from .model import Events

#: Lets user names into events (default: fingerprints only).
USER_NAMES_ENV = "PROPAGATION_EVENT_USER_NAMES"

__all__ = ["default_events"]


def default_events(environ: Mapping[str, str] | None = None, *, user_names: bool | None = None) -> Events:
    """``Events`` with the sinks that have somewhere to go; no sink at all costs nothing.
    ``PROPAGATION_EVENT_USER_NAMES=true`` lets user names into events (default: fingerprints only)."""
    from .logs import EVENTS_LOGGER, LogSink
    from .otel import otel_sink
    from .trace import trace_sink_from_env

    environ = environ or {}
    if user_names is None:
        user_names = env_flag(environ.get(USER_NAMES_ENV), USER_NAMES_ENV, False)

    sinks: list[Any] = []
    otel = otel_sink()
    if otel is not None:
        sinks.append(otel)
    if EVENTS_LOGGER.isEnabledFor(logging.DEBUG):
        sinks.append(LogSink())
    trace = trace_sink_from_env(environ)
    if trace is not None:
        sinks.append(trace)
    return Events(sinks, user_names=user_names)
