"""The engine's default hub: the OpenTelemetry sink when ``opentelemetry-api`` is importable,
the log sink when ``propagation.events`` logs at DEBUG (decided when the engine is built)."""

from __future__ import annotations

import logging
from typing import Any

from .model import Events

__all__ = ["default_events"]


def default_events(*, user_names: bool = False) -> Events:
    """``Events`` with the sinks that have somewhere to go; no sink at all costs nothing."""
    from .logs import EVENTS_LOGGER, LogSink
    from .otel import otel_sink

    sinks: list[Any] = []
    otel = otel_sink()
    if otel is not None:
        sinks.append(otel)
    if EVENTS_LOGGER.isEnabledFor(logging.DEBUG):
        sinks.append(LogSink())
    return Events(sinks, user_names=user_names)
