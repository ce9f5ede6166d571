"""MkDocs hook: the docstrings use Sphinx roles (:func:`session`, :class:`~propagation.X`), which
mkdocstrings leaves as text; show them as plain code, ``~a.b.C`` as ``C`` (Sphinx's meaning)."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):(?=<code>)")
_TILDE = re.compile(r"<code>~([\w.]+)</code>")


def on_page_content(html: str, **_: Any) -> str:
    html = _ROLE.sub("", html)
    return _TILDE.sub(lambda m: f"<code>{m[1].rsplit('.', 1)[-1]}</code>", html)
