"""``run --trace`` / ``exec --trace``: one line per token request, Destination-service
lookup, proxy hop and backend call, printed as it happens — the tool for a call that
"should be alice" and is not. Built from the landscape's records (so it shows exactly what
the emulated services saw) and the proxy's forwarding records; tokens as fingerprints only.
Under ``exec --trace`` the app's own engine adds the library's side — ``lib`` lines from its
events (:mod:`propagation.events.trace`, the same events its OpenTelemetry spans come from).

    12:00:01.204 token   xsuaa jwt-bearer  client=sb-connectivity-instance!b137 user=alice tenant=provider -> 200 assertion #1a2b.. issued #3c4d.. [xsuaa#2]
    12:00:01.231 proxy   GET http://s4-virtual:44300/sap/... location=LOC1 proxy-token #3c4d.. -> forwarded to the Cloud Connector [connectivity-proxy#1]
    12:00:01.233 backend onprem GET /sap/... user=alice carried-by=proxy-token tenant=provider -> 200 [connectivity-proxy#1]
    12:00:01.240 lib     call S4 GET https://s4-virtual:44300/sap/... auth=PrincipalPropagation location=LOC1 user=#1a2b3c4d5e6f -> 200 (38.0 ms)
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, TextIO
from urllib.parse import unquote

from ..events.trace import TRACE_ENV, TraceSink, format_event

__all__ = ["format_record", "format_event", "Tracer", "TraceSink"]

_SERVICES = {"destination": "lookup", "connectivity-proxy": "proxy", "onprem": "backend", "backend": "backend",
             "iflow": "backend"}


def _fp(value: str | None) -> str:
    return f"#{value[:12]}" if value else "#-"


def _fields(**values: Any) -> str:
    return " ".join(f"{k.replace('_', '-')}={v}" for k, v in values.items() if v not in (None, "", {}))


def _stamp(now: float | None = None) -> str:
    now = time.time() if now is None else now
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def format_record(record: Any) -> str | None:
    """One trace line (without the time stamp) for a landscape record or a proxy hop;
    ``None`` for what the trace leaves out (key fetches, raw traffic)."""
    kind = type(record).__name__
    where = f" [{record.connection}]" if getattr(record, "connection", None) else ""
    if kind == "Exchange":
        label = "token" if record.via == "app" else "token*"  # *: run by the Destination service itself
        outcome = f"{record.status}" + (f" {record.error}" if record.error else "")
        fps = " ".join(p for p in (f"assertion {_fp(record.assertion)}" if record.assertion else "",
                                   f"issued {_fp(record.issued)}" if record.issued else "") if p)
        line = (f"{label:<7} {record.service} {record.grant or '-'}  "
                f"{_fields(client=record.client, user=record.user, tenant=record.tenant, subject=record.subject)}"
                f" -> {outcome}" + (f" {fps}" if fps else ""))
        return line + where
    if kind == "Call":
        label = _SERVICES.get(record.service, record.service)
        outcome = f"{record.status}" + (f" ({record.error})" if record.error else "")
        if record.service == "destination":
            flags = ",".join(f"{k}={v}" for k, v in (record.query or {}).items())
            api, _, rest = record.path.partition("/destination-configuration/")[2].partition("/")
            name = unquote(rest.rpartition("/")[2]) or record.destination  # with its @level, if any
            detail = _fields(name=name, user=record.user, tenant=record.tenant, query=flags or None)
            return f"{label:<7} {api} {detail} -> {outcome}{where}"
        if record.service == "connectivity-proxy":
            detail = _fields(location=record.location)
            return f"{label:<7} refused {record.method} {record.path} {detail} token {_fp(record.token)} -> {outcome}{where}"
        detail = _fields(user=record.user or "(none)", carried_by=record.carried_by, client=record.client,
                         tenant=record.tenant, location=record.location)
        return f"{label:<7} {record.service} {record.method} {record.path} {detail} -> {outcome}{where}"
    if kind == "Forwarded":
        detail = _fields(location=record.location)
        header = " +SAP-Connectivity-Authentication" if record.user_header else ""
        outcome = record.status or "forwarded to the Cloud Connector"
        return (f"{'proxy':<7} {record.method} {record.url} {detail} proxy-token {_fp(record.proxy_token)}{header}"
                f" -> {outcome}" + (f" [{record.connection}]" if getattr(record, "connection", None) else ""))
    return None


class Tracer:
    """Prints the lines of :func:`format_record` to ``out`` (thread-safe, flushed per line)."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.time) -> None:
        self.out = out
        self.clock = clock
        self._lock = threading.Lock()

    def __call__(self, record: Any) -> None:
        line = format_record(record)
        if line is None:
            return
        with self._lock:
            print(f"{_stamp(self.clock())} {line}", file=self.out, flush=True)

    def attach(self, sandbox: Any) -> Callable[[], None]:
        """Subscribe to the sandbox's landscape and proxy; returns the unsubscriber. Processes
        started after this (``exec``'s command) print the library's own lines too: their
        engine's events, through ``PROPAGATION_TRACE`` (unless it is set already)."""
        undo: list[Callable[[], None]] = []
        if TRACE_ENV not in os.environ:
            os.environ[TRACE_ENV] = "stderr"
            undo.append(lambda: os.environ.pop(TRACE_ENV, None))
        observe = getattr(sandbox.landscape, "observe", None)
        if observe is not None:
            undo.append(observe(self))
        if sandbox.proxy is not None:
            undo.append(sandbox.proxy.observe(self))

        def detach() -> None:
            for step in undo:
                step()

        return detach
