"""``python -m propagation``: look at a token, check an environment, try an exchange.

Three commands for the moment a call "does not carry the user" and someone has a shell:

* ``decode``   — what a JWT says (kind, tenant, user, client, audiences, expiry) and what it
  can serve; the signature is *not* verified.
* ``doctor``   — the bindings and destinations this environment gives the library, and every
  problem that would make a call fail later (exit 1 when there is one).
* ``exchange`` — the headers a call to destination NAME would carry for a user, with the
  exchanged tokens shown as claims and fingerprints (raw only with ``--show-token``).

Security stance: a token is a secret. Nothing here prints a raw token, client secret,
password or key unless ``--show-token`` asks for the exchanged header values; error lines
are scrubbed of every secret the command knows, and no traceback is ever shown.

Exit codes: 0 ok; 1 doctor found problems (also: unexpected internal error); 2 usage error or
malformed token; 3 missing user token; 4 token exchange refused; 5 destination not found;
6 configuration error. A malformed ``VCAP_SERVICES`` (or any other unreadable source) is a
*problem* for ``doctor`` (exit 1, with the ``ConfigurationError`` message), not a usage error:
doctor still reports everything else it could read.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from typing import Mapping, Sequence, TextIO

from .common import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFIGURATION,
    EXIT_EXCHANGE,
    EXIT_MISSING_USER,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    PROG,
    TOKEN_ENV,
    _Io,
    _UsageError,
)
from .decode import _cmd_decode
from .doctor import _cmd_doctor
from .exchange import _cmd_exchange

__all__ = ["main", "EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "EXIT_MISSING_USER", "EXIT_EXCHANGE",
           "EXIT_NOT_FOUND", "EXIT_CONFIGURATION", "TOKEN_ENV"]


# -- argument parsing ---------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect tokens and the BTP configuration of an app that uses propagation. "
        "Tokens and secrets are never printed (only fingerprints) unless --show-token is given.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n"
        "  0 ok   1 problems found   2 usage error or malformed token   3 missing user token\n"
        "  4 token exchange refused   5 destination not found   6 configuration error\n\n"
        "examples:\n"
        f"  {PROG} doctor                          # in the app's environment (cf ssh, kubectl exec)\n"
        f"  pbpaste | {PROG} decode -              # token from the clipboard, not the shell history\n"
        f"  {PROG} exchange S4 --token - < jwt.txt\n\n"
        f"'{PROG} COMMAND --help' describes each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    decode = sub.add_parser(
        "decode",
        help="show what a JWT says and which destinations it can serve (signature NOT verified)",
        description="Decode a JWT without verifying its signature: header, claims, kind (xsuaa/ias), tenant, "
        "user, client, audiences, expiry, fingerprint, and a diagnosis of what it can be exchanged for.",
    )
    decode.add_argument("token", nargs="?", metavar="TOKEN",
                        help="the JWT, optionally prefixed by 'Bearer '; '-' or absent: read from stdin "
                        "(preferred: keeps the token out of the shell history)")
    decode.add_argument("--xsuaa-trust-client-id", metavar="ID",
                        help="the XSUAA client id an IAS token's aud must contain for IAS→XSUAA exchange")
    decode.add_argument("--public-client", metavar="ID",
                        help="the IAS public (PKCE) client id, to tell whether this token is one of its tokens")
    decode.add_argument("--json", action="store_true", help="machine-readable output")

    doctor = sub.add_parser(
        "doctor",
        help="list bindings and destinations of this environment and every problem (exit 1 if any)",
        description="Read VCAP_SERVICES, SERVICE_BINDING_ROOT, default-env.json and the 'destinations' variable "
        "like the library does; list bindings (credential keys only, never values) and destinations, then every "
        "problem found. Exit 0 when there is none, 1 otherwise.",
    )
    doctor.add_argument("--dir", metavar="DIR", help="directory holding default-env.json (default: the working directory)")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--service", action="store_true",
                        help="also list and check the Destination service's (cockpit) destinations: calls the service")
    doctor.add_argument("--app", metavar="MODULE:ATTR", help="import this Flask/FastAPI app and check its require_scopes against the bindings")

    exchange = sub.add_parser(
        "exchange",
        help="get the headers a call to destination NAME would carry for a user (performs the token exchange)",
        description="Resolve destination NAME like propagation.session(NAME) and perform its token exchange "
        "for the given user (with the Connectivity service this includes the proxy headers). Prints each header's "
        "name, the exchanged token's user/client/aud/exp and fingerprint; raw values only with --show-token.",
    )
    exchange.add_argument("name", metavar="NAME", help="the destination name")
    exchange.add_argument("--token", metavar="TOKEN",
                          help=f"the user's JWT ('Bearer ' prefix allowed); '-' reads stdin; default: ${TOKEN_ENV}")
    exchange.add_argument("--show-token", action="store_true",
                          help="print the raw header values (secrets!)")
    exchange.add_argument("--dir", metavar="DIR", help="directory holding default-env.json (default: the working directory)")
    exchange.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command line; returns the exit code (never raises, never prints a traceback).

    With ``--json`` an error is also one JSON object on stdout (``{"ok": false, "error":
    {...}}``); a reader that closes stdout early (``| head -1``) ends the command quietly
    with 141 (128 + SIGPIPE), as a command killed by SIGPIPE would."""
    env = os.environ if environ is None else environ
    args_list = list(sys.argv[1:] if argv is None else argv)
    io_ = _Io(stdout or sys.stdout, stderr or sys.stderr, json="--json" in args_list)
    stdin = sys.stdin if stdin is None else stdin
    try:
        code = _run(args_list, io_, env, stdin)
        io_.stdout.flush()  # inside the guard: buffered output may meet a closed pipe only now
        return code
    except BrokenPipeError:
        _silence(io_.stdout)
        return EXIT_BROKEN_PIPE


def _run(argv: list[str], io_: _Io, env: Mapping[str, str], stdin: TextIO) -> int:
    parser = _parser()
    usage = io.StringIO()
    try:
        with contextlib.redirect_stdout(io_.stdout), contextlib.redirect_stderr(usage):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        text = usage.getvalue()
        io_.stderr.write(text)
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if code != EXIT_OK and io_.json:
            message = next((line.split("error: ", 1)[1] for line in reversed(text.splitlines()) if "error: " in line),
                           "usage error")
            io_.out(json.dumps({"ok": False, "error": {"command": None, "exit_code": code, "kind": "usage",
                                                       "message": message}}, sort_keys=True))
        return code
    if args.command is None:
        parser.print_help(io_.stderr)
        return EXIT_USAGE
    try:
        if args.command == "decode":
            return _cmd_decode(args, io_, stdin)
        if args.command == "doctor":
            return _cmd_doctor(args, io_, env)
        return _cmd_exchange(args, io_, env, stdin)
    except _UsageError as exc:
        return io_.fail(args.command, str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the promise is: no traceback, no secret
        return io_.fail(args.command, f"{type(exc).__name__}; please report it.", EXIT_PROBLEMS, kind="internal error")


def _silence(stream: TextIO) -> None:
    """After EPIPE: point the stream's descriptor at /dev/null so the interpreter's final
    flush does not fail a second time."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass
