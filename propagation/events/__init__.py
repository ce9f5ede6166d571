"""What the library did, as one event model (:mod:`.model`), and its sinks."""

from .model import KINDS, NULL_EVENTS, Event, Events, Sink

__all__ = ["KINDS", "NULL_EVENTS", "Event", "Events", "Sink"]
