"""The emulated SAP BTP landscape as real TLS servers on loopback (issue 5).

``python -m propagation.sandbox`` runs it (see :mod:`propagation.sandbox.cli`);
:class:`Sandbox` starts it in-process. The protocol model is
``propagation.testing.landscape``; this package is only the transport: servers, the
Connectivity proxy, a throw-away CA, the CLI and the demo. Needs the ``sandbox`` extra.
"""

from __future__ import annotations

from .pki import Pki
from .runtime import DEFAULT_DESTINATIONS, STATE_ENV, Sandbox

__all__ = ["Sandbox", "Pki", "DEFAULT_DESTINATIONS", "STATE_ENV"]
