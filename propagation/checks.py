"""The configuration check: every problem of an environment that would otherwise surface at
the first request — bindings, every ``destinations`` entry, the token cache settings.

One finder, two users: ``python -m propagation doctor`` prints the problems, and every
integration (WSGI/ASGI middleware construction, Flask ``init_app``, FastAPI's lifespan,
Django's middleware and ``manage.py check``) refuses to start with the same lines
(:func:`startup_check`), so "works in doctor, 500 in production" cannot happen. Core: no
framework import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from ._log import logger
from ._settings import env_flag
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .bindings import Bindings
    from .destinations.model import Destination

__all__ = ["Findings", "find_problems", "startup_check", "startup_message", "built_from_env", "STRICT_ENV",
           "scopes_in_use", "scope_fit", "check_scope_fit"]

#: Environment variable: ``false`` starts the app despite configuration problems (logged).
STRICT_ENV = "PROPAGATION_STRICT"

#: Authentication types that take an OAuth client and a token service URL.
OAUTH_CLIENT_AUTHENTICATIONS = frozenset(
    {"OAuth2ClientCredentials", "OAuth2Password", "OAuth2JWTBearer", "OAuth2UserTokenExchange", "OAuth2TokenExchange"}
)
#: Authentication types only the Destination service can serve.
SERVICE_ONLY_AUTHENTICATIONS = frozenset({"OAuth2SAMLBearerAssertion", "ClientCertificateAuthentication"})


@dataclass
class Findings:
    """What :func:`find_problems` found: ``problems`` stop an app; ``warnings`` and ``notes``
    are shown by ``doctor`` only. ``destinations`` are the readable ones (for doctor's table)."""

    bindings: "Bindings"
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    destinations: list["Destination"] = field(default_factory=list)
    unreadable: str | None = None
    proxy_url: str | None = None


def find_problems(
    environ: Mapping[str, str],
    cwd: str | os.PathLike[str] | None = None,
    *,
    bindings: "Bindings | None" = None,
    inbound: bool = True,
    cache: bool = True,
) -> Findings:
    """Every problem of ``environ`` (and ``bindings``, else read from ``environ``). ``inbound``:
    check the ``xsuaa`` / ``identity`` bindings too (off for an engine given its own validator);
    ``cache``: the token cache settings (off for an engine, which built its cache already)."""
    from .bindings import Bindings

    problems: list[str] = []
    unreadable: str | None = None
    if bindings is None:
        try:
            bindings = Bindings.from_env(environ, cwd=cwd)
        except ConfigurationError as exc:
            problems.append(f"Service bindings cannot be read: {exc}")
            unreadable = str(exc)
            bindings = Bindings()
    found = Findings(bindings, problems, unreadable=unreadable)
    if inbound:
        _inbound(found)
    _services(found, environ)
    _destinations(found, environ, cwd)
    if cache:
        _cache(found, environ)
    return found


def _inbound(found: Findings) -> None:
    xsuaa, ias = found.bindings.find(label="xsuaa"), found.bindings.find(label="identity")
    if xsuaa is None and ias is None:
        found.problems.append(
            "No 'xsuaa' or 'identity' service binding: inbound tokens cannot be validated "
            "(PropagationMiddleware fails at start-up). Bind an XSUAA or Cloud Identity Services instance."
        )
    if xsuaa is not None:
        missing = [k for k in ("clientid", "xsappname") if not xsuaa.credentials.get(k)]
        if not (xsuaa.credentials.get("uaadomain") or xsuaa.credentials.get("url")):
            missing.append("uaadomain")
        if missing:
            found.problems.append(
                f"XSUAA binding '{xsuaa.name}' lacks {', '.join(missing)}: inbound XSUAA tokens cannot be validated."
            )
    if ias is not None:
        missing = [] if ias.credentials.get("clientid") else ["clientid"]
        if not (ias.credentials.get("domains") or ias.credentials.get("domain")):
            missing.append("domains")
        if missing:
            found.problems.append(
                f"Identity binding '{ias.name}' lacks {', '.join(missing)}: inbound IAS tokens cannot be validated."
            )


def _services(found: Findings, environ: Mapping[str, str]) -> None:
    """Connectivity and Destination-service bindings, and the settings that go with them."""
    from .destinations.service import TTL_ENV, DestinationServiceConfig
    from .inbound.timestamps import LEEWAY_ENV, leeway_seconds
    from .outbound.connectivity import MODE_ENV, ConnectivityConfig, normalize_mode

    connectivity = found.bindings.find(label="connectivity")
    if connectivity is not None:
        try:
            found.proxy_url = ConnectivityConfig.from_bindings(found.bindings).proxy_url
        except ConfigurationError as exc:
            found.problems.append(str(exc))
    destination_binding = found.bindings.find(label="destination")
    if destination_binding is not None:
        try:
            DestinationServiceConfig.from_binding(destination_binding)
        except ConfigurationError as exc:
            found.problems.append(str(exc))
        found.notes.append(
            f"A 'destination' binding ('{destination_binding.name}') is present: destinations configured in the BTP "
            "cockpit are resolved at call time and are not listed here; try one with "
            "`python -m propagation exchange NAME --token -`."
        )
    mode = environ.get(MODE_ENV)
    if mode:
        try:
            normalize_mode(mode, MODE_ENV)
        except ConfigurationError as exc:
            found.problems.append(str(exc))
    ttl = environ.get(TTL_ENV)
    if ttl:
        try:
            float(ttl)
        except ValueError:
            found.problems.append(f"{TTL_ENV} must be a number of seconds.")
    try:
        leeway_seconds(environ.get(LEEWAY_ENV), LEEWAY_ENV)
    except ConfigurationError as exc:
        found.problems.append(str(exc))


def _destinations(found: Findings, environ: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> None:
    """Every ``destinations`` entry (each bad one named), then the bindings that describe a target."""
    from .destinations.env import destination_from_binding, unknown_keys
    from .destinations.env_entries import read_entries

    try:
        entries = read_entries(environ, found.bindings, cwd)
    except ConfigurationError as exc:  # the list itself cannot be read
        found.problems.append(f"Destinations cannot be read: {exc}")
        env_destinations: dict[str, "Destination"] = {}
    else:
        found.problems.extend(f"Destinations cannot be read: {error}" for _, error in entries.errors)
        env_destinations = entries.destinations
    try:
        found.warnings.extend(unknown_keys(environ, cwd=cwd))
    except ConfigurationError:
        pass  # the same source's error is a problem above
    found.destinations.extend(env_destinations.values())
    for binding in found.bindings:
        if binding.name not in env_destinations:
            described = destination_from_binding(binding)
            if described is not None:
                found.destinations.append(described)
    connectivity = found.bindings.find(label="connectivity")
    for d in found.destinations:
        found.problems.extend(destination_problems(d, connectivity is not None))


def destination_problems(d: "Destination", connectivity_bound: bool) -> list[str]:
    """What makes one destination unusable whatever the request (doctor's checks)."""
    where = f"Destination '{d.name}' ({d.source})"
    problems = []
    if d.on_premise and not connectivity_bound:
        problems.append(f"{where} has ProxyType OnPremise but no 'connectivity' service binding is bound.")
    if d.on_premise and urlsplit(d.url).scheme.lower() == "https":
        problems.append(f"{where} has ProxyType OnPremise and an https:// URL: use the Cloud Connector's http:// virtual host.")
    if d.authentication == "PrincipalPropagation" and not d.on_premise:
        problems.append(f"{where} uses PrincipalPropagation with ProxyType {d.proxy_type}: it needs OnPremise.")
    if d.authentication in OAUTH_CLIENT_AUTHENTICATIONS:
        lacking = [n for n, ok in (("clientId", d.client is not None), ("tokenServiceURL", d.token_service_url)) if not ok]
        if lacking:
            problems.append(f"{where} uses {d.authentication} but has no {' and no '.join(lacking)}.")
    if d.authentication in ("BasicAuthentication", "OAuth2Password"):
        lacking = [n for n in ("User", "Password") if d.properties.get(n) in (None, "")]
        if lacking:
            problems.append(f"{where} uses {d.authentication} but has no {' and no '.join(lacking)}.")
    if d.authentication in SERVICE_ONLY_AUTHENTICATIONS and d.service is None:
        problems.append(f"{where} uses {d.authentication}, which only the Destination service can serve.")
    return problems


def _cache(found: Findings, environ: Mapping[str, str]) -> None:
    """The token cache settings (``PROPAGATION_CACHE_*``, a ``redis-cache`` binding): built and
    closed again, which reads and checks them but connects to nothing."""
    from .caches.redis import CACHE_URL_ENV, REDIS_LABEL

    if not (environ.get(CACHE_URL_ENV) or "").strip() and found.bindings.find(label=REDIS_LABEL) is None:
        return
    try:
        from .caches.redis import RedisTokenCache

        cache: Any = RedisTokenCache.from_env(environ, found.bindings)
    except ConfigurationError as exc:
        found.problems.append(f"The token cache cannot be used: {exc}")
        return
    except ImportError as exc:
        found.problems.append(f"A Redis token cache is configured, but {exc.name or 'redis'} is not installed: "
                              "pip install 'propagation[redis]'.")
        return
    close = getattr(cache, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - closing an unused client must not fail the check
            pass


def startup_message(problems: list[str]) -> str:
    """The refusal text: doctor's problem lines, under one sentence that says what to do."""
    lines = "\n".join(f"  - {p}" for p in problems)
    return (f"The configuration has {len(problems)} problem{'s' if len(problems) != 1 else ''} "
            f"(`python -m propagation doctor` lists the same):\n{lines}")


def startup_check(propagator: Any, *, strict: bool | None = None) -> list[str]:
    """Check the engine's environment at start-up. ``strict`` (default: env
    ``PROPAGATION_STRICT``, else ``True``) raises :class:`ConfigurationError` with
    :func:`startup_message`; ``strict=False`` logs each problem at error and returns them
    (the app starts; what is broken fails when it is used)."""
    environ: Mapping[str, str] = getattr(propagator, "environ", None) or {}
    if strict is None:
        strict = env_flag(environ.get(STRICT_ENV), STRICT_ENV, True)
    bindings = getattr(propagator, "bindings", None)
    own_validator = getattr(propagator, "_validator", None) is not None
    found = find_problems(environ, getattr(propagator, "cwd", None), bindings=bindings, inbound=not own_validator,
                          cache=False)  # the engine built its cache: the settings were usable
    if found.problems and strict:
        raise ConfigurationError(startup_message(found.problems))
    for problem in found.problems:
        logger.error("configuration problem (the app starts: strict=False): %s", problem)
    return found.problems


_T = TypeVar("_T")


def scopes_in_use(app: Any) -> dict[str, tuple[str, ...]]:
    """``{route: local scopes}`` of every ``require_scopes`` check of a Flask app
    (``view_functions``) or a Starlette/FastAPI app (``routes`` and their dependencies),
    found by duck typing — the core imports no framework."""
    from .inbound.scopes import GUARD

    found: dict[str, tuple[str, ...]] = {}
    views = getattr(app, "view_functions", None)
    if isinstance(views, Mapping):
        for endpoint, view in views.items():
            if getattr(view, GUARD, None):
                found[str(endpoint)] = tuple(getattr(view, GUARD))
    for route in getattr(app, "routes", None) or ():
        names: list[str] = []
        pending = [getattr(route, "dependant", None)]
        while pending:
            dependant = pending.pop()
            if dependant is None:
                continue
            names.extend(getattr(getattr(dependant, "call", None), GUARD, None) or ())
            pending.extend(getattr(dependant, "dependencies", None) or ())
        if names:
            found[str(getattr(route, "path", route))] = tuple(dict.fromkeys(names))
    return found


def scope_fit(scopes: Mapping[str, tuple[str, ...]], bindings: "Bindings", *, ias_to_xsuaa: bool) -> tuple[list[str], list[str]]:
    """Do the bound services fit the scope checks the app declares? ``(problems, warnings)``:
    ``require_scopes`` without an ``xsuaa`` binding can never pass (every such route is a
    403) — a problem; with an ``identity`` binding but without the IAS→XSUAA flow, IAS users
    hold no XSUAA scopes — a warning (XSUAA users still pass)."""
    if not scopes:
        return [], []
    routes = list(scopes.items())
    where = ", ".join(f"{route} ({', '.join(names)})" for route, names in routes[:3])
    where += f" and {len(routes) - 3} more" if len(routes) > 3 else ""
    xsuaa, ias = bindings.find(label="xsuaa"), bindings.find(label="identity")
    if xsuaa is None:
        bound = "only an 'identity' binding is bound" if ias is not None else "no 'xsuaa' binding is bound"
        return [f"require_scopes checks XSUAA scopes on {where}, but {bound}: scopes come from an XSUAA token, so "
                "every such route answers 403. Bind an XSUAA instance (and set PROPAGATION_IAS_TO_XSUAA=true for IAS "
                "users), or check IAS users another way."], []
    if ias is not None and not ias_to_xsuaa:
        return [], [f"require_scopes checks XSUAA scopes on {where}; IAS users (an 'identity' binding is bound) get 403 "
                    "there unless the IAS-to-XSUAA flow is on (ias_to_xsuaa / PROPAGATION_IAS_TO_XSUAA=true)."]
    return [], []


def check_scope_fit(app: Any, gate: Any, *, strict: bool | None = None) -> list[str]:
    """:func:`scope_fit` for an app and its gate at start-up: problems refuse the start like
    :func:`startup_check` (``strict=False``: logged), warnings are logged."""
    propagator = gate.propagator
    flows = getattr(gate, "flows", None)
    ias_to_xsuaa = bool(flows is not None and getattr(getattr(flows, "options", None), "ias_to_xsuaa", False))
    bindings = getattr(propagator, "bindings", None)
    if bindings is None or getattr(propagator, "_validator", None) is not None and not list(bindings):
        return []  # an engine with its own validator and no bindings: nothing to compare
    problems, warnings = scope_fit(scopes_in_use(app), bindings, ias_to_xsuaa=ias_to_xsuaa)
    for warning in warnings:
        logger.warning("%s", warning)
    if strict is None:
        strict = env_flag((getattr(propagator, "environ", None) or {}).get(STRICT_ENV), STRICT_ENV, True)
    if problems and strict:
        raise ConfigurationError(startup_message(problems))
    for problem in problems:
        logger.error("configuration problem (the app starts: strict=False): %s", problem)
    return problems


def built_from_env(build: Callable[[], _T], environ: Mapping[str, str] | None = None) -> _T:
    """``build()`` (an engine from the environment); when the environment is too broken to
    build one, the refusal lists every problem as doctor does, not only the first one met."""
    try:
        return build()
    except ConfigurationError:
        found = find_problems(os.environ if environ is None else environ)
        if found.problems:
            raise ConfigurationError(startup_message(found.problems)) from None
        raise
