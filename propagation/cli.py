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
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence, TextIO
from urllib.parse import urlsplit

from .errors import (
    ConfigurationError,
    DestinationNotFoundError,
    InvalidTokenError,
    MissingUserTokenError,
    PropagationError,
    TokenExchangeError,
)
from .tokens import UserToken

__all__ = ["main", "EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "EXIT_MISSING_USER", "EXIT_EXCHANGE",
           "EXIT_NOT_FOUND", "EXIT_CONFIGURATION", "TOKEN_ENV"]

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


# -- decode -------------------------------------------------------------------------------------------
def _token_summary(token: UserToken, now: float) -> dict[str, Any]:
    return {
        "kind": token.kind,
        "issuer": token.issuer,
        "tenant": token.tenant,
        "subdomain": token.subdomain,
        "user": token.user,
        "client_id": token.client_id,
        "audiences": list(token.audiences),
        "grant_type": token.grant_type,
        "issued_at": _utc(_num(token.claims.get("iat"))),
        "expires_at": _utc(token.expires_at),
        "expires_in_seconds": None if token.expires_in(now) is None else int(token.expires_in(now) or 0),
        "expiry": _expiry_text(token, now),
        "fingerprint": token.fingerprint,
    }


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _is_technical(token: UserToken) -> tuple[bool, str | None]:
    """Technical (no user) by ``grant_type``; for IAS also by shape (``sub`` is the client, no user claims)."""
    if not token.is_user:
        return True, "grant_type is client_credentials"
    if token.kind == "ias":
        sub, azp = token.claims.get("sub"), token.claims.get("azp")
        has_user = any(token.claims.get(c) for c in ("user_uuid", "email", "user_name", "given_name"))
        if isinstance(sub, str) and sub and sub == azp and not has_user:
            return True, "sub equals azp and the token has no user claims (IAS client_credentials shape)"
    return False, None


def _diagnosis(token: UserToken, now: float, args: argparse.Namespace) -> dict[str, Any]:
    findings: list[str] = ["The signature was NOT verified: decode only reads the token."]
    technical, why = _is_technical(token)
    expired = token.is_expired(now=now)
    if technical:
        findings.append(
            f"Technical token ({why}): it carries no user, so it cannot serve destinations that need a user "
            "(OAuth2JWTBearer, OAuth2UserTokenExchange, OAuth2TokenExchange, OAuth2SAMLBearerAssertion, "
            "PrincipalPropagation, forwardAuthToken). Use a token from a user login."
        )
    if expired:
        findings.append("The token is expired: every exchange with it will be refused (invalid_grant). Get a fresh one.")

    ias: dict[str, Any] | None = None
    if token.kind == "ias":
        own = {c for c in (token.claims.get("azp"), token.client_id) if isinstance(c, str) and c}
        extra = [a for a in token.audiences if a not in own]
        ias = {"own_client": sorted(own), "extra_audiences": extra}
        trust = args.xsuaa_trust_client_id
        if trust:
            present = trust in token.audiences
            ias["xsuaa_trust_client_present"] = present
            if present:
                findings.append(
                    f"aud contains the XSUAA trust client '{trust}': IAS→XSUAA exchange "
                    "(xsuaa-cross-consumption) can work."
                )
            else:
                findings.append(
                    f"aud lacks the XSUAA trust client '{trust}': an IAS→XSUAA exchange will be refused. Enable "
                    "'xsuaa-cross-consumption' in the identity binding parameters, or exchange the token at IAS first."
                )
        elif extra:
            findings.append(
                "aud holds more than the IAS application's own client: "
                + ", ".join(extra)
                + ". One of them is the XSUAA trust client if IAS→XSUAA exchange (xsuaa-cross-consumption) should "
                "work; check with --xsuaa-trust-client-id ID."
            )
        else:
            findings.append(
                "aud holds only the IAS application's own client: no XSUAA trust client, so an IAS→XSUAA exchange "
                "(xsuaa-cross-consumption) will be refused until the token is exchanged at IAS /oauth2/token."
            )
        azp = token.claims.get("azp")
        only_azp = isinstance(azp, str) and list(token.audiences) == [azp]
        public: bool | None = None
        if args.public_client:
            public = azp == args.public_client
            if public and only_azp:
                findings.append(
                    f"Public-client (PKCE) token of '{azp}': aud == azp. Exchange it first at IAS /oauth2/token "
                    "(jwt-bearer with the app's confidential client) for a private token."
                )
            elif public:
                findings.append(f"Token of the public client '{azp}', with further audiences.")
            else:
                findings.append(f"Not a token of the public client '{args.public_client}' (azp is '{azp}').")
        elif only_azp:
            public = None
            findings.append(
                f"aud == azp ('{azp}'): this may be a public-client (PKCE) token; confirm with --public-client ID. "
                "Public-client tokens must be exchanged at IAS for a private token before further exchanges."
            )
        ias["public_client"] = public

    issuer = token.issuer or "(no issuer)"
    serves: dict[str, str] = {}
    for auth in _ALL_AUTHENTICATIONS:
        if auth in ("NoAuthentication", "BasicAuthentication", "OAuth2ClientCredentials", "OAuth2Password",
                    "ClientCertificateAuthentication"):
            serves[auth] = "yes (needs no user)"
        elif technical:
            serves[auth] = "no (technical token: no user)"
        elif expired:
            serves[auth] = "no (expired)"
        elif auth == "NoAuthentication+forwardAuthToken":
            serves[auth] = f"yes, if the target trusts the issuer {issuer}"
        elif auth == "OAuth2SAMLBearerAssertion":
            serves[auth] = "yes, through the Destination service only"
        elif auth == "PrincipalPropagation":
            serves[auth] = "yes, OnPremise through the Connectivity proxy"
        else:
            serves[auth] = f"yes, if the destination's token service trusts the issuer {issuer}"
    return {"technical": technical, "expired": expired, "findings": findings, "ias": ias, "serves": serves}


def _cmd_decode(args: argparse.Namespace, io_: _Io, stdin: TextIO) -> int:
    raw = _read_token(args.token, stdin, "TOKEN")
    io_.secrets.add(raw)
    try:
        token = UserToken.parse(raw)
    except InvalidTokenError as exc:
        io_.err(f"{PROG} decode: error: {exc.error_description}")
        return EXIT_USAGE
    now = time.time()
    summary = _token_summary(token, now)
    diagnosis = _diagnosis(token, now, args)
    header = {k: token.header.get(k) for k in ("alg", "kid", "typ", "jku") if token.header.get(k) is not None}
    if args.json:
        data = {"header": dict(token.header), "claims": dict(token.claims), **summary, "diagnosis": diagnosis,
                "signature_verified": False}
        io_.out(json.dumps(data, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    io_.out("Header: " + ", ".join(f"{k}={v}" for k, v in header.items()))
    io_.out("Claims:")
    io_.out(json.dumps(dict(token.claims), indent=2, sort_keys=True, default=str))
    io_.out()
    labels = [
        ("kind", token.kind), ("issuer", token.issuer), ("tenant", token.tenant), ("subdomain", token.subdomain),
        ("user", token.user), ("client id", token.client_id), ("audiences", ", ".join(token.audiences) or None),
        ("grant type", token.grant_type), ("issued", summary["issued_at"]),
        ("expires", f"{summary['expires_at'] or '-'} ({summary['expiry']})"), ("fingerprint", token.fingerprint),
    ]
    width = max(len(k) for k, _ in labels)
    for key, value in labels:
        io_.out(f"{key + ':':<{width + 2}}{value if value not in (None, '') else '-'}")
    io_.out()
    io_.out("Diagnosis:")
    for finding in diagnosis["findings"]:
        io_.out(f"  - {finding}")
    io_.out("Can serve destinations with Authentication:")
    width = max(len(a) for a in diagnosis["serves"])
    for auth, verdict in diagnosis["serves"].items():
        io_.out(f"  {auth:<{width}}  {verdict}")
    return EXIT_OK


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
    """Every string under a secret-looking key (for scrubbing), recursively."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _secret_values(v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _secret_values(v, key)
    elif isinstance(value, str) and any(part in key.lower() for part in _SECRET_KEY_PARTS):
        yield value


def _doctor(environ: Mapping[str, str], cwd: str | None, io_: _Io) -> dict[str, Any]:
    from .bindings import Bindings
    from .outbound.connectivity import MODE_ENV, ConnectivityConfig, normalize_mode
    from .destinations.env import destination_from_binding, destinations_from_env
    from .destinations.service import TTL_ENV, DestinationServiceConfig

    problems: list[str] = []
    notes: list[str] = []
    try:
        bindings = Bindings.from_env(environ, cwd=cwd)
    except ConfigurationError as exc:
        problems.append(f"Service bindings cannot be read: {exc}")
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

    return {
        "sources": list(bindings.sources),
        "bindings": binding_rows,
        "destinations": destination_rows,
        "notes": notes,
        "problems": problems,
        "ok": not problems,
    }


def _cmd_doctor(args: argparse.Namespace, io_: _Io, environ: Mapping[str, str]) -> int:
    report = _doctor(environ, args.dir, io_)
    if args.json:
        io_.out(json.dumps(report, indent=2, sort_keys=True))
        return EXIT_OK if report["ok"] else EXIT_PROBLEMS
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


# -- exchange -----------------------------------------------------------------------------------------
def _describe_header(name: str, value: str, now: float) -> dict[str, Any]:
    scheme, _, credential = value.partition(" ")
    info: dict[str, Any] = {"name": name}
    if name.lower() in _PLAIN_HEADERS:
        info["value"] = value
        return info
    info["scheme"] = scheme if credential else None
    secret = credential if credential else value
    from .tokens import fingerprint

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
    from .engine import Propagator

    token_text = args.token if args.token is not None else environ.get(TOKEN_ENV)
    user: UserToken | None = None
    if token_text is not None:
        raw = _read_token(token_text, stdin, "--token")
        io_.secrets.add(raw)
        try:
            user = UserToken.parse(raw)
        except InvalidTokenError as exc:
            io_.err(f"{PROG} exchange: error: the user token is malformed: {exc.error_description}")
            return EXIT_USAGE
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
        detail = ", ".join(
            f"{k} {v}" for k, v in (("status", exc.status), ("error", exc.error), ("description", exc.error_description))
            if v not in (None, "")
        )
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


def _fail(io_: _Io, exc: Exception, code: int, hint: str | None, detail: str = "") -> int:
    message = " ".join(str(exc).split())
    io_.err(f"{PROG} exchange: error: {message}" + (f" [{detail}]" if detail else ""))
    if hint:
        io_.err(f"hint: {hint}")
    return code


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
    """Run the command line; returns the exit code (never raises, never prints a traceback)."""
    env = os.environ if environ is None else environ
    io_ = _Io(stdout or sys.stdout, stderr or sys.stderr)
    stdin = sys.stdin if stdin is None else stdin
    parser = _parser()
    try:
        with contextlib.redirect_stdout(io_.stdout), contextlib.redirect_stderr(io_.stderr):
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
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
        io_.err(f"{PROG} {args.command}: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the promise is: no traceback, no secret
        io_.err(f"{PROG} {args.command}: internal error ({type(exc).__name__}); please report it.")
        return EXIT_PROBLEMS
