"""WSGI middleware: validate the caller's bearer JWT and make it the current user.

.. code-block:: python

    app.wsgi_app = PropagationMiddleware(app.wsgi_app, public_paths=["/health"])
"""

from __future__ import annotations

from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from .context import CURRENT_TOKENS as _VAR
from .context import ENVIRON_EXCHANGED_KEY, ENVIRON_KEY, ENVIRON_PUBLIC_KEY
from .checks import built_from_env, startup_check
from .correlation import correlated_wsgi
from .engine import Propagator
from .errors import InvalidTokenError
from .inbound import InboundGate, PublicPaths, unauthorized
from .tokens import UserToken

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["PropagationMiddleware"]

#: What the context variable holds: (user, XSUAA token of that user); see ``context.py``.
_Current = tuple[UserToken | None, UserToken | None]
_ANONYMOUS: _Current = (None, None)


class PropagationMiddleware:
    """Authenticate every request with its ``Authorization: Bearer <JWT>`` header.

    Security stance: fail closed. Unless the path is public, a request reaches ``app`` only
    with a token sap-xssec validated against the app's XSUAA or IAS binding (signature,
    expiry, audience, issuer). Everything else — no header, another scheme, a malformed,
    unsigned, HMAC-signed, expired, forged or foreign token — is answered here with ``401``
    ``{"error": "invalid_token", "error_description": ...}`` and a ``WWW-Authenticate``
    challenge (RFC 6750), never a 500 and never the app. Rejections are logged at info with
    the token's fingerprint; the token and the request headers are never logged.

    On success the :class:`~propagation.UserToken` is put in ``environ["propagation.token"]``
    and made :func:`~propagation.current_token` while ``app`` runs *and* while its response
    iterable is iterated and closed (streaming responses keep the user); outside of that the
    context is left as it was. Nothing is removed from ``environ``.

    :param app: The WSGI application to wrap.
    :param propagator: Engine whose validator checks tokens; default
        :meth:`Propagator.from_env` — read once, here, so a missing binding fails at startup.
    :param public_paths: Paths (``PATH_INFO``) that skip authentication entirely: exact
        (``/health``) or a prefix ending in ``/`` or ``*`` (``/static/``, ``/health*``). Paths
        with ``.``/``..`` segments never match. A token sent to a public path is ignored.
    :param require_token: With ``False`` a request *without* an ``Authorization`` header
        passes anonymously (``current_token()`` is ``None``); a header that is present but
        bad is still a 401.
    :param ias_to_xsuaa: Hybrid inbound: exchange every validated IAS token for an XSUAA
        token (jwt-bearer at the XSUAA binding), validate it, and put it in
        ``environ["propagation.xsuaa_token"]`` / :func:`~propagation.current_xsuaa_token`.
        ``current_token()`` stays the IAS token. Default: the propagator's setting, else
        env ``PROPAGATION_IAS_TO_XSUAA``.
    :param xsuaa_trust_client_id: The XSUAA trust's IAS client id that must be in the IAS
        token's ``aud`` (else env ``PROPAGATION_XSUAA_TRUST_CLIENT_ID``; unset: XSUAA decides).
    :param public_clients: IAS public (PKCE) client ids whose tokens are exchanged at IAS for
        this app's token (else env ``PROPAGATION_PUBLIC_CLIENTS``, comma-separated); the
        original is in ``environ["propagation.public_token"]``.
    :param allow_technical: Admit technical callers (XSUAA ``client_credentials``, IAS tokens
        of a client, ``sap_id_type: app``); ``current_token().is_user`` is then ``False`` and
        destinations that need a user refuse them. Default: such tokens are a 401.
    :param validate_x5t: Accept IAS tokens only when certificate-bound to the client
        certificate BTP forwards in ``X-Forwarded-Client-Cert`` (``cnf.x5t#S256``, RFC 8705);
        a mismatch, a token without the claim or a request without a certificate is a 401.
    :param clock_skew_leeway: Seconds a token is still accepted past ``exp`` and before ``nbf``
        (clock skew between the IdP and this host; 0 to 300). Default: the propagator's setting,
        else env ``PROPAGATION_CLOCK_SKEW_LEEWAY``, else 60 (SAP's Java security library).
    :param strict: The whole configuration — bindings, every ``destinations`` entry, the token
        cache settings — is checked here (:func:`propagation.checks.startup_check`, the problems
        ``python -m propagation doctor`` lists); any problem raises ``ConfigurationError`` with
        them, so the server does not start. ``False`` (or env ``PROPAGATION_STRICT=false``)
        logs them and starts; what is broken then fails when it is used.
    :param cors_preflight: CORS pre-flight requests (``OPTIONS`` with ``Origin`` and
        ``Access-Control-Request-Method``, which browsers send without credentials) pass without
        a token to the app's CORS handler (default) — anonymously, like a public path: a route
        that itself answers ``OPTIONS`` runs without a user. ``False``: they need a token.
    """

    def __init__(
        self,
        app: "WSGIApplication",
        *,
        propagator: Propagator | None = None,
        public_paths: Iterable[str] = (),
        require_token: bool = True,
        ias_to_xsuaa: bool | None = None,
        xsuaa_trust_client_id: str | None = None,
        public_clients: Iterable[str] | str | None = None,
        allow_technical: bool = False,
        validate_x5t: bool = False,
        clock_skew_leeway: float | str | None = None,
        strict: bool | None = None,
        cors_preflight: bool = True,
    ) -> None:
        self.app = app
        self.propagator = propagator if propagator is not None else built_from_env(Propagator.from_env)
        #: Configuration problems tolerated with ``strict=False`` (else: refused right here).
        self.problems = startup_check(self.propagator, strict=strict)
        self.strict = strict
        self.gate = InboundGate(
            self.propagator,
            public_paths=public_paths,
            require_token=require_token,
            ias_to_xsuaa=ias_to_xsuaa,
            xsuaa_trust_client_id=xsuaa_trust_client_id,
            public_clients=public_clients,
            allow_technical=allow_technical,
            validate_x5t=validate_x5t,
            clock_skew_leeway=clock_skew_leeway,
            cors_preflight=cors_preflight,
        )
        self._x5t = self.gate.validate_x5t
        self._has_public_paths = bool(self.gate.public_paths)  # most apps: skip the path match
        self._preflight = self.gate.cors_preflight

    @property
    def public_paths(self) -> PublicPaths:
        return self.gate.public_paths

    @property
    def require_token(self) -> bool:
        return self.gate.require_token

    @correlated_wsgi
    def __call__(self, environ: "WSGIEnvironment", start_response: "StartResponse") -> Iterable[bytes]:
        if self._has_public_paths and self.gate.is_public(environ.get("PATH_INFO") or "/"):
            return self._run(environ, start_response, _ANONYMOUS)
        if self._preflight and environ.get("REQUEST_METHOD") == "OPTIONS" and self.gate.is_preflight(
            "OPTIONS", environ.get("HTTP_ORIGIN"), environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD")
        ):
            return self._run(environ, start_response, _ANONYMOUS)
        header = environ.get("HTTP_AUTHORIZATION")
        auth = self.gate.cached_header(header)  # hot path: a token validated before, unexpired
        if auth is None or self._x5t:
            raw: str | None = None
            try:
                if auth is None:
                    raw = self.gate.raw_token(header)
                    auth = self.gate.authenticate(raw) if raw is not None else None
                if auth is not None and self._x5t:
                    self.gate.check_certificate(auth, environ.get("HTTP_X_FORWARDED_CLIENT_CERT"))
            except InvalidTokenError as exc:
                where = f"{environ.get('REQUEST_METHOD', '?')} {environ.get('PATH_INFO') or '/'}"
                self.gate.rejected(exc, raw, where)
                body, headers = unauthorized(exc)
                start_response("401 Unauthorized", headers)
                return [body]
            if auth is None:  # anonymous, allowed by require_token=False
                return self._run(environ, start_response, _ANONYMOUS)
        environ[ENVIRON_KEY] = auth.token
        if auth.xsuaa_token is not None:
            environ[ENVIRON_EXCHANGED_KEY] = auth.xsuaa_token
        if auth.public_token is not None:
            environ[ENVIRON_PUBLIC_KEY] = auth.public_token
        return self._run(environ, start_response, (auth.token, auth.xsuaa_token))

    def _run(self, environ: "WSGIEnvironment", start_response: "StartResponse", current: _Current) -> Iterable[bytes]:
        # Authenticated requests run with their user; anonymous and public ones with no user
        # (``_ANONYMOUS``), so nothing set earlier on this thread can pass for the caller.
        handle = _VAR.set(current)
        try:
            result = self.app(environ, start_response)
            if type(result) is list or type(result) is tuple:
                # A materialized body: iterating it runs no application code and it has no
                # close(), so there is nothing left that must see the user.
                return result
            context = copy_context()  # the request's context, its user included, for the body
        finally:
            _VAR.reset(handle)
        return _ContextIterable(result, context)


_END: Any = object()


class _ContextIterable:
    """The app's response iterable, producing each chunk and closing inside the request's
    context (a copy taken when the app returned, the user set).

    Servers iterate after ``__call__`` returned (same thread, maybe another context), so each
    chunk is produced with ``Context.run``: a generator body sees ``current_token()``, nothing
    of it survives on the server's thread between chunks, and what the body sets in context
    variables stays with the body. ``Context.run`` switches the whole context in C — cheaper
    than a ``set``/``reset`` pair per chunk (issue 18: the middleware's cost per request).
    """

    __slots__ = ("_iterable", "_context")

    def __init__(self, iterable: Iterable[bytes], context: Context) -> None:
        self._iterable = iterable
        self._context = context

    def __iter__(self) -> Iterator[bytes]:
        run = self._context.run
        iterator = run(iter, self._iterable)  # a custom __iter__ is application code too
        chunk = run(next, iterator, _END)
        while chunk is not _END:
            yield chunk
            chunk = run(next, iterator, _END)

    def close(self) -> None:
        close: Callable[[], Any] | None = getattr(self._iterable, "close", None)
        if close is not None:
            self._context.run(close)
