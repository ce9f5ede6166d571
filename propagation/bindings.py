"""Service bindings: ``VCAP_SERVICES`` (Cloud Foundry, read with ``cfenv``), Kubernetes /
Kyma bindings under ``SERVICE_BINDING_ROOT`` (a folder per binding, a file per credential
key), and ``default-env.json`` in the working directory for local runs.

INTERFACE (fixed; implementation by the bindings owner).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Binding", "Bindings"]


@dataclass(frozen=True, repr=False)
class Binding:
    """One bound service instance. ``repr`` never shows credentials."""

    name: str  # instance name
    label: str  # service offering: xsuaa, identity, destination, connectivity, it-rt, ...
    credentials: Mapping[str, Any] = field(default_factory=dict)
    plan: str | None = None
    tags: tuple[str, ...] = ()
    source: str = ""  # "VCAP_SERVICES", "SERVICE_BINDING_ROOT (/bindings/xsuaa)", "default-env.json (/app/default-env.json)"

    def __repr__(self) -> str:
        return f"Binding(name={self.name!r}, label={self.label!r}, plan={self.plan!r}, source={self.source!r})"
