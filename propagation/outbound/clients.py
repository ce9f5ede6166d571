"""The ``httpx`` adapters: :class:`DestinationClient` (``httpx.Client``) and
:class:`AsyncDestinationClient` (``httpx.AsyncClient``), bound to one destination.

Same semantics as the ``requests`` session, from the same :class:`~propagation.outbound.plan.Plan`:
per request, the destination is resolved and the credentials are computed for the user and
tenant of that request (the async client awaits every exchange and lookup: nothing blocks the
event loop). One :class:`PlanAuth` — an ``httpx.Auth`` whose sync and async flows drive the same
generator — applies the plan, keeps the user's cookies, adds CSRF tokens, and on a 401 (407 at
the Connectivity proxy) drops the cached token, plans again and resends once. Connections come
from the engine's pools, routed per request by the plan's pool key.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator, Generator, Iterator, Mapping

import httpx

from .._log import logger
from ..context import as_user_token, current_token
from ..exchange.flow import Invalidate, run_async, run_sync
from ..tokens import UserToken
from .csrf import CSRF_HEADER, Fetch, Send, csrf_steps, service_root
from ..destinations.lookup import LookupOptions
from .deadline import deadline
from .loopcheck import Pending, check_blocking
from .plan import Engine, Plan, PoolKey, is_protected, origin, plan_flow
from ..events.instrument import note_csrf_fetch, note_reexchange, traced_call

__all__ = ["DestinationClient", "AsyncDestinationClient", "PlanAuth"]

PLAN = "propagation.plan"


class _Replan:
    """Step of :meth:`PlanAuth._flow`: drop the rejected token, plan again (sync or async)."""

    def __init__(self, plan: Plan, status: int) -> None:
        self.plan = plan
        self.status = status


def _timeout(value: Any) -> httpx.Timeout:
    if isinstance(value, tuple):
        return httpx.Timeout(value[1], connect=value[0])
    return httpx.Timeout(value)


def _apply(request: httpx.Request, plan: Plan, jar: Any) -> None:
    if "Authorization" in plan.headers or (plan.auth is not None and plan.auth.strategy != "none"):
        request.headers.pop("Authorization", None)
    request.headers.update(plan.headers)
    request.headers.pop("Cookie", None)
    httpx.Cookies(jar).set_cookie_header(request)


class PlanAuth(httpx.Auth):
    """Executes the plan on an ``httpx`` request (see the module doc)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self._flow(request)
        answer: Any = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration:
                return
            if isinstance(step, _Replan):
                answer = run_sync(self._replan(step.plan, _stale(step)), self.engine.oauth.io)
            else:
                answer = yield step

    async def async_auth_flow(self, request: httpx.Request) -> Any:
        flow = self._flow(request)
        answer: Any = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration:
                return
            if isinstance(step, _Replan):
                answer = await run_async(self._replan(step.plan, _stale(step)), self.engine.oauth.aio)
            else:
                answer = yield step

    def _replan(self, plan: Plan, stale: Any) -> Any:
        yield Invalidate(self.engine.cache, stale)
        return (yield from plan_flow(self.engine, self.name, plan.user, plan.method, plan.url, csrf=plan.csrf,
                                     lookup=plan.lookup))

    def _flow(self, request: httpx.Request) -> Generator[Any, Any, None]:
        """The rules, once: yields requests to send (→ responses) and :class:`_Replan` (→ a plan)."""
        plan: Plan | None = request.extensions.get(PLAN)
        for header in [h for h in request.headers if is_protected(h)]:
            logger.warning("dropping application-set header %s: it is owned by propagation", header)
            del request.headers[header]
        if plan is None or not plan.same_origin:
            if plan is not None:
                logger.warning(
                    "destination=%s: request to another origin is sent without the destination's credentials",
                    plan.destination.name,
                )
            yield request
            return
        jar = self.engine.cookie_jars.jar(self.name, plan.user_key)
        replayable = isinstance(request.stream, httpx.ByteStream)
        _apply(request, plan, jar)
        if plan.csrf and CSRF_HEADER not in request.headers:
            response = yield from self._with_csrf(request, plan, jar, replayable)
        else:
            response = yield request
            httpx.Cookies(jar).extract_cookies(response)
        outbound = plan.auth
        stale = {401: outbound.cache_key, 407: outbound.proxy_cache_key}.get(response.status_code) if outbound else None
        if stale is None or not replayable:
            return
        logger.info(
            "destination=%s answered %d: dropping cached %s token and retrying once",
            plan.destination.name, response.status_code, "proxy" if response.status_code == 407 else "destination",
        )
        note_reexchange(response.status_code)
        fresh: Plan = yield _Replan(plan, response.status_code)
        request.extensions = {**request.extensions, PLAN: fresh}
        _apply(request, fresh, jar)
        response = yield request
        httpx.Cookies(jar).extract_cookies(response)

    def _with_csrf(self, request: httpx.Request, plan: Plan, jar: Any, replayable: bool) -> Generator[Any, Any, httpx.Response]:
        key = (self.name, plan.user_key, service_root(str(request.url)))
        flow = csrf_steps(self.engine.csrf_tokens, key, jar, replayable)
        answer: Any = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if isinstance(step, Fetch):
                note_csrf_fetch()
                fetch = httpx.Request(step.method, step.root, params=plan.params, headers={CSRF_HEADER: "Fetch"},
                                      extensions=request.extensions)
                _apply(fetch, plan, jar)
                answer = yield fetch
            else:
                assert isinstance(step, Send)
                if step.token is not None:
                    request.headers[CSRF_HEADER] = step.token
                else:
                    request.headers.pop(CSRF_HEADER, None)
                request.headers.pop("Cookie", None)
                httpx.Cookies(jar).set_cookie_header(request)
                answer = yield request
            httpx.Cookies(jar).extract_cookies(answer)


def _stale(step: _Replan) -> Any:
    outbound = step.plan.auth
    assert outbound is not None
    return outbound.cache_key if step.status == 401 else outbound.proxy_cache_key


def _route(request: httpx.Request) -> tuple[PoolKey, tuple[str, str] | None, str | None]:
    plan: Plan | None = request.extensions.get(PLAN)
    target = origin(str(request.url))
    if plan is None or plan.pool is None or target != origin(plan.url) or not plan.same_origin:
        return PoolKey(*target), None, None
    return plan.pool, plan.client_cert, plan.trust


def _strip_elsewhere(request: httpx.Request) -> None:
    """Event hook on every hop: a redirect to another origin carries nothing of ours."""
    plan: Plan | None = request.extensions.get(PLAN)
    if plan is None or origin(str(request.url)) == origin(plan.destination.url):
        return
    ours = {h.lower() for h in plan.headers}
    for header in list(request.headers):
        low = header.lower()
        if low in ("authorization", "cookie") or is_protected(header) or low in ours:
            del request.headers[header]


class _Leased(httpx.SyncByteStream):
    """An answer's body that gives its pool's lease back once read or closed (so an evicted
    pool is closed only when its last request is done)."""

    def __init__(self, stream: Any, release: Any) -> None:
        self._stream = stream
        self._release: Any = release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class _AsyncLeased(httpx.AsyncByteStream):
    """:class:`_Leased` for the async transports."""

    def __init__(self, stream: Any, release: Any) -> None:
        self._stream = stream
        self._release: Any = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                await release()


class _Router(httpx.BaseTransport):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pools = self.engine.pools
        transport = pools.transport(*_route(request), lease=True)
        try:
            response = transport.handle_request(request)
        except BaseException:
            pools.release_transport(transport)
            raise
        response.stream = _Leased(response.stream, lambda: pools.release_transport(transport))
        return response


class _AsyncRouter(httpx.AsyncBaseTransport):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pools = self.engine.pools
        transport = await pools.async_transport(*_route(request), lease=True)
        try:
            response = await transport.handle_async_request(request)
        except BaseException:
            await pools.arelease_transport(transport)
            raise
        response.stream = _AsyncLeased(response.stream, lambda: pools.arelease_transport(transport))
        return response


class _Bound:
    """What both clients share: the destination name, the user, and the plan → kwargs step."""

    engine: Engine
    name: str
    csrf: bool
    _explicit_user: UserToken | None
    lookup: LookupOptions | None

    def _bind(self, engine: Engine, name: str, user_token: str | UserToken | None, csrf: bool,
              lookup: LookupOptions | None = None) -> None:
        self.engine = engine
        self.name = name
        self.csrf = csrf
        self.lookup = lookup  # Destination service options (selection, fragment, …)
        self._explicit_user = None if user_token is None else as_user_token(user_token)

    @property
    def user(self) -> UserToken | None:
        """The user this call is made as: the explicit ``user_token``, else the context's."""
        return self._explicit_user if self._explicit_user is not None else current_token()

    @property
    def cookies(self) -> httpx.Cookies:  # type: ignore[override]
        """Always empty: cookies are the engine's, per destination and user (see PlanAuth)."""
        return httpx.Cookies()

    @cookies.setter
    def cookies(self, value: Any) -> None:
        pass

    def _flow(self, method: str, url: Any) -> Any:
        return plan_flow(self.engine, self.name, self.user, method, str(url), csrf=self.csrf, lookup=self.lookup)

    def _kwargs(self, plan: Plan, kwargs: dict[str, Any]) -> dict[str, Any]:
        params = kwargs.get("params")
        if plan.params:
            if isinstance(params, Mapping):
                kwargs["params"] = {**plan.params, **params}
            elif params is None:
                kwargs["params"] = dict(plan.params)
        if kwargs.get("timeout", httpx.USE_CLIENT_DEFAULT) is httpx.USE_CLIENT_DEFAULT:
            kwargs["timeout"] = _timeout(plan.timeout)
        kwargs["extensions"] = {**(kwargs.get("extensions") or {}), PLAN: plan}
        kwargs["auth"] = self._plan_auth  # type: ignore[attr-defined]
        return kwargs


async def _astrip_elsewhere(request: httpx.Request) -> None:
    _strip_elsewhere(request)


def _client_options(kwargs: dict[str, Any], hook: Any) -> dict[str, Any]:
    for reserved in ("transport", "mounts", "base_url", "auth", "proxy", "cert", "verify"):
        if reserved in kwargs:
            raise TypeError(f"{reserved}= is decided per request by the destination; it cannot be set on the client")
    hooks = dict(kwargs.pop("event_hooks", None) or {})
    return {**kwargs, "event_hooks": {**hooks, "request": [hook, *hooks.get("request", [])]}}


class DestinationClient(_Bound, httpx.Client):
    """An ``httpx.Client`` bound to destination ``name``: made once, safe across users and tenants.

    Extra keyword arguments go to ``httpx.Client`` (``headers``, ``follow_redirects``,
    ``event_hooks``…); connection settings (``transport``, ``proxy``, ``verify``, ``cert``)
    come from the destination, per request.
    """

    def __init__(self, engine: Engine, name: str, *, user_token: str | UserToken | None = None, csrf: bool = True,
                 lookup: LookupOptions | None = None, **kwargs: Any) -> None:
        options = _client_options(kwargs, _strip_elsewhere)
        self._bind(engine, name, user_token, csrf, lookup)
        self._plan_auth = PlanAuth(engine, name)
        httpx.Client.__init__(self, transport=_Router(engine), trust_env=False, **options)

    def __repr__(self) -> str:
        return f"DestinationClient(name={self.name!r})"

    @traced_call
    def request(self, method: str, url: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        check_blocking("client(...)", "propagation.async_client(...) with await", self.engine.environ)
        plan = run_sync(self._flow(method, url), self.engine.oauth.io)
        with deadline(self.engine.call_deadline):
            return httpx.Client.request(self, method, plan.url, **self._kwargs(plan, kwargs))

    @contextmanager
    def stream(self, method: str, url: Any, **kwargs: Any) -> Iterator[httpx.Response]:  # type: ignore[override]
        check_blocking("client(...).stream()", "propagation.async_client(...).stream() with async with", self.engine.environ)
        plan = run_sync(self._flow(method, url), self.engine.oauth.io)
        with deadline(self.engine.call_deadline):  # the connection keeps it until the body is read or closed
            response_cm = httpx.Client.stream(self, method, plan.url, **self._kwargs(plan, kwargs))
            response = response_cm.__enter__()
        try:
            yield response
        finally:
            response_cm.__exit__(None, None, None)


class AsyncDestinationClient(_Bound, httpx.AsyncClient):
    """An ``httpx.AsyncClient`` bound to destination ``name``; every exchange, lookup and
    connectivity token is awaited. Made once, safe across users, tenants and coroutines."""

    def __init__(self, engine: Engine, name: str, *, user_token: str | UserToken | None = None, csrf: bool = True,
                 lookup: LookupOptions | None = None, **kwargs: Any) -> None:
        options = _client_options(kwargs, _astrip_elsewhere)
        self._bind(engine, name, user_token, csrf, lookup)
        self._plan_auth = PlanAuth(engine, name)
        httpx.AsyncClient.__init__(self, transport=_AsyncRouter(engine), trust_env=False, **options)

    def __repr__(self) -> str:
        return f"AsyncDestinationClient(name={self.name!r})"

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """``await client.request(...)`` → the response (a :class:`Pending` coroutine that names
        the fix when it is used like a response from sync code)."""
        return Pending(self._arequest(method, url, **kwargs), "request")

    @traced_call
    async def _arequest(self, method: str, url: Any, **kwargs: Any) -> httpx.Response:
        plan = await run_async(self._flow(method, url), self.engine.oauth.aio)
        with deadline(self.engine.call_deadline):
            return await httpx.AsyncClient.request(self, method, plan.url, **self._kwargs(plan, kwargs))

    def get(self, url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return Pending(self._arequest("GET", url, **kwargs), "get")

    def head(self, url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return Pending(self._arequest("HEAD", url, **kwargs), "head")

    def options(self, url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return Pending(self._arequest("OPTIONS", url, **kwargs), "options")

    def delete(self, url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return Pending(self._arequest("DELETE", url, **kwargs), "delete")

    def post(self, url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return Pending(self._arequest("POST", url, **kwargs), "post")

    def put(self, url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return Pending(self._arequest("PUT", url, **kwargs), "put")

    def patch(self, url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return Pending(self._arequest("PATCH", url, **kwargs), "patch")

    def __enter__(self) -> Any:
        raise TypeError(
            "propagation.async_client(...) is an httpx.AsyncClient: use `async with` inside `async def`, "
            "or `with propagation.client(...)` (an httpx.Client) in sync code."
        )

    def __exit__(self, *exc: Any) -> None:  # pragma: no cover - __enter__ always raises
        return None

    @asynccontextmanager
    async def stream(self, method: str, url: Any, **kwargs: Any) -> AsyncIterator[httpx.Response]:  # type: ignore[override]
        plan = await run_async(self._flow(method, url), self.engine.oauth.aio)
        with deadline(self.engine.call_deadline):  # the connection keeps it until the body is read or closed
            response_cm = httpx.AsyncClient.stream(self, method, plan.url, **self._kwargs(plan, kwargs))
            response = await response_cm.__aenter__()
        try:
            yield response
        finally:
            await response_cm.__aexit__(None, None, None)
