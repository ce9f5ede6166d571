"""OpenTelemetry sink (extra ``otel``: ``opentelemetry-api`` only; the app configures the SDK).

Each span kind of the event model becomes a span named ``propagation.<kind>`` (INTERNAL), made
current while it runs: it nests under whatever span is current (the server span of the app's
Flask/FastAPI/Django/WSGI/ASGI instrumentation) and is the parent of the HTTP client spans
``opentelemetry-instrumentation-requests``/``-httpx`` make for the request it sends. Points
(cache lookups, refusals, breaker changes) become span events on the current span. Metrics:

=================================  =========  ==============================================
``propagation.token.requests``     counter    token requests by ``propagation.grant``, outcome
``propagation.token.duration``     histogram  seconds per token request (IdP), by grant, host
``propagation.lookup.duration``    histogram  seconds per Destination-service request
``propagation.cache.lookups``      counter    token-cache lookups by ``propagation.cache``
``propagation.breaker.changes``    counter    breaker state changes by ``propagation.breaker``
``propagation.refusals``           counter    refusals by ``error.type``
``propagation.call.duration``      histogram  seconds per outbound call, by destination, status
=================================  =========  ==============================================

Metric attributes are low-cardinality only (never a user, tenant or URL).

Without an SDK, the API hands out non-recording spans: the cost is a few microseconds a call
(see ``bench/otel_overhead.py``). :func:`otel_sink` returns ``None`` when ``opentelemetry`` is
not importable, so nothing at all is done then.
"""

from __future__ import annotations

from typing import Any

from .model import Event

__all__ = ["OTelSink", "otel_sink", "SPAN_KINDS"]

#: Span kinds of the model (the others are points).
SPAN_KINDS = ("inbound", "destination", "token", "lookup", "call")
_METRIC_LABELS = {
    "token": ("propagation.grant", "server.address", "propagation.outcome"),
    "lookup": ("server.address", "propagation.outcome"),
    "call": ("propagation.destination", "propagation.authentication", "http.response.status_code", "propagation.outcome"),
    "cache": ("propagation.cache", "propagation.grant"),
    "breaker": ("propagation.breaker", "server.address"),
    "refusal": ("error.type",),
}


#: The API's own providers: what is installed while no SDK is configured (or it is disabled).
_IDLE = frozenset({"ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider"})


def _value(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: _value(v) for k, v in attributes.items() if v is not None}


def _labels(kind: str, event: Event) -> dict[str, Any]:
    attrs = {**event.attributes, "propagation.outcome": event.outcome or "ok"}
    if event.error_type:
        attrs.setdefault("error.type", event.error_type)
    return {k: _value(attrs[k]) for k in _METRIC_LABELS.get(kind, ()) if attrs.get(k) is not None}


class OTelSink:
    """Spans and metrics through the OpenTelemetry API (global providers unless given)."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from opentelemetry import context, metrics, trace

        from .. import __version__

        self._context = context
        self._trace = trace
        self._metrics = metrics
        self._given = tracer_provider is not None or meter_provider is not None
        # The API's globals, read directly on the hot path (the public getters cost µs each);
        # the public getters when this API version has other names or the env picks providers.
        import os

        from opentelemetry.metrics import _internal as metrics_internal

        fast = (hasattr(trace, "_TRACER_PROVIDER") and hasattr(metrics_internal, "_METER_PROVIDER")
                and not any(k in os.environ for k in ("OTEL_PYTHON_TRACER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER")))
        self._globals = (trace, metrics_internal) if fast else None
        self._tracer = trace.get_tracer("propagation", __version__, tracer_provider)
        meter = metrics.get_meter("propagation", __version__, meter_provider)
        self._exchanges = meter.create_counter("propagation.token.requests", "{request}", "Token requests to IdPs")
        self._token_time = meter.create_histogram("propagation.token.duration", "s", "Token request duration (IdP)")
        self._lookup_time = meter.create_histogram("propagation.lookup.duration", "s", "Destination-service request duration")
        self._call_time = meter.create_histogram("propagation.call.duration", "s", "Outbound call duration")
        self._cache = meter.create_counter("propagation.cache.lookups", "{lookup}", "Token-cache lookups")
        self._breaker = meter.create_counter("propagation.breaker.changes", "{change}", "Circuit breaker state changes")
        self._refusals = meter.create_counter("propagation.refusals", "{refusal}", "Calls the library refused to send")

    @property
    def active(self) -> bool:
        """False while the app has configured no SDK (the API's proxy providers are still in
        place): then the library does not even build its events — no cost without an SDK."""
        if self._given:
            return True
        if self._globals is not None:
            return self._globals[0]._TRACER_PROVIDER is not None or self._globals[1]._METER_PROVIDER is not None
        return (type(self._trace.get_tracer_provider()).__name__ not in _IDLE
                or type(self._metrics.get_meter_provider()).__name__ not in _IDLE)

    def begin(self, event: Event) -> Any:
        span = self._tracer.start_span(f"propagation.{event.kind}", attributes=_attributes(event.attributes))
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def end(self, event: Event, handle: Any) -> None:
        if handle is None:
            return
        span, token = handle
        try:
            self._context.detach(token)
        except Exception:  # ended in another context (a flow closed elsewhere)
            pass
        if span.is_recording():
            span.set_attributes(_attributes(event.attributes))
            if event.outcome == "error":
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute("error.type", event.error_type or "error")
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        seconds = event.duration or 0.0
        if event.kind == "token":
            labels = _labels("token", event)
            self._exchanges.add(1, labels)
            self._token_time.record(seconds, labels)
        elif event.kind == "lookup":
            self._lookup_time.record(seconds, _labels("lookup", event))
        elif event.kind == "call":
            self._call_time.record(seconds, _labels("call", event))

    def point(self, event: Event) -> None:
        span = self._trace.get_current_span()
        if span.is_recording():
            span.add_event(f"propagation.{event.kind}", _attributes(event.attributes))
        labels = _labels(event.kind, event)
        if event.kind == "cache":
            self._cache.add(1, labels)
        elif event.kind == "breaker":
            self._breaker.add(1, labels)
        elif event.kind == "refusal":
            self._refusals.add(1, labels)


def otel_sink(tracer_provider: Any = None, meter_provider: Any = None) -> OTelSink | None:
    """An :class:`OTelSink`, or ``None`` when ``opentelemetry-api`` is not installed."""
    try:
        import opentelemetry.trace  # noqa: F401
        import opentelemetry.metrics  # noqa: F401
    except ImportError:
        return None
    return OTelSink(tracer_provider, meter_provider)
