"""WSGI middleware: validate the caller's bearer JWT and make it the current user.

.. code-block:: python

    app.wsgi_app = PropagationMiddleware(app.wsgi_app, public_paths=["/health"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from .context import CURRENT_TOKENS as _VAR
from .context import ENVIRON_EXCHANGED_KEY, ENVIRON_KEY, ENVIRON_PUBLIC_KEY
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
    ) -> None:
        self.app = app
        self.propagator = propagator if propagator is not None else Propagator.from_env()
        self.gate = InboundGate(
            self.propagator,
            public_paths=public_paths,
            require_token=require_token,
            ias_to_xsuaa=ias_to_xsuaa,
            xsuaa_trust_client_id=xsuaa_trust_client_id,
            public_clients=public_clients,
            allow_technical=allow_technical,
            validate_x5t=validate_x5t,
        )
        self._x5t = self.gate.validate_x5t
        self._has_public_paths = bool(self.gate.public_paths)  # most apps: skip the path match

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
        finally:
            _VAR.reset(handle)
        if type(result) is list or type(result) is tuple:
            # A materialized body: iterating it runs no application code and it has no
            # close(), so there is nothing left that must see the user.
            return result
        return _ContextIterable(result, current)


_END: Any = object()


class _ContextIterable:
    """The app's response iterable with the user set around each chunk's production and
    around ``close()``.

    Servers iterate after ``__call__`` returned (same thread, maybe another context), so
    the user is set per chunk and reset right after: a generator body sees
    ``current_token()``, and nothing of it survives on the server's thread between chunks.

    ``__iter__`` is a generator and reads chunks with ``next(it, _END)``: resuming a
    generator is cheaper than a Python ``__next__`` call per chunk, and the end of the body
    raises no ``StopIteration`` through this frame (measured: a few µs per request).
    """

    __slots__ = ("_iterable", "_current")

    def __init__(self, iterable: Iterable[bytes], current: _Current) -> None:
        self._iterable = iterable
        self._current = current

    def __iter__(self) -> Iterator[bytes]:
        var, current = _VAR, self._current
        handle = var.set(current)
        try:
            iterator = iter(self._iterable)  # a custom __iter__ is application code too
            chunk = next(iterator, _END)
        finally:
            var.reset(handle)
        while chunk is not _END:
            yield chunk
            handle = var.set(current)
            try:
                chunk = next(iterator, _END)
            finally:
                var.reset(handle)

    def close(self) -> None:
        close: Callable[[], Any] | None = getattr(self._iterable, "close", None)
        if close is None:
            return
        handle = _VAR.set(self._current)
        try:
            close()
        finally:
            _VAR.reset(handle)
