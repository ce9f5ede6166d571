"""``Propagator``: the one engine object. It owns the bindings, the inbound validator, the
token caches and the destination resolvers; the module-level functions of
``propagation`` use a default one built lazily from the environment.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

from .bindings import Bindings
from .tokens import UserToken

__all__ = ["Propagator", "default_propagator", "set_default_propagator"]


class Propagator:
    """Engine: validate inbound tokens, resolve destinations, exchange and cache tokens."""

    def __init__(
        self,
        *,
        bindings: Bindings | None = None,
        environ: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.environ: Mapping[str, str] = dict(os.environ if environ is None else environ)
        self.cwd = cwd
        self.bindings = bindings if bindings is not None else Bindings.from_env(self.environ, cwd=cwd)
        self._validator: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, cwd: str | os.PathLike[str] | None = None) -> "Propagator":
        return cls(environ=environ, cwd=cwd)

    # -- inbound ------------------------------------------------------------------
    @property
    def validator(self) -> Any:
        """The inbound :class:`~propagation.inbound.TokenValidator` (built on first use)."""
        if self._validator is None:
            from .inbound import TokenValidator

            with self._lock:
                if self._validator is None:
                    self._validator = TokenValidator.from_bindings(self.bindings)
        return self._validator

    def validate(self, raw: str) -> UserToken:
        """Validate an inbound JWT (signature, issuer, expiry, audience) → :class:`UserToken`.

        Raises :class:`~propagation.errors.InvalidTokenError`.
        """
        return self.validator.validate(raw)


_default: Propagator | None = None
_default_lock = threading.Lock()


def default_propagator() -> Propagator:
    """The process-wide engine, built from ``os.environ`` on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Propagator.from_env()
    return _default


def set_default_propagator(propagator: Propagator | None) -> None:
    """Replace (or with ``None`` reset) the process-wide engine — for tests and app factories."""
    global _default
    with _default_lock:
        _default = propagator
