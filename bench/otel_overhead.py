"""Overhead of the library's events and OpenTelemetry spans on bench (b)'s call: one
``session(name).get`` on a token-cache hit against a loopback server, per call.

    python bench/otel_overhead.py            # full run
    python bench/otel_overhead.py --quick    # CI-sized

Variants, measured interleaved in one process (best of several rounds each):

* ``events off``         — ``Propagator(events=Events())``: no sink, the figure without OTel;
* ``otel api, no sdk``   — the OTel sink on the API's default (no-op) providers: what an app
                           gets with ``opentelemetry-api`` installed and no SDK configured.
                           Target: within 2 % of ``events off``;
* ``otel sdk, no-op exp``— the SDK's TracerProvider (BatchSpanProcessor to an exporter that
                           drops everything) and MeterProvider: reported, no target.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import requests  # noqa: E402

import jwtkit  # noqa: E402
from servers import LoopbackServer, rate  # noqa: E402

from propagation.bindings import Bindings  # noqa: E402
from propagation.engine import Propagator  # noqa: E402
from propagation.events import Events  # noqa: E402
from propagation.events.otel import OTelSink  # noqa: E402
from propagation.exchange.oauth import OAuthClient  # noqa: E402


def sdk_sink() -> tuple[OTelSink, Callable[[], None]] | None:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError:
        return None

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return OTelSink(tracer_provider, meter_provider), shutdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n, rounds = (300, 3) if args.quick else (3000, 7)
    user = jwtkit.Xsuaa().token("alice@example.com")
    sdk = sdk_sink()
    with LoopbackServer() as srv:
        destinations = json.dumps([{"name": "S4", "url": f"{srv.base}/odata", "Authentication": "OAuth2JWTBearer",
                                    "tokenServiceURL": srv.token_url, "clientId": "dest-client", "clientSecret": "secret-VALUE"}])

        def engine(events: Events) -> Propagator:
            return Propagator(environ={"destinations": destinations}, bindings=Bindings([]), oauth=OAuthClient(retries=0),
                              events=events)

        hubs = {"events off": Events(), "otel api, no sdk": Events([OTelSink()])}
        if sdk is not None:
            hubs["otel sdk, no-op exp"] = Events([sdk[0]])
        sessions = {name: engine(hub).session("S4", user_token=user) for name, hub in hubs.items()}
        plain = requests.Session()
        url = f"{srv.base}/odata/Items"
        calls: dict[str, Callable[[], None]] = {"requests": lambda: plain.get(url).raise_for_status()}
        for name, session in sessions.items():
            calls[name] = lambda s=session: s.get("Items").raise_for_status()
        for call in calls.values():
            for _ in range(50):
                call()
        best: dict[str, float] = {name: 0.0 for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                best[name] = max(best[name], rate(call, n))
    if sdk is not None:
        sdk[1]()
    print("bench (b) per call, token-cache hit, loopback target:")
    for name, value in best.items():
        print(f"  {name:<20} {1e6 / value:7.1f} us/call")
    ratio = best["events off"] / best["otel api, no sdk"]
    print(f"  otel api without sdk vs events off: {ratio:.3f} x ({'PASS' if ratio <= 1.02 else 'MISS'}: target <= 1.02)")
    if sdk is not None:
        print(f"  otel sdk + no-op exporter vs events off: {best['events off'] / best['otel sdk, no-op exp']:.3f} x (reported)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
