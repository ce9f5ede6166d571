"""Inbound: is the caller's bearer JWT genuine, unexpired and meant for this app — and what
does the app then know about the caller?

One job per module, in the order a request meets them:

* :mod:`.public_paths` — paths that skip authentication;
* :mod:`.gate` — the per-request decision of every integration (header grammar, cache hit,
  validation, IAS flows), framework-neutral;
* :mod:`.validator` — sap-xssec validation against the XSUAA / IAS binding, cached per token,
  with :mod:`.key_fetch` limiting the key fetches unknown keys cause;
* :mod:`.x5t` — certificate-bound tokens (``cnf.x5t#S256`` against the forwarded certificate);
* :mod:`.scopes` — ``require_scopes``: the app's XSUAA local scopes;
* :mod:`.options` and :mod:`.ias_flows` — the opt-in IAS→XSUAA and public-client flows;
* :mod:`.result` — :class:`Authenticated`, what the gate hands to the integration;
* :mod:`.responses` — the 401 / 403 answers (RFC 6750 §3).

The engine is reached through small protocols (``gate.GateEngine``,
``ias_flows.FlowsEngine``): this package never imports ``propagation.engine``.

Every name is importable from ``propagation.inbound`` as before the split.
"""

from __future__ import annotations

from .gate import InboundGate, bearer_token
from .key_fetch import KeyFetchLimiter
from .ias_flows import IasFlows
from .options import ENV_IAS_TO_XSUAA, ENV_PUBLIC_CLIENTS, ENV_XSUAA_TRUST_CLIENT_ID, IasFlowOptions
from .public_paths import PublicPaths
from .responses import forbidden, unauthorized
from .scopes import InsufficientScopeError, ScopeCheck
from .result import Authenticated
from .validator import ALLOWED_ALGORITHMS, KeysUnavailableError, TokenValidator

__all__ = [
    "TokenValidator",
    "KeysUnavailableError",
    "ALLOWED_ALGORITHMS",
    "Authenticated",
    "IasFlowOptions",
    "IasFlows",
    "ENV_IAS_TO_XSUAA",
    "ENV_XSUAA_TRUST_CLIENT_ID",
    "ENV_PUBLIC_CLIENTS",
    "InboundGate",
    "PublicPaths",
    "bearer_token",
    "unauthorized",
    "forbidden",
    "InsufficientScopeError",
    "ScopeCheck",
    "KeyFetchLimiter",
]
