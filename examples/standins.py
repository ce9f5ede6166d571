"""Local stand-ins for the two remote systems of the forum scenario, for the demo and tests.

* :class:`TokenServer` behaves like XSUAA where the library can tell: ``GET /token_keys``
  (what sap-xssec fetches to validate the inbound token) and ``POST /oauth/token`` with
  ``client_credentials`` and jwt-bearer, real RS256 signatures, real OAuth error answers.
* :class:`ODataBackend` behaves like S/4HANA behind principal propagation: it accepts only
  tokens the token server signed, and a technical (``client_credentials``) token gets the
  401 the forum post quotes.

Both are real HTTPS servers on 127.0.0.1 (ephemeral ports, daemon threads) with a throw-away
CA, so the library's TLS, ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` handling and network
code run exactly as in production. Every call is recorded — with token fingerprints, never
tokens — so the demo can show who asked for what and whom the backend saw.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import json
import secrets
import shutil
import socketserver
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote_plus, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "GRANT_CLIENT_CREDENTIALS",
    "GRANT_JWT_BEARER",
    "NO_USER_TOKEN_MESSAGE",
    "FUNCTIONAL_LOCATION_PATH",
    "Pki",
    "TokenCall",
    "TokenServer",
    "BackendCall",
    "ODataBackend",
    "StandIns",
    "fingerprint",
]

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: What S/4HANA (and the SAP Cloud SDK) answer when the principal is missing.
NO_USER_TOKEN_MESSAGE = (
    "No user token (JWT) has been provided. This is strictly necessary for 'PrincipalPropagation'"
)
FUNCTIONAL_LOCATION_PATH = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation"
HOST = "127.0.0.1"


def fingerprint(raw: str) -> str:
    """First 12 hex digits of the token's SHA-256: enough to follow a token, useless to steal it."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:12]


def _b64uint(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


# --------------------------------------------------------------------------- PKI
class Pki:
    """A throw-away CA and a ``localhost``/127.0.0.1 server certificate in a private temp dir.

    Clients trust ``ca_file`` (via ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE``) instead of
    disabling verification, so the demo proves the library verifies TLS. The directory is
    removed by :meth:`cleanup` (also registered with ``atexit`` as a safety net).
    """

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="propagation-demo-pki-"))
        atexit.register(self.cleanup)
        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "propagation demo CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = self.directory / "ca.pem"
        self.cert_file = self.directory / "server.pem"
        self.key_file = self.directory / "server-key.pem"
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.touch(mode=0o600)
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------- HTTPS plumbing
class _TLSServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` doing the TLS handshake in the request thread.

    Wrapping the listening socket instead would run every handshake in the accept loop,
    where one stalled client blocks all others.
    """

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext, owner: Any) -> None:
        self.tls_context = context
        self.owner = owner
        super().__init__((HOST, 0), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); not needed on loopback.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            tls = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that does not trust our CA, or went away
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class _JsonHandler(BaseHTTPRequestHandler):
    server_version = "propagation-standin/1"
    timeout = 10
    server: _TLSServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: the demo prints the recorded calls instead

    def send_json(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""


class _Service:
    """Start/stop of one HTTPS server in a daemon thread."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def start(self) -> "_Service":
        self._server = _TLSServer(self.handler, self.pki.server_context(), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None


# --------------------------------------------------------------------------- token server
class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


@dataclass(frozen=True)
class TokenCall:
    """One call to the token server: who asked, for which grant and user, what came out."""

    method: str
    path: str
    status: int
    grant: str | None = None
    client: str | None = None
    user: str | None = None
    client_auth: str | None = None  # "basic" | "form"
    error: str | None = None
    issued: str | None = None  # fingerprint of the issued access token


@dataclass
class _Client:
    secret: str
    xsappname: str | None = None


class _TokenHandler(_JsonHandler):
    server: _TLSServer

    def do_GET(self) -> None:
        owner: TokenServer = self.server.owner
        path = urlsplit(self.path).path
        if path == "/token_keys":
            owner._record(TokenCall("GET", path, 200))
            self.send_json(200, owner.token_keys())
        else:
            owner._record(TokenCall("GET", path, 404))
            self.send_json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        owner: TokenServer = self.server.owner
        path = urlsplit(self.path).path
        if path != "/oauth/token":
            owner._record(TokenCall("POST", path, 404))
            self.send_json(404, {"error": "not_found"})
            return
        body = self.read_body().decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        status, answer, call = owner.handle_token_request(form, self.headers.get("Authorization"))
        owner._record(call)
        self.send_json(status, answer, {"WWW-Authenticate": 'Basic realm="oauth"'} if status == 401 else None)


class TokenServer(_Service):
    """An XSUAA-compatible token server (one identity zone, one signing key).

    Clients are registered with :meth:`register_client`; :meth:`login` mints the token a
    browser login would give the app, so the demo needs no interactive flow.
    """

    handler = _TokenHandler

    def __init__(self, pki: Pki, *, zid: str, subdomain: str, ttl: int = 3600) -> None:
        super().__init__(pki)
        self.zid = zid
        self.subdomain = subdomain
        self.ttl = ttl
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "default-jwt-key-" + hashlib.sha256(self.public_pem.encode()).hexdigest()[:10]
        self.clients: dict[str, _Client] = {}
        self.calls: list[TokenCall] = []

    # -- configuration --------------------------------------------------------------
    def register_client(self, client_id: str, secret: str | None = None, *, xsappname: str | None = None) -> str:
        """Register an OAuth client; returns its secret (generated when not given)."""
        secret = secret or secrets.token_urlsafe(24)
        self.clients[client_id] = _Client(secret, xsappname)
        return secret

    @property
    def uaadomain(self) -> str:
        return f"localhost:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token"

    @property
    def issuer(self) -> str:
        return self.token_url

    @property
    def public_pem(self) -> str:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def token_keys(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "value": self.public_pem,
                 "n": _b64uint(numbers.n), "e": _b64uint(numbers.e)}
            ]
        }

    # -- tokens ---------------------------------------------------------------------
    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self.key, algorithm="RS256",
            headers={"kid": self.kid, "jku": f"https://{self.uaadomain}/token_keys?zid={self.zid}"},
        )

    def _base_claims(self, client_id: str, grant: str, ttl: int | None = None) -> dict[str, Any]:
        now = int(time.time())
        client = self.clients[client_id]
        scopes = ["uaa.resource"] if grant == GRANT_CLIENT_CREDENTIALS else ["openid"]
        if client.xsappname:
            scopes.append(f"{client.xsappname}.Read")
        return {
            "jti": uuid.uuid4().hex,
            "iss": self.issuer,
            "cid": client_id,
            "azp": client_id,
            "client_id": client_id,
            "grant_type": grant,
            "zid": self.zid,
            "ext_attr": {"enhancer": "XSUAA", "subaccountid": self.zid, "zdn": self.subdomain},
            "scope": scopes,
            "aud": [client_id] + ([client.xsappname] if client.xsappname else []),
            "iat": now,
            "exp": now + (ttl or self.ttl),
        }

    def login(self, user: str, client_id: str, *, ttl: int | None = None) -> str:
        """The access token XSUAA issues to ``client_id`` after ``user`` logs in (authorization_code)."""
        claims = self._base_claims(client_id, "authorization_code", ttl)
        claims.update(
            {"sub": str(uuid.uuid5(uuid.NAMESPACE_DNS, user)), "user_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, user)),
             "user_name": user, "email": user, "origin": "sap.default"}
        )
        return self._sign(claims)

    def verify(self, raw: str) -> dict[str, Any]:
        """Claims of a token this server signed (RS256, unexpired, our issuer); raises ``jwt.InvalidTokenError``."""
        return jwt.decode(
            raw, self.key.public_key(), algorithms=["RS256"], issuer=self.issuer,
            options={"verify_aud": False, "require": ["exp", "iat", "iss"]},
        )

    # -- /oauth/token -----------------------------------------------------------------
    def _authenticate(self, form: Mapping[str, str], authorization: str | None) -> tuple[str, str]:
        if authorization and authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
                client_id, _, secret = decoded.partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError(401, "invalid_client", "Malformed Basic credentials.") from None
            client_id, secret, mode = unquote_plus(client_id), unquote_plus(secret), "basic"
        elif "client_id" in form:
            client_id, secret, mode = form["client_id"], form.get("client_secret", ""), "form"
        else:
            raise OAuthError(401, "invalid_client", "Client authentication is required.")
        client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.secret.encode(), secret.encode()):
            raise OAuthError(401, "invalid_client", "Bad credentials")
        return client_id, mode

    def handle_token_request(
        self, form: Mapping[str, str], authorization: str | None
    ) -> tuple[int, dict[str, Any], TokenCall]:
        """Answer one token request: ``(status, JSON body, record)``."""
        grant = form.get("grant_type")
        client_id: str | None = None
        mode: str | None = None
        user: str | None = None
        try:
            client_id, mode = self._authenticate(form, authorization)
            if not grant:
                raise OAuthError(400, "invalid_request", "Missing grant_type.")
            if grant == GRANT_CLIENT_CREDENTIALS:
                claims = self._base_claims(client_id, grant)
                claims["sub"] = client_id
            elif grant == GRANT_JWT_BEARER:
                assertion = form.get("assertion")
                if not assertion:
                    raise OAuthError(400, "invalid_request", "Missing assertion.")
                try:
                    subject = self.verify(assertion)
                except jwt.ExpiredSignatureError:
                    raise OAuthError(400, "invalid_grant", "The assertion has expired.") from None
                except jwt.InvalidTokenError:
                    raise OAuthError(400, "invalid_grant", "The assertion is not a token of this zone.") from None
                user = subject.get("user_name") if isinstance(subject.get("user_name"), str) else None
                if user is None or subject.get("grant_type") == GRANT_CLIENT_CREDENTIALS:
                    raise OAuthError(400, "invalid_grant", "The assertion carries no user.")
                claims = self._base_claims(client_id, grant)
                for claim in ("sub", "user_id", "user_name", "email", "origin", "zid"):
                    if claim in subject:
                        claims[claim] = subject[claim]
            else:
                raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant type: {grant}")
        except OAuthError as exc:
            call = TokenCall("POST", "/oauth/token", exc.status, grant, client_id, user, mode, exc.error)
            return exc.status, {"error": exc.error, "error_description": exc.description}, call
        access_token = self._sign(claims)
        answer = {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": claims["exp"] - claims["iat"],
            "scope": " ".join(claims["scope"]),
            "jti": claims["jti"],
        }
        return 200, answer, TokenCall(
            "POST", "/oauth/token", 200, grant, client_id, user, mode, None, fingerprint(access_token)
        )

    def _record(self, call: TokenCall) -> None:
        with self._lock:
            self.calls.append(call)

    def exchanges(self, *, grant: str | None = None, user: str | None = None) -> list[TokenCall]:
        """Successful token requests, optionally filtered."""
        with self._lock:
            calls = list(self.calls)
        return [
            c for c in calls
            if c.path == "/oauth/token" and c.status == 200
            and (grant is None or c.grant == grant) and (user is None or c.user == user)
        ]


# --------------------------------------------------------------------------- OData backend
@dataclass(frozen=True)
class BackendCall:
    """What the backend saw on one call: the principal, or why there was none."""

    method: str
    path: str
    status: int
    user: str | None = None
    client: str | None = None
    grant: str | None = None
    token: str | None = None  # fingerprint of the bearer token
    error: str | None = None


FUNCTIONAL_LOCATIONS: tuple[dict[str, str], ...] = (
    {"FunctionalLocation": "1010-PLT-01", "FunctionalLocationName": "Hamburg plant", "FunctionalLocationCategory": "M"},
    {"FunctionalLocation": "1010-PLT-01-PMP", "FunctionalLocationName": "Cooling water pump", "FunctionalLocationCategory": "M"},
    {"FunctionalLocation": "1010-PLT-01-CMP", "FunctionalLocationName": "Air compressor", "FunctionalLocationCategory": "M"},
)


class _BackendHandler(_JsonHandler):
    def do_GET(self) -> None:
        owner: ODataBackend = self.server.owner
        path = urlsplit(self.path).path
        status, body, call = owner.handle(path, self.headers.get("Authorization"))
        owner._record(call)
        headers = {"WWW-Authenticate": 'Bearer realm="S4"'} if status == 401 else None
        self.send_json(status, body, headers)


class ODataBackend(_Service):
    """An S/4HANA OData service configured for principal propagation."""

    handler = _BackendHandler

    def __init__(self, pki: Pki, token_server: TokenServer) -> None:
        super().__init__(pki)
        self.token_server = token_server
        self.calls: list[BackendCall] = []

    @staticmethod
    def _error(message: str) -> dict[str, Any]:
        return {"error": {"code": "/IWFND/CM_CONSUMER/401", "message": message}}

    def handle(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any], BackendCall]:
        if path.rstrip("/") != FUNCTIONAL_LOCATION_PATH:
            return 404, self._error("Resource not found"), BackendCall("GET", path, 404, error="not_found")
        if not authorization or authorization[:7].lower() != "bearer ":
            return 401, self._error(NO_USER_TOKEN_MESSAGE), BackendCall("GET", path, 401, error="no bearer token")
        raw = authorization[7:].strip()
        try:
            claims = self.token_server.verify(raw)
        except jwt.InvalidTokenError as exc:
            return 401, self._error("Invalid token"), BackendCall(
                "GET", path, 401, token=fingerprint(raw), error=type(exc).__name__
            )
        client = claims.get("cid")
        grant = claims.get("grant_type")
        user = claims.get("user_name")
        if grant == GRANT_CLIENT_CREDENTIALS or not isinstance(user, str):
            return 401, self._error(NO_USER_TOKEN_MESSAGE), BackendCall(
                "GET", path, 401, None, client, grant, fingerprint(raw), "technical user"
            )
        body = {"d": {"results": [dict(item) for item in FUNCTIONAL_LOCATIONS]}, "seenBy": user}
        return 200, body, BackendCall("GET", path, 200, user, client, grant, fingerprint(raw))

    def _record(self, call: BackendCall) -> None:
        with self._lock:
            self.calls.append(call)


# --------------------------------------------------------------------------- together
class StandIns:
    """PKI, token server and backend started together; a context manager that cleans up."""

    def __init__(self, *, zid: str = "d3b1f6a2-4c1e-4f7a-9b2e-0c5d8e7f6a10", subdomain: str = "forum") -> None:
        self.pki = Pki()
        self.token_server = TokenServer(self.pki, zid=zid, subdomain=subdomain)
        self.backend = ODataBackend(self.pki, self.token_server)

    def start(self) -> "StandIns":
        try:
            self.token_server.start()
            self.backend.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.backend.stop()
        self.token_server.stop()
        self.pki.cleanup()

    def __enter__(self) -> "StandIns":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

