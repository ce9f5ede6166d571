"""What every command shares: exit codes, output with scrubbing, token input, time text."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, TextIO
from urllib.parse import urlsplit

from ..destinations.model import AUTHENTICATIONS
from ..tokens import UserToken


EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_MISSING_USER = 3
EXIT_EXCHANGE = 4
EXIT_NOT_FOUND = 5
EXIT_CONFIGURATION = 6
#: The reader of stdout went away (``| head -1``): 128 + SIGPIPE, quietly.
EXIT_BROKEN_PIPE = 141

#: Environment variable ``exchange`` reads the user token from when ``--token`` is absent.
TOKEN_ENV = "PROPAGATION_TOKEN"

PROG = "python -m propagation"

#: Authentication types, in the order the DESIGN table lists them.
_ALL_AUTHENTICATIONS = (
    "NoAuthentication",
    "NoAuthentication+forwardAuthToken",
    *(a for a in AUTHENTICATIONS if a != "NoAuthentication"),
)
_OAUTH_CLIENT_AUTHENTICATIONS = frozenset(
    {"OAuth2ClientCredentials", "OAuth2Password", "OAuth2JWTBearer", "OAuth2UserTokenExchange", "OAuth2TokenExchange"}
)
_SERVICE_ONLY_AUTHENTICATIONS = frozenset({"OAuth2SAMLBearerAssertion", "ClientCertificateAuthentication"})
#: Credential keys whose values are secrets whatever they look like (lower case).
_SECRET_KEYS = frozenset({"clientsecret", "client_secret", "password", "passwd", "secret", "key", "private_key",
                          "privatekey", "certificate", "refresh_token", "access_token", "id_token", "token"})
#: Key endings that name secret material (``tokenServicePassword``, ``serviceKeySecret``).
_SECRET_KEY_ENDINGS = ("secret", "password", "passwd", "_key", "privatekey")
_URL_OR_HOST = re.compile(r"^(?:[a-z][a-z0-9+.-]*://\S+|[a-z0-9-]+(?:\.[a-z0-9-]+)+(?::\d+)?)$", re.IGNORECASE)
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*$")
#: Header values that are safe to print (everything else may be a credential).
_PLAIN_HEADERS = frozenset({"sap-connectivity-scc-location_id"})


class _UsageError(Exception):
    """A wrong command line; exit 2 with the message."""


def is_secret(key: str, value: str) -> bool:
    """Whether a credential value is a secret, judged by what it is, not by a key substring:
    a client secret or password under its own key always; key material (PEM), a JWT, or a
    value under a key/token key unless it is a URL or host name (``token_service_url``,
    ``token_service_domain``, ``uaadomain`` stay readable in error messages)."""
    k = key.lower()
    if k in ("clientsecret", "client_secret", "password", "passwd", "secret") or k.endswith(_SECRET_KEY_ENDINGS[:3]):
        return True
    text = value.strip()
    if "-----BEGIN" in text or (text.startswith("eyJ") and _JWT_SHAPE.match(text)):
        return True
    if not text or _URL_OR_HOST.match(text):
        return False
    return k in _SECRET_KEYS or k.endswith(_SECRET_KEY_ENDINGS) or k.endswith(("key", "token"))


# -- output helpers ---------------------------------------------------------------------------------
@dataclass
class _Io:
    stdout: TextIO
    stderr: TextIO
    secrets: set[str] = field(default_factory=set)
    json: bool = False  # errors also as one JSON object on stdout (``--json``)

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "<redacted>")
        return text

    def out(self, text: str = "") -> None:
        self.stdout.write(self.scrub(text) + "\n")

    def err(self, text: str) -> None:
        self.stderr.write(self.scrub(text) + "\n")

    def fail(self, command: str | None, message: str, code: int, *, kind: str = "error", hint: str | None = None,
             detail: Mapping[str, Any] | None = None) -> int:
        """Report an error: text on stderr; with ``--json`` also ``{"ok": false, "error": {...}}``
        on stdout, so a script reading stdout sees the failure as JSON. Returns ``code``."""
        where = f"{PROG} {command}" if command else PROG
        extra = ", ".join(f"{k} {v}" for k, v in (detail or {}).items() if v not in (None, ""))
        self.err(f"{where}: {kind}: {message}" + (f" [{extra}]" if extra else ""))
        if hint:
            self.err(f"hint: {hint}")
        if self.json:
            error: dict[str, Any] = {"command": command, "exit_code": code, "kind": kind, "message": message}
            if hint:
                error["hint"] = hint
            error.update({k: v for k, v in (detail or {}).items() if v not in (None, "")})
            self.out(json.dumps({"ok": False, "error": error}, sort_keys=True))
        return code


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def _utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return None


def _expiry_text(token: UserToken, now: float) -> str:
    remaining = token.expires_in(now)
    if remaining is None:
        return "no 'exp' claim"
    if remaining <= 0:
        return f"EXPIRED {_duration(remaining)} ago"
    return f"expires in {_duration(remaining)}"


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _clean_token_text(text: str) -> str:
    """The JWT of an argument or stdin: whitespace and a ``Bearer``/``Authorization:`` prefix removed."""
    value = text.strip()
    if value.lower().startswith("authorization:"):
        value = value[len("authorization:"):].strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value


def _read_token(value: str | None, stdin: TextIO, what: str) -> str:
    if value is None or value == "-":
        if stdin is None or (hasattr(stdin, "isatty") and stdin.isatty()):
            raise _UsageError(f"no token given: pass it as {what}, or pipe it on stdin ({what} -)")
        value = stdin.read()
    token = _clean_token_text(value)
    if not token:
        raise _UsageError(f"empty token: pass a JWT as {what} or on stdin")
    return token


