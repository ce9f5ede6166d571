"""OAuth 2.0 token endpoint client: client_credentials, password, jwt-bearer (RFC 7523),
token exchange (RFC 8693); client authentication by secret (Basic or form body) or by
X.509 (mTLS). Every call has a timeout; 5xx and connection errors retry with bounded
backoff; a 4xx answer raises :class:`~propagation.errors.TokenExchangeError` carrying the
OAuth ``error`` field. No token, secret or key ever appears in a message or a log line.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote_plus, urlsplit, urlunsplit

import requests

from .._log import logger
from ..errors import ConfigurationError, TokenExchangeError
from .http_headers import checked_header as _checked
from . import peer_json
from .redaction import sanitize as _sanitize
from .resilience import Breakers, resilient_flow
from ..events.instrument import traced_token_flow
from .flow import Answer, AsyncIO, Flow, HttpCall, SyncIO, TransportFailure, run_async, run_sync
from ..tokens import fingerprint

__all__ = [
    "GRANT_CLIENT_CREDENTIALS",
    "GRANT_PASSWORD",
    "GRANT_JWT_BEARER",
    "GRANT_TOKEN_EXCHANGE",
    "ClientCredentials",
    "TokenResponse",
    "OAuthClient",
    "TOKEN_TYPE_URNS",
    "expand_token_type",
]

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_PASSWORD = "password"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

#: RFC 8693 token type short names (as SAP documents them) → URNs.
TOKEN_TYPE_URNS: dict[str, str] = {
    "access_token": "urn:ietf:params:oauth:token-type:access_token",
    "id_token": "urn:ietf:params:oauth:token-type:id_token",
    "jwt": "urn:ietf:params:oauth:token-type:jwt",
    "refresh_token": "urn:ietf:params:oauth:token-type:refresh_token",
    "saml2": "urn:ietf:params:oauth:token-type:saml2",
    # SAP's own namespace (SAP Cloud Identity Services, token exchange API):
    "saml2-header": "urn:sap:identity:oauth:token-type:saml2-header",
    "saml2-session": "urn:sap:identity:oauth:token-type:saml2-session",
}


def expand_token_type(value: str) -> str:
    """``access_token`` → ``urn:ietf:params:oauth:token-type:access_token``; URNs pass through."""
    return TOKEN_TYPE_URNS.get(value.strip(), value.strip())


@dataclass(frozen=True, repr=False)
class ClientCredentials:
    """An OAuth client: id plus a secret, or a PEM certificate and key (mTLS)."""

    client_id: str
    client_secret: str | None = None
    certificate: str | None = None  # PEM chain
    key: str | None = None  # PEM private key

    @property
    def uses_mtls(self) -> bool:
        return bool(self.certificate and self.key)

    def __repr__(self) -> str:
        mode = "mtls" if self.uses_mtls else ("secret" if self.client_secret else "public")
        return f"ClientCredentials(client_id={self.client_id!r}, auth={mode!r})"


@dataclass(frozen=True, repr=False)
class TokenResponse:
    """A token endpoint's answer. ``expires_at`` is absolute (epoch seconds)."""

    access_token: str
    token_type: str = "bearer"
    expires_at: float | None = None
    scope: str | None = None
    issued_token_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def expires_in(self, now: float | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def __repr__(self) -> str:
        from ..tokens import fingerprint

        return f"TokenResponse(token_type={self.token_type!r}, expires_at={self.expires_at!r}, fingerprint={fingerprint(self.access_token)!r})"


# -- helpers ------------------------------------------------------------------------------
#: Short grant names for messages and logs (the URNs are long and say nothing more).
_GRANT_NAMES = {
    GRANT_CLIENT_CREDENTIALS: "client_credentials",
    GRANT_PASSWORD: "password",
    GRANT_JWT_BEARER: "jwt-bearer",
    GRANT_TOKEN_EXCHANGE: "token-exchange",
}

#: Headers this client owns. A ``tokenServiceURL.headers.*`` entry naming one of them is a
#: configuration error, raised loudly: silently replacing the client authentication or the
#: body framing would send credentials somewhere, or in a shape, nobody asked for.
_RESERVED_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "content-type", "content-length", "transfer-encoding", "host"}
)

#: Form fields that carry a credential: never logged, redacted from error texts.
_SECRET_FIELDS = ("client_secret", "password", "assertion", "subject_token", "actor_token", "refresh_token", "code")

#: Answer fields that are tokens themselves: kept out of ``TokenResponse.extra``.
_TOKEN_FIELDS = frozenset({"access_token", "refresh_token", "id_token"})
#: Answer fields mapped to ``TokenResponse`` attributes.
_MAPPED_FIELDS = frozenset({"token_type", "expires_in", "scope", "issued_token_type"})

def _grant_name(grant_type: str) -> str:
    return _GRANT_NAMES.get(grant_type, grant_type)


def _safe_url(url: str) -> str:
    """The URL without user info, query or fragment: those may carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _zone(headers: Mapping[str, str]) -> str | None:
    """The ``X-zid`` header's value, whatever the case of its name."""
    return next((v for k, v in headers.items() if k.strip().lower() == "x-zid" and v), None)


def _basic_header(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded *before* Basic encoding."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT-shaped access token (read, not verified: it only shortens a lifetime)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = peer_json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)), "access token's claims")
    except (ValueError, TypeError):  # PeerAnswerError is a ValueError
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) and math.isfinite(exp) else None


def _expires_in(value: Any) -> float | None:
    """``expires_in`` as a number; IdPs send ints, floats or numeric strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


# -- the client ------------------------------------------------------------------------------
class OAuthClient:
    """A token endpoint client, shared by the whole engine (it holds no per-user state).

    ``timeout`` goes to every request (``(connect, read)`` seconds) and ``deadline`` bounds the
    whole operation (:mod:`propagation.exchange.resilience`: retries and back-offs included, however slowly
    the IdP answers; a breaker per host and tenant fails fast after ``breaker_threshold``
    consecutive failures for ``breaker_cooldown`` seconds). A 5xx answer or a
    connection error/timeout is retried ``retries`` times after ``backoff * 2**attempt``
    seconds (via ``sleep``, or ``asleep`` in async code; injectable for tests); a 4xx answer is final. ``clock`` is the
    wall clock that turns ``expires_in`` into ``TokenResponse.expires_at``.

    Redirects are not followed: a token endpoint that redirects would receive the client
    credentials and the user's assertion at an address nobody configured. When this client
    creates its own session, that session refuses cookies, so no IdP session is shared
    between users; a ``session`` passed in is used as it is.
    """

    def __init__(
        self,
        *,
        timeout: float | tuple[float, float] = (5.0, 15.0),
        retries: int = 2,
        backoff: float = 0.25,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        asleep: Callable[[float], Awaitable[None]] | None = None,
        deadline: float = 30.0,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if backoff < 0:
            raise ValueError("backoff must be >= 0")
        if deadline <= 0:
            raise ValueError("deadline must be > 0")
        self.timeout = timeout
        self.retries = retries
        #: Seconds one token request or lookup may take in all, retries and back-offs included.
        self.deadline = deadline
        #: Per (host, tenant): fail fast after ``breaker_threshold`` consecutive failures (0: off).
        self.breakers = Breakers(breaker_threshold, breaker_cooldown)
        self._workers: Any = None
        self.backoff = backoff
        self.sleep = sleep
        self.clock = clock
        if session is None:
            session = requests.Session()
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.session = session
        #: The async side: ``httpx.AsyncClient`` per event loop (no cookies kept, no redirects).
        self.aio = AsyncIO(asleep)

    @property
    def io(self) -> SyncIO:
        """The blocking side: this client's ``requests`` session and ``sleep``, and the worker
        threads that let a caller stop waiting at the deadline."""
        if self._workers is None:
            from concurrent.futures import ThreadPoolExecutor

            self._workers = ThreadPoolExecutor(max_workers=32, thread_name_prefix="propagation-io")
        return SyncIO(self.session, self.sleep, self._workers)

    def close(self) -> None:
        self.session.close()
        if self._workers is not None:
            self._workers.shutdown(wait=False, cancel_futures=True)
            self._workers = None

    async def aclose(self) -> None:
        await self.aio.aclose()

    def __repr__(self) -> str:
        return f"OAuthClient(timeout={self.timeout!r}, retries={self.retries!r}, backoff={self.backoff!r})"

    # -- grants ---------------------------------------------------------------------------
    def client_credentials(self, token_url: str, client: ClientCredentials, **kw: Any) -> TokenResponse:
        """A technical token for the client itself (no user)."""
        return self.request_token(token_url, client, GRANT_CLIENT_CREDENTIALS, kw.pop("form", None), **kw)

    def password(self, token_url: str, client: ClientCredentials, username: str, password: str, **kw: Any) -> TokenResponse:
        """Resource owner password grant (destinations of type ``OAuth2Password``)."""
        form = {"username": username, "password": password, **(kw.pop("form", None) or {})}
        return self.request_token(token_url, client, GRANT_PASSWORD, form, **kw)

    def jwt_bearer(self, token_url: str, client: ClientCredentials, assertion: str, **kw: Any) -> TokenResponse:
        """RFC 7523: the user's JWT as ``assertion`` buys a token for the same user."""
        form = {"assertion": assertion, **(kw.pop("form", None) or {})}
        return self.request_token(token_url, client, GRANT_JWT_BEARER, form, **kw)

    def token_exchange(
        self,
        token_url: str,
        client: ClientCredentials,
        subject_token: str,
        subject_token_type: str = "urn:ietf:params:oauth:token-type:access_token",
        **kw: Any,
    ) -> TokenResponse:
        """RFC 8693 token exchange; ``form`` adds ``requested_token_type``, ``resource``…"""
        form = {
            "subject_token": subject_token,
            "subject_token_type": subject_token_type,
            **(kw.pop("form", None) or {}),
        }
        return self.request_token(token_url, client, GRANT_TOKEN_EXCHANGE, form, **kw)

    # -- the one request ------------------------------------------------------------------
    def request_token(
        self,
        token_url: str,
        client: ClientCredentials,
        grant_type: str,
        form: Mapping[str, str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        credentials_in_body: bool = True,
    ) -> TokenResponse:
        """POST one token request and parse the answer (blocking); see :meth:`token_flow`."""
        flow = self.token_flow(
            token_url, client, grant_type, form, headers=headers, query=query, credentials_in_body=credentials_in_body
        )
        return run_sync(flow, self.io)

    async def arequest_token(
        self,
        token_url: str,
        client: ClientCredentials,
        grant_type: str,
        form: Mapping[str, str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        credentials_in_body: bool = True,
    ) -> TokenResponse:
        """:meth:`request_token` for async code: awaited with ``httpx.AsyncClient``."""
        flow = self.token_flow(
            token_url, client, grant_type, form, headers=headers, query=query, credentials_in_body=credentials_in_body
        )
        return await run_async(flow, self.aio)

    @traced_token_flow
    def token_flow(
        self,
        token_url: str,
        client: ClientCredentials,
        grant_type: str,
        form: Mapping[str, str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        credentials_in_body: bool = True,
        tenant: str | None = None,
    ) -> Flow[TokenResponse]:
        """One token request as a flow (:mod:`propagation.exchange.flow`): the request, its retries and
        the parsing of the answer, without I/O.

        The body is ``grant_type`` + ``form`` + the client's authentication fields (those
        last, so ``form`` can never replace or add client credentials). Client
        authentication: mTLS when the client has a certificate and key (``client_id`` in
        the body, no secret anywhere); else the secret in the body
        (``credentials_in_body``, the Destination service default) or HTTP Basic with
        ``client_id`` still in the body; a public client sends ``client_id`` only.

        The breaker is keyed by (host, tenant): the tenant is the ``X-zid`` header (any case:
        a fixed token URL names the tenant only there), else ``tenant`` — so one tenant's failures
        at a shared IdP host never fail another tenant fast.

        Raises :class:`TokenExchangeError` (4xx, exhausted retries, unusable 2xx) and
        :class:`ConfigurationError` when ``headers`` names a header this client owns.
        """
        grant = _grant_name(grant_type)
        safe_url = _safe_url(token_url)
        host = urlsplit(token_url).hostname or ""

        body: dict[str, str] = {"grant_type": grant_type}
        for name, value in (form or {}).items():
            if value is not None and name not in ("grant_type", "client_id", "client_secret"):
                body[name] = str(value)
        body["client_id"] = client.client_id

        request_headers: dict[str, str] = {"Accept": "application/json"}
        for name, value in (headers or {}).items():
            if name.strip().lower() in _RESERVED_HEADERS:
                raise ConfigurationError(
                    f"Token request to {safe_url}: header '{name.strip()}' is set by the OAuth client "
                    f"and cannot be configured (tokenServiceURL.headers.{name.strip()})."
                )
            request_headers[name] = _checked(name, value, f"Token request to {safe_url}: tokenServiceURL.headers.{name.strip()}")
        request_headers["Content-Type"] = "application/x-www-form-urlencoded"

        if client.uses_mtls:
            auth_mode = "mtls"
        elif client.client_secret:
            if credentials_in_body:
                auth_mode = "body"
                body["client_secret"] = client.client_secret
            else:
                auth_mode = "basic"
                request_headers["Authorization"] = _basic_header(client.client_id, client.client_secret)
        else:
            auth_mode = "public"

        basic = request_headers.get("Authorization", "").partition(" ")[2]
        secrets = tuple(
            v for v in (client.client_secret, client.key, basic, *(body.get(f) for f in _SECRET_FIELDS)) if v
        )
        ctx = _RequestContext(safe_url, host, grant, client.client_id, secrets)
        cert = (client.certificate, client.key) if client.uses_mtls else None
        call = HttpCall(
            "POST", token_url, request_headers, body, dict(query or {}), cert, self.timeout  # type: ignore[arg-type]
        )
        logger.debug("token request host=%s grant=%s client=%s auth=%s", ctx.host, ctx.grant, ctx.client_id, auth_mode)
        started = self.clock()
        try:
            response, attempts = yield from resilient_flow(
                call, retries=self.retries, backoff=self.backoff, deadline=self.deadline, breakers=self.breakers,
                key=(host, _zone(request_headers) or tenant), what=ctx.prefix(),
            )
        except TransportFailure as exc:
            logger.debug("token request host=%s grant=%s failed: %s", ctx.host, ctx.grant, exc.cause)
            if exc.kind == "tls":
                # A TLS failure (untrusted IdP, rejected client certificate) does not heal.
                raise TokenExchangeError(f"{ctx.prefix()} failed: TLS error ({exc.cause}).", url=ctx.url) from exc.__cause__
            tries = getattr(exc, "attempts", 1)
            suffix = f" after {tries} attempt(s)" if exc.kind in ("connect", "timeout") else ""
            raise TokenExchangeError(f"{ctx.prefix()} failed: {exc.cause}{suffix}.", url=ctx.url) from exc.__cause__
        status = response.status
        logger.debug("token response host=%s grant=%s client=%s status=%d", ctx.host, ctx.grant, ctx.client_id, status)
        if 200 <= status < 300:
            return self._parse_success(response, started, ctx)
        raise self._error(response, ctx, attempts if status >= 500 else None)

    def _parse_success(self, response: Answer, started: float, ctx: "_RequestContext") -> TokenResponse:
        """A 2xx answer must be a JSON object with a string ``access_token``."""
        status = response.status
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TokenExchangeError(f"{ctx.prefix()} failed: {status} answer is not a JSON object.", status=status, url=ctx.url)
        access_token = data.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            error = _sanitize(data.get("error"), ctx.secrets, 64)
            description = _sanitize(data.get("error_description"), ctx.secrets)
            detail = f" ({error}{': ' + description if description else ''})" if error else ""
            raise TokenExchangeError(
                f"{ctx.prefix()} failed: {status} answer without an access_token{detail}.",
                status=status, error=error, error_description=description, url=ctx.url,
            )
        lifetime = _expires_in(data.get("expires_in"))
        token_type = data.get("token_type")
        scope = data.get("scope")
        issued = data.get("issued_token_type")
        result = TokenResponse(
            access_token=access_token,
            token_type=token_type if isinstance(token_type, str) and token_type else "bearer",
            # From the request's start: the IdP issued the token after that, so this errs early.
            # Without expires_in, a JWT's own exp (a default TTL could outlive it).
            expires_at=started + lifetime if lifetime is not None else _jwt_expiry(access_token),
            scope=scope if isinstance(scope, str) else None,
            issued_token_type=issued if isinstance(issued, str) else None,
            extra={k: v for k, v in data.items() if k not in _TOKEN_FIELDS and k not in _MAPPED_FIELDS},
        )
        logger.debug(
            "token issued host=%s grant=%s client=%s fingerprint=%s expires_in=%s",
            ctx.host, ctx.grant, ctx.client_id, fingerprint(access_token), lifetime,
        )
        return result

    def _error(self, response: Answer, ctx: "_RequestContext", attempts: int | None) -> TokenExchangeError:
        """RFC 6749 §5.2 error answer → TokenExchangeError; tolerant of HTML and plain text."""
        status = response.status
        try:
            data = response.json()
        except ValueError:
            data = None
        error = description = None
        if isinstance(data, dict):
            error = _sanitize(data.get("error"), ctx.secrets, 64)
            description = _sanitize(data.get("error_description"), ctx.secrets)
        if error:
            what = f"{status} {error}" + (f": {description}" if description else "")
        else:
            try:
                what = f"{status} {HTTPStatus(status).phrase}"
            except ValueError:
                what = str(status)
        if 300 <= status < 400:
            what += " (redirects are not followed for token requests)"
        if attempts is not None and attempts > 1:
            what += f" after {attempts} attempts"
        logger.debug("token request host=%s grant=%s client=%s refused: %s", ctx.host, ctx.grant, ctx.client_id, what)
        return TokenExchangeError(
            f"{ctx.prefix()} failed: {what}", status=status, error=error, error_description=description, url=ctx.url
        )


@dataclass(frozen=True, repr=False)
class _RequestContext:
    """What messages and logs may say about one token request (and what they must not)."""

    url: str
    host: str
    grant: str
    client_id: str
    secrets: tuple[str, ...]

    def prefix(self) -> str:
        return f"Token request to {self.url} (grant {self.grant})"

    def __repr__(self) -> str:
        return f"_RequestContext(url={self.url!r}, grant={self.grant!r}, client_id={self.client_id!r})"
