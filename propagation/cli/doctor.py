"""``doctor``: the bindings and destinations of an environment, and every problem."""

from __future__ import annotations

import argparse
import json
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    PROG,
    _Io,
    _OAUTH_CLIENT_AUTHENTICATIONS,
    is_secret,
    _SERVICE_ONLY_AUTHENTICATIONS,
    _host,
)


# -- doctor -------------------------------------------------------------------------------------------
def _credential_keys(credentials: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key in sorted(credentials, key=str):
        value = credentials[key]
        if isinstance(value, Mapping):
            keys.extend(_credential_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _secret_values(value: Any, key: str = "") -> Iterable[str]:
    """Every secret string of a credentials tree (for scrubbing), judged by :func:`is_secret`."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _secret_values(v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _secret_values(v, key)
    elif isinstance(value, str) and is_secret(key, value):
        yield value


def _doctor(environ: Mapping[str, str], cwd: str | None, io_: _Io, service: bool = False) -> dict[str, Any]:
    from ..bindings import Bindings
    from ..outbound.connectivity import MODE_ENV, ConnectivityConfig, normalize_mode
    from ..destinations.env import destination_from_binding, destinations_from_env, unknown_keys
    from ..destinations.service import TTL_ENV, DestinationServiceConfig

    problems: list[str] = []
    notes: list[str] = []
    unreadable: str | None = None
    try:
        bindings = Bindings.from_env(environ, cwd=cwd)
    except ConfigurationError as exc:
        problems.append(f"Service bindings cannot be read: {exc}")
        unreadable = str(exc)
        bindings = Bindings()
    for binding in bindings:
        io_.secrets.update(_secret_values(binding.credentials))

    binding_rows = [
        {"name": b.name, "label": b.label, "plan": b.plan, "source": b.source,
         "credential_keys": _credential_keys(b.credentials)}
        for b in bindings
    ]

    # Inbound validation.
    xsuaa, ias = bindings.find(label="xsuaa"), bindings.find(label="identity")
    if xsuaa is None and ias is None:
        problems.append(
            "No 'xsuaa' or 'identity' service binding: inbound tokens cannot be validated "
            "(PropagationMiddleware fails at start-up). Bind an XSUAA or Cloud Identity Services instance."
        )
    if xsuaa is not None:
        missing = [k for k in ("clientid", "xsappname") if not xsuaa.credentials.get(k)]
        if not (xsuaa.credentials.get("uaadomain") or xsuaa.credentials.get("url")):
            missing.append("uaadomain")
        if missing:
            problems.append(
                f"XSUAA binding '{xsuaa.name}' lacks {', '.join(missing)}: inbound XSUAA tokens cannot be validated."
            )
    if ias is not None:
        missing = [] if ias.credentials.get("clientid") else ["clientid"]
        if not (ias.credentials.get("domains") or ias.credentials.get("domain")):
            missing.append("domains")
        if missing:
            problems.append(
                f"Identity binding '{ias.name}' lacks {', '.join(missing)}: inbound IAS tokens cannot be validated."
            )

    # Connectivity and Destination service bindings.
    connectivity = bindings.find(label="connectivity")
    proxy_url: str | None = None
    if connectivity is not None:
        try:
            proxy_url = ConnectivityConfig.from_binding(connectivity).proxy_url
        except ConfigurationError as exc:
            problems.append(str(exc))
    destination_binding = bindings.find(label="destination")
    if destination_binding is not None:
        try:
            DestinationServiceConfig.from_binding(destination_binding)
        except ConfigurationError as exc:
            problems.append(str(exc))
        notes.append(
            f"A 'destination' binding ('{destination_binding.name}') is present: destinations configured in the BTP "
            f"cockpit are resolved at call time and are not listed here; try one with `{PROG} exchange NAME --token -`."
        )
    mode = environ.get(MODE_ENV)
    if mode:
        try:
            normalize_mode(mode, MODE_ENV)
        except ConfigurationError as exc:
            problems.append(str(exc))
    ttl = environ.get(TTL_ENV)
    if ttl:
        try:
            float(ttl)
        except ValueError:
            problems.append(f"{TTL_ENV} must be a number of seconds.")

    # Destinations: the environment variable first, then bindings that describe a target.
    destinations = []
    try:
        env_destinations = destinations_from_env(environ, bindings, cwd=cwd)
    except ConfigurationError as exc:
        problems.append(f"Destinations cannot be read: {exc}")
        env_destinations = {}
    try:
        warnings = unknown_keys(environ, cwd=cwd)
    except ConfigurationError:
        warnings = []  # the same source's error is a problem above
    destinations.extend(env_destinations.values())
    for binding in bindings:
        if binding.name in env_destinations:
            continue
        found = destination_from_binding(binding)
        if found is not None:
            destinations.append(found)

    destination_rows = []
    for d in destinations:
        if d.client is not None and d.client.client_secret:
            io_.secrets.add(d.client.client_secret)
        if d.client is not None and d.client.key:
            io_.secrets.add(d.client.key)
        password = d.properties.get("Password")
        if isinstance(password, str):
            io_.secrets.add(password)
        where = f"Destination '{d.name}' ({d.source})"
        if d.on_premise:
            proxy = proxy_url or ("connectivity binding invalid" if connectivity is not None else "MISSING")
        elif d.proxy_host:
            proxy = f"{d.proxy_host}:{d.proxy_port}" if d.proxy_port else d.proxy_host
        else:
            proxy = None
        destination_rows.append(
            {"name": d.name, "source": d.source, "authentication": d.authentication, "needs_user": d.needs_user,
             "proxy_type": d.proxy_type, "proxy": proxy, "url_host": _host(d.url),
             "token_url_host": _host(d.token_service_url)}
        )
        if d.on_premise and connectivity is None:
            problems.append(f"{where} has ProxyType OnPremise but no 'connectivity' service binding is bound.")
        if d.on_premise and urlsplit(d.url).scheme.lower() == "https":
            problems.append(
                f"{where} has ProxyType OnPremise and an https:// URL: use the Cloud Connector's http:// virtual host."
            )
        if d.authentication == "PrincipalPropagation" and not d.on_premise:
            problems.append(f"{where} uses PrincipalPropagation with ProxyType {d.proxy_type}: it needs OnPremise.")
        if d.authentication in _OAUTH_CLIENT_AUTHENTICATIONS:
            lacking = [n for n, ok in (("clientId", d.client is not None), ("tokenServiceURL", d.token_service_url))
                       if not ok]
            if lacking:
                problems.append(f"{where} uses {d.authentication} but has no {' and no '.join(lacking)}.")
        if d.authentication in ("BasicAuthentication", "OAuth2Password"):
            lacking = [n for n in ("User", "Password") if d.properties.get(n) in (None, "")]
            if lacking:
                problems.append(f"{where} uses {d.authentication} but has no {' and no '.join(lacking)}.")
        if d.authentication in _SERVICE_ONLY_AUTHENTICATIONS and d.service is None:
            problems.append(f"{where} uses {d.authentication}, which only the Destination service can serve.")

    cockpit_rows = _cockpit(environ, cwd, bindings, problems) if service and unreadable is None else []
    return {
        "cockpit": cockpit_rows,
        "warnings": warnings,
        "sources": list(bindings.sources),
        "bindings_unreadable": unreadable is not None,
        "bindings": binding_rows,
        "destinations": destination_rows,
        "notes": notes,
        "problems": problems,
        "ok": not problems,
    }


def _cockpit(environ: Mapping[str, str], cwd: str | None, bindings: Any, problems: list[str]) -> list[dict[str, Any]]:
    """The Destination service's subaccount and instance destinations (names, types — no values)."""
    from ..destinations.listing import list_all
    from ..engine import Propagator
    from ..errors import PropagationError

    engine = Propagator(environ=environ, cwd=cwd, bindings=bindings)
    if engine.resolver.destination_service() is None:
        problems.append("--service: no 'destination' service binding is bound.")
        return []
    try:
        found = [d for d in list_all(engine, None) if d.source.startswith("Destination service")]
    except PropagationError as exc:
        problems.append(f"The Destination service's destinations cannot be listed: {exc}")
        return []
    finally:
        engine.close()
    for d in found:
        if d.problem:
            problems.append(f"Destination '{d.name}' ({d.source}, {d.level}): {d.problem}")
    return [{"name": d.name, "level": d.level, "tenant": d.tenant, "authentication": d.authentication,
             "needs_user": d.needs_user, "proxy_type": d.proxy_type, "problem": d.problem} for d in found]


def _cmd_doctor(args: argparse.Namespace, io_: _Io, environ: Mapping[str, str]) -> int:
    report = _doctor(environ, args.dir, io_, service=getattr(args, "service", False))
    if args.json:
        io_.out(json.dumps(report, indent=2, sort_keys=True))
        return EXIT_OK if report["ok"] else EXIT_PROBLEMS
    if report["bindings_unreadable"]:
        sources = "UNREADABLE: a binding source is malformed, see the first problem below"
    else:
        sources = ", ".join(report["sources"]) or "none found (no VCAP_SERVICES, SERVICE_BINDING_ROOT or default-env.json)"
    io_.out(f"Bindings ({len(report['bindings'])}; read from: {sources}):")
    for b in report["bindings"]:
        io_.out(f"  {b['name']}  label={b['label']}  plan={b['plan'] or '-'}  source={b['source']}")
        io_.out(f"      credential keys: {', '.join(b['credential_keys']) or '(none)'}")
    io_.out(f"Destinations ({len(report['destinations'])}):")
    for d in report["destinations"]:
        io_.out(f"  {d['name']}  source={d['source']}")
        io_.out(
            f"      Authentication={d['authentication']}  needs user={'yes' if d['needs_user'] else 'no'}  "
            f"ProxyType={d['proxy_type']}  proxy={d['proxy'] or '-'}  URL host={d['url_host'] or '-'}  "
            f"token URL host={d['token_url_host'] or '-'}"
        )
    if report["cockpit"]:
        io_.out(f"Destination service destinations ({len(report['cockpit'])}):")
        for d in report["cockpit"]:
            io_.out(f"  {d['name']}  level={d['level']}  tenant={d['tenant'] or '-'}  Authentication={d['authentication']}  "
                    f"needs user={'yes' if d['needs_user'] else 'no'}  ProxyType={d['proxy_type']}")
    if report["warnings"]:
        io_.out(f"Warnings ({len(report['warnings'])}):")
        for warning in report["warnings"]:
            io_.out(f"  - {warning}")
    if report["notes"]:
        io_.out("Notes:")
        for note in report["notes"]:
            io_.out(f"  - {note}")
    if report["problems"]:
        io_.out(f"Problems ({len(report['problems'])}):")
        for problem in report["problems"]:
            io_.out(f"  - {problem}")
        return EXIT_PROBLEMS
    io_.out("No problems found.")
    return EXIT_OK


