"""``Propagator``: the one engine object. It owns the bindings, the inbound validator, the
token caches and the destination resolvers; the module-level functions of
``propagation`` use a default one built lazily from the environment.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Mapping

from .bindings import Bindings
from .caches.memory import TokenCache
from .context import as_user_token, current_token
from .destinations.lookup import LookupOptions
from .destinations.model import Destination
from .destinations.resolver import DestinationResolver
from .exchange.flow import run_async, run_sync
from .exchange.oauth import OAuthClient
from .outbound.auth import Authorizer, OutboundAuth
from .outbound.connectivity import MODE_ENV, Connectivity
from .errors import ConfigurationError
from .events import Events
from .outbound.csrf import CookieJars, CsrfStore
from .outbound.deadline import DEFAULT_CALL_DEADLINE
from .outbound.loopcheck import check_blocking
from .outbound.plan import Plan, plan_flow
from .outbound.pools import Pools
from .tokens import UserToken

if TYPE_CHECKING:
    from .outbound.clients import AsyncDestinationClient, DestinationClient
    from .outbound.session import DestinationSession

__all__ = ["Propagator", "default_propagator", "set_default_propagator"]


class Propagator:
    """Engine: validate inbound tokens, resolve destinations, exchange and cache tokens.

    ``call_deadline``: seconds one call to a destination may take in all, however slowly the
    target answers (default 120; env ``PROPAGATION_CALL_DEADLINE``).

    ``clock_skew_leeway``: seconds an inbound token is still accepted past ``exp`` and before
    ``nbf`` (default 60, ``0`` for none; env ``PROPAGATION_CLOCK_SKEW_LEEWAY``).

    ``connectivity_mode`` (``"exchange"``, the default, or ``"header"``; else the env var
    ``PROPAGATION_CONNECTIVITY_MODE``) says how OnPremise ``PrincipalPropagation`` carries the
    user to the Connectivity proxy (see :mod:`propagation.outbound.connectivity`).
    """

    def __init__(
        self,
        *,
        bindings: Bindings | None = None,
        environ: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        oauth: OAuthClient | None = None,
        cache: TokenCache | None = None,
        validator: Any = None,
        connectivity_mode: str | None = None,
        ias_to_xsuaa: bool | None = None,
        xsuaa_trust_client_id: str | None = None,
        public_clients: Any = None,
        call_deadline: float | None = None,
        clock_skew_leeway: float | str | None = None,
        events: Events | None = None,
    ) -> None:
        self.environ: Mapping[str, str] = dict(os.environ if environ is None else environ)
        self.cwd = cwd
        self.bindings = bindings if bindings is not None else Bindings.from_env(self.environ, cwd=cwd)
        self.oauth = oauth if oauth is not None else OAuthClient()
        if cache is None:
            # Redis when PROPAGATION_CACHE_URL or a redis-cache binding says so (redis is
            # imported only then), else in memory.
            from .caches.redis import cache_from_env

            cache = cache_from_env(self.environ, self.bindings)
            # Waiters of a single flight give up at the same deadline as the request they wait for.
            waiting = getattr(cache, "fallback", cache)
            if hasattr(waiting, "wait_timeout"):
                waiting.wait_timeout = self.oauth.deadline
        self.cache: TokenCache = cache
        self._wire_events(events)
        mode = connectivity_mode or self.environ.get(MODE_ENV) or "exchange"
        self.connectivity = Connectivity(self.bindings, self.oauth, self.cache, mode)
        self.authorizer = Authorizer(self.oauth, self.cache, self.connectivity)
        self.resolver = DestinationResolver(self.environ, self.bindings, cwd=cwd, oauth=self.oauth, cache=self.cache)
        self.resolver.events = self.events  # type: ignore[attr-defined]
        #: Seconds one call to a destination may take in all (``PROPAGATION_CALL_DEADLINE``).
        self.call_deadline = _seconds(call_deadline, self.environ.get(CALL_DEADLINE_ENV), DEFAULT_CALL_DEADLINE)
        #: Connection pools, cookie jars and CSRF tokens shared by every session and client.
        self.pools = Pools()
        self.cookie_jars = CookieJars()
        self.csrf_tokens = CsrfStore()
        self._validator: Any = validator
        # Seconds an inbound token is accepted past exp / before nbf (PROPAGATION_CLOCK_SKEW_LEEWAY).
        from .inbound.timestamps import LEEWAY_ENV, leeway_seconds

        self.clock_skew_leeway = leeway_seconds(
            clock_skew_leeway if clock_skew_leeway is not None else self.environ.get(LEEWAY_ENV),
            "clock_skew_leeway" if clock_skew_leeway is not None else LEEWAY_ENV,
        )
        self._lock = threading.Lock()
        # IAS flows (see propagation.inbound.IasFlows); None = environment / off.
        self.ias_flow_settings: dict[str, Any] = {
            "ias_to_xsuaa": ias_to_xsuaa,
            "xsuaa_trust_client_id": xsuaa_trust_client_id,
            "public_clients": public_clients,
        }
        self._ias_flows: Any = None
        self._warm = False

    def _wire_events(self, events: Events | None) -> None:
        """The engine's event hub (DESIGN §2c) handed to every producer; the correlation header."""
        from .correlation import outbound_header
        from .events.sinks import default_events

        #: What the library did → sinks (OpenTelemetry, log records, the sandbox trace).
        self.events = events if events is not None else default_events(self.environ)
        #: Outbound header carrying :func:`propagation.correlation_id` (``None``: not sent).
        self.correlation_header = outbound_header(self.environ)
        self.oauth.events = self.events  # type: ignore[attr-defined]

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
                    self._validator = TokenValidator.from_bindings(self.bindings, leeway=self.clock_skew_leeway)
        return self._validator

    def validate(self, raw: str) -> UserToken:
        """Validate an inbound JWT (signature, issuer, expiry, audience) → :class:`UserToken`.

        Raises :class:`~propagation.errors.InvalidTokenError`.
        """
        return self.validator.validate(raw)

    def ias_flows(self, **overrides: Any) -> Any:
        """The inbound :class:`~propagation.inbound.IasFlows` for the effective options, or
        ``None`` when neither ``ias_to_xsuaa`` nor ``public_clients`` is on.

        Each option: ``overrides`` (middleware kwargs), else this engine's kwarg, else the env
        (``PROPAGATION_IAS_TO_XSUAA``, ``PROPAGATION_XSUAA_TRUST_CLIENT_ID``,
        ``PROPAGATION_PUBLIC_CLIENTS``). Raises ``ConfigurationError`` for unusable settings.
        """
        from .inbound import IasFlowOptions, IasFlows

        merged = {k: overrides[k] if overrides.get(k) is not None else v for k, v in self.ias_flow_settings.items()}
        options = IasFlowOptions.resolve(self.environ, **merged)
        if not options.enabled:
            return None
        with self._lock:
            if self._ias_flows is not None and self._ias_flows.options == options:
                return self._ias_flows
        flows = IasFlows.from_propagator(self, options)
        with self._lock:
            if self._ias_flows is None:
                self._ias_flows = flows
        return flows

    def authenticate(self, raw: str) -> Any:
        """:meth:`validate` plus the engine's IAS flows →
        :class:`~propagation.inbound.Authenticated` (user, XSUAA token, public-client token)."""
        from .inbound import Authenticated

        flows = self.ias_flows()
        return flows.authenticate(raw) if flows is not None else Authenticated(self.validate(raw))

    # -- outbound -----------------------------------------------------------------
    @staticmethod
    def _user(user_token: str | UserToken | None) -> UserToken | None:
        return as_user_token(user_token) if user_token is not None else current_token()

    def destination(self, name: str, *, user_token: str | UserToken | None = None, **lookup: Any) -> Destination:
        """Resolve ``name`` for the user's tenant (DESIGN §3); ``lookup``: the Destination
        service options (``selection``, ``fragment``… see :func:`propagation.session`).
        Raises :class:`~propagation.errors.DestinationNotFoundError`."""
        return self.resolver.resolve(name, self._user(user_token), LookupOptions.of(**lookup))

    def plan(
        self, name: str, method: str = "GET", url: str = "", *, user_token: str | UserToken | None = None, **lookup: Any
    ) -> Plan:
        """The :class:`~propagation.outbound.plan.Plan` of one request (headers, proxy, pool…)."""
        check_blocking("plan()", "await engine.aplan(...)", self.environ)
        return self._plan(name, method, url, user_token, lookup)

    def _plan(self, name: str, method: str, url: str, user_token: str | UserToken | None, lookup: dict[str, Any]) -> Plan:
        flow = plan_flow(self, name, self._user(user_token), method, url, lookup=LookupOptions.of(**lookup))
        return run_sync(flow, self.oauth.io)

    async def aplan(
        self, name: str, method: str = "GET", url: str = "", *, user_token: str | UserToken | None = None, **lookup: Any
    ) -> Plan:
        """:meth:`plan` for async code: every exchange and lookup is awaited."""
        flow = plan_flow(self, name, self._user(user_token), method, url, lookup=LookupOptions.of(**lookup))
        return await run_async(flow, self.oauth.aio)

    def headers(self, name: str, *, user_token: str | UserToken | None = None, **lookup: Any) -> dict[str, str]:
        """The headers a call to ``name`` carries for the user — for clients of your own. An
        on-premise destination's call must also go through :meth:`plan`'s ``proxy``."""
        check_blocking("headers()", "await propagation.async_headers(...)", self.environ)
        return dict(self._plan(name, "GET", "", user_token, lookup).headers)

    async def async_headers(self, name: str, *, user_token: str | UserToken | None = None, **lookup: Any) -> dict[str, str]:
        """:meth:`headers` without blocking the event loop."""
        return dict((await self.aplan(name, user_token=user_token, **lookup)).headers)

    def authorize(self, destination: Destination, user: UserToken | None) -> OutboundAuth:
        return run_sync(self.authorizer.authorize_flow(destination, user), self.oauth.io)

    def session(
        self, name: str, *, user_token: str | UserToken | None = None, csrf: bool = True, **lookup: Any
    ) -> "DestinationSession":
        """A ``requests.Session`` bound to destination ``name``, calling as the current (or given) user.

        ``csrf=False`` turns off the automatic ``X-CSRF-Token`` fetch for modifying calls.
        ``lookup`` — ``selection``, ``fragment``, ``fragment_optional``, ``refresh_token``,
        ``saml_assertion``, ``chain``, ``chain_vars`` — shapes Destination service lookups."""
        from .outbound.session import DestinationSession

        return DestinationSession(self, name, user_token=user_token, csrf=csrf, lookup=LookupOptions.of(**lookup))

    def client(self, name: str, *, user_token: str | UserToken | None = None, csrf: bool = True, **kwargs: Any) -> "DestinationClient":
        """An ``httpx.Client`` bound to destination ``name`` (same rules and lookup options as
        :meth:`session`; other keyword arguments go to ``httpx.Client``)."""
        from .outbound.clients import DestinationClient

        lookup = LookupOptions.of(**_pop_lookup(kwargs))
        return DestinationClient(self, name, user_token=user_token, csrf=csrf, lookup=lookup, **kwargs)

    def async_client(
        self, name: str, *, user_token: str | UserToken | None = None, csrf: bool = True, **kwargs: Any
    ) -> "AsyncDestinationClient":
        """An ``httpx.AsyncClient`` bound to destination ``name``; nothing blocks the event loop."""
        from .outbound.clients import AsyncDestinationClient

        if not self._warm:
            self.warm_up()

        lookup = LookupOptions.of(**_pop_lookup(kwargs))
        return AsyncDestinationClient(self, name, user_token=user_token, csrf=csrf, lookup=lookup, **kwargs)

    def warm_up(self) -> None:
        """Import and prepare now what the first outbound connection would do lazily (inside
        the event loop, for async apps): call at start-up, e.g. in a FastAPI lifespan."""
        from .outbound.warmup import warm_up

        warm_up()
        self._warm = True

    def destinations(self, *, user_token: str | UserToken | None = None, service: bool = True) -> list[Any]:
        """Every destination this engine can resolve, described without secrets (see
        :func:`propagation.destinations`)."""
        from .destinations.listing import list_all

        return list_all(self, self._user(user_token), service=service)

    def close(self) -> None:
        """Close the engine's connection pools and its token endpoint session."""
        self.pools.close()
        self.oauth.close()

    async def aclose(self) -> None:
        """Close the async pools and clients of the running event loop, and the sync ones."""
        await self.pools.aclose()
        await self.oauth.aclose()
        self.oauth.close()


def _pop_lookup(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The lookup options among a client's keyword arguments (the rest go to httpx)."""
    from .destinations.lookup import OPTION_NAMES

    return {name: kwargs.pop(name) for name in OPTION_NAMES if name in kwargs}


#: Environment variable: seconds one call to a destination may take in all.
CALL_DEADLINE_ENV = "PROPAGATION_CALL_DEADLINE"


def _seconds(given: float | None, raw: str | None, default: float) -> float:
    if given is None and raw not in (None, ""):
        try:
            given = float(raw)  # type: ignore[arg-type]
        except ValueError:
            raise ConfigurationError(f"{CALL_DEADLINE_ENV} must be a number of seconds (got {str(raw)[:20]!r}).") from None
    value = default if given is None else float(given)
    if not value > 0:
        raise ConfigurationError(f"The call deadline must be a positive number of seconds (got {value!r}).")
    return value


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
