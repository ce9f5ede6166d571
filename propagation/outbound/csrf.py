"""CSRF tokens for modifying OData calls (SAP Gateway / S/4HANA) and per-user cookie jars.

SAP Gateway refuses POST/PUT/PATCH/MERGE/DELETE without an ``X-CSRF-Token`` that was
fetched (``X-CSRF-Token: Fetch``) *by the same user in the same backend session*: the token
is bound to the session cookies (``SAP_SESSIONID_*``, ``sap-XSRF_*``) set by the fetch.

How it is done (:func:`csrf_steps`, one flow driven by the ``requests`` session and the
``httpx`` clients alike; tokens and cookie jars are the engine's, per destination and user, so
a session or client made per request fetches no new token before every write):

* Before the first modifying request to a service root, it fetches a token with ``HEAD`` on
  the root, falling back to ``GET`` when the ``HEAD`` answer carries none (as the SAP Cloud
  SDK does: ``HEAD`` is cheap, ``GET`` of the service document works on every Gateway).
  The fetch goes through the session, so it carries the same user's credentials and its
  cookies land in that user's jar. Redirects are not followed (a login page has no token).
* Tokens are cached per (destination, user fingerprint, service root) in the engine's bounded
  :class:`CsrfStore`, together with the cookie jar they were issued for: a token is never
  sent for another user, and never with cookies other than its own.
* ``403`` with ``X-CSRF-Token: Required`` drops the cached token, fetches again and retries
  once (not for a streamed body or file upload, which cannot be sent twice).
* A fetch that yields no token (a non-SAP backend) or fails (connection error) is
  remembered like a token; requests go without one.
* An application-set ``X-CSRF-Token`` (on the call or the session) is sent as is: no fetch,
  no retry. ``session(name, csrf=False)`` switches the whole mechanism off.

Security stance: the token value and cookies are never logged (log lines name the
destination, the service root and the user's fingerprint). Cookies are isolated per user by
:class:`CookieJars`: one jar per (destination, user fingerprint), so user A's backend session
never goes with user B's request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generator, Mapping
from urllib.parse import urlsplit, urlunsplit

from requests.cookies import RequestsCookieJar

from .._log import logger

__all__ = [
    "CsrfStore",
    "CookieJars",
    "Fetch",
    "Send",
    "csrf_steps",
    "service_root",
    "csrf_required",
    "MODIFYING_METHODS",
    "CSRF_HEADER",
]

CSRF_HEADER = "X-CSRF-Token"

#: Methods SAP Gateway protects with a CSRF token (``MERGE`` is OData V2's PATCH).
MODIFYING_METHODS = frozenset({"POST", "PUT", "PATCH", "MERGE", "DELETE"})

#: Header values that are protocol words, not tokens.
_NOT_A_TOKEN = frozenset({"fetch", "required", "unsafe"})

CsrfKey = tuple[str, "str | None", str]


def _find(segments: list[str], sequence: tuple[str, ...]) -> int:
    """Index just after the first occurrence of ``sequence`` (case-insensitive), or -1."""
    low = [s.lower() for s in segments]
    n = len(sequence)
    for i in range(len(low) - n + 1):
        if tuple(low[i : i + n]) == sequence:
            return i + n
    return -1


def service_root(url: str) -> str:
    """The OData service root of ``url`` (where a CSRF token is fetched), with a trailing ``/``.

    * V2 ``…/sap/opu/odata/<namespace>/<SERVICE>/…`` → up to ``<SERVICE>/``;
    * V4 ``…/sap/opu/odata4/<ns>/<group>/<repo>/<ns>/<service>/<version>/…`` → up to the
      (numeric) version segment;
    * anything else → the URL itself, without query and fragment.
    """
    parts = urlsplit(url)
    segments = parts.path.split("/")
    end = -1
    v2 = _find(segments, ("sap", "opu", "odata"))
    v4 = _find(segments, ("sap", "opu", "odata4"))
    if v2 >= 0 and len(segments) >= v2 + 2 and all(segments[v2 : v2 + 2]):
        end = v2 + 2
    elif v4 >= 0 and len(segments) >= v4 + 6 and all(segments[v4 : v4 + 6]) and segments[v4 + 5].isdigit():
        end = v4 + 6
    path = "/".join(segments[:end]) + "/" if end >= 0 else parts.path
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def has_header(headers: Mapping[str, Any] | None, name: str) -> bool:
    low = name.lower()
    return bool(headers) and any(str(h).lower() == low for h in headers)  # type: ignore[union-attr]


def _token_of(response: Any) -> str | None:
    value = (response.headers.get(CSRF_HEADER) or "").strip()
    return value if value and value.lower() not in _NOT_A_TOKEN else None


def csrf_required(response: Any) -> bool:
    """``403`` with ``X-CSRF-Token: Required``: the token was missing, stale or not ours
    (``requests`` and ``httpx`` responses alike)."""
    return response.status_code == 403 and (response.headers.get(CSRF_HEADER) or "").strip().lower() == "required"


class CookieJars:
    """The engine's cookie jars, one per (destination, user fingerprint), bounded (LRU).

    A backend session (``SAP_SESSIONID_*``) of user A never goes with user B's request, and a
    session or client made per request still finds the cookies its CSRF token belongs to.
    ``requests`` and ``httpx`` share the same jar (``httpx.Cookies(jar)`` wraps it).
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._jars: "OrderedDict[tuple[str, str | None], RequestsCookieJar]" = OrderedDict()
        self._lock = threading.Lock()

    def jar(self, destination: str, user: str | None) -> RequestsCookieJar:
        key = (destination, user)
        with self._lock:
            jar = self._jars.get(key)
            if jar is None:
                jar = self._jars[key] = RequestsCookieJar()
                while len(self._jars) > self.maxsize:
                    self._jars.popitem(last=False)
            else:
                self._jars.move_to_end(key)
            return jar

    def replace(self, destination: str, user: str | None, jar: Any) -> None:
        with self._lock:
            self._jars[(destination, user)] = jar
            while len(self._jars) > self.maxsize:
                self._jars.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._jars.clear()

    def __repr__(self) -> str:  # never the cookies
        return f"CookieJars(size={len(self._jars)})"


class CsrfStore:
    """The engine's CSRF tokens: (destination, user fingerprint, service root) → (token or
    ``None`` when the backend gave none, the cookie jar it belongs to); bounded, thread-safe."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._tokens: "OrderedDict[CsrfKey, tuple[str | None, Any]]" = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the tokens
        return f"CsrfStore(cached={len(self._tokens)})"

    def get(self, key: CsrfKey, jar: Any) -> tuple[str | None, Any] | None:
        with self._lock:
            entry = self._tokens.get(key)
            if entry is None:
                return None
            if entry[1] is not jar:  # the jar it was issued with is gone: the token is useless
                del self._tokens[key]
                return None
            self._tokens.move_to_end(key)
            return entry

    def put(self, key: CsrfKey, token: str | None, jar: Any) -> None:
        with self._lock:
            self._tokens[key] = (token, jar)
            self._tokens.move_to_end(key)
            while len(self._tokens) > self.maxsize:
                self._tokens.popitem(last=False)

    def invalidate(self, key: CsrfKey) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


@dataclass(frozen=True)
class Fetch:
    """Step: send ``method`` to the service root with ``X-CSRF-Token: Fetch`` (no redirects);
    the driver answers with the response, or ``None`` when the request failed."""

    method: str
    root: str


@dataclass(frozen=True)
class Send:
    """Step: send the modifying request itself, with ``token`` (if any); answer: the response.
    ``first`` is set for the resend after a ``403 Required``: the refused response, which the
    driver closes (and keeps in the new response's history)."""

    token: str | None
    first: Any = None


def csrf_steps(store: CsrfStore, key: CsrfKey, jar: Any, replayable: bool) -> Generator[Fetch | Send, Any, Any]:
    """The CSRF rules as a flow of :class:`Fetch` and :class:`Send` steps → the final response."""
    destination, user, root = key
    cached = store.get(key, jar)
    token = cached[0] if cached is not None else (yield from _fetch(store, key, jar))
    response = yield Send(token)
    if not csrf_required(response) or not replayable:
        return response
    logger.info(
        "destination=%s user=%s: CSRF token required for %s; fetching a new one and retrying once",
        destination, user, root,
    )
    store.invalidate(key)
    token = yield from _fetch(store, key, jar)
    return (yield Send(token, first=response))


def _fetch(store: CsrfStore, key: CsrfKey, jar: Any) -> Generator[Fetch, Any, str | None]:
    destination, user, root = key
    token: str | None = None
    for method in ("HEAD", "GET"):
        response = yield Fetch(method, root)
        if response is None:  # the write itself will tell the real story
            continue
        token = _token_of(response)
        if token is not None:
            break
    if token is None:
        logger.debug("destination=%s user=%s: no CSRF token from %s; modifying requests go without one",
                     destination, user, root)
    store.put(key, token, jar)  # the fetch stored its session cookies in ``jar``
    return token
