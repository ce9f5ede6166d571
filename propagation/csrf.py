"""CSRF tokens for modifying OData calls (SAP Gateway / S/4HANA) and per-user cookie jars.

SAP Gateway refuses POST/PUT/PATCH/MERGE/DELETE without an ``X-CSRF-Token`` that was
fetched (``X-CSRF-Token: Fetch``) *by the same user in the same backend session*: the token
is bound to the session cookies (``SAP_SESSIONID_*``, ``sap-XSRF_*``) set by the fetch.

How :class:`CsrfHandler` does it, per :class:`~propagation.http.DestinationSession`:

* Before the first modifying request to a service root, it fetches a token with ``HEAD`` on
  the root, falling back to ``GET`` when the ``HEAD`` answer carries none (as the SAP Cloud
  SDK does: ``HEAD`` is cheap, ``GET`` of the service document works on every Gateway).
  The fetch goes through the session, so it carries the same user's credentials and its
  cookies land in that user's jar. Redirects are not followed (a login page has no token).
* Tokens are cached per (destination, user fingerprint, service root) in a small bounded
  dict on the session, together with the cookie jar they were issued for: a token is never
  sent for another user, and never with cookies other than its own.
* ``403`` with ``X-CSRF-Token: Required`` drops the cached token, fetches again and retries
  once (not for a streamed body or file upload, which cannot be sent twice).
* A fetch that yields no token (a non-SAP backend) or fails (connection error) is
  remembered for the session; requests go without one.
* An application-set ``X-CSRF-Token`` (on the call or the session) is sent as is: no fetch,
  no retry. ``session(name, csrf=False)`` switches the whole mechanism off.

Security stance: the token value and cookies are never logged (log lines name the
destination, the service root and the user's fingerprint). Cookies are isolated per user by
:class:`UserCookieJars`: a session used for two users through the request context keeps one
jar per user fingerprint, so user A's backend session never goes with user B's request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Mapping, MutableMapping
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.cookies import RequestsCookieJar

from ._log import logger

if TYPE_CHECKING:
    from .http import DestinationSession

__all__ = ["CsrfHandler", "UserCookieJars", "service_root", "csrf_required", "MODIFYING_METHODS", "CSRF_HEADER"]

CSRF_HEADER = "X-CSRF-Token"

#: Methods SAP Gateway protects with a CSRF token (``MERGE`` is OData V2's PATCH).
MODIFYING_METHODS = frozenset({"POST", "PUT", "PATCH", "MERGE", "DELETE"})

#: Header values that are protocol words, not tokens.
_NOT_A_TOKEN = frozenset({"fetch", "required", "unsafe"})

Send = Callable[[dict[str, Any]], requests.Response]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


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


def _has_header(headers: Mapping[str, Any] | None, name: str) -> bool:
    low = name.lower()
    return bool(headers) and any(str(h).lower() == low for h in headers)  # type: ignore[union-attr]


def _token_of(response: requests.Response) -> str | None:
    value = (response.headers.get(CSRF_HEADER) or "").strip()
    return value if value and value.lower() not in _NOT_A_TOKEN else None


def csrf_required(response: requests.Response) -> bool:
    """``403`` with ``X-CSRF-Token: Required``: the token was missing, stale or not ours."""
    return response.status_code == 403 and (response.headers.get(CSRF_HEADER) or "").strip().lower() == "required"


def _replayable(kwargs: Mapping[str, Any]) -> bool:
    data = kwargs.get("data")
    if kwargs.get("files"):
        return False
    return data is None or isinstance(data, (bytes, str, Mapping, list, tuple))


def _user_key(session: Any) -> str | None:
    try:
        user = session.user
    except AttributeError:  # during requests.Session.__init__, before the user is known
        return None
    return user.fingerprint if user is not None else None


class UserCookieJars:
    """Descriptor for ``Session.cookies``: one jar per user fingerprint (bounded, LRU).

    ``requests`` reads and writes ``self.cookies`` when it prepares a request, stores a
    response's cookies and follows redirects; all of these now see the jar of the user the
    request is made as. Assigning ``session.cookies`` replaces the current user's jar only.
    """

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize

    def _jars(self, obj: Any) -> "OrderedDict[str | None, RequestsCookieJar]":
        jars = obj.__dict__.get("_propagation_cookie_jars")
        if jars is None:
            jars = obj.__dict__.setdefault("_propagation_cookie_jars", OrderedDict())
        return jars

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        jars, key = self._jars(obj), _user_key(obj)
        jar = jars.get(key)
        if jar is None:
            jar = jars[key] = RequestsCookieJar()
            while len(jars) > self.maxsize:
                jars.popitem(last=False)
        else:
            jars.move_to_end(key)
        return jar

    def __set__(self, obj: Any, jar: Any) -> None:
        jars = self._jars(obj)
        jars[_user_key(obj)] = jar
        while len(jars) > self.maxsize:
            jars.popitem(last=False)


class CsrfHandler:
    """Fetches, caches, sends and refreshes CSRF tokens for one :class:`DestinationSession`."""

    def __init__(self, session: "DestinationSession", maxsize: int = 64) -> None:
        self.session = session
        self.maxsize = maxsize
        # key -> (token or None when the backend gave none, the cookie jar it belongs to)
        self._tokens: "OrderedDict[tuple[str, str | None, str], tuple[str | None, Any]]" = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the tokens
        return f"CsrfHandler(destination={self.session.destination.name!r}, cached={len(self._tokens)})"

    def request(self, method: str, url: str, kwargs: dict[str, Any], send: Send) -> requests.Response:
        """Send ``method url`` via ``send(kwargs)``, adding a CSRF token where one is needed."""
        if (
            method.upper() not in MODIFYING_METHODS
            or _origin(url) != _origin(self.session.destination.url)
            or _has_header(kwargs.get("headers"), CSRF_HEADER)
            or _has_header(self.session.headers, CSRF_HEADER)
        ):
            return send(kwargs)
        root = service_root(url)
        user = _user_key(self.session)
        key = (self.session.destination.name, user, root)
        cached = self._get(key)
        token = cached[0] if cached is not None else self._fetch(key, root, user)
        response = send(self._with_token(kwargs, token))
        if not csrf_required(response) or not _replayable(kwargs):
            return response
        logger.info(
            "destination=%s user=%s: CSRF token required for %s; fetching a new one and retrying once",
            self.session.destination.name, user, root,
        )
        self.invalidate(key)
        response.content  # consume so the connection can be reused
        response.close()
        token = self._fetch(key, root, user)
        retry = send(self._with_token(kwargs, token))
        retry.history.insert(0, response)
        return retry

    def invalidate(self, key: tuple[str, str | None, str]) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()

    # -- internals -------------------------------------------------------------------
    def _get(self, key: tuple[str, str | None, str]) -> tuple[str | None, Any] | None:
        jar = self.session.cookies
        with self._lock:
            entry = self._tokens.get(key)
            if entry is None:
                return None
            if entry[1] is not jar:  # the jar it was issued with is gone: the token is useless
                del self._tokens[key]
                return None
            self._tokens.move_to_end(key)
            return entry

    def _fetch(self, key: tuple[str, str | None, str], root: str, user: str | None) -> str | None:
        token: str | None = None
        for method in ("HEAD", "GET"):
            try:
                response = self.session.request(method, root, headers={CSRF_HEADER: "Fetch"}, allow_redirects=False)
            except requests.RequestException as exc:  # the write itself will tell the real story
                logger.debug("destination=%s: CSRF fetch %s %s failed: %s", self.session.destination.name,
                             method, root, type(exc).__name__)
                continue
            response.close()
            token = _token_of(response)
            if token is not None:
                break
        if token is None:
            logger.debug(
                "destination=%s user=%s: no CSRF token from %s; modifying requests go without one",
                self.session.destination.name, user, root,
            )
        jar = self.session.cookies  # the fetch stored its session cookies here
        with self._lock:
            self._tokens[key] = (token, jar)
            self._tokens.move_to_end(key)
            while len(self._tokens) > self.maxsize:
                self._tokens.popitem(last=False)
        return token

    @staticmethod
    def _with_token(kwargs: dict[str, Any], token: str | None) -> dict[str, Any]:
        if token is None:
            return kwargs
        headers: MutableMapping[str, Any] = dict(kwargs.get("headers") or {})
        headers[CSRF_HEADER] = token
        return {**kwargs, "headers": headers}
