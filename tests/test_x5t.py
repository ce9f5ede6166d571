"""Certificate-bound tokens (``validate_x5t``): the IAS token's ``cnf.x5t#S256`` against the
client certificate forwarded in ``X-Forwarded-Client-Cert``, in every integration."""

from __future__ import annotations

import asyncio
import re
import base64
import hashlib
from typing import Any, Callable
from urllib.parse import quote

import httpx
import pytest
import respx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI
from flask import Flask

import jwtkit
from propagation import current_token
from propagation.asgi import PropagationASGIMiddleware
from propagation.engine import Propagator
from propagation.errors import InvalidTokenError
from propagation.fastapi import CurrentUser
from propagation.fastapi import Propagation as FastAPIPropagation
from propagation.flask import Propagation as FlaskPropagation
from propagation.inbound.x5t import certificate_thumbprint, check_x5t
from propagation.tokens import UserToken

CERT, _KEY = jwtkit.self_signed_certificate("caller")
OTHER, _ = jwtkit.self_signed_certificate("someone-else")


def thumbprint(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def body_only(pem: str) -> str:
    """As the Cloud Foundry router forwards it: base64 DER, no PEM armour, no line breaks."""
    return "".join(line for line in pem.strip().splitlines() if "CERTIFICATE" not in line)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(body_only(CERT), id="cf-base64-body"),
        pytest.param(CERT.strip().replace("\n", "\\n"), id="pem-escaped-newlines"),
        pytest.param(f'By=spiffe://x;Hash=abc;Cert="{quote(CERT)}";Subject="CN=caller"', id="envoy-xfcc"),
        pytest.param(f'Hash=1;Cert="{quote(OTHER)}",Hash=2;Cert="{quote(CERT)}"', id="xfcc-last-entry-counts"),
    ],
)
def test_thumbprint_of_forwarded_formats(header: str) -> None:
    assert certificate_thumbprint(header) == thumbprint(CERT)


def ias_token(claims: dict[str, Any]) -> UserToken:
    return UserToken("h.p.s", {}, {"iss": "https://t.accounts.ondemand.com", "app_tid": "t", **claims})


@pytest.mark.parametrize(
    "claims, header, message",
    [
        pytest.param({"cnf": {"x5t#S256": thumbprint(CERT)}}, body_only(CERT), None, id="match"),
        pytest.param({"cnf": {"x5t#S256": thumbprint(CERT)}}, body_only(OTHER), "does not match", id="mismatch"),
        pytest.param({"cnf": {"x5t#S256": thumbprint(CERT)}}, None, "No client certificate was forwarded",
                     id="no-certificate"),
        pytest.param({}, body_only(CERT), "not certificate-bound (no cnf.x5t#S256 claim)", id="no-claim"),
        pytest.param({"cnf": {"x5t#S256": thumbprint(CERT)}}, "not-a-certificate", "could not be parsed",
                     id="garbage-certificate"),
        pytest.param({"cnf": {"x5t#S256": thumbprint(CERT)}}, "Hash=abc;Subject=x", "holds no certificate",
                     id="xfcc-without-cert"),
    ],
)
def test_check_x5t(claims: dict[str, Any], header: str | None, message: str | None) -> None:
    if message is None:
        check_x5t(ias_token(claims), header)
        return
    with pytest.raises(InvalidTokenError, match=re.escape(message)):
        check_x5t(ias_token(claims), header)


# -- every integration ------------------------------------------------------------------------------
def flask_call(propagator: Propagator, headers: dict[str, str]) -> tuple[int, Any]:
    app = Flask(__name__)
    FlaskPropagation(app, propagator=propagator, validate_x5t=True)

    @app.get("/me")
    def me() -> Any:
        return {"user": current_token().user}  # type: ignore[union-attr]

    response = app.test_client().get("/me", headers=headers)
    return response.status_code, response.json


def asgi_call(app: Any, headers: dict[str, str]) -> tuple[int, Any]:
    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            return await client.get("/me", headers=headers)
    response = asyncio.run(main())
    return response.status_code, response.json()


def raw_asgi_call(propagator: Propagator, headers: dict[str, str]) -> tuple[int, Any]:
    async def me(scope: Any, receive: Any, send: Any) -> None:
        body = ('{"user": "%s"}' % current_token().user).encode()  # type: ignore[union-attr]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
    return asgi_call(PropagationASGIMiddleware(me, propagator=propagator, validate_x5t=True), headers)


def fastapi_call(propagator: Propagator, headers: dict[str, str]) -> tuple[int, Any]:
    app = FastAPI()
    FastAPIPropagation(app, propagator=propagator, validate_x5t=True)

    @app.get("/me")
    async def me(user: CurrentUser) -> dict[str, Any]:
        return {"user": user.user}

    return asgi_call(app, headers)


def django_call(propagator: Propagator, headers: dict[str, str]) -> tuple[int, Any]:
    import test_django  # noqa: F401  - configures Django settings and URLs
    from django.test import Client

    with test_django.settings_for(propagator, VALIDATE_X5T=True):
        meta = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
        response = Client().get("/me", **meta)
    return response.status_code, response.json()


FRAMEWORKS = [pytest.param(flask_call, id="flask"), pytest.param(raw_asgi_call, id="asgi"),
              pytest.param(fastapi_call, id="fastapi"), pytest.param(django_call, id="django")]


@pytest.mark.parametrize("call", FRAMEWORKS)
@pytest.mark.parametrize(
    "bound_to, forwarded, status, message",
    [
        pytest.param(CERT, CERT, 200, None, id="match"),
        pytest.param(CERT, OTHER, 401, "does not match the client certificate", id="mismatch"),
        pytest.param(CERT, None, 401, "No client certificate was forwarded", id="missing-certificate"),
        pytest.param(None, CERT, 401, "not certificate-bound", id="unbound-token"),
    ],
)
def test_integrations(call: Callable[[Propagator, dict[str, str]], tuple[int, Any]], propagator: Propagator,
                      ias: jwtkit.Ias, idp_keys: respx.MockRouter, bound_to: str | None, forwarded: str | None,
                      status: int, message: str | None) -> None:
    extra = {"cnf": {"x5t#S256": thumbprint(bound_to)}} if bound_to else {}
    raw = ias.token("bob@example.com", extra=extra)
    headers = {"Authorization": f"Bearer {raw}"}
    if forwarded:
        headers["X-Forwarded-Client-Cert"] = body_only(forwarded)
    for _ in range(2):  # the second time the token is cached: the certificate is still checked
        got_status, body = call(propagator, headers)
        assert got_status == status, body
        if message:
            assert body["error"] == "invalid_token" and message in body["error_description"]
        else:
            assert body["user"] == UserToken.parse(raw).user


def test_xsuaa_tokens_are_not_x5t_checked(propagator: Propagator, xsuaa: jwtkit.Xsuaa,
                                          idp_keys: respx.MockRouter) -> None:
    assert flask_call(propagator, {"Authorization": f"Bearer {xsuaa.token()}"}) == (200, {"user": "alice@example.com"})
