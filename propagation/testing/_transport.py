"""In-process transport of the emulated landscape: ``requests`` (via ``responses``) and
``httpx`` (via ``respx``, for sap-xssec's key fetches) are routed to
:meth:`Landscape.handle`; everything else passes through untouched (no network blocking
is added: a Flask test client, a local server or a real host behave as without us).

Imported only when a fixture or :func:`emulate` is used, so that merely having
``propagation`` installed costs a pytest run nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, MutableMapping

import httpx
import requests
import responses
import respx
from requests.utils import select_proxy

from ..engine import set_default_propagator
from .landscape import Landscape
from .wire import Origins, Request, _origin

__all__ = ["Emulation", "emulate", "ENV_KEYS_CLEARED"]

#: Environment variables removed while emulating: other binding sources, and the library's
#: own settings (a Redis cache URL, a connectivity mode) that would change what is tested.
ENV_KEYS_CLEARED = ("SERVICE_BINDING_ROOT",)
_ENV_PREFIX_CLEARED = "PROPAGATION_"
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "MERGE")


@dataclass
class Emulation:
    """A running in-process emulation: the model and the two mocks it is wired into.

    Register routes of your own on ``responses`` / ``respx`` (a second ``responses`` mock
    started inside this one would bypass the landscape).
    """

    landscape: Landscape
    responses: responses.RequestsMock
    respx: respx.MockRouter

    def __repr__(self) -> str:
        return f"Emulation({self.landscape!r})"


class _Environment:
    """Sets the landscape's variables and restores every touched key on close."""

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        self.environ = environ
        self._saved: dict[str, str | None] = {}

    def _save(self, key: str) -> None:
        if key not in self._saved:
            self._saved[key] = self.environ.get(key)

    def set(self, key: str, value: str) -> None:
        self._save(key)
        self.environ[key] = value

    def unset(self, key: str) -> None:
        self._save(key)
        self.environ.pop(key, None)

    def restore(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                self.environ.pop(key, None)
            else:
                self.environ[key] = value
        self._saved.clear()


def _via_proxy(landscape: Landscape, url: str, proxies: Any) -> bool:
    proxy = select_proxy(url, proxies) if isinstance(proxies, dict) and proxies else None
    return bool(proxy) and _origin(str(proxy)) == _origin(landscape.origins.proxy_url)


def _body(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if hasattr(body, "read"):
        data = body.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return b"".join(chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk) for chunk in body)


@contextlib.contextmanager
def emulate(
    *destinations: str,
    landscape: Landscape | None = None,
    origins: Origins | None = None,
    environ: MutableMapping[str, str] | None = None,
    **options: Any,
) -> Iterator[Emulation]:
    """Run an emulated BTP landscape in this process (usable without pytest).

    Declares ``destinations`` (one line each, see :meth:`Landscape.destination`), puts
    ``VCAP_SERVICES`` and ``destinations`` into ``environ`` (default ``os.environ``; unsets
    ``SERVICE_BINDING_ROOT`` and ``PROPAGATION_*``), resets the default engine of
    ``propagation`` (also after each later ``landscape.destination(...)``, and on exit), and
    routes ``requests`` and ``httpx`` calls to the landscape's hosts into it. On exit every
    variable is restored. ``options`` go to :class:`Landscape` (``tenants=``, ``ttl=`` …).
    """
    if landscape is not None and (origins is not None or options):
        raise TypeError("emulate(): pass either a landscape or options to build one, not both")
    land = landscape if landscape is not None else Landscape(origins, **options)
    env = _Environment(os.environ if environ is None else environ)

    def apply(current: Landscape) -> None:
        for key, value in current.environ().items():
            env.set(key, value)
        set_default_propagator(None)  # the next module-level call reads the new environment

    for key in list(env.environ):
        if key in ENV_KEYS_CLEARED or key.startswith(_ENV_PREFIX_CLEARED):
            env.unset(key)
    for line in destinations:
        land.destination(line)
    apply(land)
    unsubscribe = land.on_change(apply)

    onprem = _origin(land.origins.onprem)

    def ours(request: requests.PreparedRequest) -> tuple[bool, str]:
        url = request.url or ""
        proxies = getattr(request, "req_kwargs", {}).get("proxies")
        if land.owns(url) or _via_proxy(land, url, proxies):
            return True, ""
        return False, "not a host of the emulated landscape"

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        url = request.url or ""
        via = _via_proxy(land, url, getattr(request, "req_kwargs", {}).get("proxies"))
        if not via and _origin(url) == onprem:
            # A Cloud Connector virtual host has no DNS entry: only the proxy reaches it.
            raise requests.exceptions.ConnectionError(
                f"{_origin(url)} does not resolve: on-premise virtual hosts are reachable only through the "
                f"Connectivity proxy ({land.origins.proxy_url})",
                request=request,
            )
        result = land.handle(Request(request.method or "GET", url, dict(request.headers), _body(request.body), via))
        return result.status, dict(result.headers), result.body

    def answer_httpx(request: httpx.Request) -> httpx.Response | httpx.Request:
        url = str(request.url)
        if not land.owns(url):
            return request  # pass through
        result = land.handle(Request(request.method, url, dict(request.headers), request.read()))
        return httpx.Response(result.status, headers=result.headers, content=result.body)

    mock = responses.RequestsMock(assert_all_requests_are_fired=False)
    for method in _METHODS:
        mock.add_callback(method, re.compile(r".*"), callback=answer, content_type=None, match=[ours])
    mock.add_passthru(re.compile(r".*"))
    router = respx.mock(assert_all_called=False, assert_all_mocked=False)
    router.route(name="btp-landscape").mock(side_effect=answer_httpx)

    set_default_propagator(None)
    try:
        with mock, router:
            yield Emulation(land, mock, router)
    finally:
        unsubscribe()
        env.restore()
        set_default_propagator(None)
