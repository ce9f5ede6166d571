"""``exchange``: the headers a call to a destination would carry for a user."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Mapping, TextIO

from ..errors import (
    ConfigurationError,
    DestinationNotFoundError,
    InvalidTokenError,
    MissingUserTokenError,
    PropagationError,
    TokenExchangeError,
)
from ..tokens import UserToken
from .common import (
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
    _PLAIN_HEADERS,
    _expiry_text,
    _read_token,
    _utc,
)
from .doctor import (
    _secret_values,
)


# -- exchange -----------------------------------------------------------------------------------------
def _describe_header(name: str, value: str, now: float) -> dict[str, Any]:
    scheme, _, credential = value.partition(" ")
    info: dict[str, Any] = {"name": name}
    if name.lower() in _PLAIN_HEADERS:
        info["value"] = value
        return info
    info["scheme"] = scheme if credential else None
    secret = credential if credential else value
    from ..tokens import fingerprint

    info["fingerprint"] = fingerprint(secret)
    if scheme.lower() == "bearer" and credential:
        try:
            token = UserToken.parse(credential)
        except InvalidTokenError:
            info["format"] = "opaque"
        else:
            info["format"] = "jwt"
            info["user"] = token.user
            info["client_id"] = token.client_id
            info["audiences"] = list(token.audiences)
            info["expires_at"] = _utc(token.expires_at)
            info["expiry"] = _expiry_text(token, now)
    return info


def _cmd_exchange(
    args: argparse.Namespace, io_: _Io, environ: Mapping[str, str], stdin: TextIO
) -> int:
    from ..engine import Propagator

    token_text = args.token if args.token is not None else environ.get(TOKEN_ENV)
    user: UserToken | None = None
    if token_text is not None:
        raw = _read_token(token_text, stdin, "--token")
        io_.secrets.add(raw)
        try:
            user = UserToken.parse(raw)
        except InvalidTokenError as exc:
            return io_.fail("exchange", f"the user token is malformed: {exc.error_description}", EXIT_USAGE)
    hint: str | None = None
    try:
        propagator = Propagator.from_env(environ, cwd=args.dir)
        for binding in propagator.bindings:
            io_.secrets.update(_secret_values(binding.credentials))
        destination = propagator.destination(args.name, user_token=user)
        if destination.client is not None:
            io_.secrets.update(s for s in (destination.client.client_secret, destination.client.key) if s)
        password = destination.properties.get("Password")
        if isinstance(password, str):
            io_.secrets.add(password)
        # What propagator.headers(NAME, user_token=...) does, keeping the strategy and proxy for the report.
        auth = propagator.authorize(destination, user)
    except MissingUserTokenError as exc:
        if user is not None and not user.is_user:
            hint = "the given token is a technical (client_credentials) token: pass a user's token."
        else:
            hint = f"pass the user's JWT with --token JWT, --token - (stdin) or the {TOKEN_ENV} variable."
        return _fail(io_, exc, EXIT_MISSING_USER, hint)
    except TokenExchangeError as exc:
        detail = {"status": exc.status, "error": exc.error, "description": exc.error_description}
        if exc.error == "invalid_grant":
            hint = "the user token was refused: it may be expired, or its issuer is not trusted by that token service."
        elif exc.error in ("invalid_client", "unauthorized_client"):
            hint = "the OAuth client was refused: check clientId/clientSecret (or the binding's credentials)."
        return _fail(io_, exc, EXIT_EXCHANGE, hint, detail)
    except DestinationNotFoundError as exc:
        hint = f"check the name, or run `{PROG} doctor` to list the destinations this environment defines."
        return _fail(io_, exc, EXIT_NOT_FOUND, hint)
    except ConfigurationError as exc:
        return _fail(io_, exc, EXIT_CONFIGURATION, f"run `{PROG} doctor` for every problem of this environment.")
    except InvalidTokenError as exc:
        return _fail(io_, exc, EXIT_USAGE, None)
    except PropagationError as exc:
        return _fail(io_, exc, EXIT_PROBLEMS, None)

    now = time.time()
    rows = []
    for name, value in auth.headers.items():
        row = _describe_header(name, value, now)
        if args.show_token:
            row["value"] = value
        elif name.lower() not in _PLAIN_HEADERS:
            io_.secrets.add(value)
            if " " in value:
                io_.secrets.add(value.partition(" ")[2])
        rows.append(row)
    report = {
        "destination": destination.name,
        "source": destination.source,
        "url": destination.url,
        "authentication": destination.authentication,
        "proxy_type": destination.proxy_type,
        "proxy": auth.proxy_url,
        "strategy": auth.strategy,
        "user": None if user is None else {"user": user.user, "kind": user.kind, "tenant": user.tenant,
                                           "fingerprint": user.fingerprint},
        "headers": rows,
    }
    if args.show_token:
        # The operator asked for raw header values: they must not be scrubbed from this output.
        io_.secrets = {s for s in io_.secrets if not any(s and s in v for v in auth.headers.values())}
    if args.json:
        io_.out(json.dumps(report, indent=2, sort_keys=True))
        return EXIT_OK
    io_.out(f"Destination: {destination.name}  ({destination.source})")
    io_.out(f"  URL={destination.url}  Authentication={destination.authentication}  ProxyType={destination.proxy_type}"
            f"  proxy={auth.proxy_url or '-'}  strategy={auth.strategy}")
    if user is not None:
        io_.out(f"User: {user.user or '-'} ({user.kind}, tenant {user.tenant or '-'}, fingerprint {user.fingerprint})")
    else:
        io_.out("User: none given")
    if not rows:
        io_.out("Headers: none (the call carries no credentials)")
    else:
        io_.out("Headers:")
    for row in rows:
        io_.out(f"  {row['name']}:")
        if "scheme" in row and row.get("scheme"):
            io_.out(f"      scheme: {row['scheme']}")
        if row.get("format") == "jwt":
            io_.out(f"      user: {row['user'] or '-'}  client: {row['client_id'] or '-'}  "
                    f"aud: {', '.join(row['audiences']) or '-'}")
            io_.out(f"      exp: {row['expires_at'] or '-'} ({row['expiry']})")
        elif row.get("format") == "opaque":
            io_.out("      opaque token")
        if "fingerprint" in row:
            io_.out(f"      fingerprint: {row['fingerprint']}")
        if "value" in row:
            io_.out(f"      value: {row['value']}")
    if not args.show_token and any("fingerprint" in r for r in rows):
        io_.out("(raw values hidden; --show-token prints them)")
    return EXIT_OK


def _fail(io_: _Io, exc: Exception, code: int, hint: str | None, detail: Mapping[str, Any] | None = None) -> int:
    message = " ".join(str(exc).split())
    return io_.fail("exchange", message, code, hint=hint, detail=detail)
