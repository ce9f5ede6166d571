"""Warm-up: import ahead of time what the first outbound connection imports lazily.

Why: httpx, httpcore and anyio import much of their machinery on first use — httpcore its
connection pool, HTTP/1.1 state machine and backends, anyio (4.x imports lazily) its asyncio
backend, socket and TLS streams, task groups. In an async app that happens *inside the event
loop* on the first requests: tens of milliseconds of import work during which no other request
is served (bench (f) saw 40 ms of loop lag from it). Importing it at engine or client creation
— app start-up — takes that out of the measured window. ``sniffio`` is imported too: httpcore
asks it for the running async library on every lock it sets up, and a *failed* import is not
cached by Python, so without it each call would search ``sys.path`` again.

The default TLS context (the CA bundle: ~20 ms to load) is built too; the engine's token
client and pools share it. Nothing here opens a connection; a module that is not installed (an
optional backend) is skipped.
"""

from __future__ import annotations

import importlib

__all__ = ["warm_up", "MODULES"]

#: What a first sync or async request through the engine's clients imports (measured with a
#: meta-path recorder on httpx 0.28/0.29, httpcore 1.0, anyio 4.x).
MODULES: tuple[str, ...] = (
    "sniffio",
    "h11",
    "httpcore",
    "httpcore._sync.connection_pool",
    "httpcore._async.connection_pool",
    "httpcore._backends.sync",
    "httpcore._backends.anyio",
    "httpcore._backends.auto",
    "anyio",
    "anyio.abc",
    "anyio.lowlevel",
    "anyio.to_thread",
    "anyio.streams.tls",
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "anyio._core._sockets",
    "anyio._core._synchronization",
    "anyio._core._tasks",
    "anyio._backends._asyncio",
    "concurrent.futures.thread",
    "difflib",
    "propagation.destinations.env",
    "propagation.destinations.vocabulary",
)


def warm_up() -> list[str]:
    """Import :data:`MODULES` and build the default TLS context; returns the modules that are
    not installed (skipped)."""
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    from ..exchange.flow import ssl_context

    ssl_context(None)
    return missing
