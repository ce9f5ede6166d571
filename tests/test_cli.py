"""``python -m propagation``: decode, doctor and exchange — output, exit codes, and that no
token or secret ever reaches stdout/stderr unless ``--show-token`` asks for it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs

import pytest
import responses

import jwtkit
from conftest import vcap_services
from propagation.cli import main

TOKEN_URL = "https://idp.example.com/oauth/token"
DEST_SECRET = "dest-secret-VALUE"
BASIC_PASSWORD = "basic-password-VALUE"
CONN_SECRET = "conn-secret-VALUE"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.fixture(autouse=True)
def _no_default_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # default-env.json is read from the working directory: never pick up one of the developer's.
    monkeypatch.chdir(tmp_path)


def run(argv: list[str], environ: dict[str, str] | None = None, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, environ=environ or {}, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# -- decode -------------------------------------------------------------------------------------------
DECODE_CASES = [
    pytest.param(
        lambda x, i: (["decode", x.token("alice@example.com")], ""), 0,
        ["kind:", "xsuaa", "alice@example.com", "tenant-provider-zid", "subdomain:   provider", "sb-app!t123",
         "expires in 1h", "signature was NOT verified", "OAuth2JWTBearer", "alg=RS256", "kid=key-xsuaa"],
        [], id="xsuaa",
    ),
    pytest.param(
        lambda x, i: (["decode", i.token("bob@example.com", aud=["ias-client-id", "xsuaa-trust!b1"])], ""), 0,
        ["kind:        ias", "bob@example.com", "ias-app-tid", "more than the IAS application's own client: "
         "xsuaa-trust!b1"], ["Technical token"], id="ias-extra-aud",
    ),
    pytest.param(
        lambda x, i: (["decode", "--xsuaa-trust-client-id", "xsuaa-trust!b1",
                       i.token(aud=["ias-client-id", "xsuaa-trust!b1"])], ""), 0,
        ["aud contains the XSUAA trust client 'xsuaa-trust!b1'"], [], id="ias-trust-present",
    ),
    pytest.param(
        lambda x, i: (["decode", "--xsuaa-trust-client-id", "xsuaa-trust!b1", i.token()], ""), 0,
        ["aud lacks the XSUAA trust client 'xsuaa-trust!b1'", "xsuaa-cross-consumption"], [], id="ias-trust-absent",
    ),
    pytest.param(
        lambda x, i: (["decode", "--public-client", "ias-client-id", i.token()], ""), 0,
        ["Public-client (PKCE) token of 'ias-client-id'", "/oauth2/token"], [], id="ias-public-client",
    ),
    pytest.param(
        lambda x, i: (["decode", i.token()], ""), 0,
        ["may be a public-client (PKCE) token", "--public-client ID"], [], id="ias-public-unconfirmed",
    ),
    pytest.param(
        lambda x, i: (["decode", x.token(ttl=-180)], ""), 0,
        ["EXPIRED 3m ago", "token is expired", "no (expired)"], ["expires in"], id="expired",
    ),
    pytest.param(
        lambda x, i: (["decode", x.token(grant_type="client_credentials")], ""), 0,
        ["Technical token (grant_type is client_credentials)", "cannot serve destinations that need a user",
         "no (technical token: no user)"], [], id="technical",
    ),
    pytest.param(
        lambda x, i: (["decode"], x.token("carol@example.com") + "\n"), 0,
        ["carol@example.com"], [], id="stdin",
    ),
    pytest.param(
        lambda x, i: (["decode", "-"], "Bearer " + x.token("dave@example.com")), 0,
        ["dave@example.com"], [], id="stdin-bearer-prefix",
    ),
    pytest.param(
        lambda x, i: (["decode", "Bearer " + x.token("erin@example.com")], ""), 0,
        ["erin@example.com"], [], id="arg-bearer-prefix",
    ),
]


@pytest.mark.parametrize(("make", "code", "present", "absent"), DECODE_CASES)
def test_decode(make: Callable[..., Any], code: int, present: list[str], absent: list[str],
                xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias) -> None:
    argv, stdin = make(xsuaa, ias)
    rc, out, err = run(argv, stdin=stdin)
    assert (rc, err) == (code, "")
    for text in present:
        assert text in out
    for text in absent:
        assert text not in out
    raw = stdin.strip().removeprefix("Bearer ") or argv[-1].removeprefix("Bearer ")
    assert raw not in out  # the raw token is never echoed


def test_decode_json(xsuaa: jwtkit.Xsuaa) -> None:
    raw = xsuaa.token("alice@example.com", ttl=300)
    rc, out, err = run(["decode", "--json", raw])
    assert (rc, err) == (0, "")
    data = json.loads(out)
    assert data["kind"] == "xsuaa"
    assert data["user"] == "alice@example.com"
    assert data["tenant"] == "tenant-provider-zid"
    assert data["header"]["kid"] == "key-xsuaa"
    assert data["claims"]["cid"] == "sb-app!t123"
    assert data["expiry"] == "expires in 5m"
    assert data["signature_verified"] is False
    assert data["diagnosis"]["technical"] is False
    assert data["diagnosis"]["serves"]["OAuth2JWTBearer"].startswith("yes")
    assert raw not in out


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        pytest.param(["decode", "not-a-jwt"], "", "expected three dot-separated segments", id="garbage"),
        pytest.param(["decode", "abc.def.ghi"], "", "header is not base64url-encoded JSON", id="bad-base64"),
        pytest.param(["decode", "-"], "   \n", "empty token", id="empty-stdin"),
        pytest.param(["decode", "eyJhbGciOiJub25lIn0.WzFd.x"], "", "payload is not a JSON object", id="payload-array"),
    ],
)
def test_decode_malformed(argv: list[str], stdin: str, message: str) -> None:
    rc, out, err = run(argv, stdin=stdin)
    assert rc == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    if argv[-1] != "-":
        assert argv[-1] not in err


# -- doctor -------------------------------------------------------------------------------------------
def connectivity_binding(**overrides: Any) -> dict[str, Any]:
    creds = {"clientid": "conn-client", "clientsecret": CONN_SECRET, "token_service_url": "https://conn.example.com",
             "onpremise_proxy_host": "connectivityproxy.internal", "onpremise_proxy_http_port": "20003"}
    creds.update(overrides)
    return {"name": "my-conn", "label": "connectivity", "plan": "connectivity_proxy", "credentials": creds}


GOOD_DESTINATIONS = [
    {"name": "S4", "url": "https://s4.example.com", "Authentication": "OAuth2JWTBearer",
     "tokenServiceURL": TOKEN_URL, "clientId": "s4-client", "clientSecret": DEST_SECRET},
    {"name": "ERP", "url": "http://erp.virtual:44300", "Authentication": "PrincipalPropagation",
     "ProxyType": "OnPremise", "CloudConnectorLocationId": "LOC1"},
    {"name": "PUBLIC", "url": "https://api.example.com"},
    {"name": "LEGACY", "url": "https://legacy.example.com", "Authentication": "BasicAuthentication",
     "User": "tech", "Password": BASIC_PASSWORD},
]


def test_doctor_correct_environment(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias) -> None:
    environ = {"VCAP_SERVICES": vcap_services(xsuaa, ias, connectivity=[connectivity_binding()]),
               "destinations": json.dumps(GOOD_DESTINATIONS)}
    rc, out, err = run(["doctor"], environ)
    assert (rc, err) == (0, "")
    assert "Bindings (3; read from: VCAP_SERVICES)" in out
    assert "my-xsuaa  label=xsuaa  plan=application  source=VCAP_SERVICES" in out
    assert "clientid, clientsecret, identityzone" in out  # keys listed ...
    assert "Destinations (4)" in out
    assert ("Authentication=PrincipalPropagation  needs user=yes  ProxyType=OnPremise  "
            "proxy=http://connectivityproxy.internal:20003") in out
    assert "Authentication=OAuth2JWTBearer  needs user=yes  ProxyType=Internet  proxy=-" in out
    assert "token URL host=idp.example.com" in out
    assert "No problems found." in out
    for secret in (xsuaa.clientsecret, ias.clientsecret, DEST_SECRET, BASIC_PASSWORD, CONN_SECRET):
        assert secret not in out  # ... values never


MISCONFIGURED = [
    {"name": "ERP", "url": "https://erp.virtual:44300", "Authentication": "PrincipalPropagation",
     "ProxyType": "OnPremise"},
    {"name": "PP-NET", "url": "https://pp.example.com", "Authentication": "PrincipalPropagation"},
    {"name": "S4", "url": "https://s4.example.com", "Authentication": "OAuth2JWTBearer"},
    {"name": "LEGACY", "url": "https://legacy.example.com", "Authentication": "BasicAuthentication", "User": "tech"},
    {"name": "SAML", "url": "https://saml.example.com", "Authentication": "OAuth2SAMLBearerAssertion"},
]


def test_doctor_misconfigured_environment(xsuaa: jwtkit.Xsuaa) -> None:
    creds = xsuaa.credentials()
    del creds["xsappname"]
    vcap = {
        "xsuaa": [{"name": "my-xsuaa", "label": "xsuaa", "plan": "application", "credentials": creds}],
        "destination": [{"name": "my-dest", "label": "destination", "plan": "lite",
                         "credentials": {"clientid": "d", "clientsecret": "dest-binding-SECRET",
                                         "url": "https://p.authentication.example.com",
                                         "uri": "https://destination-configuration.example.com"}}],
    }
    environ = {"VCAP_SERVICES": json.dumps(vcap), "destinations": json.dumps(MISCONFIGURED)}
    rc, out, err = run(["doctor"], environ)
    assert (rc, err) == (1, "")
    problems = out.split("Problems (", 1)[1]
    expected = [
        "XSUAA binding 'my-xsuaa' lacks xsappname",
        "Destination 'ERP' (destinations environment variable) has ProxyType OnPremise but no 'connectivity'",
        "Destination 'ERP' (destinations environment variable) has ProxyType OnPremise and an https:// URL",
        "Destination 'PP-NET' (destinations environment variable) uses PrincipalPropagation with ProxyType Internet",
        "Destination 'S4' (destinations environment variable) uses OAuth2JWTBearer but has no clientId and no "
        "tokenServiceURL",
        "Destination 'LEGACY' (destinations environment variable) uses BasicAuthentication but has no Password",
        "Destination 'SAML' (destinations environment variable) uses OAuth2SAMLBearerAssertion, which only the "
        "Destination service can serve",
    ]
    for text in expected:
        assert text in problems
    assert problems.startswith(f"{len(expected)}):")
    notes = out.split("Notes:", 1)[1].split("Problems", 1)[0]
    assert "A 'destination' binding ('my-dest') is present" in notes  # a note, not a problem
    assert "dest-binding-SECRET" not in out and xsuaa.clientsecret not in out


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"VCAP_SERVICES": "{not json"}, "VCAP_SERVICES is not valid JSON (line 1 column 2)",
                     id="vcap-not-json"),
        pytest.param({"VCAP_SERVICES": '{"xsuaa": {}}'}, "VCAP_SERVICES['xsuaa'] is not an array", id="vcap-shape"),
        pytest.param({"destinations": '[{"url": "https://x"}]'}, "destinations[0] in the destinations environment "
                     "variable has no 'name'", id="destinations-no-name"),
        pytest.param({}, "No 'xsuaa' or 'identity' service binding", id="no-bindings"),
        pytest.param({"PROPAGATION_CONNECTIVITY_MODE": "tunnel"}, "connectivity mode 'tunnel' is not one of",
                     id="bad-mode"),
    ],
)
def test_doctor_unreadable_sources(environ: dict[str, str], message: str) -> None:
    # Decision: an unreadable source is a *problem* (exit 1, with the ConfigurationError's
    # message), not a usage error: doctor still reports everything else it could read.
    rc, out, err = run(["doctor"], environ)
    assert (rc, err) == (1, "")
    assert message in out


def test_doctor_connectivity_binding_incomplete(xsuaa: jwtkit.Xsuaa) -> None:
    environ = {"VCAP_SERVICES": vcap_services(xsuaa, None, connectivity=[connectivity_binding(onpremise_proxy_host="")]),
               "destinations": json.dumps(GOOD_DESTINATIONS[1:2])}
    rc, out, _ = run(["doctor"], environ)
    assert rc == 1
    assert "Connectivity binding 'my-conn' needs 'onpremise_proxy_host'" in out
    assert "proxy=connectivity binding invalid" in out


def test_doctor_lists_binding_destinations(xsuaa: jwtkit.Xsuaa) -> None:
    it_rt = {"name": "my-cpi", "label": "it-rt", "plan": "integration-flow",
             "credentials": {"oauth": {"url": "https://cpi.example.com", "tokenurl": TOKEN_URL,
                                       "clientid": "cpi-client", "clientsecret": "cpi-SECRET"}}}
    rc, out, _ = run(["doctor", "--json"], {"VCAP_SERVICES": vcap_services(xsuaa, None, **{"it-rt": [it_rt]})})
    assert rc == 0
    data = json.loads(out)
    assert data["ok"] is True and data["problems"] == []
    cpi = next(b for b in data["bindings"] if b["name"] == "my-cpi")
    assert cpi["credential_keys"] == ["oauth.clientid", "oauth.clientsecret", "oauth.tokenurl", "oauth.url"]
    [dest] = data["destinations"]
    assert dest == {"name": "my-cpi", "source": "service binding 'my-cpi' (VCAP_SERVICES)",
                    "authentication": "OAuth2JWTBearer", "authentication_inferred": False, "needs_user": True,
                    "proxy_type": "Internet",
                    "proxy": None, "url_host": "cpi.example.com", "token_url_host": "idp.example.com"}
    assert "cpi-SECRET" not in out


# -- exchange -----------------------------------------------------------------------------------------
def form(call: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def exchange_env(xsuaa: jwtkit.Xsuaa, **extra: str) -> dict[str, str]:
    return {"VCAP_SERVICES": vcap_services(xsuaa, None, connectivity=[connectivity_binding()]),
            "destinations": json.dumps(GOOD_DESTINATIONS), **extra}


def test_exchange_jwt_bearer(xsuaa: jwtkit.Xsuaa) -> None:
    user = xsuaa.token("alice@example.com")
    exchanged = xsuaa.token("alice@example.com", cid="s4-client", extra={"aud": ["s4-backend"]})
    with responses.RequestsMock() as rsps:
        rsps.post(TOKEN_URL, json={"access_token": exchanged, "token_type": "bearer", "expires_in": 3600})
        rc, out, err = run(["exchange", "S4", "--token", user], exchange_env(xsuaa))
        assert len(rsps.calls) == 1
        assert form(rsps.calls[0]) == {"grant_type": JWT_BEARER, "assertion": user, "client_id": "s4-client",
                                       "client_secret": DEST_SECRET}
    assert (rc, err) == (0, "")
    assert "Destination: S4  (destinations environment variable)" in out
    assert "Authorization:" in out and "scheme: Bearer" in out
    assert "user: alice@example.com  client: s4-client  aud: s4-backend" in out
    from propagation.tokens import fingerprint

    assert f"fingerprint: {fingerprint(exchanged)}" in out
    assert "--show-token prints them" in out
    for secret in (exchanged, user, DEST_SECRET, xsuaa.clientsecret):
        assert secret not in out + err


def test_exchange_show_token(xsuaa: jwtkit.Xsuaa) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(TOKEN_URL, json={"access_token": "opaque-exchanged-TOKEN", "expires_in": 3600})
        rc, out, err = run(["exchange", "S4", "--token", "-", "--show-token"], exchange_env(xsuaa),
                           stdin="Bearer " + xsuaa.token())
    assert (rc, err) == (0, "")
    assert "value: Bearer opaque-exchanged-TOKEN" in out
    assert "opaque token" in out
    assert DEST_SECRET not in out


def test_exchange_connectivity_headers_from_env_token(xsuaa: jwtkit.Xsuaa) -> None:
    user = xsuaa.token("alice@example.com")
    with responses.RequestsMock() as rsps:
        rsps.post("https://conn.example.com/oauth/token", json={"access_token": "proxy-TOKEN", "expires_in": 3600})
        rc, out, err = run(["exchange", "ERP", "--json"], exchange_env(xsuaa, PROPAGATION_TOKEN=user))
        assert form(rsps.calls[0])["assertion"] == user
    assert (rc, err) == (0, "")
    data = json.loads(out)
    assert data["proxy"] == "http://connectivityproxy.internal:20003"
    assert data["strategy"] == "principal-propagation"
    headers = {h["name"]: h for h in data["headers"]}
    assert headers["SAP-Connectivity-SCC-Location_ID"]["value"] == "LOC1"
    assert headers["Proxy-Authorization"]["format"] == "opaque"
    assert "value" not in headers["Proxy-Authorization"]
    assert "proxy-TOKEN" not in out and user not in out and CONN_SECRET not in out


@pytest.mark.parametrize(
    ("argv", "answer", "code", "message"),
    [
        pytest.param(["exchange", "S4"], None, 3,
                     "No user token (JWT) has been provided. This is strictly necessary for 'OAuth2JWTBearer'",
                     id="missing-user"),
        pytest.param(["exchange", "S4", "--token", "TECHNICAL"], None, 3, "technical (client_credentials) token",
                     id="technical-user"),
        pytest.param(["exchange", "S4", "--token", "USER"],
                     (400, {"error": "invalid_grant", "error_description": "JWT expired"}), 4,
                     "[status 400, error invalid_grant, description JWT expired]", id="refused"),
        pytest.param(["exchange", "S4", "--token", "USER"], (401, {"error": "invalid_client"}), 4,
                     "hint: the OAuth client was refused", id="bad-client"),
        pytest.param(["exchange", "NOPE", "--token", "USER"], None, 5,
                     "Destination 'NOPE' not found. Looked in: the 'destinations' environment variable", id="unknown"),
        pytest.param(["exchange", "ERP", "--token", "USER"], None, 6,
                     "has ProxyType OnPremise: it needs a 'connectivity' service binding", id="no-connectivity"),
        pytest.param(["exchange", "S4", "--token", "x.y"], None, 2, "the user token is malformed", id="bad-token"),
    ],
)
def test_exchange_errors(argv: list[str], answer: tuple[int, dict[str, str]] | None, code: int, message: str,
                         xsuaa: jwtkit.Xsuaa) -> None:
    user = xsuaa.token("alice@example.com")
    technical = xsuaa.token(grant_type="client_credentials")
    argv = [{"USER": user, "TECHNICAL": technical}.get(a, a) for a in argv]
    environ = {"VCAP_SERVICES": vcap_services(xsuaa, None), "destinations": json.dumps(GOOD_DESTINATIONS)}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        if answer is not None:
            rsps.post(TOKEN_URL, status=answer[0], json=answer[1])
        rc, out, err = run(argv, environ)
        if code == 3:
            assert len(rsps.calls) == 0  # fail closed: nothing sent
    assert rc == code
    assert out == ""
    assert message in err
    assert "Traceback" not in err and len(err.splitlines()) <= 2
    for secret in (user, technical, DEST_SECRET, BASIC_PASSWORD, xsuaa.clientsecret):
        assert secret not in out + err


def test_exchange_secret_echoed_by_idp_is_scrubbed(xsuaa: jwtkit.Xsuaa) -> None:
    user = xsuaa.token()
    environ = {"VCAP_SERVICES": vcap_services(xsuaa, None), "destinations": json.dumps(GOOD_DESTINATIONS)}
    with responses.RequestsMock() as rsps:
        rsps.post(TOKEN_URL, status=400, json={"error": "invalid_grant",
                                               "error_description": f"bad assertion {user} for {DEST_SECRET}"})
        rc, out, err = run(["exchange", "S4", "--token", user], environ)
    assert rc == 4
    assert user not in err and DEST_SECRET not in err


# -- the real entry point -----------------------------------------------------------------------------
def test_module_help_subprocess() -> None:
    result = subprocess.run([sys.executable, "-m", "propagation", "--help"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m propagation" in result.stdout
    for command in ("decode", "doctor", "exchange"):
        assert command in result.stdout
    assert "3 missing user token" in result.stdout


@pytest.mark.parametrize("argv", [pytest.param([], id="no-command"), pytest.param(["frobnicate"], id="unknown"),
                                  pytest.param(["exchange"], id="missing-name")])
def test_usage_errors(argv: list[str]) -> None:
    rc, out, err = run(argv)
    assert rc == 2
    assert "usage:" in err


# -- newcomer polish (issue 14) -------------------------------------------------------------------------
def _unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    import base64

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize(
    ("claims", "alg", "present", "absent"),
    [
        pytest.param({"user_name": "eve", "exp": 4102444800, "iss": "https://x.example.com"}, "none",
                     ["WARNING: alg is 'none'", "no (unsigned token: refused)"], ["no 'exp' claim: the middleware"],
                     id="alg-none"),
        pytest.param({"user_name": "eve", "iss": "https://x.example.com"}, "RS256",
                     ["WARNING: no 'exp' claim: the middleware refuses", "no (no 'exp': refused)"], ["alg is"],
                     id="no-exp"),
    ],
)
def test_decode_warns_about_what_the_middleware_refuses(claims: dict[str, Any], alg: str, present: list[str],
                                                        absent: list[str]) -> None:
    rc, out, err = run(["decode", _unsigned(claims, alg)])
    assert (rc, err) == (0, "")
    for text in present:
        assert text in out
    for text in absent:
        assert text not in out
    rc, out, _ = run(["decode", "--json", _unsigned(claims, alg)])
    diagnosis = json.loads(out)["diagnosis"]
    assert (diagnosis["unsigned"], diagnosis["no_exp"]) == (alg == "none", "exp" not in claims)


def test_decode_public_client_token_is_not_called_the_apps_own_client(ias: jwtkit.Ias) -> None:
    token = ias.token()  # aud == azp == the client the token was issued to
    rc, out, _ = run(["decode", "--public-client", ias.clientid, token])
    assert rc == 0 and "Public-client (PKCE) token" in out
    assert "IAS application's own client" not in out
    rc, out, _ = run(["decode", token])
    assert f"aud holds only '{ias.clientid}', the client the token was issued to" in out


def test_doctor_shows_token_urls_and_hides_secrets(xsuaa: jwtkit.Xsuaa) -> None:
    binding = connectivity_binding(onpremise_proxy_host="", token_service_domain="authentication.eu10.example.com",
                                   token_service_url="https://provider.authentication.eu10.example.com")
    s4 = {**GOOD_DESTINATIONS[0], "tokenServiceURL": "https://provider.authentication.eu10.example.com/oauth/token"}
    rc, out, _ = run(["doctor"], {"VCAP_SERVICES": vcap_services(xsuaa, None, connectivity=[binding]),
                                  "destinations": json.dumps([s4, GOOD_DESTINATIONS[1]])})
    assert rc == 1
    assert "token URL host=provider.authentication.eu10.example.com" in out  # once hidden: key holds "token"
    assert "<redacted>" not in out
    assert CONN_SECRET not in out and xsuaa.clientsecret not in out


@pytest.mark.parametrize(
    ("key", "value", "secret"),
    [
        pytest.param("clientsecret", "a.b.c-looks-like-a-host.com", True, id="secret-key-always"),
        pytest.param("token_service_domain", "authentication.eu10.hana.ondemand.com", False, id="domain"),
        pytest.param("token_service_url", "https://x.authentication.eu10.hana.ondemand.com", False, id="token-url"),
        pytest.param("certurl", "https://x.authentication.cert.eu10.hana.ondemand.com", False, id="cert-url"),
        pytest.param("key", "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----", True, id="pem-key"),
        pytest.param("verificationkey", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----", True,
                     id="pem-public"),
        pytest.param("refresh_token", "opaque-refresh-value", True, id="token-value"),
        pytest.param("note", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", True, id="jwt-anywhere"),
        pytest.param("tokenServicePassword", "pw", True, id="password-suffix"),
        pytest.param("xsappname", "app!t1", False, id="plain"),
    ],
)
def test_secrets_are_judged_by_value(key: str, value: str, secret: bool) -> None:
    from propagation.cli.common import is_secret

    assert is_secret(key, value) is secret


@pytest.mark.parametrize("as_json", [pytest.param(False, id="text"), pytest.param(True, id="json")])
def test_doctor_says_the_source_was_unreadable(as_json: bool) -> None:
    rc, out, _ = run(["doctor", *(["--json"] if as_json else [])], {"VCAP_SERVICES": "{not json"})
    assert rc == 1
    if as_json:
        data = json.loads(out)
        assert data["bindings_unreadable"] is True and data["sources"] == []
    else:
        first = out.splitlines()[0]
        assert first.startswith("Bindings (0; read from: UNREADABLE") and "none found" not in out


@pytest.mark.parametrize(
    ("argv", "environ", "code", "kind", "message"),
    [
        pytest.param(["decode", "--json", "x.y"], {}, 2, "error", "", id="decode-malformed"),
        pytest.param(["exchange", "S4", "--json"], "GOOD", 3, "error",
                     "No user token (JWT) has been provided", id="exchange-missing-user"),
        pytest.param(["exchange", "--json"], {}, 2, "usage", "the following arguments are required: NAME",
                     id="usage"),
    ],
)
def test_json_errors(argv: list[str], environ: Any, code: int, kind: str, message: str, xsuaa: jwtkit.Xsuaa) -> None:
    if environ == "GOOD":
        environ = {"VCAP_SERVICES": vcap_services(xsuaa, None), "destinations": json.dumps(GOOD_DESTINATIONS)}
    rc, out, err = run(argv, environ)
    assert rc == code and err  # the human line stays on stderr
    data = json.loads(out)
    assert data["ok"] is False
    error = data["error"]
    assert (error["exit_code"], error["kind"]) == (code, kind) and message in error["message"]
    if code == 3:
        assert error["hint"].startswith("pass the user's JWT")


def test_closed_stdout_ends_quietly(xsuaa: jwtkit.Xsuaa) -> None:
    """``decode "$TOKEN" | head -1``: the reader is gone before we write; no 'internal error'."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    try:
        proc = subprocess.run([sys.executable, "-m", "propagation", "decode", xsuaa.token()], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, env=env, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == ""


# -- doctor: typos, unknown keys, cockpit destinations ------------------------------------------------
@pytest.mark.parametrize("entry,expected", [
    pytest.param({"Authentification": "OAuth2JWTBearer"}, "did you mean 'Authentication'", id="near-miss-is-a-problem"),
    pytest.param({"forwardAuthTokn": True}, "did you mean 'forwardAuthToken'", id="near-miss-flag"),
])
def test_doctor_reports_a_typo_instead_of_no_problems(entry: dict[str, Any], expected: str) -> None:
    rc, out, _ = run(["doctor"], {"destinations": json.dumps([{"name": "S4", "url": "https://s4.example.com", **entry}])})
    assert rc == 1 and expected in out and "No problems found." not in out


def test_doctor_lists_other_unknown_keys_as_warnings(xsuaa: jwtkit.Xsuaa) -> None:
    environ = {"VCAP_SERVICES": vcap_services(xsuaa), "destinations": json.dumps([
        {"name": "S4", "url": "https://s4.example.com", "myCustomFlag": "x"}])}
    rc, out, _ = run(["doctor"], environ)
    assert rc == 0 and "Warnings (1):" in out and "unknown key 'myCustomFlag' (ignored)" in out  # a warning, not a problem
    rc, out, _ = run(["doctor", "--json"], environ)
    assert len(json.loads(out)["warnings"]) == 1


def test_doctor_service_lists_and_checks_cockpit_destinations() -> None:
    binding = {"name": "dest", "label": "destination", "plan": "lite", "tags": ["destination"], "credentials": {
        "clientid": "dest-client", "clientsecret": "dest-SECRET", "url": "https://provider.auth.example.com",
        "uri": "https://destination.example.com", "tenantid": "provider-zid"}}
    listed = [
        {"Name": "S4", "Type": "HTTP", "URL": "http://s4:443", "Authentication": "PrincipalPropagation", "ProxyType": "OnPremise"},
        {"Name": "MAIL", "Type": "MAIL", "mail.user": "x"},
    ]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.POST, "https://provider.auth.example.com/oauth/token", json={"access_token": "svc", "expires_in": 3600})
        rsps.add(responses.GET, "https://destination.example.com/destination-configuration/v1/subaccountDestinations", json=listed)
        rsps.add(responses.GET, "https://destination.example.com/destination-configuration/v1/instanceDestinations", json=[])
        rc, out, _ = run(["doctor", "--service"], {"VCAP_SERVICES": json.dumps({"destination": [binding]})})
    assert "Destination service destinations" in out and "S4  level=subaccount" in out
    assert "needs user=yes  ProxyType=OnPremise" in out
    assert rc == 1 and "MAIL" in out  # a non-HTTP destination is a problem for this library
    assert "dest-SECRET" not in out and "svc" not in out.split()


@pytest.mark.parametrize("entry, shown", [
    pytest.param({"username": "u", "password": "pw-SECRET"}, "Authentication=BasicAuthentication (inferred from User/Password)",
                 id="sdk-form-basic"),
    pytest.param({"User": "u", "Password": "pw-SECRET", "Authentication": "BasicAuthentication"},
                 "Authentication=BasicAuthentication  needs user", id="named"),
    pytest.param({}, "Authentication=NoAuthentication (inferred)", id="nothing-given"),
])
def test_doctor_shows_an_inferred_authentication(xsuaa: jwtkit.Xsuaa, entry: dict[str, str], shown: str) -> None:
    environ = {"VCAP_SERVICES": vcap_services(xsuaa, None),
               "destinations": json.dumps([{"name": "S4", "url": "https://s4.example.com", **entry}])}
    rc, out, _ = run(["doctor"], environ)
    assert rc == 0, out
    assert shown in out
    assert "pw-SECRET" not in out
