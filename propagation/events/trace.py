"""Trace sink: one line per library event, in the format of the sandbox's ``--trace``
(``propagation.sandbox.trace``), so what a user sees locally is what their APM shows.

    12:00:01.201 lib     call S4 GET https://s4.example.com/api/Items auth=OAuth2JWTBearer user=#1a2b3c4d5e6f tenant=provider cache=miss -> 200 (14.2 ms) corr=3f1e…
    12:00:01.190 lib     token jwt-bearer idp=idp.example.com client=c user=#1a2b3c4d5e6f tenant=provider -> 200 attempts=1 (9.8 ms)

Turned on for an engine's default hub by ``PROPAGATION_TRACE`` (``stderr``, ``stdout``, or a
file path the lines are appended to): the sandbox's ``exec --trace`` and the demo set it for
the app they start. Fingerprints only, never a token.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Mapping, TextIO

from .model import Event

__all__ = ["TraceSink", "format_event", "stamp", "trace_sink_from_env", "TRACE_ENV"]

#: Environment variable: where an engine's default hub prints trace lines.
TRACE_ENV = "PROPAGATION_TRACE"


def stamp(now: float | None = None) -> str:
    """``HH:MM:SS.mmm`` local time."""
    now = time.time() if now is None else now
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def _fp(value: Any) -> str | None:
    return f"#{str(value)[:12]}" if value else None


def _fields(**values: Any) -> str:
    return " ".join(f"{k.replace('_', '-')}={v}" for k, v in values.items() if v not in (None, "", False))


def _took(event: Event) -> str:
    return f" ({event.duration * 1000:.1f} ms)" if event.duration else ""


def _outcome(event: Event) -> str:
    status = event.attributes.get("http.response.status_code")
    if event.outcome == "error":
        return f"{status} " * bool(status) + f"{event.error_type}"
    return str(status) if status is not None else "ok"


def format_event(event: Event) -> str | None:
    """One trace line (without the time stamp) for an event; ``None`` for what the trace
    leaves out (cache hits/misses show on the call line)."""
    a = event.attributes
    user, tenant = _fp(a.get("propagation.user.fingerprint")), a.get("propagation.tenant")
    if event.kind == "call":
        flags = " ".join(f for f in ("[csrf-fetch]" if a.get("propagation.csrf_fetch") else "",
                                     f"[re-exchange after {a['propagation.reexchange']}]" if a.get("propagation.reexchange") else "") if f)
        detail = _fields(auth=a.get("propagation.authentication"), location=a.get("propagation.location"),
                         user=user, tenant=tenant, cache=a.get("propagation.cache"))
        corr = a.get("propagation.correlation_id")
        return (f"call    {a.get('propagation.destination')} {a.get('http.request.method', '')} {a.get('url.full', '')} "
                f"{detail} -> {_outcome(event)}{_took(event)}" + (f" {flags}" if flags else "") + (f" corr={corr}" if corr else ""))
    if event.kind == "token":
        detail = _fields(idp=a.get("server.address"), client=a.get("propagation.client"), user=user, tenant=tenant)
        extra = _fields(attempts=a.get("propagation.attempts"), breaker=a.get("propagation.breaker") if a.get("propagation.breaker") != "closed" else None)
        return f"token   {a.get('propagation.grant')} {detail} -> {_outcome(event)}" + (f" {extra}" if extra else "") + _took(event)
    if event.kind == "lookup":
        detail = _fields(service=a.get("server.address"), user=user, tenant=tenant, auth=a.get("propagation.authentication"))
        return f"lookup  {a.get('propagation.destination')} ({a.get('propagation.lookup')}) {detail} -> {_outcome(event)}{_took(event)}"
    if event.kind == "destination" and event.outcome == "error":
        return f"resolve {a.get('propagation.destination')} -> {event.error_type}"
    if event.kind == "inbound":
        detail = _fields(kind=a.get("propagation.token.kind"), user=user, tenant=tenant, name=a.get("propagation.user.name"))
        return f"inbound {detail} -> {_outcome(event)}{_took(event)}"
    if event.kind == "refusal":
        where = _fields(host=a.get("server.address"))
        return f"refused {a.get('propagation.destination')}: {a.get('propagation.refusal')}" + (f" {where}" if where else "")
    if event.kind == "breaker":
        return f"breaker {a.get('server.address')}" + (f" tenant={tenant}" if tenant else "") + f" -> {a.get('propagation.breaker')}"
    return None


class TraceSink:
    """Prints :func:`format_event` lines (``lib`` label) to a stream or appends them to a file."""

    def __init__(self, out: TextIO | str, clock: Callable[[], float] = time.time) -> None:
        self.out = out
        self.clock = clock
        self._lock = threading.Lock()

    def begin(self, event: Event) -> Any:
        return None

    def end(self, event: Event, handle: Any) -> None:
        line = format_event(event)
        if line is None:
            return
        text = f"{stamp(self.clock())} lib     {line}\n"
        with self._lock:
            if isinstance(self.out, str):
                with open(self.out, "a", encoding="utf-8") as handle_:
                    handle_.write(text)
            else:
                self.out.write(text)
                self.out.flush()

    def point(self, event: Event) -> None:
        self.end(event, None)


def trace_sink_from_env(environ: Mapping[str, str]) -> TraceSink | None:
    """``PROPAGATION_TRACE``: ``stderr``/``1``, ``stdout``, or a file path; unset → ``None``."""
    where = (environ.get(TRACE_ENV) or "").strip()
    if not where or where.lower() in ("0", "off", "false", "no"):
        return None
    if where.lower() in ("1", "stderr", "true", "yes", "on"):
        return TraceSink(sys.stderr)
    if where.lower() == "stdout":
        return TraceSink(sys.stdout)
    return TraceSink(where)
