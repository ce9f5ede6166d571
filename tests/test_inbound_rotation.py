"""The inbound side follows rotated ``xsuaa`` / ``identity`` bindings under
SERVICE_BINDING_ROOT without a restart (issue 17 items 6 and 7): the validator checks tokens
against the new credentials, and the IAS→XSUAA exchange uses the new client secret."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest
import responses
import respx
from flask import Flask

import jwtkit
from propagation.bindings import Bindings
from propagation.engine import Propagator
from propagation.exchange.oauth import GRANT_JWT_BEARER, OAuthClient
from propagation.wsgi import PropagationMiddleware
from test_binding_rotation import Clock, SecretVolume

TRUST = "xsuaa-trust-ias-client-id"


def files(credentials: dict[str, Any], kind: str) -> dict[str, str]:
    return {"type": kind, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in credentials.items()}}


def load(root: Path, clock: Clock) -> Bindings:
    return Bindings.from_env({"SERVICE_BINDING_ROOT": str(root)}, cwd=root, refresh_interval=10.0, clock=clock)


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["propagation.token"].claims["cid"].encode()]


def call(app: Any, raw: str) -> str:
    statuses: list[str] = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_AUTHORIZATION": f"Bearer {raw}"},
                        lambda status, headers: statuses.append(status)))
    return f"{statuses[0][:3]} {body.decode()[:40] if statuses[0].startswith('200') else ''}".strip()


def test_validator_follows_a_rotated_xsuaa_binding(tmp_path: Path, xsuaa: jwtkit.Xsuaa,
                                                   idp_keys: respx.MockRouter) -> None:
    """The binding is replaced by another XSUAA client (new clientid, xsappname, secret): the
    middleware built before the rotation accepts the new client's tokens, and no longer the old
    client's (its cached validation is dropped with the old credentials)."""
    new = jwtkit.Xsuaa(clientid="sb-app-v2!t123", xsappname="app-v2!t123", clientsecret="rotated-secret-VALUE")
    volume = SecretVolume(tmp_path, "xsuaa", files(xsuaa.credentials(), "xsuaa"))
    clock = Clock()
    engine = Propagator(bindings=load(tmp_path, clock), environ={})
    app = PropagationMiddleware(hello, propagator=engine)
    old_token, new_token = xsuaa.token(), new.token()
    assert call(app, old_token) == f"200 {xsuaa.clientid}"
    assert call(app, new_token) == "401"

    volume.write(files(new.credentials(), "xsuaa"))
    clock.now += 10.0  # the bindings' next check

    assert call(app, new_token) == f"200 {new.clientid}"
    assert call(app, old_token) == "401"  # the validated-token cache went with the old credentials
    assert engine.validator.xsappname == "app-v2!t123"


def test_unusable_rotated_credentials_are_not_taken(tmp_path: Path, xsuaa: jwtkit.Xsuaa,
                                                    idp_keys: respx.MockRouter, caplog: pytest.LogCaptureFixture) -> None:
    volume = SecretVolume(tmp_path, "xsuaa", files(xsuaa.credentials(), "xsuaa"))
    clock = Clock()
    app = PropagationMiddleware(hello, propagator=Propagator(bindings=load(tmp_path, clock), environ={}))
    broken = {k: v for k, v in xsuaa.credentials().items() if k != "xsappname"}
    volume.write(files(broken, "xsuaa"))
    clock.now += 10.0
    with caplog.at_level("WARNING", logger="propagation"):
        assert call(app, xsuaa.token()) == f"200 {xsuaa.clientid}"
    assert "rotated xsuaa/identity credentials not taken (keeping the previous ones): The 'xsuaa' binding " \
           "credentials lack xsappname" in caplog.text
    assert xsuaa.clientsecret not in caplog.text


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def test_ias_to_xsuaa_uses_the_rotated_client_secret(tmp_path: Path, xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                     idp_keys: respx.MockRouter, rsps: responses.RequestsMock) -> None:
    """Before: the IAS flows copied the xsuaa credentials once and kept sending the old secret
    (XSUAA: invalid_client) although the bindings held the new one."""
    volume = SecretVolume(tmp_path, "xsuaa", files(xsuaa.credentials(), "xsuaa"))
    SecretVolume(tmp_path, "identity", files(ias.credentials(), "identity"))
    clock = Clock()
    engine = Propagator(bindings=load(tmp_path, clock), environ={}, oauth=OAuthClient(sleep=lambda s: None, retries=0))
    app = Flask(__name__)
    app.get("/me")(lambda: "ok")
    from propagation.flask import Propagation

    Propagation(app, propagator=engine, ias_to_xsuaa=True, xsuaa_trust_client_id=TRUST)
    client = app.test_client()
    rsps.post(xsuaa.token_url, json={"access_token": xsuaa.token("bob@example.com"), "token_type": "bearer",
                                     "expires_in": 3600})

    first = ias.token("bob@example.com", aud=[ias.clientid, TRUST])
    assert client.get("/me", headers={"Authorization": f"Bearer {first}"}).status_code == 200
    volume.write(files({**xsuaa.credentials(), "clientsecret": "rotated-secret-VALUE"}, "xsuaa"))
    clock.now += 10.0
    second = ias.token("carol@example.com", aud=[ias.clientid, TRUST])
    assert client.get("/me", headers={"Authorization": f"Bearer {second}"}).status_code == 200

    sent = [dict(urllib.parse.parse_qsl(c.request.body)) for c in rsps.calls]
    assert [(f["grant_type"], f["assertion"], f["client_secret"]) for f in sent] == [
        (GRANT_JWT_BEARER, first, xsuaa.clientsecret),
        (GRANT_JWT_BEARER, second, "rotated-secret-VALUE"),
    ]


def test_validator_follows_a_rotated_identity_binding(tmp_path: Path, ias: jwtkit.Ias, idp_keys: respx.MockRouter) -> None:
    """The identity binding now names another IAS application (client id): its tokens pass, the old ones' not."""
    new = jwtkit.Ias(clientid="ias-client-v2", clientsecret="rotated-ias-secret-VALUE")
    volume = SecretVolume(tmp_path, "identity", files(ias.credentials(), "identity"))
    clock = Clock()
    app = PropagationMiddleware(lambda environ, start: (start("200 OK", []), [b"ok"])[1],
                                propagator=Propagator(bindings=load(tmp_path, clock), environ={}))
    old_token, new_token = ias.token(), new.token()
    assert (call(app, old_token), call(app, new_token)) == ("200 ok", "401")
    volume.write(files(new.credentials(), "identity"))
    clock.now += 10.0
    assert (call(app, old_token), call(app, new_token)) == ("401", "200 ok")
