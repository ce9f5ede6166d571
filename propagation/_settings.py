"""Reading ``PROPAGATION_*`` switches: a misspelt value is refused, never read as "off"."""

from __future__ import annotations

from .errors import ConfigurationError

__all__ = ["env_flag"]


def env_flag(value: str | None, name: str, default: bool) -> bool:
    """``true``/``false`` (and ``1``/``0``, ``yes``/``no``, ``on``/``off``); unset or blank →
    ``default``; anything else → :class:`ConfigurationError` naming ``name``."""
    text = (value or "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, not {text[:20]!r}.")
