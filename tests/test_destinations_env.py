"""Destinations from the ``destinations`` variable, ``default-env.json`` and service bindings.

Entries are read as the approuter reads them, plus Destination-service property names, keys
case-insensitive; malformed entries raise ConfigurationError naming the culprit and never a
secret value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from propagation.bindings import Binding, Bindings
from propagation.destinations.env import destination_from_binding
from propagation.destinations.env_entries import destinations_from_env
from propagation.errors import ConfigurationError
from propagation.exchange.oauth import ClientCredentials

SECRET = "s3cr3t-VALUE"
PASSWORD = "pa55-VALUE"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nPRIVATE-KEY-VALUE\n-----END PRIVATE KEY-----"
PEM_CERT = "-----BEGIN CERTIFICATE-----\nCERT\n-----END CERTIFICATE-----"
TARGET = "https://backend.example.com/odata/v4"
TOKEN_URL = "https://idp.example.com/oauth/token"
ENV_SOURCE = "destinations environment variable"

#: Secret-bearing keys added to every error case: none of their values may reach a message.
SECRETS = {"clientId": "c", "clientSecret": SECRET, "Password": PASSWORD, "clientCertificate": PEM_CERT, "clientKey": PEM_KEY}

CPI = Binding(
    name="my-cpi",
    label="it-rt",
    credentials={"oauth": {"url": "https://cpi.example.com", "tokenurl": "https://cpi.example.com/oauth/token",
                           "clientid": "cpi", "clientsecret": SECRET}},
    source="VCAP_SERVICES",
)
CPI_CERT = Binding(
    name="cpi-cert",
    label="it-rt",
    credentials={"oauth": {"url": "https://cpi.example.com", "tokenurl": "https://cpi.cert.example.com/oauth/token",
                           "clientid": "cpi", "certificate": PEM_CERT, "key": PEM_KEY}},
    source="SERVICE_BINDING_ROOT (/bindings/cpi-cert)",
)
XSUAA = Binding(
    name="my-xsuaa",
    label="xsuaa",
    credentials={"clientid": "sb-app", "clientsecret": SECRET, "url": "https://sub.authentication.eu10.hana.ondemand.com",
                 "uaadomain": "authentication.eu10.hana.ondemand.com"},
)
XSUAA_CERT = Binding(
    name="xsuaa-cert",
    label="xsuaa",
    credentials={"clientid": "sb-app", "certificate": PEM_CERT, "key": PEM_KEY,
                 "url": "https://sub.authentication.eu10.hana.ondemand.com",
                 "certurl": "https://sub.authentication.cert.eu10.hana.ondemand.com",
                 "uaadomain": "authentication.eu10.hana.ondemand.com"},
)
IAS = Binding(
    name="my-ias",
    label="identity",
    credentials={"clientid": "ias-client", "clientsecret": SECRET, "url": "https://t.accounts.ondemand.com/"},
)
DESTINATION_SVC = Binding(
    name="my-dest",
    label="destination",
    credentials={"clientid": "d", "clientsecret": SECRET, "url": "https://sub.authentication.eu10.hana.ondemand.com",
                 "uri": "https://destination-configuration.cfapps.eu10.hana.ondemand.com",
                 "uaadomain": "authentication.eu10.hana.ondemand.com"},
)
BINDINGS = Bindings([CPI, CPI_CERT, XSUAA, XSUAA_CERT, IAS, DESTINATION_SVC], sources=["VCAP_SERVICES"])


def parse(entries: Any, bindings: Bindings = BINDINGS, cwd: Path | None = None) -> dict[str, Any]:
    raw = entries if isinstance(entries, str) else json.dumps(entries)
    return destinations_from_env({"destinations": raw}, bindings, cwd=cwd)


def one(entry: dict[str, Any], bindings: Bindings = BINDINGS) -> Any:
    (destination,) = parse([entry], bindings).values()
    return destination


def assert_clean(message: str) -> None:
    for secret in (SECRET, PASSWORD, "PRIVATE-KEY-VALUE"):
        assert secret not in message


# -- approuter entries ---------------------------------------------------------------------------
def test_minimal_entry_defaults() -> None:
    d = one({"name": "S4", "url": TARGET})
    assert (d.name, d.url, d.authentication, d.proxy_type, d.source) == ("S4", TARGET, "NoAuthentication", "Internet", ENV_SOURCE)
    assert (d.forward_auth_token, d.timeout, d.proxy_host, d.proxy_port, d.strict_ssl) == (False, None, None, None, True)
    assert d.client is None and d.token_service_url is None
    assert dict(d.properties) == {"name": "S4", "url": TARGET}


def test_approuter_keys_are_typed() -> None:
    d = one({"name": "S4", "url": TARGET, "forwardAuthToken": True, "timeout": 30000, "proxyHost": "proxy.local",
             "proxyPort": 8080, "strictSSL": False})
    assert (d.forward_auth_token, d.timeout, d.proxy_host, d.proxy_port, d.strict_ssl) == (True, 30.0, "proxy.local", 8080, False)
    assert d.needs_user  # forwardAuthToken carries the user


@pytest.mark.parametrize(
    "extra, field, expected",
    [
        pytest.param({"timeout": 1500}, "timeout", 1.5, id="timeout-ms-to-s"),
        pytest.param({"timeout": "250"}, "timeout", 0.25, id="timeout-string"),
        pytest.param({"timeout": 2.5}, "timeout", 0.0025, id="timeout-float"),
        pytest.param({"proxyPort": "3128"}, "proxy_port", 3128, id="port-string"),
        pytest.param({"forwardAuthToken": "true"}, "forward_auth_token", True, id="bool-string-true"),
        pytest.param({"forwardAuthToken": "FALSE"}, "forward_auth_token", False, id="bool-string-false"),
        pytest.param({"strictSSL": "false"}, "strict_ssl", False, id="strict-ssl-string"),
        pytest.param({"TrustAll": "true"}, "strict_ssl", False, id="trust-all"),
        pytest.param({"TrustAll": True, "strictSSL": True}, "strict_ssl", True, id="strict-ssl-wins-over-trust-all"),
        pytest.param({"Authentication": "oauth2jwtbearer"}, "authentication", "OAuth2JWTBearer", id="auth-canonical"),
        pytest.param({"Authentication": " BasicAuthentication "}, "authentication", "BasicAuthentication", id="auth-stripped"),
        pytest.param({"ProxyType": "onpremise"}, "proxy_type", "OnPremise", id="proxy-type-onpremise"),
        pytest.param({"proxyType": "PRIVATELINK"}, "proxy_type", "PrivateLink", id="proxy-type-privatelink"),
        pytest.param({"ProxyType": "Internet"}, "proxy_type", "Internet", id="proxy-type-internet"),
        pytest.param({"tokenServiceURL": TOKEN_URL}, "token_service_url", TOKEN_URL, id="token-service-url"),
        pytest.param({"url": " https://x.example.com "}, "url", "https://x.example.com", id="url-stripped"),
        pytest.param({"url": "http://virtualhost:44300"}, "url", "http://virtualhost:44300", id="http-url"),
    ],
)
def test_typed_fields(extra: dict[str, Any], field: str, expected: Any) -> None:
    d = one({"name": "S4", "url": TARGET, **extra})
    assert getattr(d, field) == expected


def test_keys_are_case_insensitive_and_kept_verbatim() -> None:
    d = one({
        "NAME": "S4", "URL": TARGET, "AUTHENTICATION": "OAuth2TokenExchange", "proxytype": "Internet",
        "TokenServiceUrl": TOKEN_URL, "CLIENTID": "cid", "ClientSecret": SECRET, "ForwardAuthToken": "false",
        "TIMEOUT": 1000, "Proxyhost": "p", "PROXYPORT": 1, "strictssl": "true",
        "URL.headers.X-Custom": "h", "URL.queries.$format": "json", "sap-client": "100",
        "tokenServiceURL.headers.X-T": "t", "tokenServiceURL.queries.q": "v",
        "tokenService.body.resource": "urn:sap:identity:application:provider:name:s4",
        "tokenService.addClientCredentialsInBody": "false", "scope": "read",
        "CloudConnectorLocationId": "loc1",
    })
    assert (d.name, d.url, d.authentication, d.token_service_url) == ("S4", TARGET, "OAuth2TokenExchange", TOKEN_URL)
    assert d.client == ClientCredentials("cid", SECRET)
    assert (d.timeout, d.proxy_host, d.proxy_port, d.strict_ssl, d.forward_auth_token) == (1.0, "p", 1, True, False)
    props = d.properties
    assert "CLIENTID" in list(props) and "URL.headers.X-Custom" in list(props)  # verbatim spellings
    assert props["clientid"] == "cid" and props.text("Sap-Client") == "100"
    assert props.prefixed("URL.headers.") == {"X-Custom": "h"}
    assert props.prefixed("url.queries.") == {"$format": "json"}
    assert props.prefixed("tokenService.body.") == {"resource": "urn:sap:identity:application:provider:name:s4"}
    assert props.flag("tokenService.addClientCredentialsInBody", True) is False
    assert d.location_id == "loc1"


@pytest.mark.parametrize(
    "extra, expected",
    [
        pytest.param({"clientId": "c", "clientSecret": SECRET}, ClientCredentials("c", SECRET), id="secret"),
        pytest.param({"clientId": "c"}, ClientCredentials("c"), id="public-client"),
        pytest.param({"clientId": "c", "clientCertificate": PEM_CERT, "clientKey": PEM_KEY},
                     ClientCredentials("c", certificate=PEM_CERT, key=PEM_KEY), id="mtls"),
        pytest.param({"clientCertificate": PEM_CERT, "clientKey": PEM_KEY},
                     ClientCredentials("", certificate=PEM_CERT, key=PEM_KEY), id="mtls-without-client-id"),
        pytest.param({}, None, id="none"),
    ],
)
def test_oauth_client_of_an_entry(extra: dict[str, Any], expected: ClientCredentials | None) -> None:
    d = one({"name": "S4", "url": TARGET, "Authentication": "OAuth2ClientCredentials", "tokenServiceURL": TOKEN_URL, **extra})
    assert d.client == expected
    if expected is not None and expected.certificate:
        assert d.client.uses_mtls


def test_several_entries_keep_their_names() -> None:
    found = parse([{"name": "A", "url": TARGET}, {"name": "B", "url": "https://b.example.com"}])
    assert list(found) == ["A", "B"] and found["B"].url == "https://b.example.com"


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="unset"),
        pytest.param({"destinations": ""}, id="empty"),
        pytest.param({"destinations": " \n"}, id="blank"),
        pytest.param({"destinations": "[]"}, id="empty-array"),
    ],
)
def test_no_destinations(tmp_path: Path, environ: dict[str, str]) -> None:
    assert destinations_from_env(environ, BINDINGS, cwd=tmp_path) == {}


# -- default-env.json ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        pytest.param([{"name": "S4", "url": TARGET}], id="array"),
        pytest.param(json.dumps([{"name": "S4", "url": TARGET}]), id="json-string"),
    ],
)
def test_default_env_json_destinations(tmp_path: Path, value: Any) -> None:
    path = tmp_path / "default-env.json"
    path.write_text(json.dumps({"destinations": value, "VCAP_SERVICES": {}}))
    found = destinations_from_env({}, BINDINGS, cwd=tmp_path)
    assert found["S4"].url == TARGET
    assert found["S4"].source == f"default-env.json ({path})"


def test_default_env_json_from_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "default-env.json").write_text(json.dumps({"destinations": [{"name": "S4", "url": TARGET}]}))
    monkeypatch.chdir(tmp_path)
    assert list(destinations_from_env({}, BINDINGS)) == ["S4"]


def test_variable_wins_over_default_env_json(tmp_path: Path) -> None:
    (tmp_path / "default-env.json").write_text("{ broken")
    found = destinations_from_env({"destinations": json.dumps([{"name": "V", "url": TARGET}])}, BINDINGS, cwd=tmp_path)
    assert list(found) == ["V"] and found["V"].source == ENV_SOURCE


def test_default_env_json_without_destinations(tmp_path: Path) -> None:
    (tmp_path / "default-env.json").write_text(json.dumps({"VCAP_SERVICES": {}}))
    assert destinations_from_env({}, BINDINGS, cwd=tmp_path) == {}


@pytest.mark.parametrize(
    "content, expected",
    [
        pytest.param("[", "default-env.json is not valid JSON (line 1 column 2)", id="file-invalid-json"),
        pytest.param(json.dumps({"destinations": "[{"}), "'destinations' in default-env.json (", id="string-invalid-json"),
        pytest.param(json.dumps({"destinations": {"name": "S4"}}), "is not a JSON array (found object)", id="not-array"),
        pytest.param(json.dumps({"destinations": [{"name": "S4", "clientSecret": SECRET}]}),
                     "destinations[0] ('S4') in default-env.json (", id="entry-error-names-file"),
    ],
)
def test_malformed_default_env_json_destinations(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "default-env.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as info:
        destinations_from_env({}, BINDINGS, cwd=tmp_path)
    assert expected in str(info.value) and str(path) in str(info.value)
    assert_clean(str(info.value))


# -- malformed entries -----------------------------------------------------------------------------
def with_secrets(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, **SECRETS}


V = f"the {ENV_SOURCE}"


@pytest.mark.parametrize(
    "raw, expected",
    [
        pytest.param('[{"name": "S4", "clientSecret": "' + SECRET + '"', f"The {ENV_SOURCE} is not valid JSON (line 1 column ",
                     id="invalid-json"),
        pytest.param('[\n{"name": }]', f"The {ENV_SOURCE} is not valid JSON (line 2 column 10)", id="invalid-json-line-2"),
        pytest.param({"name": "S4", "url": TARGET}, f"The {ENV_SOURCE} is not a JSON array (found object)", id="not-array"),
        pytest.param([{"name": "A", "url": TARGET}, "S4"], f"destinations[1] in {V} is not a JSON object (found string)",
                     id="entry-not-object"),
        pytest.param([with_secrets({"url": TARGET})], f"destinations[0] in {V} has no 'name'", id="no-name"),
        pytest.param([with_secrets({"name": "", "url": TARGET})], f"destinations[0] in {V} has no 'name'", id="empty-name"),
        pytest.param([with_secrets({"name": 5, "url": TARGET})], f"destinations[0] in {V} has a 'name' that is not a non-empty string",
                     id="name-not-string"),
        pytest.param([{"name": "A", "url": TARGET}, with_secrets({"name": "S4"})], f"destinations[1] ('S4') in {V}: 'url' is missing",
                     id="no-url"),
        pytest.param([with_secrets({"name": "S4", "url": "ftp://x.example.com"})],
                     f"destinations[0] ('S4') in {V}: 'url' must be an absolute http or https URL", id="url-not-http"),
        pytest.param([with_secrets({"name": "S4", "url": "/relative/path"})], "'url' must be an absolute http or https URL",
                     id="url-relative"),
        pytest.param([with_secrets({"name": "S4", "url": "https://[::1"})], "'url' must be an absolute http or https URL",
                     id="url-unparseable"),
        pytest.param([with_secrets({"name": "S4", "url": 42})], "destinations[0] ('S4') in the destinations environment variable: "
                     "'url' must be a string (found number)", id="url-not-string"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "tokenServiceURL": "idp.example.com/oauth/token"})],
                     "'tokenServiceURL' must be an absolute http or https URL", id="token-url-not-absolute"),
        pytest.param([{"name": "S4", "url": TARGET}, with_secrets({"name": "S4", "url": TARGET})],
                     f"destinations[1] ('S4') in {V}: duplicate name (also destinations[0])", id="duplicate-name"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "timeout": "soon"})],
                     "'timeout' must be a positive number of milliseconds (found 'soon')", id="timeout-not-numeric"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "timeout": -5})],
                     "'timeout' must be a positive number of milliseconds (found -5)", id="timeout-negative"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "timeout": True})],
                     "'timeout' must be a positive number of milliseconds", id="timeout-bool"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "proxyPort": "http"})],
                     "'proxyPort' must be a port number 1-65535 (found 'http')", id="port-not-numeric"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "proxyPort": 70000})],
                     "'proxyPort' must be a port number 1-65535 (found 70000)", id="port-out-of-range"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "proxyPort": 80.5})], "'proxyPort' must be a port number",
                     id="port-fraction"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "forwardAuthToken": "yes"})],
                     "'forwardAuthToken' must be true or false (found 'yes')", id="bad-bool"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "strictSSL": 1})],
                     "'strictSSL' must be true or false (found 1)", id="bad-bool-number"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "tokenService.addClientCredentialsInBody": "nope"})],
                     "'tokenService.addClientCredentialsInBody' must be true or false", id="bad-bool-token-service"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "Authentication": "OAuth2Magic"})],
                     f"destinations[0] ('S4') in {V}: Authentication 'OAuth2Magic' is not one of NoAuthentication, "
                     "BasicAuthentication, OAuth2ClientCredentials", id="unknown-authentication"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "ProxyType": "Intranet"})],
                     "ProxyType 'Intranet' is not one of Internet, OnPremise, PrivateLink", id="unknown-proxy-type"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "URL": TARGET})],
                     f"destinations[0] in {V} has both 'url' and 'URL' (keys are case-insensitive)", id="duplicate-key-case"),
        pytest.param([{"name": "S4", "url": TARGET, "clientId": "c", "clientCertificate": PEM_CERT, "clientSecret": SECRET}],
                     "'clientCertificate' and 'clientKey' must be given together", id="certificate-without-key"),
        pytest.param([{"name": "S4", "url": TARGET, "clientId": "c", "clientKey": PEM_KEY, "Password": PASSWORD}],
                     "'clientCertificate' and 'clientKey' must be given together", id="key-without-certificate"),
        pytest.param([{"name": "S4", "url": TARGET, "clientSecret": SECRET}], "'clientSecret' is given without 'clientId'",
                     id="secret-without-client-id"),
        pytest.param([{"name": "S4", "url": TARGET, "clientId": "c", "clientSecret": 12345678}],
                     "'clientSecret' must be a string (found number)", id="secret-not-string"),
        pytest.param([with_secrets({"name": "S4", "url": TARGET, "serviceBinding": "nope"})],
                     f"destinations[0] ('S4') in {V}: serviceBinding 'nope' is not bound (bindings read from: VCAP_SERVICES)",
                     id="service-binding-unknown"),
    ],
)
def test_malformed_entries(raw: Any, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse(raw)
    assert expected in str(info.value)
    assert_clean(str(info.value))


def test_unknown_service_binding_without_any_binding_source() -> None:
    with pytest.raises(ConfigurationError, match=r"serviceBinding 'x' is not bound \(bindings read from: no binding source present\)"):
        parse([{"name": "S4", "serviceBinding": "x"}], Bindings())


# -- serviceBinding --------------------------------------------------------------------------------
def test_service_binding_takes_url_client_and_token_url() -> None:
    d = one({"name": "CPI", "serviceBinding": "my-cpi"})
    assert (d.url, d.token_service_url, d.authentication) == ("https://cpi.example.com", "https://cpi.example.com/oauth/token",
                                                              "OAuth2JWTBearer")
    assert d.client == ClientCredentials("cpi", SECRET)
    assert d.source == f"{ENV_SOURCE} (serviceBinding 'my-cpi')"
    assert d.needs_user


@pytest.mark.parametrize(
    "entry, field, expected",
    [
        pytest.param({"url": "https://cpi.example.com/http/flow"}, "url", "https://cpi.example.com/http/flow", id="entry-url-wins"),
        pytest.param({"clientId": "mine", "clientSecret": "x"}, "client", ClientCredentials("mine", "x"), id="entry-client-wins"),
        pytest.param({"tokenServiceURL": TOKEN_URL}, "token_service_url", TOKEN_URL, id="entry-token-url-wins"),
        pytest.param({"Authentication": "OAuth2ClientCredentials"}, "authentication", "OAuth2ClientCredentials",
                     id="explicit-client-credentials"),
        pytest.param({"timeout": 5000}, "timeout", 5.0, id="approuter-keys-still-apply"),
    ],
)
def test_service_binding_entry_overrides(entry: dict[str, Any], field: str, expected: Any) -> None:
    d = one({"name": "CPI", "serviceBinding": "my-cpi", **entry})
    assert getattr(d, field) == expected


@pytest.mark.parametrize(
    "binding, url, token_url, client",
    [
        pytest.param("cpi-cert", "https://cpi.example.com", "https://cpi.cert.example.com/oauth/token",
                     ClientCredentials("cpi", certificate=PEM_CERT, key=PEM_KEY), id="it-rt-certificate"),
        pytest.param("my-xsuaa", None, "https://sub.authentication.eu10.hana.ondemand.com/oauth/token",
                     ClientCredentials("sb-app", SECRET), id="xsuaa-url-is-auth-server"),
        pytest.param("xsuaa-cert", None, "https://sub.authentication.cert.eu10.hana.ondemand.com/oauth/token",
                     ClientCredentials("sb-app", certificate=PEM_CERT, key=PEM_KEY), id="xsuaa-certurl-for-mtls"),
        pytest.param("my-ias", None, "https://t.accounts.ondemand.com/oauth2/token",
                     ClientCredentials("ias-client", SECRET), id="ias-oauth2-token"),
        pytest.param("my-dest", "https://destination-configuration.cfapps.eu10.hana.ondemand.com",
                     "https://sub.authentication.eu10.hana.ondemand.com/oauth/token", ClientCredentials("d", SECRET),
                     id="uaadomain-prefers-uri"),
    ],
)
def test_service_binding_kinds(binding: str, url: str | None, token_url: str, client: ClientCredentials) -> None:
    entry: dict[str, Any] = {"name": "T", "serviceBinding": binding}
    if url is None:
        entry["url"] = TARGET  # the auth server is never taken as the target
    d = one(entry)
    assert (d.url, d.token_service_url, d.client) == (url or TARGET, token_url, client)


@pytest.mark.parametrize(
    "credentials, expected_url, expected_token_url",
    [
        pytest.param({"url": "https://api.example.com", "clientid": "c", "clientsecret": SECRET, "tokenurl": TOKEN_URL},
                     "https://api.example.com", TOKEN_URL, id="top-level"),
        pytest.param({"uri": "https://api.example.com", "uaa": {"clientid": "c", "clientsecret": SECRET,
                      "url": "https://sub.authentication.example.com", "uaadomain": "authentication.example.com"}},
                     "https://api.example.com", "https://sub.authentication.example.com/oauth/token", id="nested-uaa"),
        pytest.param({"url": "https://api.example.com", "clientid": "c", "clientsecret": SECRET,
                      "token_service_url": "https://sub.authentication.example.com", "uaadomain": "authentication.example.com",
                      "uri": "https://api2.example.com"},
                     "https://api2.example.com", "https://sub.authentication.example.com/oauth/token",
                     id="token-service-url-with-uaadomain"),
        pytest.param({"url": "https://api.example.com", "clientid": "c", "clientsecret": SECRET,
                      "token_service_url": "https://idp.example.com/token"},
                     "https://api.example.com", "https://idp.example.com/token", id="token-service-url-verbatim"),
        pytest.param({"apiurl": "https://api.example.com", "clientid": "c", "clientsecret": SECRET, "tokenurl": TOKEN_URL,
                      "uaadomain": "x"}, "https://api.example.com", TOKEN_URL, id="apiurl"),
    ],
)
def test_service_binding_credential_layouts(credentials: dict[str, Any], expected_url: str, expected_token_url: str) -> None:
    binding = Binding(name="svc", label="some-service", credentials=credentials)
    d = one({"name": "T", "serviceBinding": "svc"}, Bindings([binding]))
    assert (d.url, d.token_service_url, d.client) == (expected_url, expected_token_url, ClientCredentials("c", SECRET))


@pytest.mark.parametrize(
    "binding, entry, expected",
    [
        pytest.param(XSUAA, {}, "'url' is missing and serviceBinding 'my-xsuaa' (xsuaa) has no API URL", id="xsuaa-no-api-url"),
        pytest.param(Binding("b", "some", {"url": "https://api.example.com", "password": SECRET}), {},
                     "serviceBinding 'b' (some) has no OAuth client and token URL", id="no-client"),
        pytest.param(Binding("b", "some", {"url": "https://api.example.com", "clientid": "c", "clientsecret": SECRET}), {},
                     "serviceBinding 'b' (some) has no OAuth client and token URL", id="no-token-url"),
        pytest.param(Binding("b", "some", {"url": "jdbc:sap://db:30015", "clientid": "c", "clientsecret": SECRET,
                                           "tokenurl": TOKEN_URL}), {},
                     "the URL of serviceBinding 'b' is not an absolute http or https URL", id="binding-url-not-http"),
    ],
)
def test_service_binding_errors(binding: Binding, entry: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        one({"name": "S4", "serviceBinding": binding.name, "Password": PASSWORD, **entry}, Bindings([binding]))
    assert expected in str(info.value) and "destinations[0] ('S4')" in str(info.value)
    assert_clean(str(info.value))


def test_service_binding_without_client_is_fine_for_no_authentication() -> None:
    binding = Binding("b", "some", {"url": "https://api.example.com"})
    d = one({"name": "S4", "serviceBinding": "b", "Authentication": "NoAuthentication"}, Bindings([binding]))
    assert (d.url, d.client, d.authentication) == ("https://api.example.com", None, "NoAuthentication")


# -- destination_from_binding ----------------------------------------------------------------------
def test_it_rt_binding_becomes_a_jwt_bearer_destination() -> None:
    d = destination_from_binding(CPI)
    assert d is not None
    assert (d.name, d.url, d.authentication, d.token_service_url) == (
        "my-cpi", "https://cpi.example.com", "OAuth2JWTBearer", "https://cpi.example.com/oauth/token")
    assert d.client == ClientCredentials("cpi", SECRET)
    assert d.source == "service binding 'my-cpi' (VCAP_SERVICES)"
    assert d.needs_user
    assert SECRET not in repr(d) and SECRET not in repr(d.properties)


def test_it_rt_binding_with_certificate() -> None:
    d = destination_from_binding(CPI_CERT)
    assert d is not None and d.client is not None and d.client.uses_mtls
    assert d.token_service_url == "https://cpi.cert.example.com/oauth/token"
    assert d.source == "service binding 'cpi-cert' (SERVICE_BINDING_ROOT (/bindings/cpi-cert))"
    assert "PRIVATE-KEY-VALUE" not in repr(d)


@pytest.mark.parametrize(
    "binding",
    [
        pytest.param(XSUAA, id="xsuaa"),
        pytest.param(IAS, id="identity"),
        pytest.param(DESTINATION_SVC, id="destination"),
        pytest.param(Binding("c", "connectivity", {"url": "https://x", "clientid": "c", "clientsecret": SECRET,
                                                   "token_service_url": "https://t"}), id="connectivity"),
        pytest.param(Binding("b", "it-rt", {"oauth": {"url": "https://cpi.example.com", "clientid": "c",
                                                      "clientsecret": SECRET}}), id="no-token-url"),
        pytest.param(Binding("b", "it-rt", {"oauth": {"url": "https://cpi.example.com", "tokenurl": TOKEN_URL}}),
                     id="no-client"),
        pytest.param(Binding("b", "it-rt", {"oauth": {"tokenurl": TOKEN_URL, "clientid": "c", "clientsecret": SECRET}}),
                     id="no-url"),
        pytest.param(Binding("b", "hana", {"url": "jdbc:sap://db:30015", "clientid": "c", "tokenurl": TOKEN_URL}),
                     id="url-not-http"),
        pytest.param(Binding("b", "user-provided", {"password": SECRET}), id="user-provided-without-oauth"),
    ],
)
def test_bindings_that_are_no_destination(binding: Binding) -> None:
    assert destination_from_binding(binding) is None


# -- repr -----------------------------------------------------------------------------------------
def test_destination_repr_leaks_no_secret() -> None:
    d = one({"name": "S4", "url": TARGET, "Authentication": "OAuth2Password", "tokenServiceURL": TOKEN_URL,
             **SECRETS, "User": "svc"})
    for text in (repr(d), repr(d.properties), repr(d.client)):
        assert_clean(text)
    assert d.properties["Password"] == PASSWORD  # kept for the authorizer, just never shown
