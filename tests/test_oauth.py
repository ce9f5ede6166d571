"""OAuthClient: the exact token requests per grant and client authentication, mTLS key
files that never outlive a call, OAuth error answers, retries without sleeping, and no
secret in any message, repr or log line."""

from __future__ import annotations

import base64
import datetime
import logging
import os
import stat
from typing import Any, Callable
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest
import requests
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from propagation.errors import ConfigurationError, TokenExchangeError
from propagation.exchange.oauth import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    GRANT_PASSWORD,
    GRANT_TOKEN_EXCHANGE,
    ClientCredentials,
    OAuthClient,
    TokenResponse,
)
from propagation.tokens import fingerprint

TOKEN_URL = "https://idp.example.com/oauth/token"
NOW = 1_700_000_000.0
SECRET = "s3cr3t-CLIENT-secret"
ASSERTION = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"
SUBJECT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IifQ.b3RoZXItc2lnbmF0dXJl"
PASSWORD = "pw-VALUE-42"
ACCESS = "eyJhbGciOiJub25lIn0.eyJpc3N1ZWQiOnRydWV9.aXNzdWVkLXRva2Vu"
REFRESH = "refresh-TOKEN-value"
ID_TOKEN = "id-TOKEN-value"
CLIENT = ClientCredentials("sb-app!t42", SECRET)
TE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"


# -- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture
def rsps() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def oauth(sleeps: list[float]) -> OAuthClient:
    return OAuthClient(sleep=sleeps.append, clock=lambda: NOW)


def form(call: Any) -> dict[str, str]:
    parsed = parse_qs(call.request.body, keep_blank_values=True, strict_parsing=True)
    assert all(len(v) == 1 for v in parsed.values()), f"duplicate form fields: {sorted(parsed)}"
    return {k: v[0] for k, v in parsed.items()}


def ok(rsps: Any, url: str = TOKEN_URL, **body: Any) -> None:
    rsps.post(url, json={"access_token": ACCESS, "token_type": "bearer", "expires_in": 3600, **body})


def basic(call: Any) -> tuple[str, str]:
    scheme, _, value = call.request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
    return user, password


def self_signed() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "propagation-test-client")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert_pem, key_pem


@pytest.fixture(scope="module")
def pem() -> tuple[str, str]:
    return self_signed()


# -- each grant's exact request ------------------------------------------------------------
GrantCall = Callable[[OAuthClient], TokenResponse]


@pytest.mark.parametrize(
    "call, expected",
    [
        pytest.param(
            lambda c: c.client_credentials(TOKEN_URL, CLIENT),
            {"grant_type": GRANT_CLIENT_CREDENTIALS},
            id="client_credentials",
        ),
        pytest.param(
            lambda c: c.client_credentials(TOKEN_URL, CLIENT, form={"scope": "read write"}),
            {"grant_type": GRANT_CLIENT_CREDENTIALS, "scope": "read write"},
            id="client_credentials-scope",
        ),
        pytest.param(
            lambda c: c.password(TOKEN_URL, CLIENT, "svc-user", PASSWORD),
            {"grant_type": GRANT_PASSWORD, "username": "svc-user", "password": PASSWORD},
            id="password",
        ),
        pytest.param(
            lambda c: c.jwt_bearer(TOKEN_URL, CLIENT, ASSERTION),
            {"grant_type": GRANT_JWT_BEARER, "assertion": ASSERTION},
            id="jwt-bearer",
        ),
        pytest.param(
            lambda c: c.jwt_bearer(TOKEN_URL, CLIENT, ASSERTION, form={"token_format": "jwt", "response_type": "token"}),
            {"grant_type": GRANT_JWT_BEARER, "assertion": ASSERTION, "token_format": "jwt", "response_type": "token"},
            id="jwt-bearer-connectivity",
        ),
        pytest.param(
            lambda c: c.token_exchange(TOKEN_URL, CLIENT, SUBJECT),
            {"grant_type": GRANT_TOKEN_EXCHANGE, "subject_token": SUBJECT, "subject_token_type": TE_ACCESS},
            id="token-exchange",
        ),
        pytest.param(
            lambda c: c.token_exchange(
                TOKEN_URL, CLIENT, SUBJECT, "urn:ietf:params:oauth:token-type:id_token",
                form={"requested_token_type": TE_ACCESS, "resource": "urn:sap:identity:application:provider:name:s4",
                      "token_format": "jwt"},
            ),
            {"grant_type": GRANT_TOKEN_EXCHANGE, "subject_token": SUBJECT,
             "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
             "requested_token_type": TE_ACCESS, "resource": "urn:sap:identity:application:provider:name:s4",
             "token_format": "jwt"},
            id="token-exchange-resource",
        ),
        pytest.param(
            lambda c: c.request_token(TOKEN_URL, CLIENT, "urn:example:custom-grant", {"foo": "bar"}),
            {"grant_type": "urn:example:custom-grant", "foo": "bar"},
            id="request_token-generic",
        ),
    ],
)
def test_grant_sends_exact_form(rsps: Any, oauth: OAuthClient, call: GrantCall, expected: dict[str, str]) -> None:
    ok(rsps)
    result = call(oauth)
    assert result.access_token == ACCESS
    assert len(rsps.calls) == 1
    request = rsps.calls[0].request
    assert request.method == "POST"
    assert request.url == TOKEN_URL
    assert form(rsps.calls[0]) == {**expected, "client_id": "sb-app!t42", "client_secret": SECRET}
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Accept"] == "application/json"
    assert "Authorization" not in request.headers
    assert request.req_kwargs["timeout"] == (5.0, 15.0)
    assert request.req_kwargs["cert"] is None


# -- client authentication ------------------------------------------------------------------
@pytest.mark.parametrize(
    "client, in_body, expected_form, expected_basic",
    [
        pytest.param(CLIENT, True, {"client_id": "sb-app!t42", "client_secret": SECRET}, None, id="secret-in-body"),
        pytest.param(CLIENT, False, {"client_id": "sb-app!t42"}, ("sb-app%21t42", SECRET), id="secret-basic"),
        pytest.param(
            ClientCredentials("sb-na-1!b2|it-rt!b3", "a+b/c=d:e$f g"), False, {"client_id": "sb-na-1!b2|it-rt!b3"},
            ("sb-na-1%21b2%7Cit-rt%21b3", "a%2Bb%2Fc%3Dd%3Ae%24f+g"), id="basic-special-characters",
        ),
        pytest.param(ClientCredentials("public-app"), True, {"client_id": "public-app"}, None, id="public-client"),
        pytest.param(ClientCredentials("public-app"), False, {"client_id": "public-app"}, None, id="public-client-basic-flag"),
    ],
)
def test_client_authentication(
    rsps: Any, oauth: OAuthClient, client: ClientCredentials, in_body: bool,
    expected_form: dict[str, str], expected_basic: tuple[str, str] | None,
) -> None:
    ok(rsps)
    oauth.jwt_bearer(TOKEN_URL, client, ASSERTION, credentials_in_body=in_body)
    call = rsps.calls[0]
    assert form(call) == {"grant_type": GRANT_JWT_BEARER, "assertion": ASSERTION, **expected_form}
    if expected_basic is None:
        assert "Authorization" not in call.request.headers
    else:
        # RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding.
        assert basic(call) == expected_basic
        assert tuple(map(unquote_plus, expected_basic)) == (client.client_id, client.client_secret)


def test_form_cannot_replace_client_credentials_or_grant(rsps: Any, oauth: OAuthClient) -> None:
    ok(rsps)
    oauth.request_token(
        TOKEN_URL, CLIENT, GRANT_CLIENT_CREDENTIALS,
        {"grant_type": "password", "client_id": "other", "client_secret": "other-secret", "scope": "x"},
        credentials_in_body=False,
    )
    assert form(rsps.calls[0]) == {"grant_type": GRANT_CLIENT_CREDENTIALS, "client_id": "sb-app!t42", "scope": "x"}
    assert basic(rsps.calls[0]) == ("sb-app%21t42", SECRET)


# -- mTLS -----------------------------------------------------------------------------------
class CertProbe:
    """A token endpoint callback that records what the client certificate files looked like
    *during* the request."""

    def __init__(self, status: int = 200, body: str = f'{{"access_token": "{ACCESS}", "expires_in": 60}}') -> None:
        self.status = status
        self.body = body
        self.seen: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> tuple[int, dict[str, str], str]:
        cert_file, key_file = request.req_kwargs["cert"]
        directory = os.path.dirname(cert_file)
        with open(cert_file) as c, open(key_file) as k:
            self.seen.append({
                "cert": c.read(), "key": k.read(), "dir": directory,
                "same_dir": os.path.dirname(key_file) == directory,
                "modes": (stat.S_IMODE(os.stat(cert_file).st_mode), stat.S_IMODE(os.stat(key_file).st_mode),
                          stat.S_IMODE(os.stat(directory).st_mode)),
            })
        return self.status, {"Content-Type": "application/json"}, self.body


def test_mtls_sends_certificate_from_private_files_and_removes_them(rsps: Any, oauth: OAuthClient, pem: tuple[str, str]) -> None:
    cert_pem, key_pem = pem
    probe = CertProbe()
    rsps.add_callback(responses.POST, TOKEN_URL, callback=probe)
    client = ClientCredentials("sb-app!t42", certificate=cert_pem, key=key_pem)

    result = oauth.jwt_bearer(TOKEN_URL, client, ASSERTION, credentials_in_body=False)

    assert result.access_token == ACCESS
    assert form(rsps.calls[0]) == {"grant_type": GRANT_JWT_BEARER, "assertion": ASSERTION, "client_id": "sb-app!t42"}
    assert "Authorization" not in rsps.calls[0].request.headers
    [seen] = probe.seen
    assert seen["cert"].strip() == cert_pem.strip() and seen["key"].strip() == key_pem.strip()
    assert seen["same_dir"] and seen["modes"] == (0o600, 0o600, 0o700)
    assert not os.path.exists(seen["dir"])


def test_mtls_files_removed_after_oauth_error(rsps: Any, oauth: OAuthClient, pem: tuple[str, str]) -> None:
    probe = CertProbe(400, '{"error": "invalid_grant", "error_description": "expired assertion"}')
    rsps.add_callback(responses.POST, TOKEN_URL, callback=probe)
    client = ClientCredentials("sb-app!t42", SECRET, certificate=pem[0], key=pem[1])
    with pytest.raises(TokenExchangeError) as info:
        oauth.jwt_bearer(TOKEN_URL, client, ASSERTION)
    assert info.value.status == 400 and info.value.error == "invalid_grant"
    assert "client_secret" not in form(rsps.calls[0])  # mTLS wins over a secret that is also present
    assert not os.path.exists(probe.seen[0]["dir"])
    assert pem[1] not in str(info.value)


def test_mtls_files_exist_per_attempt_and_are_removed_after_connection_errors(
    rsps: Any, oauth: OAuthClient, sleeps: list[float], pem: tuple[str, str]
) -> None:
    dirs: list[str] = []

    def refuse(request: Any) -> Any:
        dirs.append(os.path.dirname(request.req_kwargs["cert"][0]))
        assert os.path.exists(request.req_kwargs["cert"][1])
        raise requests.ConnectionError("connection refused")

    rsps.add_callback(responses.POST, TOKEN_URL, callback=refuse)
    with pytest.raises(TokenExchangeError) as info:
        oauth.client_credentials(TOKEN_URL, ClientCredentials("c", certificate=pem[0], key=pem[1]))
    assert info.value.status is None
    assert len(dirs) == 3  # each attempt presents the certificate; none leaves its files behind
    assert not any(os.path.exists(d) for d in dirs)


# -- OAuth error answers ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "status, body, content_type, error, description, message",
    [
        pytest.param(
            401, '{"error": "invalid_client", "error_description": "Bad credentials"}', "application/json",
            "invalid_client", "Bad credentials",
            "Token request to https://idp.example.com/oauth/token (grant jwt-bearer) failed: 401 invalid_client: Bad credentials",
            id="401-invalid_client",
        ),
        pytest.param(
            400, '{"error": "invalid_grant"}', "application/json", "invalid_grant", None,
            "Token request to https://idp.example.com/oauth/token (grant jwt-bearer) failed: 400 invalid_grant",
            id="400-no-description",
        ),
        pytest.param(
            400, f'{{"error": "invalid_grant", "error_description": "Bad assertion {ASSERTION} for {SECRET}\\r\\nX"}}',
            "application/json", "invalid_grant", "Bad assertion [redacted] for [redacted] X",
            "Token request to https://idp.example.com/oauth/token (grant jwt-bearer) failed: 400 invalid_grant: "
            "Bad assertion [redacted] for [redacted] X",
            id="400-echoing-secrets",
        ),
        pytest.param(
            403, "<html><body>Forbidden " + ASSERTION + "</body></html>", "text/html", None, None,
            "Token request to https://idp.example.com/oauth/token (grant jwt-bearer) failed: 403 Forbidden",
            id="403-html",
        ),
        pytest.param(
            401, "", "text/plain", None, None,
            "Token request to https://idp.example.com/oauth/token (grant jwt-bearer) failed: 401 Unauthorized",
            id="401-empty",
        ),
        pytest.param(
            400, '["invalid_request"]', "application/json", None, None,
            "Token request to https://idp.example.com/oauth/token (grant jwt-bearer) failed: 400 Bad Request",
            id="400-json-not-object",
        ),
    ],
)
def test_oauth_error_answers(
    rsps: Any, oauth: OAuthClient, sleeps: list[float], status: int, body: str, content_type: str,
    error: str | None, description: str | None, message: str,
) -> None:
    rsps.post(f"{TOKEN_URL}", body=body, status=status, content_type=content_type)
    with pytest.raises(TokenExchangeError) as info:
        oauth.jwt_bearer(f"{TOKEN_URL}?tenant=secret-query-VALUE", CLIENT, ASSERTION)
    exc = info.value
    assert (exc.status, exc.error, exc.error_description) == (status, error, description)
    assert str(exc) == message
    assert exc.url == TOKEN_URL
    assert len(rsps.calls) == 1 and sleeps == []  # 4xx is final
    for text in (str(exc), repr(exc), repr(exc.args)):
        for secret in (ASSERTION, SECRET, "secret-query-VALUE"):
            assert secret not in text


def test_redirect_is_not_followed(rsps: Any, oauth: OAuthClient) -> None:
    rsps.post(TOKEN_URL, status=307, headers={"Location": "https://evil.example.com/oauth/token"})
    with pytest.raises(TokenExchangeError) as info:
        oauth.jwt_bearer(TOKEN_URL, CLIENT, ASSERTION)
    assert info.value.status == 307
    assert [c.request.url for c in rsps.calls] == [TOKEN_URL]


# -- retries ---------------------------------------------------------------------------------
def test_503_then_200_retries_once(rsps: Any, oauth: OAuthClient, sleeps: list[float]) -> None:
    rsps.post(TOKEN_URL, status=503, body="busy")
    ok(rsps)
    assert oauth.client_credentials(TOKEN_URL, CLIENT).access_token == ACCESS
    assert len(rsps.calls) == 2
    assert form(rsps.calls[0]) == form(rsps.calls[1])
    assert sleeps == [0.25]


@pytest.mark.parametrize(
    "retries, backoff, expected_sleeps",
    [
        pytest.param(0, 0.25, [], id="no-retries"),
        pytest.param(2, 0.25, [0.25, 0.5], id="default"),
        pytest.param(3, 1.0, [1.0, 2.0, 4.0], id="three-retries"),
    ],
)
def test_503_forever(rsps: Any, retries: int, backoff: float, expected_sleeps: list[float]) -> None:
    sleeps: list[float] = []
    rsps.post(TOKEN_URL, status=503, json={"error": "temporarily_unavailable"})
    client = OAuthClient(retries=retries, backoff=backoff, sleep=sleeps.append, clock=lambda: NOW)
    with pytest.raises(TokenExchangeError) as info:
        client.client_credentials(TOKEN_URL, CLIENT)
    assert len(rsps.calls) == retries + 1
    assert sleeps == expected_sleeps
    assert info.value.status == 503 and info.value.error == "temporarily_unavailable"
    assert str(info.value).startswith(
        "Token request to https://idp.example.com/oauth/token (grant client_credentials) failed: 503 temporarily_unavailable"
    )


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(requests.ConnectionError("refused"), id="connection-error"),
        pytest.param(requests.ConnectTimeout("connect timeout"), id="connect-timeout"),
        pytest.param(requests.ReadTimeout("read timeout"), id="read-timeout"),
    ],
)
def test_connection_error_then_200(rsps: Any, oauth: OAuthClient, sleeps: list[float], exc: Exception) -> None:
    rsps.post(TOKEN_URL, body=exc)
    ok(rsps)
    assert oauth.client_credentials(TOKEN_URL, CLIENT).access_token == ACCESS
    assert len(rsps.calls) == 2 and sleeps == [0.25]


def test_connection_error_forever(rsps: Any, oauth: OAuthClient, sleeps: list[float]) -> None:
    rsps.post(TOKEN_URL, body=requests.ConnectionError(f"refused {TOKEN_URL}?q=secret-query-VALUE"))
    with pytest.raises(TokenExchangeError) as info:
        oauth.jwt_bearer(TOKEN_URL + "?q=secret-query-VALUE", CLIENT, ASSERTION)
    assert info.value.status is None and info.value.error is None
    assert len(rsps.calls) == 3 and sleeps == [0.25, 0.5]
    assert str(info.value) == (
        "Token request to https://idp.example.com/oauth/token (grant jwt-bearer) failed: ConnectionError after 3 attempt(s)."
    )
    assert isinstance(info.value.__cause__, requests.ConnectionError)


def test_tls_error_is_not_retried(rsps: Any, oauth: OAuthClient, sleeps: list[float]) -> None:
    rsps.post(TOKEN_URL, body=requests.exceptions.SSLError("certificate verify failed"))
    with pytest.raises(TokenExchangeError) as info:
        oauth.client_credentials(TOKEN_URL, CLIENT)
    assert info.value.status is None
    assert len(rsps.calls) == 1 and sleeps == []


# -- successful answers -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "expires_in, expires_at",
    [
        pytest.param(3600, NOW + 3600, id="int"),
        pytest.param(59.5, NOW + 59.5, id="float"),
        pytest.param("1800", NOW + 1800, id="numeric-string"),
        pytest.param(" 42 ", NOW + 42, id="numeric-string-spaces"),
        pytest.param("soon", None, id="non-numeric-string"),
        pytest.param(True, None, id="bool"),
        pytest.param("nan", None, id="nan"),
        pytest.param(None, None, id="null"),
    ],
)
def test_expires_at_from_expires_in(rsps: Any, oauth: OAuthClient, expires_in: Any, expires_at: float | None) -> None:
    rsps.post(TOKEN_URL, json={"access_token": ACCESS, "expires_in": expires_in})
    assert oauth.client_credentials(TOKEN_URL, CLIENT).expires_at == expires_at


def test_response_fields_and_extra_without_tokens(rsps: Any, oauth: OAuthClient) -> None:
    rsps.post(TOKEN_URL, json={
        "access_token": ACCESS, "token_type": "Bearer", "expires_in": 43199, "scope": "openid app.read",
        "issued_token_type": TE_ACCESS, "refresh_token": REFRESH, "id_token": ID_TOKEN,
        "jti": "abc123", "ext_attr": {"enhancer": "XSUAA"},
    })
    result = oauth.token_exchange(TOKEN_URL, CLIENT, SUBJECT)
    assert result.access_token == ACCESS
    assert result.token_type == "Bearer"
    assert result.expires_at == NOW + 43199
    assert result.scope == "openid app.read"
    assert result.issued_token_type == TE_ACCESS
    assert dict(result.extra) == {"jti": "abc123", "ext_attr": {"enhancer": "XSUAA"}}
    assert ACCESS not in repr(result) and fingerprint(ACCESS) in repr(result)
    assert REFRESH not in repr(vars(result)) and ID_TOKEN not in repr(vars(result))


def test_missing_token_type_defaults_to_bearer(rsps: Any, oauth: OAuthClient) -> None:
    rsps.post(TOKEN_URL, json={"access_token": ACCESS})
    result = oauth.client_credentials(TOKEN_URL, CLIENT)
    assert (result.token_type, result.expires_at, result.scope, dict(result.extra)) == ("bearer", None, None, {})


@pytest.mark.parametrize(
    "body, content_type, expected_error, expected_text",
    [
        pytest.param(f"access_token={ACCESS}&expires_in=3600", "application/x-www-form-urlencoded", None,
                     "200 answer is not a JSON object", id="form-encoded"),
        pytest.param(f"<html>{ACCESS}</html>", "text/html", None, "200 answer is not a JSON object", id="html"),
        pytest.param(f'["{ACCESS}"]', "application/json", None, "200 answer is not a JSON object", id="json-list"),
        pytest.param('{"token_type": "bearer", "refresh_token": "' + REFRESH + '"}', "application/json", None,
                     "200 answer without an access_token", id="no-access-token"),
        pytest.param('{"access_token": 12345}', "application/json", None,
                     "200 answer without an access_token", id="access-token-not-string"),
        pytest.param('{"error": "invalid_scope", "error_description": "nope"}', "application/json", "invalid_scope",
                     "200 answer without an access_token (invalid_scope: nope)", id="error-in-200"),
    ],
)
def test_unusable_2xx(
    rsps: Any, oauth: OAuthClient, body: str, content_type: str, expected_error: str | None, expected_text: str
) -> None:
    rsps.post(TOKEN_URL, body=body, content_type=content_type)
    with pytest.raises(TokenExchangeError) as info:
        oauth.client_credentials(TOKEN_URL, CLIENT)
    assert info.value.status == 200 and info.value.error == expected_error
    assert expected_text in str(info.value)
    assert ACCESS not in str(info.value) and REFRESH not in str(info.value)
    assert len(rsps.calls) == 1


# -- request shaping: query, headers, timeout --------------------------------------------------
def test_query_and_headers_are_sent(rsps: Any, oauth: OAuthClient) -> None:
    ok(rsps)
    oauth.jwt_bearer(
        TOKEN_URL + "?existing=1", CLIENT, ASSERTION,
        headers={"X-Tenant": "t1", "X-Zone-Id": "z-9"}, query={"foo": "bar baz", "x": "y"},
    )
    request = rsps.calls[0].request
    assert urlsplit(request.url)._replace(query="").geturl() == TOKEN_URL
    assert parse_qs(urlsplit(request.url).query) == {"existing": ["1"], "foo": ["bar baz"], "x": ["y"]}
    assert request.headers["X-Tenant"] == "t1" and request.headers["X-Zone-Id"] == "z-9"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Accept"] == "application/json"
    assert form(rsps.calls[0]) == {"grant_type": GRANT_JWT_BEARER, "assertion": ASSERTION,
                                   "client_id": "sb-app!t42", "client_secret": SECRET}


@pytest.mark.parametrize("header", ["Authorization", "authorization", "Content-Type", "Proxy-Authorization", "Host"])
def test_configured_headers_cannot_replace_owned_headers(rsps: Any, oauth: OAuthClient, header: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        oauth.client_credentials(TOKEN_URL, CLIENT, headers={header: "Bearer attacker-VALUE"}, credentials_in_body=False)
    assert header in str(info.value) and "attacker-VALUE" not in str(info.value)
    assert len(rsps.calls) == 0


def test_accept_header_may_be_configured(rsps: Any, oauth: OAuthClient) -> None:
    ok(rsps)
    oauth.client_credentials(TOKEN_URL, CLIENT, headers={"Accept": "application/json;charset=utf-8"})
    assert rsps.calls[0].request.headers["Accept"] == "application/json;charset=utf-8"


@pytest.mark.parametrize(
    "timeout",
    [pytest.param(3.0, id="float"), pytest.param((1.0, 2.0), id="tuple")],
)
def test_every_call_uses_the_timeout(rsps: Any, timeout: float | tuple[float, float]) -> None:
    rsps.post(TOKEN_URL, status=502)
    ok(rsps)
    OAuthClient(timeout=timeout, sleep=lambda s: None).client_credentials(TOKEN_URL, CLIENT)
    assert [c.request.req_kwargs["timeout"] for c in rsps.calls] == [timeout, timeout]


def test_own_session_keeps_no_cookies(rsps: Any, oauth: OAuthClient) -> None:
    rsps.post(TOKEN_URL, json={"access_token": ACCESS}, headers={"Set-Cookie": "JSESSIONID=user-a; Path=/"})
    oauth.jwt_bearer(TOKEN_URL, CLIENT, ASSERTION)
    oauth.jwt_bearer(TOKEN_URL, CLIENT, SUBJECT)
    assert "Cookie" not in rsps.calls[1].request.headers


def test_passed_session_is_used(rsps: Any) -> None:
    session = requests.Session()
    session.headers["User-Agent"] = "my-app/1.0"
    ok(rsps)
    OAuthClient(session=session).client_credentials(TOKEN_URL, CLIENT)
    assert rsps.calls[0].request.headers["User-Agent"] == "my-app/1.0"


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        OAuthClient(retries=-1)
    with pytest.raises(ValueError):
        OAuthClient(backoff=-0.1)


# -- no secrets in reprs and logs --------------------------------------------------------------
def test_reprs_hold_no_secrets(pem: tuple[str, str]) -> None:
    texts = [
        repr(CLIENT), str(CLIENT),
        repr(ClientCredentials("c", certificate=pem[0], key=pem[1])),
        repr(TokenResponse(ACCESS, extra={"jti": "1"})),
        repr(OAuthClient()),
    ]
    for text in texts:
        for secret in (SECRET, ACCESS, pem[1], "PRIVATE KEY"):
            assert secret not in text
    assert "auth='mtls'" in texts[2] and "auth='secret'" in texts[0]


def test_logs_never_hold_secrets(rsps: Any, oauth: OAuthClient, caplog: pytest.LogCaptureFixture, pem: tuple[str, str]) -> None:
    caplog.set_level(logging.DEBUG, logger="propagation")
    # success with a secret in the body, then with Basic and a password
    rsps.post(TOKEN_URL, json={"access_token": ACCESS, "refresh_token": REFRESH, "id_token": ID_TOKEN, "expires_in": 60})
    oauth.jwt_bearer(TOKEN_URL, CLIENT, ASSERTION)
    oauth.password(TOKEN_URL, CLIENT, "svc", PASSWORD, credentials_in_body=False)
    oauth.client_credentials(TOKEN_URL, ClientCredentials("c", certificate=pem[0], key=pem[1]))
    # 4xx echoing what it got
    rsps.replace(responses.POST, TOKEN_URL, status=400,
                 json={"error": "invalid_grant", "error_description": f"bad {SUBJECT} {SECRET}"})
    with pytest.raises(TokenExchangeError):
        oauth.token_exchange(TOKEN_URL, CLIENT, SUBJECT)
    # retries: 503 forever, then connection errors
    rsps.replace(responses.POST, TOKEN_URL, status=503, body=f"down {ASSERTION}")
    with pytest.raises(TokenExchangeError):
        oauth.jwt_bearer(TOKEN_URL, CLIENT, ASSERTION)
    rsps.replace(responses.POST, TOKEN_URL, body=requests.ConnectionError("refused"))
    with pytest.raises(TokenExchangeError):
        oauth.jwt_bearer(TOKEN_URL + "?k=secret-query-VALUE", CLIENT, ASSERTION)

    assert len(caplog.records) > 10
    logged = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {getattr(r, '__dict__', {})!r}" for r in caplog.records
    )
    for secret in (ASSERTION, SUBJECT, SECRET, PASSWORD, ACCESS, REFRESH, ID_TOKEN, pem[1], "PRIVATE KEY",
                   "secret-query-VALUE", base64.b64encode(f"sb-app%21t42:{SECRET}".encode()).decode()):
        assert secret not in logged
    assert fingerprint(ACCESS) in logged  # the result is identifiable
    assert "idp.example.com" in logged and "sb-app!t42" in logged
