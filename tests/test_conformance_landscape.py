"""Where the emulated landscape deviated from BTP (seen with SAP's own clients), one test per
rule: ``$skipTokenRetrieval``, ``X-zid`` tenant tokens at the ``uaadomain`` host, token
parameters in the query string, the v2 consume API (levels, fragments, provider/subscriber
destinations), ``X-tenant``, ``$skipCredentials`` and refresh tokens (``OAuth2RefreshToken``).

Every test drives the model directly with the exact request a client sends and asserts the
answer and the records (what XSUAA issued, what the Destination service ran)."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import pytest

from propagation.testing import Landscape, Request

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.fixture(scope="module")
def land() -> Landscape:
    landscape = Landscape(tenants=("provider", "acme", "globex"))
    for line in (
        "JWT OAuth2JWTBearer",
        "CC OAuth2ClientCredentials",
        "BASIC BasicAuthentication",
        "S4 OnPremise PrincipalPropagation location=LOC1",
        # provider / subscriber / instance-level copies of one name
        "SHARED NoAuthentication /provider-subaccount tenant=provider",
        "SHARED NoAuthentication /acme-subaccount tenant=acme",
        "SHARED NoAuthentication /acme-instance tenant=acme level=instance",
        "PROVONLY NoAuthentication /provider-only tenant=provider",
        "REFRESH OAuth2RefreshToken",
    ):
        landscape.destination(line)
    landscape.fragment("prod URL=https://prod.example.com/api sap-client=200")
    landscape.fragment("auth Authentication=OAuth2ClientCredentials")
    landscape.fragment("acme-only tenant=acme sap-client=300")
    landscape.fragment("inst level=instance tenant=acme sap-client=400")
    return landscape


@pytest.fixture(autouse=True)
def _fresh(land: Landscape) -> None:
    land.reset()


def _client(land: Landscape, client: str) -> dict[str, str]:
    return {"client_id": client, "client_secret": land.client_secret(client)}


def _post(land: Landscape, url: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Any:
    body = urlencode(form or {}).encode()
    return land.handle(Request("POST", url, {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}, body))


def _service_token(land: Landscape, tenant: str | None = None) -> str:
    answer = _post(land, f"{land.tenant_url(tenant)}/oauth/token",
                   {"grant_type": "client_credentials", **_client(land, land.destination_client)})
    assert answer.status == 200
    return answer.json()["access_token"]


def _get(land: Landscape, path: str, *, tenant: str | None = None, headers: dict[str, str] | None = None) -> Any:
    url = f"{land.origins.destination}/destination-configuration/{path}"
    return land.handle(Request("GET", url, {"Authorization": f"Bearer {_service_token(land, tenant)}", **(headers or {})}))


def _app_exchanges(land: Landscape) -> list[tuple[str | None, str | None]]:
    return [(e.grant, e.client) for e in land.exchanges if e.via == "destination-service"]


# ====================================================================== 1. $skipTokenRetrieval
@pytest.mark.parametrize("query, flows", [
    pytest.param("", [("jwt-bearer", "JWT")], id="token-flow-runs"),
    pytest.param("?$skipTokenRetrieval=true", [], id="skipped"),
    pytest.param("?$skipTokenRetrieval=false", [("jwt-bearer", "JWT")], id="false-runs"),
])
@pytest.mark.parametrize("api", ["v1/destinations/JWT", "v2/destinations/JWT"])
def test_skip_token_retrieval_runs_no_flow(land: Landscape, api: str, query: str, flows: list[Any]) -> None:
    answer = _get(land, api + query, headers={"X-user-token": land.user_token("alice")})
    assert answer.status == 200
    body = answer.json()
    assert body["destinationConfiguration"]["Authentication"] == "OAuth2JWTBearer"
    assert ("authTokens" in body) == bool(flows)
    client = body["destinationConfiguration"]["clientId"]
    assert _app_exchanges(land) == [(grant, client) for grant, _ in flows]
    assert land.calls.values("query") == [{"$skipTokenRetrieval": query.split("=")[1]} if query else {}]


def test_skip_credentials_leaves_secrets_out(land: Landscape) -> None:
    body = _get(land, "v1/destinations/CC?$skipCredentials=true&$skipTokenRetrieval=true").json()
    config = body["destinationConfiguration"]
    assert "clientSecret" not in config and config["clientId"]
    assert "clientSecret" in _get(land, "v1/destinations/CC?$skipTokenRetrieval=true").json()["destinationConfiguration"]


# ====================================================================== 2. + 7. X-zid
@pytest.mark.parametrize("tenant", ["provider", "acme", "globex"])
def test_x_zid_at_uaadomain_serves_that_zone(land: Landscape, tenant: str) -> None:
    zid = land.tenants[tenant].zid
    answer = _post(land, f"https://{land.origins.uaadomain}/oauth/token",
                   {"grant_type": "client_credentials", **_client(land, land.app_client)}, {"X-zid": zid})
    assert answer.status == 200, answer.json()
    claims = land._verify(answer.json()["access_token"]).claims
    assert (claims["zid"], claims["ext_attr"]["zdn"]) == (zid, tenant)
    assert claims["iss"] == f"{land.tenant_url(tenant)}/oauth/token"
    assert [(e.tenant, e.url) for e in land.exchanges] == [(tenant, f"https://{land.origins.uaadomain}/oauth/token")]


def test_x_zid_jwt_bearer_of_a_subscriber_ias_user(land: Landscape) -> None:
    """What @sap/xssec v4 does for an IAS token (no subdomain): jwt-bearer at uaadomain + X-zid."""
    ias = land.user_token("alice", kind="ias", tenant="acme")
    form = {"grant_type": JWT_BEARER, "assertion": ias, **_client(land, land.app_client)}
    answer = _post(land, f"https://{land.origins.uaadomain}/oauth/token", form, {"X-zid": land.tenants["acme"].zid})
    assert answer.status == 200
    claims = land._verify(answer.json()["access_token"]).claims
    assert (claims["user_name"], claims["ext_attr"]["zdn"]) == ("alice", "acme")
    assert [(e.grant, e.user, e.tenant, e.subject) for e in land.exchanges] == [("jwt-bearer", "alice", "acme", "ias")]


@pytest.mark.parametrize("where, zid, status, error", [
    pytest.param("uaadomain", None, 400, "invalid_request", id="uaadomain-without-zid"),
    pytest.param("uaadomain", "00000000-0000-0000-0000-000000000000", 404, "not_found", id="unknown-zone"),
    pytest.param("acme-host", "provider", 400, "invalid_request", id="zid-contradicts-subdomain"),
])
def test_x_zid_refusals(land: Landscape, where: str, zid: str | None, status: int, error: str) -> None:
    url = f"https://{land.origins.uaadomain}/oauth/token" if where == "uaadomain" else f"{land.tenant_url('acme')}/oauth/token"
    headers = {"X-zid": land.tenants[zid].zid if zid in land.tenants else zid} if zid else {}
    answer = _post(land, url, {"grant_type": "client_credentials", **_client(land, land.app_client)}, headers)
    assert (answer.status, answer.json()["error"]) == (status, error)
    assert land.exchanges == []


def test_x_zid_matching_the_subdomain_host_is_accepted(land: Landscape) -> None:
    answer = _post(land, f"{land.tenant_url('acme')}/oauth/token",
                   {"grant_type": "client_credentials", **_client(land, land.app_client)}, {"X-zid": land.tenants["acme"].zid})
    assert answer.status == 200 and land.exchanges.values("tenant") == ["acme"]


# ====================================================================== 3. parameters in the query
@pytest.mark.parametrize("in_query, in_body", [
    pytest.param(("grant_type",), ("client_id", "client_secret"), id="grant-in-query"),
    pytest.param(("grant_type", "client_id", "client_secret"), (), id="all-in-query"),
    pytest.param((), ("grant_type", "client_id", "client_secret"), id="all-in-body"),
])
def test_xsuaa_accepts_parameters_in_the_query(land: Landscape, in_query: tuple[str, ...], in_body: tuple[str, ...]) -> None:
    params = {"grant_type": "client_credentials", **_client(land, land.app_client)}
    query = urlencode({k: params[k] for k in in_query})
    url = f"{land.tenant_url()}/oauth/token" + (f"?{query}" if query else "")
    answer = _post(land, url, {k: params[k] for k in in_body})
    assert answer.status == 200, answer.json()
    assert [(e.grant, e.client, e.client_auth, e.url) for e in land.exchanges] == [
        ("client_credentials", land.app_client, "body", f"{land.tenant_url()}/oauth/token")]


def test_body_wins_over_query_on_a_clash(land: Landscape) -> None:
    url = f"{land.tenant_url()}/oauth/token?grant_type=password"
    answer = _post(land, url, {"grant_type": "client_credentials", **_client(land, land.app_client)})
    assert answer.status == 200 and land.exchanges.values("grant") == ["client_credentials"]


def test_ias_still_refuses_a_grant_in_the_query(land: Landscape) -> None:
    answer = _post(land, f"{land.origins.ias}/oauth2/token?grant_type=client_credentials", _client(land, land.ias_client))
    assert (answer.status, answer.json()["error"]) == (400, "invalid_request")


# ====================================================================== 4. v2, levels, fragments
@pytest.mark.parametrize("path, tenant, url_suffix, owner", [
    pytest.param("v1/destinations/SHARED", "provider", "/provider-subaccount", "provider-sub", id="v1-provider"),
    pytest.param("v1/destinations/SHARED", "acme", "/acme-instance", "acme-inst", id="v1-acme-instance-first"),
    pytest.param("v2/destinations/SHARED", "acme", "/acme-instance", None, id="v2-acme-default"),
    pytest.param("v2/destinations/SHARED@subaccount", "acme", "/acme-subaccount", None, id="v2-acme-subaccount"),
    pytest.param("v2/destinations/SHARED@instance", "acme", "/acme-instance", None, id="v2-acme-instance"),
    pytest.param("v2/destinations/SHARED@provider_subaccount", "acme", "/provider-subaccount", None,
                 id="v2-acme-reads-provider"),
    pytest.param("v2/destinations/PROVONLY@provider_subaccount", "globex", "/provider-only", None,
                 id="v2-subscriber-reads-provider-only"),
])
def test_levels_and_tenants(land: Landscape, path: str, tenant: str, url_suffix: str, owner: str | None) -> None:
    answer = _get(land, path, tenant=tenant)
    assert answer.status == 200, answer.json()
    body = answer.json()
    assert body["destinationConfiguration"]["URL"].endswith(url_suffix)
    owners = {"provider-sub": {"SubaccountId": land.provider.zid, "InstanceId": None},
              "acme-inst": {"SubaccountId": None, "InstanceId": f"{land.destination_client}-{land.tenants['acme'].zid}"}}
    assert body.get("owner") == (owners[owner] if owner else None)
    assert land.calls.values("tenant") == [tenant]


@pytest.mark.parametrize("path, tenant, status", [
    pytest.param("v1/destinations/PROVONLY", "globex", 404, id="subscriber-does-not-see-provider-only"),
    pytest.param("v2/destinations/SHARED@provider_instance", "acme", 404, id="no-provider-instance-copy"),
    pytest.param("v2/destinations/SHARED@galaxy", "acme", 400, id="unknown-level"),
    pytest.param("v3/destinations/SHARED", "acme", 404, id="unknown-api"),
])
def test_lookup_refusals(land: Landscape, path: str, tenant: str, status: int) -> None:
    assert _get(land, path, tenant=tenant).status == status


def test_include_metadata_owner_on_v2(land: Landscape) -> None:
    config = _get(land, "v2/destinations/SHARED@subaccount?$includeMetadata=owner", tenant="acme").json()["destinationConfiguration"]
    assert config["$metadata"] == {"owner": {"SubaccountId": land.tenants["acme"].zid, "InstanceId": None}}


@pytest.mark.parametrize("headers, tenant, status, expected", [
    pytest.param({"X-fragment-name": "prod"}, "provider", 200,
                 {"URL": "https://prod.example.com/api", "sap-client": "200", "FragmentName": "prod"}, id="fragment-merged"),
    pytest.param({"X-fragment-name": "missing", "X-fragment-optional": "true"}, "provider", 200,
                 {"FragmentName": None}, id="optional-missing"),
    pytest.param({"X-fragment-name": "missing"}, "provider", 404, None, id="missing-refused"),
    pytest.param({"X-fragment-name": "acme-only"}, "acme", 200, {"sap-client": "300"}, id="subscriber-fragment"),
    pytest.param({"X-fragment-name": "acme-only"}, "globex", 404, None, id="other-tenant-fragment-invisible"),
    pytest.param({"X-fragment-name": "inst@instance"}, "acme", 200, {"sap-client": "400"}, id="fragment-level"),
])
def test_fragments(land: Landscape, headers: dict[str, str], tenant: str, status: int, expected: dict[str, Any] | None) -> None:
    answer = _get(land, "v2/destinations/CC?$skipTokenRetrieval=true", tenant=tenant, headers=headers)
    assert answer.status == status
    if expected is not None:
        config = answer.json()["destinationConfiguration"]
        assert {k: config.get(k) for k in expected} == expected


def test_fragment_changes_the_token_flow(land: Landscape) -> None:
    """A fragment that turns BASIC into OAuth2ClientCredentials: the service runs client_credentials."""
    land.fragment("cc-client", clientId=land.app_client, clientSecret=land.client_secret(land.app_client),
                  tokenServiceURL=f"{land.tenant_url()}/oauth/token", Authentication="OAuth2ClientCredentials")
    body = _get(land, "v1/destinations/BASIC", headers={"X-fragment-name": "cc-client"}).json()
    assert body["destinationConfiguration"]["Authentication"] == "OAuth2ClientCredentials"
    assert body["authTokens"][0]["type"] == "bearer"
    assert _app_exchanges(land) == [("client_credentials", land.app_client)]


# ====================================================================== X-tenant
@pytest.mark.parametrize("x_tenant, expected_tenant", [
    pytest.param(None, "provider", id="caller-tenant"),
    pytest.param("acme", "acme", id="x-tenant-acme"),
])
def test_x_tenant_picks_the_client_credentials_tenant(land: Landscape, x_tenant: str | None, expected_tenant: str) -> None:
    headers = {"X-tenant": x_tenant} if x_tenant else {}
    body = _get(land, "v1/destinations/CC", headers=headers).json()
    token = body["authTokens"][0]["value"]
    assert land._verify(token).claims["ext_attr"]["zdn"] == expected_tenant
    assert [e.tenant for e in land.exchanges if e.via == "destination-service"] == [expected_tenant]


def test_x_tenant_with_x_user_token_is_refused(land: Landscape) -> None:
    answer = _get(land, "v1/destinations/JWT", headers={"X-tenant": "acme", "X-user-token": land.user_token("alice")})
    assert answer.status == 400 and _app_exchanges(land) == []


def test_x_tenant_unknown_subdomain_is_an_auth_token_error(land: Landscape) -> None:
    token = _get(land, "v1/destinations/CC", headers={"X-tenant": "nowhere"}).json()["authTokens"][0]
    assert token["error"].startswith("Retrieval of OAuth token for 'OAuth2ClientCredentials' failed")
    assert token["value"] == ""


# ====================================================================== refresh tokens
def test_password_grant_returns_a_refresh_token_and_refresh_grant_redeems_it(land: Landscape) -> None:
    url = f"{land.tenant_url()}/oauth/token"
    first = _post(land, url, {"grant_type": "password", "username": "alice", "password": "alice-password",
                              **_client(land, land.app_client)}).json()
    again = _post(land, url, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                              **_client(land, land.app_client)})
    assert again.status == 200
    assert land._verify(again.json()["access_token"]).claims["user_name"] == "alice"
    other = _post(land, url, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                              **_client(land, land.destination_client)})
    assert (other.status, other.json()["error"]) == (401, "invalid_token")
    assert land.exchanges.values("grant") == ["password", "refresh_token", "refresh_token"]
    assert "refresh_token" not in json.dumps([e.params for e in land.exchanges])


@pytest.mark.parametrize("with_header", [pytest.param(True, id="x-refresh-token"), pytest.param(False, id="missing")])
def test_oauth2_refresh_token_destination(land: Landscape, with_header: bool) -> None:
    props = land.destinations["REFRESH"].properties
    headers: dict[str, str] = {}
    if with_header:
        issued = _post(land, f"{land.tenant_url()}/oauth/token", {
            "grant_type": "password", "username": "bob", "password": "bob-password",
            "client_id": props["clientId"], "client_secret": props["clientSecret"]}).json()
        headers["X-refresh-token"] = issued["refresh_token"]
        land.reset()
    token = _get(land, "v1/destinations/REFRESH", headers=headers).json()["authTokens"][0]
    if with_header:
        assert land._verify(token["value"]).claims["user_name"] == "bob"
        assert _app_exchanges(land) == [("refresh_token", props["clientId"])]
        assert land.calls.values("user") == ["bob"]
    else:
        assert "X-refresh-token" in token["error"] and _app_exchanges(land) == []


def test_destination_lines_for_tenants_and_levels_are_checked(land: Landscape) -> None:
    with pytest.raises(ValueError, match="unknown tenant"):
        land.destination("X NoAuthentication tenant=nowhere")
    with pytest.raises(ValueError, match="level"):
        land.destination("X NoAuthentication level=galaxy")
    with pytest.raises(ValueError, match="source=service"):
        land.destination("X NoAuthentication source=env tenant=acme")
    assert {"acme/SHARED", "acme/SHARED@instance", "provider/SHARED", "JWT"} <= set(land.destinations)


def test_basic_auth_tokens_unchanged(land: Landscape) -> None:
    token = _get(land, "v2/destinations/BASIC").json()["authTokens"][0]
    user, _, _ = base64.b64decode(token["value"]).decode().partition(":")
    assert token["type"] == "Basic" and user == land.destinations["BASIC"].properties["User"]


# ====================================================================== 9. the list APIs
@pytest.mark.parametrize("path, tenant, expected", [
    pytest.param("v1/subaccountDestinations", "provider",
                 {"BASIC", "CC", "JWT", "PROVONLY", "REFRESH", "S4", "SHARED"}, id="provider-subaccount"),
    pytest.param("v1/subaccountDestinations", "acme", {"BASIC", "CC", "JWT", "REFRESH", "S4", "SHARED"},
                 id="subscriber-subaccount-no-provider-only"),
    pytest.param("v1/instanceDestinations", "acme", {"SHARED"}, id="subscriber-instance"),
    pytest.param("v1/instanceDestinations", "globex", set(), id="empty-array-not-404"),
])
def test_list_apis(land: Landscape, path: str, tenant: str, expected: set[str]) -> None:
    answer = _get(land, path, tenant=tenant)
    assert answer.status == 200
    body = answer.json()
    assert isinstance(body, list) and {d["Name"] for d in body} == expected
    assert all({"Name", "Type", "URL", "Authentication", "ProxyType"} <= set(d) for d in body)
    assert land.calls.values("tenant") == [tenant]
    assert land.exchanges.values("via") == ["app"]  # the service token only: a list runs no token flow


def test_list_api_shows_the_tenants_own_copy(land: Landscape) -> None:
    (shared,) = [d for d in _get(land, "v1/subaccountDestinations", tenant="acme").json() if d["Name"] == "SHARED"]
    assert shared["URL"].endswith("/acme-subaccount")


@pytest.mark.parametrize("method, authorization, status", [
    pytest.param("POST", True, 405, id="post-not-allowed"),
    pytest.param("GET", False, 401, id="no-service-token"),
])
def test_list_api_refusals(land: Landscape, method: str, authorization: bool, status: int) -> None:
    headers = {"Authorization": f"Bearer {_service_token(land)}"} if authorization else {}
    url = f"{land.origins.destination}/destination-configuration/v1/subaccountDestinations"
    assert land.handle(Request(method, url, headers)).status == status
