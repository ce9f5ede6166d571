"""CSRF tokens for modifying OData calls: the exact exchange with a Gateway stand-in that
binds each token to its backend session cookie and to the caller's Authorization."""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import responses

import propagation
from propagation import Propagator
from propagation.bindings import Bindings
from propagation.outbound.csrf import service_root
from propagation.tokens import UserToken

HOST = "https://s4.example.com"
SVC = "/sap/opu/odata/sap/API_X"
COOKIE = "SAP_SESSIONID_S4H_100"
ALICE, BOB = "alice@example.com", "bob@example.com"


def engine(**extra: Any) -> Propagator:
    """A NoAuthentication destination forwarding the user's JWT: ``Authorization`` names the user."""
    destination = {"name": "S4", "url": HOST, "Authentication": "NoAuthentication", "forwardAuthToken": True, **extra}
    return Propagator(environ={"destinations": json.dumps([destination])}, bindings=Bindings([]))


class Gateway:
    """SAP Gateway stand-in. ``X-CSRF-Token: Fetch`` opens a backend session (cookie) and
    issues ``tok<n>-<user>`` bound to it and to the caller's Authorization; a write needs all
    three to match, else ``403`` + ``X-CSRF-Token: Required``.

    ``head=False``: HEAD answers without a token (GET works); ``issue=False``: no token at all
    (a non-SAP backend, every write accepted); ``reject=True``: every write is refused.
    """

    def __init__(self, rsps: responses.RequestsMock, *, head: bool = True, issue: bool = True, reject: bool = False) -> None:
        self.head, self.issue, self.reject = head, issue, reject
        self.sessions: dict[str, tuple[str, str]] = {}
        self.count = 0
        for method in ("HEAD", "GET", "POST", "PUT", "PATCH", "MERGE", "DELETE"):
            rsps.add_callback(method, re.compile(re.escape(HOST) + r"/.*"), callback=self)

    def expire(self) -> None:
        self.sessions.clear()

    def __call__(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        auth = request.headers.get("Authorization", "")
        sent = request.headers.get("X-CSRF-Token")
        if request.method in ("HEAD", "GET"):
            if (sent or "").lower() != "fetch" or not self.issue or (request.method == "HEAD" and not self.head):
                return 200, {}, ""
            self.count += 1
            user = UserToken.parse(auth.removeprefix("Bearer ")).user
            sid, token = f"sid{self.count}", f"tok{self.count}-{user}"
            self.sessions[sid] = (auth, token)
            return 200, {"X-CSRF-Token": token, "Set-Cookie": f"{COOKIE}={sid}; Path=/; Secure; HttpOnly"}, ""
        if not self.issue:
            return 201, {}, "{}"
        sid = (request.headers.get("Cookie") or "").partition(f"{COOKIE}=")[2].partition(";")[0]
        if not self.reject and sid in self.sessions and self.sessions[sid] == (auth, sent):
            return 201, {}, "{}"
        return 403, {"x-csrf-token": "required"}, "CSRF token validation failed"


def traffic(rsps: responses.RequestsMock) -> list[tuple[str, str, str | None]]:
    """(method, path?query, X-CSRF-Token sent) per call."""
    out = []
    for call in rsps.calls:
        parts = urlsplit(call.request.url)
        out.append((call.request.method, parts.path + (f"?{parts.query}" if parts.query else ""),
                    call.request.headers.get("X-CSRF-Token")))
    return out


def cookie(call: Any) -> str | None:
    return call.request.headers.get("Cookie")


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# -- service root --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, root",
    [
        pytest.param(f"{HOST}/sap/opu/odata/sap/API_X/Items(1)", f"{HOST}/sap/opu/odata/sap/API_X/", id="v2-entity"),
        pytest.param(f"{HOST}/sap/opu/odata/sap/API_X", f"{HOST}/sap/opu/odata/sap/API_X/", id="v2-root-no-slash"),
        pytest.param(f"{HOST}/sap/opu/odata/sap/API_X/Items?$top=1", f"{HOST}/sap/opu/odata/sap/API_X/", id="v2-query-dropped"),
        pytest.param(f"{HOST}/sap/opu/odata/IWBEP/GWSAMPLE_BASIC/$batch", f"{HOST}/sap/opu/odata/IWBEP/GWSAMPLE_BASIC/",
                     id="v2-namespace"),
        pytest.param(f"{HOST}/SAP/OPU/ODATA/SAP/API_X;v=0002/Items", f"{HOST}/SAP/OPU/ODATA/SAP/API_X;v=0002/",
                     id="v2-case-and-version-param"),
        pytest.param(f"{HOST}/prefix/sap/opu/odata/sap/API_X/Items", f"{HOST}/prefix/sap/opu/odata/sap/API_X/",
                     id="v2-behind-prefix"),
        pytest.param(f"{HOST}/sap/opu/odata4/sap/api_po/srvd_a2x/sap/purchaseorder/0001/PurchaseOrder('1')",
                     f"{HOST}/sap/opu/odata4/sap/api_po/srvd_a2x/sap/purchaseorder/0001/", id="v4-entity"),
        pytest.param(f"{HOST}/sap/opu/odata4/sap/api_po/srvd_a2x/sap/purchaseorder/0001",
                     f"{HOST}/sap/opu/odata4/sap/api_po/srvd_a2x/sap/purchaseorder/0001/", id="v4-root"),
        pytest.param(f"{HOST}/sap/opu/odata4/sap/api_po/srvd_a2x/sap/purchaseorder/Items",
                     f"{HOST}/sap/opu/odata4/sap/api_po/srvd_a2x/sap/purchaseorder/Items", id="v4-no-version-falls-back"),
        pytest.param(f"{HOST}/sap/opu/odata/sap", f"{HOST}/sap/opu/odata/sap", id="v2-incomplete-falls-back"),
        pytest.param(f"{HOST}/odata/v4/Items(1)?x=1#f", f"{HOST}/odata/v4/Items(1)", id="other-url-itself"),
    ],
)
def test_service_root(url, root):
    assert service_root(url) == root


# -- happy path ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "writes",
    [
        pytest.param(["POST"], id="post"),
        pytest.param(["POST", "PATCH", "DELETE"], id="post-patch-delete"),
        pytest.param(["PUT", "MERGE"], id="put-merge"),
    ],
)
def test_fetch_once_then_reuse_for_every_write(rsps, xsuaa, writes):
    Gateway(rsps)
    user = xsuaa.token(ALICE)
    s = engine().session("S4", user_token=user)
    statuses = [s.request(m, f"{SVC}/Items(1)", json={"a": 1}).status_code for m in writes]
    assert statuses == [201] * len(writes)
    assert traffic(rsps) == [("HEAD", f"{SVC}/", "Fetch")] + [(m, f"{SVC}/Items(1)", f"tok1-{ALICE}") for m in writes]
    assert {c.request.headers["Authorization"] for c in rsps.calls} == {f"Bearer {user}"}  # fetch = same principal
    assert cookie(rsps.calls[0]) is None
    assert [cookie(c) for c in rsps.calls[1:]] == [f"{COOKIE}=sid1"] * len(writes)


@pytest.mark.parametrize(
    "path, root",
    [
        pytest.param("/sap/opu/odata4/sap/api_po/srvd_a2x/sap/po/0001/PurchaseOrder", "/sap/opu/odata4/sap/api_po/srvd_a2x/sap/po/0001/",
                     id="v4"),
        pytest.param("/api/orders", "/api/orders", id="fallback-url"),
    ],
)
def test_fetch_goes_to_the_service_root(rsps, xsuaa, path, root):
    Gateway(rsps)
    r = engine().session("S4", user_token=xsuaa.token(ALICE)).post(path, json={})
    assert r.status_code == 201
    assert traffic(rsps) == [("HEAD", root, "Fetch"), ("POST", path, f"tok1-{ALICE}")]


def test_head_without_token_falls_back_to_get_and_fetch_carries_sap_client(rsps, xsuaa):
    Gateway(rsps, head=False)
    r = engine(**{"sap-client": "100"}).session("S4", user_token=xsuaa.token(ALICE)).post(f"{SVC}/Items", json={})
    assert r.status_code == 201
    assert traffic(rsps) == [
        ("HEAD", f"{SVC}/?sap-client=100", "Fetch"),
        ("GET", f"{SVC}/?sap-client=100", "Fetch"),
        ("POST", f"{SVC}/Items?sap-client=100", f"tok1-{ALICE}"),
    ]


def test_separate_service_roots_get_separate_tokens(rsps, xsuaa):
    Gateway(rsps)
    s = engine().session("S4", user_token=xsuaa.token(ALICE))
    s.post(f"{SVC}/Items", json={})
    s.post("/sap/opu/odata/sap/API_Y/Items", json={})
    assert [t for t in traffic(rsps) if t[0] == "HEAD"] == [("HEAD", f"{SVC}/", "Fetch"), ("HEAD", "/sap/opu/odata/sap/API_Y/", "Fetch")]


# -- 403 Required --------------------------------------------------------------------------
def test_403_required_refetches_and_retries_once(rsps, xsuaa):
    gateway = Gateway(rsps)
    s = engine().session("S4", user_token=xsuaa.token(ALICE))
    assert s.post(f"{SVC}/Items", json={}).status_code == 201
    gateway.expire()  # backend session timed out: the cached token is stale
    r = s.post(f"{SVC}/Items", json={})
    assert r.status_code == 201
    assert [h.status_code for h in r.history] == [403]
    assert traffic(rsps) == [
        ("HEAD", f"{SVC}/", "Fetch"),
        ("POST", f"{SVC}/Items", f"tok1-{ALICE}"),
        ("POST", f"{SVC}/Items", f"tok1-{ALICE}"),
        ("HEAD", f"{SVC}/", "Fetch"),
        ("POST", f"{SVC}/Items", f"tok2-{ALICE}"),
    ]
    assert cookie(rsps.calls[4]) == f"{COOKIE}=sid2"


def test_second_403_is_returned(rsps, xsuaa):
    Gateway(rsps, reject=True)
    r = engine().session("S4", user_token=xsuaa.token(ALICE)).post(f"{SVC}/Items", json={})
    assert r.status_code == 403
    assert r.headers["X-CSRF-Token"] == "required"
    assert traffic(rsps) == [
        ("HEAD", f"{SVC}/", "Fetch"),
        ("POST", f"{SVC}/Items", f"tok1-{ALICE}"),
        ("HEAD", f"{SVC}/", "Fetch"),
        ("POST", f"{SVC}/Items", f"tok2-{ALICE}"),
    ]


@pytest.mark.parametrize(
    "headers",
    [pytest.param({}, id="no-header"), pytest.param({"X-CSRF-Token": "Absent"}, id="other-value")],
)
def test_plain_403_is_not_retried(rsps, xsuaa, headers):
    rsps.head(f"{HOST}{SVC}/", headers={"X-CSRF-Token": "t1"})
    rsps.post(f"{HOST}{SVC}/Items", status=403, headers=headers)
    r = engine().session("S4", user_token=xsuaa.token(ALICE)).post(f"{SVC}/Items", json={})
    assert r.status_code == 403
    assert [t[0] for t in traffic(rsps)] == ["HEAD", "POST"]


def test_streamed_body_is_not_retried(rsps, xsuaa):
    Gateway(rsps, reject=True)
    r = engine().session("S4", user_token=xsuaa.token(ALICE)).post(f"{SVC}/Items", data=iter([b"{}"]))
    assert r.status_code == 403
    assert [t[0] for t in traffic(rsps)] == ["HEAD", "POST"]


# -- no token needed / wanted --------------------------------------------------------------
@pytest.mark.parametrize("method", [pytest.param(m, id=m.lower()) for m in ("GET", "HEAD", "OPTIONS")])
def test_read_needs_no_token(rsps, xsuaa, method):
    rsps.add(method, f"{HOST}{SVC}/Items")
    r = engine().session("S4", user_token=xsuaa.token(ALICE)).request(method, f"{SVC}/Items")
    assert r.status_code == 200
    assert traffic(rsps) == [(method, f"{SVC}/Items", None)]


@pytest.mark.parametrize(
    "make, kwargs",
    [
        pytest.param(lambda e, u: e.session("S4", user_token=u, csrf=False), {}, id="engine-opt-out"),
        pytest.param(lambda e, u: (propagation.set_default_propagator(e), propagation.session("S4", user_token=u, csrf=False))[1],
                     {}, id="module-opt-out"),
    ],
)
def test_opt_out_sends_no_token(rsps, xsuaa, make, kwargs):
    Gateway(rsps, issue=False)
    r = make(engine(), xsuaa.token(ALICE)).post(f"{SVC}/Items", json={}, **kwargs)
    assert r.status_code == 201
    assert traffic(rsps) == [("POST", f"{SVC}/Items", None)]


@pytest.mark.parametrize(
    "where",
    [pytest.param("call", id="on-the-call"), pytest.param("session", id="on-the-session")],
)
def test_app_supplied_token_is_sent_as_is_without_retry(rsps, xsuaa, where):
    Gateway(rsps, reject=True)
    s = engine().session("S4", user_token=xsuaa.token(ALICE))
    kwargs: dict[str, Any] = {}
    if where == "call":
        kwargs["headers"] = {"x-csrf-token": "app-token"}
    else:
        s.headers["X-CSRF-Token"] = "app-token"
    r = s.post(f"{SVC}/Items", json={}, **kwargs)
    assert r.status_code == 403
    assert traffic(rsps) == [("POST", f"{SVC}/Items", "app-token")]


def test_request_to_another_host_gets_no_fetch(rsps, xsuaa):
    rsps.post("https://other.example.com/sap/opu/odata/sap/API_X/Items", status=201)
    r = engine().session("S4", user_token=xsuaa.token(ALICE)).post("https://other.example.com/sap/opu/odata/sap/API_X/Items")
    assert r.status_code == 201
    assert traffic(rsps) == [("POST", "/sap/opu/odata/sap/API_X/Items", None)]


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda rsps: Gateway(rsps, issue=False), id="no-token-in-answer"),
        pytest.param(lambda rsps: rsps.post(f"{HOST}{SVC}/Items", status=201), id="fetch-connection-error"),
    ],
)
def test_fetch_without_token_sends_plain_request_and_is_remembered(rsps, xsuaa, caplog, setup):
    setup(rsps)
    s = engine().session("S4", user_token=xsuaa.token(ALICE))
    with caplog.at_level(logging.DEBUG, logger="propagation"):
        assert [s.post(f"{SVC}/Items", json={}).status_code for _ in range(2)] == [201, 201]
    assert traffic(rsps) == [
        ("HEAD", f"{SVC}/", "Fetch"),
        ("GET", f"{SVC}/", "Fetch"),
        ("POST", f"{SVC}/Items", None),
        ("POST", f"{SVC}/Items", None),
    ]
    assert "no CSRF token" in caplog.text


# -- user isolation ------------------------------------------------------------------------
def test_two_users_on_one_session_never_share_token_or_cookies(rsps, xsuaa):
    Gateway(rsps)
    alice, bob = xsuaa.token(ALICE), xsuaa.token(BOB)
    s = engine().session("S4")  # the user comes from the request context
    for user in (alice, bob, alice, bob):
        with propagation.use_token(user):
            assert s.post(f"{SVC}/Items", json={}).status_code == 201
    assert traffic(rsps) == [
        ("HEAD", f"{SVC}/", "Fetch"),
        ("POST", f"{SVC}/Items", f"tok1-{ALICE}"),
        ("HEAD", f"{SVC}/", "Fetch"),
        ("POST", f"{SVC}/Items", f"tok2-{BOB}"),
        ("POST", f"{SVC}/Items", f"tok1-{ALICE}"),
        ("POST", f"{SVC}/Items", f"tok2-{BOB}"),
    ]
    assert [cookie(c) for c in rsps.calls] == [None, f"{COOKIE}=sid1", None, f"{COOKIE}=sid2", f"{COOKIE}=sid1", f"{COOKIE}=sid2"]
    assert [c.request.headers["Authorization"] for c in rsps.calls] == [f"Bearer {u}" for u in (alice, alice, bob, bob, alice, bob)]


def test_cookie_jar_follows_the_context_user(xsuaa):
    s = engine().session("S4")
    with propagation.use_token(xsuaa.token(ALICE)):
        s.cookies.set(COOKIE, "alice-sid")
        assert s.cookies.get(COOKIE) == "alice-sid"
    with propagation.use_token(xsuaa.token(BOB)):
        assert s.cookies.get(COOKIE) is None
    assert s.cookies.get(COOKIE) is None  # no user: its own (empty) jar


# -- secrets -------------------------------------------------------------------------------
def test_logs_contain_no_csrf_token_or_cookie(rsps, xsuaa, caplog):
    gateway = Gateway(rsps)
    s = engine().session("S4", user_token=xsuaa.token(ALICE))
    with caplog.at_level(logging.DEBUG, logger="propagation"):
        s.post(f"{SVC}/Items", json={})
        gateway.expire()
        s.post(f"{SVC}/Items", json={})
    assert "CSRF token required" in caplog.text
    for secret in ("tok1", "tok2", "sid1", "sid2"):
        assert secret not in caplog.text
    assert "tok" not in repr(s.csrf)
