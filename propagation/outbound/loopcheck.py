"""Sync/async mix-ups caught where they happen (issue 20): a blocking call made on a running
event loop, and an ``async_client`` used from sync code.

* ``session()`` / ``client()`` / ``headers()`` inside ``async def`` block the event loop: every
  other request of that worker waits. :func:`check_blocking` warns (once per call site, a
  :class:`BlockingCallWarning`), raises :class:`~propagation.errors.BlockingCallError` or says
  nothing, as ``PROPAGATION_BLOCKING_CALLS`` (``warn`` | ``raise`` | ``ignore``) says.
* ``async_client(...).get()`` not awaited returns a :class:`Pending` coroutine that names the fix
  when it is read like a response, instead of "'coroutine' object has no attribute 'status_code'".
"""

from __future__ import annotations

import asyncio
import collections.abc
import sys
import warnings
from typing import Any, Generator, Mapping

from ..errors import BlockingCallError, ConfigurationError

__all__ = ["BLOCKING_ENV", "BlockingCallWarning", "check_blocking", "Pending"]

#: Environment variable: ``warn`` (default), ``raise`` or ``ignore``.
BLOCKING_ENV = "PROPAGATION_BLOCKING_CALLS"
_MODES = ("warn", "raise", "ignore")
_OWN_PACKAGES = ("propagation.", "requests.", "httpx.", "contextlib")


class BlockingCallWarning(RuntimeWarning):
    """A blocking call of ``propagation`` was made on a running event loop."""


def blocking_mode(environ: Mapping[str, str]) -> str:
    """The configured mode; :class:`ConfigurationError` for anything else."""
    mode = (environ.get(BLOCKING_ENV) or "warn").strip().lower()
    if mode not in _MODES:
        raise ConfigurationError(f"{BLOCKING_ENV} must be one of {', '.join(_MODES)} (got {mode[:20]!r}).")
    return mode


def check_blocking(what: str, instead: str, environ: Mapping[str, str]) -> None:
    """Warn or raise when called on a running event loop (see the module doc)."""
    if asyncio._get_running_loop() is None:  # the cheap check first: no loop, nothing to say
        return
    mode = blocking_mode(environ)
    if mode == "ignore":
        return
    message = (
        f"propagation: {what} blocks, and it was called on a running event loop (inside `async def`): "
        f"every other request of this worker waits meanwhile. Use {instead} instead "
        f"(or set {BLOCKING_ENV}=ignore)."
    )
    if mode == "raise":
        raise BlockingCallError(message)
    warnings.warn(message, BlockingCallWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """The stack level of the first frame outside this library, requests and httpx, so the
    warning points at the application's line (and "once per call site" means its line)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and (frame.f_globals.get("__name__", "") + ".").startswith(_OWN_PACKAGES):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


class Pending(collections.abc.Coroutine):  # type: ignore[type-arg]
    """The coroutine of an ``async_client`` call: awaited, it is the response; read like a
    response (``.status_code``, ``.json()``…) from sync code, it says to await it or use ``client()``."""

    __slots__ = ("_coro", "_verb")

    def __init__(self, coro: Any, verb: str) -> None:
        self._coro = coro
        self._verb = verb

    def send(self, value: Any) -> Any:
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        return self._coro.throw(*args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("cr_", "gi_", "__")):
            return getattr(self._coro, name)
        self._coro.close()  # never awaited now: no "coroutine was never awaited" noise on top
        raise AttributeError(
            f"async_client(...).{self._verb}() returns a coroutine, not a response (you read .{name}): "
            f"write `await client.{self._verb}(...)` inside `async def`, or use propagation.client(...) "
            f"(an httpx.Client) in sync code."
        )

    def __repr__(self) -> str:
        return f"<pending async_client {self._verb}() — await it>"
