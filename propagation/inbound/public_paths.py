"""Public paths: the requests that skip authentication (health checks, static assets)."""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import ConfigurationError

__all__ = ["PublicPaths"]

_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


class PublicPaths:
    """Paths that skip authentication (health checks, static assets).

    An entry is an exact path (``/health``), or a prefix when it ends with ``/``
    (``/static/`` matches ``/static/app.js``, not ``/static``) or with ``*`` (``/health*``
    matches ``/health``, ``/healthz`` and ``/health/live``). A path containing ``.`` or
    ``..`` segments is never public, so ``/static/../admin`` cannot slip through a prefix.
    """

    def __init__(self, paths: Iterable[str] = ()) -> None:
        if isinstance(paths, str):
            paths = [paths]
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(f"Public path {path!r} must be a string starting with '/'.")
            if path.endswith("*"):
                prefixes.append(path[:-1])
            elif path.endswith("/"):
                prefixes.append(path)
            else:
                exact.add(path)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)

    def __contains__(self, path: object) -> bool:
        if not (self.exact or self.prefixes) or not isinstance(path, str):
            return False
        path = path or "/"
        if _DOT_SEGMENT.search(path):
            return False
        return path in self.exact or any(path.startswith(p) for p in self.prefixes)

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def __repr__(self) -> str:
        return f"PublicPaths({sorted(self.exact) + [p + '*' for p in self.prefixes]!r})"

