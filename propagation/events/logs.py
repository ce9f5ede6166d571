"""Log sink: one DEBUG record per finished event on the ``propagation.events`` logger, with the
correlation id on it (``record.correlation_id``) and the event's attributes as
``record.propagation`` (a dict a JSON formatter serializes as it is). Costs one level check
per event when DEBUG is off."""

from __future__ import annotations

import logging
from typing import Any

from ..correlation import install_log_filter
from .model import Event

__all__ = ["LogSink", "EVENTS_LOGGER"]

EVENTS_LOGGER = logging.getLogger("propagation.events")
install_log_filter(EVENTS_LOGGER)


def _line(event: Event) -> str:
    fields = " ".join(f"{k.removeprefix('propagation.')}={v}" for k, v in event.attributes.items())
    took = f" {event.duration * 1000:.1f}ms" if event.duration else ""
    error = f" error={event.error_type}" if event.error_type else ""
    return f"{event.kind} {event.outcome or 'ok'}{error}{took} {fields}".rstrip()


class LogSink:
    """Finished events as DEBUG records (see the module doc)."""

    def __init__(self, logger: logging.Logger = EVENTS_LOGGER) -> None:
        self.logger = logger

    def begin(self, event: Event) -> Any:
        return None

    def end(self, event: Event, handle: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("%s", _line(event), extra={"propagation": dict(event.attributes)})

    def point(self, event: Event) -> None:
        self.end(event, None)
