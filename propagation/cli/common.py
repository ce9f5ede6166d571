"""What every command shares: exit codes, output with scrubbing, token input, time text."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TextIO
from urllib.parse import urlsplit

from ..tokens import UserToken


EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_MISSING_USER = 3
EXIT_EXCHANGE = 4
EXIT_NOT_FOUND = 5
EXIT_CONFIGURATION = 6

#: Environment variable ``exchange`` reads the user token from when ``--token`` is absent.
TOKEN_ENV = "PROPAGATION_TOKEN"

PROG = "python -m propagation"

#: Authentication types, in the order the DESIGN table lists them.
_ALL_AUTHENTICATIONS = (
    "NoAuthentication",
    "NoAuthentication+forwardAuthToken",
    "BasicAuthentication",
    "OAuth2ClientCredentials",
    "OAuth2Password",
    "OAuth2JWTBearer",
    "OAuth2UserTokenExchange",
    "OAuth2TokenExchange",
    "OAuth2SAMLBearerAssertion",
    "PrincipalPropagation",
    "ClientCertificateAuthentication",
)
_OAUTH_CLIENT_AUTHENTICATIONS = frozenset(
    {"OAuth2ClientCredentials", "OAuth2Password", "OAuth2JWTBearer", "OAuth2UserTokenExchange", "OAuth2TokenExchange"}
)
_SERVICE_ONLY_AUTHENTICATIONS = frozenset({"OAuth2SAMLBearerAssertion", "ClientCertificateAuthentication"})
#: Credential keys whose values are secrets (matched as substrings, lower case).
_SECRET_KEY_PARTS = ("secret", "password", "key", "certificate", "token")
#: Header values that are safe to print (everything else may be a credential).
_PLAIN_HEADERS = frozenset({"sap-connectivity-scc-location_id"})


class _UsageError(Exception):
    """A wrong command line; exit 2 with the message."""


# -- output helpers ---------------------------------------------------------------------------------
@dataclass
class _Io:
    stdout: TextIO
    stderr: TextIO
    secrets: set[str] = field(default_factory=set)

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "<redacted>")
        return text

    def out(self, text: str = "") -> None:
        self.stdout.write(self.scrub(text) + "\n")

    def err(self, text: str) -> None:
        self.stderr.write(self.scrub(text) + "\n")


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


