"""The ``requests`` adapter: :class:`DestinationSession`, a ``requests.Session`` bound to one
destination, executing a :class:`~propagation.outbound.plan.Plan` per request.

Nothing is decided when the session is made: the destination is resolved, and the
credentials computed, per request, for the user and tenant of that request — so a session
made once (module level) is safe across users and tenants. Connections come from the
engine's pools, cookies and CSRF tokens from the engine's stores (per destination and user).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any, Mapping

import requests
from requests.auth import AuthBase
from requests.hooks import default_hooks
from requests.models import DEFAULT_REDIRECT_LIMIT
from requests.utils import default_headers

from .._log import logger
from ..context import as_user_token, current_token
from ..destinations.model import Destination
from ..exchange.flow import run_sync
from ..tokens import UserToken
from .csrf import CSRF_HEADER, Fetch, Send, csrf_steps, has_header, service_root
from ..destinations.lookup import LookupOptions
from .deadline import DEADLINE
from .loopcheck import check_blocking
from .plan import Engine, Plan, is_protected, origin, plan_flow
from ..events.instrument import note_csrf_fetch, note_reexchange, traced_call

__all__ = ["DestinationSession", "PlanAuth"]

#: The plan of the request being sent by this thread/task (for ``get_adapter``).
_active: ContextVar[Plan | None] = ContextVar("propagation.active_plan", default=None)


class PlanAuth(AuthBase):
    """Applies a plan's headers to the prepared request (only at the destination's origin),
    drops ``Proxy-Authorization``/``SAP-Connectivity-*`` set by application code, and on a 401
    (407 from the Connectivity proxy) drops the cached token, plans again and resends once —
    like ``HTTPDigestAuth.handle_401``."""

    def __init__(self, session: "DestinationSession", plan: Plan) -> None:
        self.session = session
        self.plan = plan

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        for header in [h for h in request.headers if is_protected(h)]:
            logger.warning("dropping application-set header %s: it is owned by propagation", header)
            del request.headers[header]
        if not self.plan.same_origin or origin(request.url or "") != origin(self.plan.destination.url):
            logger.warning(
                "destination=%s: request to another origin is sent without the destination's credentials",
                self.plan.destination.name,
            )
            return request
        _apply(request, self.plan)
        request.register_hook("response", self._handle_401)  # type: ignore[arg-type]
        return request

    def _handle_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        outbound = self.plan.auth
        stale = None
        if outbound is not None:
            stale = {401: outbound.cache_key, 407: outbound.proxy_cache_key}.get(response.status_code)
        if (
            stale is None
            or getattr(request, "_propagation_retried", False)
            or origin(request.url or "") != origin(self.plan.destination.url)
            or (request.body is not None and not isinstance(request.body, (bytes, str)))  # a stream is sent once
        ):
            return response
        logger.info(
            "destination=%s answered %d: dropping cached %s token and retrying once",
            self.plan.destination.name,
            response.status_code,
            "proxy" if response.status_code == 407 else "destination",
        )
        note_reexchange(response.status_code)
        self.session.propagator.cache.invalidate(stale)
        response.content  # consume so the connection can be reused
        response.close()
        fresh = self.session.plan(self.plan.method, self.plan.url, user=self.plan.user)
        self.plan = fresh
        retry = request.copy()
        _apply(retry, fresh)
        retry._propagation_retried = True  # type: ignore[attr-defined]
        second = self.session.get_adapter_for(fresh).send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        return second


def _apply(request: requests.PreparedRequest, plan: Plan) -> None:
    if "Authorization" in plan.headers or (plan.auth is not None and plan.auth.strategy != "none"):
        request.headers.pop("Authorization", None)
    request.headers.update(plan.headers)


class DestinationSession(requests.Session):
    """A ``requests.Session`` bound to destination ``name`` (see the module doc).

    Relative URLs are joined to the destination URL (keeping its path), the destination's
    authentication, ``URL.headers.*``, ``URL.queries.*`` and ``sap-client`` are added for its
    origin only, and a default timeout applies. Modifying calls get an ``X-CSRF-Token``
    (``csrf=False`` to opt out).
    """

    def __init__(
        self,
        propagator: Engine,
        name: str,
        *,
        user_token: str | UserToken | None = None,
        csrf: bool = True,
        lookup: LookupOptions | None = None,
    ) -> None:
        # requests.Session.__init__ without its two default HTTPAdapters (and their pool
        # managers): connections are the engine's, so a session per request costs no pool.
        self.headers = default_headers()
        self.auth = None
        self.proxies = {}
        self.hooks = default_hooks()
        self.params = {}
        self.stream = False
        self.verify = True
        self.cert = None
        self.max_redirects = DEFAULT_REDIRECT_LIMIT
        self.trust_env = True
        self.adapters = OrderedDict()
        self.propagator = propagator
        self.name = name
        self.lookup = lookup  # Destination service options (selection, fragment, …)
        self._explicit_user = None if user_token is None else as_user_token(user_token)
        self.csrf = csrf

    def __repr__(self) -> str:
        return f"DestinationSession(name={self.name!r})"

    @property
    def user(self) -> UserToken | None:
        """The user this call is made as: the explicit ``user_token``, else the context's."""
        return self._explicit_user if self._explicit_user is not None else current_token()

    @property
    def destination(self) -> Destination:
        """The destination as resolved for the current user and tenant."""
        return self.propagator.resolver.resolve(self.name, self.user, self.lookup)

    def plan(self, method: str, url: str, *, user: UserToken | None = None) -> Plan:
        return run_sync(
            plan_flow(self.propagator, self.name, user if user is not None else self.user, method, url, csrf=self.csrf,
                      lookup=self.lookup),
            self.propagator.oauth.io,
        )

    # -- per-user cookies (the engine's jars) ------------------------------------------------
    @property  # type: ignore[override]
    def cookies(self) -> Any:
        user = self.user
        return self.propagator.cookie_jars.jar(self.name, user.fingerprint if user is not None else None)

    @cookies.setter
    def cookies(self, jar: Any) -> None:
        if "propagator" not in self.__dict__:
            return  # requests.Session.__init__: the engine's jars are used instead
        user = self.user
        self.propagator.cookie_jars.replace(self.name, user.fingerprint if user is not None else None, jar)

    # -- requests.Session overrides ---------------------------------------------------------
    @traced_call
    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        check_blocking("session(...)", "propagation.async_client(...) with await", self.propagator.environ)
        method = method.decode() if isinstance(method, bytes) else method
        plan = self.plan(method, url.decode() if isinstance(url, bytes) else url)
        if plan.params:
            params = kwargs.get("params")
            if isinstance(params, Mapping):
                kwargs["params"] = {**plan.params, **params}
            elif params is None:
                kwargs["params"] = dict(plan.params)
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = plan.timeout
        kwargs["auth"] = PlanAuth(self, plan)
        kwargs.setdefault("verify", self.propagator.pools.trust_file(plan.trust) if plan.trust and plan.verify else plan.verify)
        if plan.proxy:
            kwargs["proxies"] = {"http": plan.proxy, "https": plan.proxy}
        handle = _active.set(plan)
        ends = DEADLINE.set(time.monotonic() + self.propagator.call_deadline)
        try:
            # mTLS: the pool's TLS context holds the certificate (get_adapter_for), no key files.
            return self._send(plan, method, args, kwargs)
        finally:
            DEADLINE.reset(ends)
            _active.reset(handle)

    def _send(self, plan: Plan, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> requests.Response:
        if plan.csrf and not has_header(kwargs.get("headers"), CSRF_HEADER) and not has_header(self.headers, CSRF_HEADER):
            return self._with_csrf(plan, method, args, kwargs)
        return super().request(method, plan.url, *args, **kwargs)

    def _with_csrf(self, plan: Plan, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> requests.Response:
        data = kwargs.get("data")
        replayable = not kwargs.get("files") and (data is None or isinstance(data, (bytes, str, Mapping, list, tuple)))
        jar = self.cookies
        flow = csrf_steps(self.propagator.csrf_tokens, (self.name, plan.user_key, service_root(plan.url)), jar, replayable)
        answer: Any = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if isinstance(step, Fetch):
                try:
                    answer = self._fetch_csrf(plan, step)
                except requests.RequestException as exc:
                    logger.debug("destination=%s: CSRF fetch %s failed: %s", self.name, step.method, type(exc).__name__)
                    answer = None
            else:
                assert isinstance(step, Send)
                call = dict(kwargs)
                if step.token is not None:
                    call["headers"] = {**(kwargs.get("headers") or {}), CSRF_HEADER: step.token}
                if step.first is not None:
                    step.first.content  # consume so the connection can be reused
                    step.first.close()
                answer = super().request(method, plan.url, *args, **call)
                if step.first is not None:
                    answer.history.insert(0, step.first)

    def _fetch_csrf(self, plan: Plan, step: Fetch) -> requests.Response:
        note_csrf_fetch()
        kwargs: dict[str, Any] = {
            "headers": {CSRF_HEADER: "Fetch"},
            "params": dict(plan.params),
            "allow_redirects": False,
            "auth": PlanAuth(self, plan),
            "timeout": plan.timeout,
            "verify": self.propagator.pools.trust_file(plan.trust) if plan.trust and plan.verify else plan.verify,
        }
        if plan.proxy:
            kwargs["proxies"] = {"http": plan.proxy, "https": plan.proxy}
        response = super().request(step.method, step.root, **kwargs)
        response.close()
        return response

    def get_adapter(self, url: str) -> Any:
        plan = _active.get()
        if plan is None or (plan.client_cert is not None and origin(url) != origin(plan.url)):
            # Sent without a plan (session.send), or an mTLS plan's request elsewhere (a
            # redirect): the engine's plain pool — the certificate is presented to its origin only.
            return self.propagator.pools.adapter(None)
        return self.get_adapter_for(plan)

    def get_adapter_for(self, plan: Plan) -> Any:
        """The engine's pooled adapter for the plan's pool key (and client certificate)."""
        return self.propagator.pools.adapter(plan.pool, plan.client_cert, plan.trust)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        """On a redirect to another origin, carry no credentials of ours (nor the app's), and no
        ``URL.headers.*``. On a same-origin redirect of an on-premise call the proxy headers are
        set again (``rebuild_proxies`` dropped ``Proxy-Authorization``)."""
        super().rebuild_auth(prepared_request, response)
        plan = _active.get()
        if plan is None:
            return
        if origin(prepared_request.url or "") != origin(plan.destination.url):
            _strip(prepared_request, plan)
        elif plan.proxy:
            for header, value in plan.headers.items():
                if is_protected(header):
                    prepared_request.headers[header] = value

    def rebuild_proxies(self, prepared_request: requests.PreparedRequest, proxies: Any) -> Any:
        result = super().rebuild_proxies(prepared_request, proxies)
        plan = _active.get()
        if plan is not None and origin(prepared_request.url or "") != origin(plan.destination.url):
            _strip(prepared_request, plan)
        return result


def _strip(request: requests.PreparedRequest, plan: Plan) -> None:
    """Remove every header of the plan (and any Authorization) from a request leaving the origin."""
    ours = {h.lower() for h in plan.headers}
    for header in list(request.headers):
        low = header.lower()
        if low == "authorization" or low == "cookie" or is_protected(header) or low in ours:
            del request.headers[header]
