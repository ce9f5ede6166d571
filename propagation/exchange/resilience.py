"""Bounded time and circuit breakers for calls to IdPs and the Destination service (DESIGN §6
"Time"), written once as a flow (:mod:`propagation.exchange.flow`) that token requests and lookups share.

* **Deadline**: one operation — all its attempts and back-offs — ends by ``deadline`` seconds
  after it started, however slowly the peer drips its answer: every request carries the absolute
  deadline, which the executors enforce around the whole request (not per read).
* **Retries**: 5xx answers and connection errors/timeouts are retried with exponential back-off
  while time is left; a 4xx answer is final.
* **Breaker** per (host, tenant): after ``threshold`` consecutive failures (5xx, timeouts, refused
  connections, TLS failures — never 4xx) calls fail fast with :class:`CircuitOpenError` for
  ``cooldown`` seconds; then one probe goes through, and its outcome closes or re-opens it.
* **Cancellation is not an outcome**: a probe whose caller goes away (a cancelled coroutine, a
  ``KeyboardInterrupt``, a flow closed unfinished) gives its probe slot back without counting as
  a success or a failure, so the next caller probes — a breaker never stays open for good.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .._log import logger
from ..errors import TokenExchangeError
from ..events.instrument import breaker_changed
from .flow import Answer, Flow, HttpCall, Sleep, TransportFailure

__all__ = ["Breakers", "CircuitOpenError", "resilient_flow"]


class CircuitOpenError(TokenExchangeError):
    """A peer failed too often: nothing was sent; try again after the cool-down."""


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Breakers:
    """Circuit breakers by key (host, tenant). ``threshold <= 0`` turns them off."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self._states: dict[Any, _State] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Breakers(threshold={self.threshold}, cooldown={self.cooldown}, open={self.open_keys()!r})"

    def open_keys(self) -> list[Any]:
        with self._lock:
            return [k for k, s in self._states.items() if s.opened_at is not None]

    def before(self, key: Any, what: str) -> bool:
        """Raise :class:`CircuitOpenError` while open; after the cool-down let one probe through.
        ``True`` when this caller is that probe (it must end in :meth:`success`, :meth:`failure`
        or :meth:`release`)."""
        if self.threshold <= 0:
            return False
        with self._lock:
            state = self._states.get(key)
            if state is None or state.opened_at is None:
                return False
            waited = self.clock() - state.opened_at
            if waited >= self.cooldown and not state.probing:
                state.probing = True  # this caller is the probe
                logger.info("breaker %s: cool-down over, letting one probe through", _name(key))
                breaker_changed(key, "half-open")
                return True
            remaining = max(self.cooldown - waited, 0.0)
        raise CircuitOpenError(
            f"{what}: not sent — {_name(key)} failed {self.threshold} times in a row; failing fast for "
            f"{remaining:.0f} s more (circuit breaker open)."
        )

    def release(self, key: Any) -> None:
        """The probe's caller went away (cancelled): neither success nor failure — the slot is
        free again and the next caller probes."""
        with self._lock:
            state = self._states.get(key)
            if state is not None and state.probing:
                state.probing = False
                logger.info("breaker %s: the probe was cancelled; the next call probes", _name(key))

    def success(self, key: Any) -> None:
        with self._lock:
            state = self._states.pop(key, None)
        if state is not None and state.opened_at is not None:
            logger.info("breaker %s: closed again (the peer answered)", _name(key))
            breaker_changed(key, "closed")

    def failure(self, key: Any) -> None:
        if self.threshold <= 0:
            return
        with self._lock:
            state = self._states.setdefault(key, _State())
            state.failures += 1
            reopened = state.probing
            state.probing = False
            if state.opened_at is None and state.failures < self.threshold:
                return
            state.opened_at = self.clock()
        breaker_changed(key, "open")
        logger.warning("breaker %s: %s; failing fast for %.0f s", _name(key),
                       "probe failed, open again" if reopened else f"open after {self.threshold} consecutive failures",
                       self.cooldown)


def _name(key: Any) -> str:
    host, tenant = key if isinstance(key, tuple) and len(key) == 2 else (key, None)
    return f"{host}" + (f" (tenant {tenant})" if tenant else "")


def resilient_flow(
    call: HttpCall, *, retries: int, backoff: float, deadline: float, breakers: Breakers, key: Any, what: str,
    clock: Callable[[], float] = time.monotonic,
) -> Flow[tuple[Answer, int]]:
    """Send ``call`` under the policy above → ``(answer, attempts)``: the final :class:`Answer`
    (a 2xx–4xx, or the last 5xx) and how many requests it took. Raises :class:`TransportFailure` (``attempts`` set) when no answer came, and
    :class:`CircuitOpenError` without sending when the breaker is open."""
    ends = clock() + deadline
    attempts = retries + 1
    for attempt in range(attempts):
        probe = breakers.before(key, what)
        if clock() >= ends:
            breakers.failure(key)
            raise _exhausted(TransportFailure("timeout", "DeadlineExceeded"), attempt)
        try:
            answer: Answer = yield dataclasses.replace(call, deadline=ends)
        except TransportFailure as exc:
            breakers.failure(key)
            if exc.kind in ("connect", "timeout") and attempt + 1 < attempts:
                pause = backoff * (2**attempt)
                if clock() + pause < ends:
                    logger.debug("%s failed (%s): retrying in %.3fs", what, exc.cause, pause)
                    yield Sleep(pause)
                    continue
            raise _exhausted(exc, attempt + 1) from exc.__cause__
        except BaseException:
            # Not the peer's doing (the caller was cancelled, or the flow closed unfinished):
            # no outcome to count, but a probe's slot must be given back.
            if probe:
                breakers.release(key)
            raise
        if answer.status >= 500:
            breakers.failure(key)
            pause = backoff * (2**attempt)
            if attempt + 1 < attempts and clock() + pause < ends:
                logger.debug("%s answered %d: retrying in %.3fs", what, answer.status, pause)
                yield Sleep(pause)
                continue
            return answer, attempt + 1
        breakers.success(key)
        return answer, attempt + 1
    raise AssertionError("unreachable")  # pragma: no cover


def _exhausted(exc: TransportFailure, attempts: int) -> TransportFailure:
    failure = TransportFailure(exc.kind, exc.cause)
    failure.attempts = attempts  # type: ignore[attr-defined]
    return failure
