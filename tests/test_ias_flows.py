"""Inbound IAS flows: IAS→XSUAA (hybrid, ``ias_to_xsuaa``) and IAS public (PKCE) clients
(``public_clients``), end to end through a Flask app, plus the ASGI middleware, options and
caching. Key calls of sap-xssec go to ``idp_keys`` (respx); token endpoints to ``responses``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.parse
from collections import Counter
from typing import Any, Iterator

import pytest
import respx
import responses
from flask import Flask, jsonify, request

import jwtkit
from conftest import make_bindings
from propagation import current_token, current_xsuaa_token, use_token
from propagation.asgi import PropagationASGIMiddleware
from propagation.bindings import Binding, Bindings
from propagation.context import ENVIRON_EXCHANGED_KEY, ENVIRON_KEY, ENVIRON_PUBLIC_KEY
from propagation.engine import Propagator
from propagation.errors import ConfigurationError
from propagation.flask import Propagation
from propagation.inbound import IasFlowOptions
from propagation.exchange.oauth import GRANT_JWT_BEARER, OAuthClient
from propagation.tokens import UserToken

TRUST = "xsuaa-trust-ias-client-id"
SPA = "spa-public-client"


# -- helpers ------------------------------------------------------------------------------------
def engine(bindings: Bindings, environ: dict[str, str] | None = None, **options: Any) -> Propagator:
    return Propagator(bindings=bindings, environ=environ or {}, oauth=OAuthClient(sleep=lambda s: None, retries=0),
                      **options)


def build_app(propagator: Propagator, config: dict[str, Any] | None = None, **options: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config or {})

    @app.get("/me")
    def me() -> Any:
        user, exchanged = current_token(), current_xsuaa_token()
        public = request.environ.get(ENVIRON_PUBLIC_KEY)
        return jsonify(
            user=user.raw if user else None,
            kind=user.kind if user else None,
            xsuaa=exchanged.raw if exchanged else None,
            public=public.raw if public else None,
            environ_user=request.environ[ENVIRON_KEY] is user,
            environ_xsuaa=request.environ.get(ENVIRON_EXCHANGED_KEY) is exchanged,
        )

    Propagation(app, propagator=propagator, **options)
    return app


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def form(call: Any) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(call.request.body))


def assert_401(response: Any, description: str, *secrets: str) -> dict[str, Any]:
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"] == "invalid_token"
    assert description in body["error_description"], body["error_description"]
    for secret in secrets:
        for part in (secret, *secret.split(".")):
            if len(part) >= 8:
                assert part not in response.get_data(as_text=True)
                assert part not in response.headers["WWW-Authenticate"]
    return body


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def issue(rsps: responses.RequestsMock, url: str, token: str, expires_in: int = 3600) -> None:
    rsps.post(url, json={"access_token": token, "token_type": "bearer", "expires_in": expires_in})


def refuse(rsps: responses.RequestsMock, url: str, error: str = "invalid_grant", status: int = 400) -> None:
    rsps.post(url, status=status, json={"error": error, "error_description": "no trust for this assertion"})


# -- IAS → XSUAA (hybrid) -------------------------------------------------------------------------
def test_hybrid_exchanges_ias_token_and_exposes_both(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                     idp_keys: respx.MockRouter, rsps: responses.RequestsMock,
                                                     xssec_calls: Counter[str]) -> None:
    inbound, exchanged = ias.token(aud=[ias.clientid, TRUST]), xsuaa.token("bob@example.com")
    issue(rsps, xsuaa.token_url, exchanged)
    client = build_app(engine(bindings), ias_to_xsuaa=True, xsuaa_trust_client_id=TRUST).test_client()

    body = client.get("/me", headers=bearer(inbound)).get_json()

    assert body == {"user": inbound, "kind": "ias", "xsuaa": exchanged, "public": None,
                    "environ_user": True, "environ_xsuaa": True}
    [call] = rsps.calls
    assert call.request.url == xsuaa.token_url
    assert form(call) == {"grant_type": GRANT_JWT_BEARER, "assertion": inbound, "client_id": xsuaa.clientid,
                          "client_secret": xsuaa.clientsecret}
    assert call.request.req_kwargs["cert"] is None
    assert xssec_calls == Counter({"ias": 1, "xsuaa": 1})
    assert current_token() is None and current_xsuaa_token() is None  # nothing leaks out of the request


def test_hybrid_same_token_twice_is_one_exchange(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                 idp_keys: respx.MockRouter, rsps: responses.RequestsMock,
                                                 xssec_calls: Counter[str]) -> None:
    inbound, exchanged = ias.token(aud=[ias.clientid, TRUST]), xsuaa.token()
    issue(rsps, xsuaa.token_url, exchanged)
    client = build_app(engine(bindings), ias_to_xsuaa=True).test_client()
    first = client.get("/me", headers=bearer(inbound)).get_json()
    second = client.get("/me", headers=bearer(inbound)).get_json()
    assert first == second and first["xsuaa"] == exchanged
    assert len(rsps.calls) == 1
    assert xssec_calls == Counter({"ias": 1, "xsuaa": 1})
    # Another user's token is exchanged on its own.
    other = ias.token("carol@example.com", aud=[ias.clientid, TRUST])
    assert client.get("/me", headers=bearer(other)).status_code == 200
    assert len(rsps.calls) == 2


def test_hybrid_result_lives_until_the_earlier_expiry(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                      idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    inbound = ias.token(aud=[ias.clientid, TRUST], ttl=3600)
    exchanged = xsuaa.token(ttl=600)
    issue(rsps, xsuaa.token_url, exchanged, expires_in=600)
    propagator = engine(bindings, ias_to_xsuaa=True)
    result = propagator.authenticate(inbound)
    assert result.expires_at == UserToken.parse(exchanged).expires_at
    assert propagator.ias_flows().cached(inbound) is result


def test_hybrid_off_validates_ias_token_as_before(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                  idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    inbound = ias.token(aud=[ias.clientid, TRUST])
    body = build_app(engine(bindings)).test_client().get("/me", headers=bearer(inbound)).get_json()
    assert (body["user"], body["xsuaa"]) == (inbound, None)
    assert len(rsps.calls) == 0


def test_hybrid_leaves_xsuaa_tokens_alone(bindings: Bindings, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter,
                                          rsps: responses.RequestsMock) -> None:
    raw = xsuaa.token()
    body = build_app(engine(bindings), ias_to_xsuaa=True).test_client().get("/me", headers=bearer(raw)).get_json()
    assert (body["user"], body["kind"], body["xsuaa"]) == (raw, "xsuaa", None)
    assert len(rsps.calls) == 0


def test_hybrid_configured_trust_id_missing_from_aud(bindings: Bindings, ias: jwtkit.Ias,
                                                     idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    inbound = ias.token(aud=[ias.clientid, "something-else"])
    client = build_app(engine(bindings), ias_to_xsuaa=True, xsuaa_trust_client_id=TRUST).test_client()
    assert_401(client.get("/me", headers=bearer(inbound)),
               f"The IAS token's 'aud' lacks the XSUAA trust client id ({TRUST}): enable "
               "'xsuaa-cross-consumption: true' in the binding parameters", inbound)
    assert len(rsps.calls) == 0


def test_hybrid_discovery_aud_has_only_our_client(bindings: Bindings, ias: jwtkit.Ias,
                                                  idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    inbound = ias.token(aud=[ias.clientid])
    client = build_app(engine(bindings), ias_to_xsuaa=True).test_client()
    assert_401(client.get("/me", headers=bearer(inbound)),
               "The IAS token's 'aud' lacks the XSUAA trust client id: enable 'xsuaa-cross-consumption: true'", inbound)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("error", ["invalid_grant", "unauthorized"])
def test_hybrid_xsuaa_refuses(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                              rsps: responses.RequestsMock, error: str) -> None:
    inbound = ias.token(aud=[ias.clientid, "not-the-trust"])
    refuse(rsps, xsuaa.token_url, error, 401 if error == "unauthorized" else 400)
    client = build_app(engine(bindings), ias_to_xsuaa=True).test_client()
    body = assert_401(client.get("/me", headers=bearer(inbound)),
                      "The IAS token's 'aud' lacks the XSUAA trust client id (or XSUAA does not trust this IAS "
                      "tenant): enable 'xsuaa-cross-consumption: true'", inbound)
    assert f"XSUAA answered {error}" in body["error_description"]
    # Refusals are not cached: the next request asks again.
    client.get("/me", headers=bearer(inbound))
    assert len(rsps.calls) == 2


def test_hybrid_xsuaa_refuses_with_configured_trust(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                    idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    inbound = ias.token(aud=[ias.clientid, TRUST])
    refuse(rsps, xsuaa.token_url)
    client = build_app(engine(bindings, xsuaa_trust_client_id=TRUST), ias_to_xsuaa=True).test_client()
    assert_401(client.get("/me", headers=bearer(inbound)),
               f"lacks the XSUAA trust client id ({TRUST})", inbound)


def test_hybrid_xsuaa_unavailable(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                  idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    inbound = ias.token(aud=[ias.clientid, TRUST])
    rsps.post(xsuaa.token_url, status=503, body="down")
    client = build_app(engine(bindings), ias_to_xsuaa=True).test_client()
    assert_401(client.get("/me", headers=bearer(inbound)),
               "The IAS token could not be exchanged for an XSUAA token: XSUAA answered HTTP 503.", inbound)


def test_hybrid_invalid_xsuaa_answer(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                     idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    inbound = ias.token(aud=[ias.clientid, TRUST])
    issue(rsps, xsuaa.token_url, xsuaa.token(key=jwtkit.rsa_key("attacker")))
    client = build_app(engine(bindings), ias_to_xsuaa=True).test_client()
    assert_401(client.get("/me", headers=bearer(inbound)),
               "The token XSUAA issued for the IAS token is not valid for this application: "
               "Token signature verification failed.", inbound)
    # The bad answer was dropped from the token cache: the next request exchanges again.
    client.get("/me", headers=bearer(inbound))
    assert len(rsps.calls) == 2


def test_hybrid_mtls_uses_certurl_and_certificate(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                                  rsps: responses.RequestsMock) -> None:
    cert_pem, key_pem = jwtkit.self_signed_certificate()
    certurl = f"https://{xsuaa.subdomain}.authentication.cert.eu10.hana.ondemand.com"
    creds = {**xsuaa.credentials(), "certificate": cert_pem, "key": key_pem, "certurl": certurl,
             "credential-type": "x509"}
    del creds["clientsecret"]
    bindings = Bindings([Binding(name="my-xsuaa", label="xsuaa", credentials=creds, source="test"),
                         *make_bindings(ias=ias)], sources=["test"])
    seen: dict[str, Any] = {}

    def answer(req: Any) -> tuple[int, dict[str, str], str]:
        cert_file, key_file = req.req_kwargs["cert"]
        seen.update(files=(cert_file, key_file), existed=os.path.exists(cert_file) and os.path.exists(key_file),
                    form=dict(urllib.parse.parse_qsl(req.body)))
        return 200, {}, json.dumps({"access_token": xsuaa.token(), "expires_in": 3600})

    rsps.add_callback(responses.POST, f"{certurl}/oauth/token", callback=answer)
    client = build_app(engine(bindings), ias_to_xsuaa=True).test_client()
    assert client.get("/me", headers=bearer(ias.token(aud=[ias.clientid, TRUST]))).status_code == 200
    assert seen["existed"] and not any(os.path.exists(f) for f in seen["files"])
    assert "client_secret" not in seen["form"] and seen["form"]["client_id"] == xsuaa.clientid


# -- public (PKCE) clients ------------------------------------------------------------------------
def public_token(ias: jwtkit.Ias, **kw: Any) -> str:
    extra = {"azp": SPA, **kw.pop("extra", {})}
    return ias.token(aud=kw.pop("aud", [SPA]), extra=extra, **kw)


def test_public_client_token_is_exchanged_at_ias(bindings: Bindings, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                                 rsps: responses.RequestsMock, xssec_calls: Counter[str]) -> None:
    public, private = public_token(ias), ias.token(aud=[ias.clientid])
    issue(rsps, jwtkit.ias_token_url(ias), private)
    client = build_app(engine(bindings), public_clients=[SPA]).test_client()

    body = client.get("/me", headers=bearer(public)).get_json()

    assert (body["user"], body["kind"], body["public"], body["xsuaa"]) == (private, "ias", public, None)
    [call] = rsps.calls
    assert form(call) == {"grant_type": GRANT_JWT_BEARER, "assertion": public, "client_id": ias.clientid,
                          "client_secret": ias.clientsecret}
    assert xssec_calls == Counter({"ias": 2})
    # Same token again: no exchange, no validation.
    assert client.get("/me", headers=bearer(public)).get_json() == body
    assert len(rsps.calls) == 1 and xssec_calls == Counter({"ias": 2})


def test_public_client_then_hybrid(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                   idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    public, private, exchanged = public_token(ias), ias.token(aud=[ias.clientid, TRUST]), xsuaa.token()
    issue(rsps, jwtkit.ias_token_url(ias), private)
    issue(rsps, xsuaa.token_url, exchanged)
    propagator = engine(bindings, {"PROPAGATION_PUBLIC_CLIENTS": f"other, {SPA}", "PROPAGATION_IAS_TO_XSUAA": "true"})
    client = build_app(propagator).test_client()
    for _ in range(2):
        body = client.get("/me", headers=bearer(public)).get_json()
        assert (body["user"], body["public"], body["xsuaa"]) == (private, public, exchanged)
    assert [c.request.url for c in rsps.calls] == [jwtkit.ias_token_url(ias), xsuaa.token_url]
    assert form(rsps.calls[1])["assertion"] == private


def test_public_client_wrong_audience(bindings: Bindings, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                      rsps: responses.RequestsMock) -> None:
    raw = ias.token(aud=["unlisted-spa"], extra={"azp": "unlisted-spa"})
    client = build_app(engine(bindings), public_clients=[SPA]).test_client()
    assert_401(client.get("/me", headers=bearer(raw)),
               "Token audience does not match this application's OAuth client.", raw)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("issuer", ["https://evil.example.com", "https://mytenant.accounts.ondemand.com.evil.com",
                                    "https://a.b.accounts.ondemand.com", "http://mytenant.accounts.ondemand.com",
                                    "https://mytenant.accounts.ondemand.com:8443", "https://mytenant.accounts.ondemand.com:x"])
def test_public_client_wrong_issuer(bindings: Bindings, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                    rsps: responses.RequestsMock, issuer: str) -> None:
    raw = public_token(ias, issuer=issuer)
    client = build_app(engine(bindings), public_clients=[SPA]).test_client()
    assert_401(client.get("/me", headers=bearer(raw)),
               f"Token of public client '{SPA}' was not issued by the bound IAS tenant ({ias.host})", raw)
    assert len(rsps.calls) == 0
    assert idp_keys["ias_openid_configuration"].call_count == 0


@pytest.mark.parametrize("issuer", [
    pytest.param("https://othertenant.accounts.ondemand.com", id="other-tenant-same-domain"),
    pytest.param("https://accounts.ondemand.com", id="the-shared-domain-itself"),
    pytest.param("https://mytenant.accounts.ondemand.com/path", id="with-path"),
])
def test_public_client_of_another_tenant_of_the_domain_is_refused_before_any_call(
    bindings: Bindings, ias: jwtkit.Ias, idp_keys: respx.MockRouter, rsps: responses.RequestsMock, issuer: str
) -> None:
    # Issue 11, finding 7: '<label>.<domain>' is sap-xssec's rule for *validation*; for the
    # exchange at our tenant only our tenant's own tokens qualify.
    raw = public_token(ias, issuer=issuer)
    client = build_app(engine(bindings), public_clients=[SPA]).test_client()
    assert_401(client.get("/me", headers=bearer(raw)),
               f"Token of public client '{SPA}' was not issued by the bound IAS tenant ({ias.host})", raw)
    assert len(rsps.calls) == 0
    assert [r.call_count for r in idp_keys.routes] == [0, 0, 0]


@pytest.mark.parametrize("issuer, extra", [
    pytest.param("https://login.example.com", {}, id="custom-domain-listed-as-host"),
    pytest.param("https://login.corp.example", {}, id="host-under-a-listed-custom-domain"),
    pytest.param("https://login.unlisted.example", {"ias_iss": "https://mytenant.accounts.ondemand.com"},
                 id="ias-iss-names-the-tenant"),
])
def test_public_client_custom_domains_of_the_binding_pass_the_issuer_rule(
    xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter, rsps: responses.RequestsMock, issuer: str,
    extra: dict[str, Any]
) -> None:
    ias.domain = "accounts.ondemand.com"
    bound = make_bindings(xsuaa, ias)
    creds = dict(bound.find(label="identity").credentials)  # type: ignore[union-attr]
    creds["domains"] = ["accounts.ondemand.com", "login.example.com", "corp.example"]
    bindings = Bindings([Binding(name="my-ias", label="identity", credentials=creds, plan="application", tags=(),
                                 source="test"), bound.find(label="xsuaa")], sources=["test"])  # type: ignore[list-item]
    raw = public_token(ias, issuer=issuer, extra=extra)
    response = build_app(engine(bindings), public_clients=[SPA]).test_client().get("/me", headers=bearer(raw))
    # Past the issuer rule: the refusal (if any) is sap-xssec's, not "not issued by the bound IAS tenant".
    assert "not issued by the bound IAS tenant" not in response.get_data(as_text=True)


def test_public_client_forged(bindings: Bindings, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                              rsps: responses.RequestsMock) -> None:
    raw = public_token(ias, key=jwtkit.rsa_key("attacker"))
    client = build_app(engine(bindings), public_clients=[SPA]).test_client()
    assert_401(client.get("/me", headers=bearer(raw)), "Token signature verification failed.", raw)
    assert len(rsps.calls) == 0


def test_public_client_expired_token(bindings: Bindings, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                     rsps: responses.RequestsMock) -> None:
    raw = public_token(ias, ttl=-120)
    client = build_app(engine(bindings), public_clients=[SPA]).test_client()
    assert_401(client.get("/me", headers=bearer(raw)), "Token expired.", raw)
    assert len(rsps.calls) == 0
    assert idp_keys["ias_jwks"].call_count == 0


def test_ias_refuses_the_public_exchange(bindings: Bindings, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                         rsps: responses.RequestsMock) -> None:
    raw = public_token(ias)
    refuse(rsps, jwtkit.ias_token_url(ias), "invalid_grant")
    client = build_app(engine(bindings), public_clients=[SPA]).test_client()
    assert_401(client.get("/me", headers=bearer(raw)),
               f"IAS refused to exchange the token of public client '{SPA}' for this application's token "
               "(invalid_grant).", raw)


def test_public_exchange_with_x509_at_ias(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                          rsps: responses.RequestsMock) -> None:
    cert_pem, key_pem = jwtkit.self_signed_certificate()
    creds = {**ias.credentials(), "certificate": cert_pem, "key": key_pem, "credential-type": "X509_GENERATED"}
    del creds["clientsecret"]
    bindings = Bindings([*make_bindings(xsuaa=xsuaa),
                         Binding(name="my-ias", label="identity", credentials=creds, source="test")], sources=["test"])
    private = ias.token(aud=[ias.clientid])
    seen: dict[str, Any] = {}

    def answer(req: Any) -> tuple[int, dict[str, str], str]:
        cert_file, key_file = req.req_kwargs["cert"]
        with open(cert_file) as c, open(key_file) as k:
            seen.update(files=(cert_file, key_file), cert=c.read(), key=k.read(),
                        form=dict(urllib.parse.parse_qsl(req.body)), auth=req.headers.get("Authorization"))
        return 200, {}, json.dumps({"access_token": private, "expires_in": 3600})

    rsps.add_callback(responses.POST, jwtkit.ias_token_url(ias), callback=answer)
    client = build_app(engine(bindings), public_clients=SPA).test_client()
    assert client.get("/me", headers=bearer(public_token(ias))).get_json()["user"] == private
    assert seen["cert"].strip() == cert_pem.strip() and seen["key"].strip() == key_pem.strip()
    assert not any(os.path.exists(f) for f in seen["files"])
    assert seen["auth"] is None and "client_secret" not in seen["form"]
    assert seen["form"]["client_id"] == ias.clientid


def test_our_own_ias_tokens_still_validate_with_public_clients(bindings: Bindings, ias: jwtkit.Ias,
                                                               idp_keys: respx.MockRouter,
                                                               rsps: responses.RequestsMock) -> None:
    raw = ias.token(aud=[ias.clientid], extra={"azp": SPA})
    body = build_app(engine(bindings), public_clients=[SPA]).test_client().get("/me", headers=bearer(raw)).get_json()
    assert (body["user"], body["public"]) == (raw, None)
    assert len(rsps.calls) == 0


# -- logs, ASGI, options ----------------------------------------------------------------------------
def test_no_token_in_logs(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                          rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture) -> None:
    public, private, exchanged = public_token(ias), ias.token(aud=[ias.clientid, TRUST]), xsuaa.token()
    issue(rsps, jwtkit.ias_token_url(ias), private)
    issue(rsps, xsuaa.token_url, exchanged)
    refused = ias.token("eve@example.com", aud=[ias.clientid, "x"])
    caplog.set_level(logging.DEBUG)
    client = build_app(engine(bindings), ias_to_xsuaa=True, public_clients=[SPA]).test_client()
    assert client.get("/me", headers=bearer(public)).status_code == 200
    rsps.replace(responses.POST, xsuaa.token_url, status=400, json={"error": "invalid_grant"})
    assert client.get("/me", headers=bearer(refused)).status_code == 401
    assert caplog.records
    for raw in (public, private, exchanged, refused):
        for part in (raw, *raw.split(".")):
            assert part not in caplog.text
    for secret in (ias.clientsecret, xsuaa.clientsecret):
        assert secret not in caplog.text


def test_asgi_exposes_both_tokens(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                  idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    inbound, exchanged = ias.token(aud=[ias.clientid, TRUST]), xsuaa.token()
    issue(rsps, xsuaa.token_url, exchanged)
    seen: list[tuple[Any, ...]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope[ENVIRON_KEY], scope[ENVIRON_EXCHANGED_KEY], scope["state"][ENVIRON_EXCHANGED_KEY],
                     current_token(), current_xsuaa_token()))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = PropagationASGIMiddleware(app, propagator=engine(bindings), ias_to_xsuaa=True)
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"authorization", f"Bearer {inbound}".encode())]}
    asyncio.run(middleware(scope, receive, send))
    asyncio.run(middleware(scope, receive, send))  # cached: answered on the loop
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [204, 204]
    for user, xs, state_xs, current, current_xs in seen:
        assert (user.raw, xs.raw, state_xs, current, current_xs) == (inbound, exchanged, xs, user, xs)
    assert len(rsps.calls) == 1


def test_use_token_never_keeps_another_users_xsuaa_token(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias) -> None:
    with use_token(ias.token(), xsuaa_token=xsuaa.token()) as user:
        assert current_xsuaa_token() is not None and current_token() is user
        with use_token(ias.token("other@example.com")):
            assert current_xsuaa_token() is None
        assert current_xsuaa_token() is not None
    assert current_xsuaa_token() is None


def test_flask_config_keys(bindings: Bindings, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                           rsps: responses.RequestsMock) -> None:
    issue(rsps, xsuaa.token_url, xsuaa.token())
    app = build_app(engine(bindings), {"PROPAGATION_IAS_TO_XSUAA": "true", "PROPAGATION_XSUAA_TRUST_CLIENT_ID": TRUST,
                                       "PROPAGATION_PUBLIC_CLIENTS": f"{SPA},x"})
    flows = Propagation.middleware(app).gate.flows
    assert flows is not None and flows.options == IasFlowOptions(True, TRUST, frozenset({SPA, "x"}))
    assert app.test_client().get("/me", headers=bearer(ias.token(aud=[ias.clientid, TRUST]))).get_json()["xsuaa"]


def test_options_precedence(bindings: Bindings) -> None:
    env = {"PROPAGATION_IAS_TO_XSUAA": "yes", "PROPAGATION_XSUAA_TRUST_CLIENT_ID": "env-trust",
           "PROPAGATION_PUBLIC_CLIENTS": " a , ,b "}
    assert engine(bindings, env).ias_flows().options == IasFlowOptions(True, "env-trust", frozenset({"a", "b"}))
    assert engine(bindings, env, ias_to_xsuaa=False, public_clients=[]).ias_flows() is None
    assert engine(bindings, env).ias_flows(xsuaa_trust_client_id="kw").options.xsuaa_trust_client_id == "kw"
    assert engine(bindings).ias_flows() is None
    with pytest.raises(ConfigurationError, match="PROPAGATION_IAS_TO_XSUAA must be a boolean"):
        engine(bindings, {"PROPAGATION_IAS_TO_XSUAA": "maybe"}).ias_flows()


@pytest.mark.parametrize("options, missing", [({"ias_to_xsuaa": True}, "xsuaa"), ({"public_clients": [SPA]}, "identity")])
def test_flows_need_their_bindings_at_startup(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, options: dict[str, Any],
                                              missing: str) -> None:
    bindings = make_bindings(xsuaa=None if missing == "xsuaa" else xsuaa, ias=None if missing == "identity" else ias)
    with pytest.raises(ConfigurationError, match=f"needs an '{missing}'"):
        build_app(engine(bindings), **options)
