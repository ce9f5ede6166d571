"""``doctor``: the bindings and destinations of an environment, and every problem."""

from __future__ import annotations

import argparse
import json
from typing import Any, Iterable, Mapping

from ..errors import ConfigurationError
from .common import EXIT_OK, EXIT_PROBLEMS, _Io, _UsageError, _host, is_secret


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


def _doctor(environ: Mapping[str, str], cwd: str | None, io_: _Io, service: bool = False,
            app: Any = None) -> dict[str, Any]:
    """The report: the problems are :func:`propagation.checks.find_problems`' — the lines an
    integration refuses to start with — plus the tables and the cockpit's destinations; with
    ``app`` (``--app``) also whether the bindings fit its ``require_scopes`` checks."""
    from ..checks import find_problems

    found = find_problems(environ, cwd)
    bindings = found.bindings
    for binding in bindings:
        io_.secrets.update(_secret_values(binding.credentials))
    binding_rows = [
        {"name": b.name, "label": b.label, "plan": b.plan, "source": b.source,
         "credential_keys": _credential_keys(b.credentials)}
        for b in bindings
    ]
    connectivity = bindings.find(label="connectivity")
    destination_rows = []
    for d in found.destinations:
        if d.client is not None and d.client.client_secret:
            io_.secrets.add(d.client.client_secret)
        if d.client is not None and d.client.key:
            io_.secrets.add(d.client.key)
        password = d.properties.get("Password")
        if isinstance(password, str):
            io_.secrets.add(password)
        if d.on_premise:
            proxy = found.proxy_url or ("connectivity binding invalid" if connectivity is not None else "MISSING")
        elif d.proxy_host:
            proxy = f"{d.proxy_host}:{d.proxy_port}" if d.proxy_port else d.proxy_host
        else:
            proxy = None
        destination_rows.append(
            {"name": d.name, "source": d.source, "authentication": d.authentication,
             "authentication_inferred": d.authentication_inferred, "needs_user": d.needs_user,
             "proxy_type": d.proxy_type, "proxy": proxy, "url_host": _host(d.url),
             "token_url_host": _host(d.token_service_url)}
        )
    problems = found.problems
    if app is not None:
        from ..checks import scope_fit, scopes_in_use
        from ..inbound.options import ENV_IAS_TO_XSUAA, _flag

        try:
            hybrid = _flag(environ.get(ENV_IAS_TO_XSUAA, ""), ENV_IAS_TO_XSUAA)
        except Exception:  # noqa: BLE001 - a bad flag is not this check's problem
            hybrid = False
        scope_problems, scope_warnings = scope_fit(scopes_in_use(app), bindings, ias_to_xsuaa=hybrid)
        problems.extend(scope_problems)
        found.warnings.extend(scope_warnings)
    cockpit_rows = _cockpit(environ, cwd, bindings, problems) if service and found.unreadable is None else []
    return {
        "cockpit": cockpit_rows,
        "warnings": found.warnings,
        "sources": list(bindings.sources),
        "bindings_unreadable": found.unreadable is not None,
        "bindings": binding_rows,
        "destinations": destination_rows,
        "notes": found.notes,
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


def _import_app(spec: str, directory: str | None) -> Any:
    """``MODULE:ATTR`` (``app:app``, ``myproject.web:create_app()``) imported from the working
    directory (or ``--dir``); a factory call ``()`` is made without arguments."""
    import importlib
    import os
    import sys

    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise _UsageError("--app takes MODULE:ATTR, e.g. --app app:app")
    where = os.path.abspath(directory or os.getcwd())
    sys.path.insert(0, where)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise _UsageError(f"--app {spec}: no module {module_name!r} (looked in {where}).") from None
    finally:
        sys.path.remove(where)
    target: Any = module
    for part in attr.removesuffix("()").split("."):
        target = getattr(target, part, None)
        if target is None:
            raise _UsageError(f"--app {spec}: {module_name} has no attribute {attr!r}.")
    return target() if attr.endswith("()") else target


def _inferred(row: Mapping[str, Any]) -> str:
    """How doctor marks an Authentication the entry did not name (the Cloud SDK's inference)."""
    if not row.get("authentication_inferred"):
        return ""
    return " (inferred from User/Password)" if row["authentication"] == "BasicAuthentication" else " (inferred)"


def _cmd_doctor(args: argparse.Namespace, io_: _Io, environ: Mapping[str, str]) -> int:
    app, app_problem = None, None
    if getattr(args, "app", None):
        try:
            app = _import_app(args.app, args.dir)
        except ConfigurationError as exc:  # e.g. the app's own start-up check
            app_problem = f"--app {args.app} refused to start: {exc}"
        except _UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - the app's own import error; its text may hold anything
            app_problem = f"--app {args.app} could not be imported ({type(exc).__name__})."
    report = _doctor(environ, args.dir, io_, service=getattr(args, "service", False), app=app)
    if app_problem is not None:
        report["problems"].append(app_problem)
        report["ok"] = False
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
            f"      Authentication={d['authentication']}{_inferred(d)}  needs user={'yes' if d['needs_user'] else 'no'}  "
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


