"""Values derived from service bindings (a parsed Connectivity or Destination-service
configuration, a token validator), rebuilt when rotated bindings were swapped in.

``Bindings`` re-reads a rotated ``SERVICE_BINDING_ROOT`` on its own; whatever was parsed from
the old bindings must follow, or the new secret would never be used::

    self._connectivity = Derived(bindings, lambda b: connectivity_config(b.find(label="connectivity")))
    config = self._connectivity.get()   # parsed once per bindings generation

The builder gets a pinned snapshot, so one build sees one version of every binding.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .bindings import Bindings

__all__ = ["Derived"]

T = TypeVar("T")


class Derived(Generic[T]):
    """``build(snapshot)`` memoised per ``Bindings.generation``; safe to share across threads
    (two threads may build at once after a rotation; both results are equal, one is kept)."""

    def __init__(self, bindings: Bindings, build: Callable[[Bindings], T]) -> None:
        self._bindings = bindings
        self._build = build
        self._memo: tuple[int, T] | None = None

    def get(self) -> T:
        memo = self._memo
        if memo is not None and memo[0] == self._bindings.generation:  # the hot path: no snapshot object
            return memo[1]
        snapshot = self._bindings.snapshot()
        value = self._build(snapshot)  # an error is raised to the caller and nothing is memoised
        self._memo = (snapshot.generation, value)
        return value

    def __repr__(self) -> str:
        return f"Derived(generation={None if self._memo is None else self._memo[0]})"
