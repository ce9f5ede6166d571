"""JSON from peers, parsed within bounds (issue 17: an answer nesting 100,000 arrays raised a raw
``RecursionError``). The size is checked before parsing, the depth while parsing (the C decoder
stops at the interpreter's recursion limit, which is turned into a typed error) and after it
with an iterative walk; every failure is a :class:`~propagation.errors.PeerAnswerError`."""

from __future__ import annotations

import json
from typing import Any

from ..errors import PeerAnswerError

__all__ = ["loads", "MAX_BYTES", "MAX_DEPTH"]

#: The largest answer parsed (a Destination-service listing of many destinations fits easily).
MAX_BYTES = 8 * 1024 * 1024
#: The deepest nesting accepted (real answers nest a handful of levels).
MAX_DEPTH = 64


def loads(data: bytes | str, what: str = "answer", *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for peer data: :class:`PeerAnswerError` when it is too large, nested too
    deeply, not UTF-8 or not JSON."""
    if len(data) > max_bytes:
        raise PeerAnswerError(f"The {what} is {len(data)} bytes long: more than the {max_bytes}-byte limit; not parsed.")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text)
    except RecursionError:
        raise PeerAnswerError(f"The {what} nests deeper than {max_depth} levels; not used.") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError: say where, never what
        position = getattr(exc, "pos", None)
        at = f" (at character {position})" if isinstance(position, int) else ""
        raise PeerAnswerError(f"The {what} is not JSON{at}.") from None
    _check_depth(value, what, max_depth)
    return value


def _check_depth(value: Any, what: str, max_depth: int) -> None:
    """Iterative (no recursion of our own): every container's depth, once."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise PeerAnswerError(f"The {what} nests deeper than {max_depth} levels; not used.")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
