"""``propagation.testing``: an emulated SAP BTP landscape for tests (issue 5).

* :class:`Landscape` (in :mod:`propagation.testing.landscape`) — the transport-free model:
  XSUAA, IAS, the Destination service, the Connectivity proxy with a Cloud Connector and an
  on-premise system, an Internet backend and a Cloud Integration runtime.
* :func:`emulate` — a context manager running it in-process (``responses`` + ``respx``),
  with the bindings in the environment; usable without pytest.
* pytest fixtures ``btp_landscape`` and ``btp_emulation`` (:mod:`propagation.testing.plugin`,
  registered through the ``pytest11`` entry point; opt-in, nothing autouse).

Names are imported lazily: the pytest plugin imports this package in every test run of
every project that has ``propagation`` installed, and must cost nothing there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._transport import Emulation, emulate
    from .landscape import (
        Call,
        EmulatedDestination,
        Exchange,
        Landscape,
        Origins,
        Records,
        Request,
        Response,
        Traffic,
    )

__all__ = [
    "Landscape",
    "Origins",
    "Request",
    "Response",
    "EmulatedDestination",
    "Exchange",
    "Call",
    "Traffic",
    "Records",
    "emulate",
    "Emulation",
]

_TRANSPORT = frozenset({"emulate", "Emulation"})


def __getattr__(name: str) -> Any:
    if name in _TRANSPORT:
        from . import _transport

        return getattr(_transport, name)
    if name in __all__:
        from . import landscape

        return getattr(landscape, name)
    raise AttributeError(f"module 'propagation.testing' has no attribute {name!r}")
