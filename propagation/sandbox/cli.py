"""``python -m propagation.sandbox``: run the emulated BTP landscape on loopback.

Subcommands:

* ``run`` (default) — start, write ``default-env.json`` and an env file, print the URLs, the
  users and how to point an app at it; stop cleanly on Ctrl-C or SIGTERM, removing every
  file of the run (the CA included).
* ``exec -- CMD ...`` — start, run CMD with the sandbox's environment (``VCAP_SERVICES``,
  ``destinations``, ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``), stop, exit with CMD's code.
* ``token USER`` — log a registered user in at the running sandbox (password grant) and
  print the access token — the only command that prints one: an XSUAA token for the app's
  XSUAA client (default), with ``--ias`` an IAS token for the app's IAS client (``aud`` with
  the XSUAA trust client), with ``--public-client [ID]`` an IAS token of the public (PKCE)
  client (default: the sandbox's, ``PROPAGATION_PUBLIC_CLIENTS``).
* ``demo`` — start the sandbox and ``examples/flask_odata``, call it as users, print the chain.

``run`` and ``exec`` take ``--tenant SUBDOMAIN`` (subscriber tenants, repeatable), ``--hosts``
(XSUAA host names: labelled ``<tenant>.localhost`` or plain ``localhost``) and ``--trace`` (one
line per token request, lookup, proxy hop and backend call, as it happens; ``exec`` prints
them on stderr).

No other output contains a token or a secret: tokens appear as fingerprints only.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from .runtime import HOST_MODES, STATE_ENV, Sandbox, read_env_file

__all__ = ["main", "build_parser"]

#: Seconds a child of ``exec`` gets to stop after the forwarded Ctrl-C/SIGTERM.
KILL_AFTER = 10.0
#: A child that ends successfully faster than this served nothing: ``exec`` says so.
QUICK_EXIT = 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m propagation.sandbox",
        description="The emulated SAP BTP landscape (XSUAA, IAS, Destination service, Connectivity proxy, "
        "on-premise and cloud OData, iFlow) as real TLS servers on loopback.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,exec,token,demo}")
    run = sub.add_parser("run", help="start and serve until Ctrl-C / SIGTERM (default)")
    _file_options(run)
    ex = sub.add_parser("exec", help="run a command against a fresh sandbox; exit with its code")
    _file_options(ex)
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    tok = sub.add_parser("token", help="log USER in at a running sandbox and print the access token")
    tok.add_argument("user", help="a registered user, e.g. alice or bob")
    tok.add_argument("--dir", help=f"the running sandbox's folder (default: ${STATE_ENV})")
    tok.add_argument("--tenant", metavar="SUBDOMAIN",
                     help="an XSUAA token of a subscriber tenant (started with --tenant; asked for with X-zid)")
    idp = tok.add_mutually_exclusive_group()
    idp.add_argument("--ias", action="store_true",
                     help="an IAS token of the app's IAS client (aud also holds the XSUAA trust client)")
    idp.add_argument("--public-client", nargs="?", const="", metavar="ID",
                     help="an IAS token of a public (PKCE) client (default: the sandbox's public client)")
    demo = sub.add_parser("demo", help="start the sandbox and examples/flask_odata, show the chain, exit 0 if it held")
    demo.add_argument("--app", help="the app to run (default: examples/flask_odata/app.py of this clone)")
    demo.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the app to be healthy")
    return parser


def _file_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--default-env", type=Path, metavar="PATH",
                   help="also write default-env.json here (e.g. ./default-env.json; removed on stop)")
    p.add_argument("--env-file", type=Path, metavar="PATH",
                   help="also write the environment as KEY='value' lines here (removed on stop)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --default-env/--env-file")
    p.add_argument("--tenant", action="append", default=[], metavar="SUBDOMAIN",
                   help="a subscriber tenant (repeatable); the provider is 'provider'")
    p.add_argument("--hosts", choices=HOST_MODES, default="auto",
                   help="XSUAA host names: labelled (https://<tenant>.localhost:P, where *.localhost resolves), "
                        "plain (https://localhost:P), auto (labelled if it resolves here; default)")
    p.add_argument("--trace", action="store_true",
                   help="print one line per token request, lookup, proxy hop and backend call as they happen")


class _Stop(threading.Event):
    """Set by SIGINT/SIGTERM; remembers which, to pass the same one on to a child."""

    signum: int = signal.SIGTERM


@contextmanager
def _stop_signals() -> Iterator[_Stop]:
    """SIGINT and SIGTERM set an event instead of killing the process mid-cleanup."""
    stop = _Stop()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.signum = signum
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _start(args: argparse.Namespace) -> Sandbox:
    sandbox = Sandbox(tenants=("provider", *args.tenant), hosts=args.hosts).start()
    try:
        sandbox.write(default_env=args.default_env, env_file=args.env_file, force=args.force)
    except BaseException:
        sandbox.stop()
        raise
    return sandbox


def _describe(sandbox: Sandbox, args: argparse.Namespace, out: Any) -> None:
    print("propagation sandbox: an emulated SAP BTP landscape on loopback (TLS, throw-away CA)", file=out)
    for name, url in sandbox.urls().items():
        print(f"  {name:<19} {url}", file=out)
    from propagation.testing.landscape import DEFAULT_USERS

    users = ", ".join(DEFAULT_USERS)
    print(f"  users               {users} (password grant: `token USER` at XSUAA, `token USER --ias` or "
          "`--public-client` at IAS)", file=out)
    landscape: Any = sandbox.landscape
    width = max([7, *map(len, landscape.destinations)])
    for name, d in sorted(landscape.destinations.items()):
        where = f"location {d.location}" if d.location else d.url
        kind = f"{d.authentication}{' forwardAuthToken' if d.forward_auth_token else ''}"
        source = "Destination service" if d.source == "service" else "`destinations` variable"
        print(f"  destination {name:<{width}} {d.proxy_type} {kind} ({where}; {source})", file=out)
    print(f"  {'binding ' + landscape.iflow_binding:<19} it-rt (Cloud Integration): a destination by its name", file=out)
    print(f"  IAS clients         app {landscape.ias_client} (xsuaa-cross-consumption: aud + {landscape.trust_client_id}), "
          f"public (PKCE) {landscape.public_client_id}", file=out)
    zones = ", ".join(f"{name} ({t.zid})" for name, t in landscape.tenants.items())
    print(f"  tenants             {zones}; provider first", file=out)
    mode = "labelled: https://<tenant>.localhost" if sandbox.labelled else (
        "plain: *.localhost does not resolve here, subscribers by X-zid at https://{uaadomain}/oauth/token")
    print(f"  XSUAA hosts         {mode}", file=out)
    print(f"  CA certificate      {sandbox.ca_file}", file=out)
    print(f"  default-env.json    {args.default_env or sandbox.default_env_file}", file=out)
    print(f"  env file            {args.env_file or sandbox.env_file}", file=out)
    print("point an app at it:", file=out)
    print(f"  set -a; . {sandbox.env_file}; set +a      # VCAP_SERVICES, destinations, CA bundle", file=out)
    print("  python app.py                              # e.g. examples/flask_odata/app.py", file=out)
    print("  TOKEN=$(python -m propagation.sandbox token alice)", file=out)
    print('  curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:5000/functional-locations', file=out)
    print("or run one command against its own sandbox: python -m propagation.sandbox exec -- python app.py", file=out)


def _trace(sandbox: Sandbox, args: argparse.Namespace, out: Any) -> Any:
    """Attach the live trace when ``--trace`` was given; returns the detacher (or a no-op)."""
    if not getattr(args, "trace", False):
        return lambda: None
    from .trace import Tracer

    return Tracer(out).attach(sandbox)


def cmd_run(args: argparse.Namespace) -> int:
    with _stop_signals() as stop:
        sandbox = _start(args)
        detach = _trace(sandbox, args, sys.stdout)
        try:
            _describe(sandbox, args, sys.stdout)
            print("sandbox ready; Ctrl-C stops it" + ("; tracing every call below" if args.trace else ""), flush=True)
            while not stop.wait(0.5):
                pass
        finally:
            detach()
            sandbox.stop()
    print("sandbox stopped; its files are removed", flush=True)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("exec: give a command: python -m propagation.sandbox exec -- CMD [ARGS...]", file=sys.stderr)
        return 2
    with _stop_signals() as stop:
        sandbox = _start(args)
        detach = _trace(sandbox, args, sys.stderr)  # stdout is the child's
        try:
            env = {**os.environ, **sandbox.environ()}
            print(f"propagation sandbox up: {STATE_ENV}={sandbox.directory} (`token USER` logs a user in); "
                  f"running {cmd[0]}", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                child = subprocess.Popen(cmd, env=env)
            except OSError as exc:
                print(f"exec: cannot run {cmd[0]!r}: {exc.strerror}", file=sys.stderr)
                return 127
            forwarded: float | None = None
            while True:
                try:
                    code = child.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if stop.is_set() and forwarded is None:
                        child.send_signal(stop.signum)  # Ctrl-C / SIGTERM: the child stops first, then the sandbox
                        forwarded = time.monotonic()
                    elif forwarded is not None and time.monotonic() - forwarded > KILL_AFTER:
                        child.kill()  # it ignored the signal
            if code == 0 and forwarded is None and time.monotonic() - started < QUICK_EXIT:
                print(f"exec: warning: {cmd[-1] if len(cmd) > 1 else cmd[0]} exited (code 0) within "
                      f"{QUICK_EXIT:g} s: if it is a server, it never listened. A Flask app needs "
                      "`app.run(...)` under `if __name__ == \"__main__\":` (or run it with gunicorn/flask run); "
                      "the examples listen on $PORT (default 5000).", file=sys.stderr, flush=True)
        finally:
            detach()
            sandbox.stop()
    return 128 - code if code < 0 else code


def cmd_token(args: argparse.Namespace) -> int:
    from .client import ias_login, password_login, public_clients

    folder = args.dir or os.environ.get(STATE_ENV)
    if not folder:
        print(f"token: no running sandbox known: set {STATE_ENV} (printed by `run`) or pass --dir", file=sys.stderr)
        return 2
    env_path = Path(folder) / "sandbox.env"
    if not env_path.is_file():
        print(f"token: {folder} holds no running sandbox", file=sys.stderr)
        return 2
    env = read_env_file(env_path)
    try:
        if args.tenant is not None and (args.ias or args.public_client is not None):
            print("token: --tenant is for XSUAA tokens (not --ias / --public-client)", file=sys.stderr)
            return 2
        if args.public_client is not None:
            public = args.public_client or next(iter(public_clients(env)), "")
            if not public:
                print("token: the sandbox names no public client: pass --public-client ID", file=sys.stderr)
                return 2
            token = ias_login(env, args.user, public_client=public)
        elif args.ias:
            token = ias_login(env, args.user)
        else:
            token = password_login(env, args.user, tenant=args.tenant)
    except Exception as exc:  # noqa: BLE001 - a CLI reports, without a traceback
        print(f"token: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(app=Path(args.app) if args.app else None, timeout=args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    try:
        return {"run": cmd_run, "exec": cmd_exec, "token": cmd_token, "demo": cmd_demo}[args.command](args)
    except FileExistsError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
