"""Peer texts are bounded before anything scans them, and redaction is linear (issue 17: a
100 kB ``error_description`` of letters blocked every thread for ~6 s). Bounds on work are
asserted on what the scanners receive — never on wall-clock time."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import responses

from propagation.exchange import redaction
from propagation.errors import TokenExchangeError
from propagation.exchange.oauth import GRANT_JWT_BEARER, ClientCredentials, OAuthClient
from propagation.exchange.redaction import sanitize

TOKEN_URL = "https://idp.example.com/oauth/token"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"
MB = 1_000_000


class Recorder:
    """Wraps a compiled pattern: records the length of every text it is asked to scan, and
    refuses (before scanning) anything longer than any window can be."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.sizes: list[int] = []

    def sub(self, repl: Any, text: str, *args: Any) -> str:
        self.sizes.append(len(text))
        assert len(text) <= 1000, f"a scanner was given {len(text)} characters of peer text"
        return self.pattern.sub(repl, text, *args)


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    for name in ("_JWT_LIKE", "_CONTROL", "_CUT_TAIL"):
        if not hasattr(redaction, name):
            continue
        recorder = Recorder(getattr(redaction, name))
        recorder.sizes = sizes
        monkeypatch.setattr(redaction, name, recorder)
    return sizes


@pytest.mark.parametrize("text", [
    pytest.param("a" * MB, id="letters"),
    pytest.param("." * MB, id="dots"),
    pytest.param("abcdefgh." * (MB // 9), id="base64url-segments"),
    pytest.param(("x" * 7 + "-") * (MB // 8), id="base64url-dashes"),
])
def test_a_megabyte_of_peer_text_is_cut_before_any_scan(text: str, scanned: list[int]) -> None:
    result = sanitize(text, ("client-secret-value",))
    assert result is not None and len(result) <= 200
    assert scanned and max(scanned) <= 1000


@pytest.mark.parametrize("text", [
    JWT, f"x {JWT} y", f"abc.{JWT}", f"{JWT}.{JWT}", "abcdefgh.abcdefgh.", "abcdefgh.abcdefg.abc",
    "abcdefghij" * 3 + "." + "k" * 9 + ".", "a-b.cccccccccc.dddddddddd.eeee", "....abcdefgh..abcdefgh.abcdefgh.x",
    "[" + JWT + "]", "é" + JWT,
])
def test_the_linear_jwt_pattern_redacts_what_the_quadratic_one_did(text: str) -> None:
    """The anchored, possessive pattern (linear) finds the same spans as the old unanchored
    greedy one (quadratic in a long run of letters) — only faster."""
    old = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
    assert redaction._JWT_LIKE.sub("#", text) == old.sub("#", text)


@pytest.mark.parametrize("text, secrets, expected", [
    pytest.param(f"bad token {JWT} here", (), "bad token [redacted] here", id="jwt"),
    pytest.param(f"x.{JWT}", (), "x.[redacted]", id="jwt-after-a-dot"),
    pytest.param("client secret s3cr3t-Value was wrong", ("s3cr3t-Value",), "client secret [redacted] was wrong", id="secret"),
    pytest.param("echo s3cr3t%2BValue", ("s3cr3t+Value",), "echo [redacted]", id="form-encoded-secret"),
    pytest.param("echo s3cr3t%2bvalue", ("s3cr3t+value",), "echo [redacted]", id="lower-case-escapes"),
    pytest.param("line\r\nbreak\x00", (), "line break", id="control-characters"),
    pytest.param("a.b.c short dots", (), "a.b.c short dots", id="no-jwt"),
    pytest.param("", (), None, id="empty"),
])
def test_redaction_table(text: str, secrets: tuple[str, ...], expected: str | None) -> None:
    assert sanitize(text, secrets) == expected


def test_a_secret_or_jwt_cut_at_the_windows_edge_is_never_shown_in_part() -> None:
    """Echoes shrink to ``[redacted]``, so text near the scan window's edge can come into view:
    a secret or a token cut there is masked, never shown by halves."""
    secret = "S" * 40 + "tail-of-the-secret"
    text = (secret + " ") * 20 + "x" * 2000
    result = sanitize(text, (secret,))
    assert result is not None and "S" * 8 not in result and "tail-of" not in result
    jwt_text = ("[x] " * 60) + JWT * 50
    shown = sanitize(jwt_text, ())
    assert shown is not None and "eyJ" not in shown


def test_an_idp_answering_a_megabyte_error_description_costs_a_bounded_scan(scanned: list[int]) -> None:
    client = OAuthClient(retries=0)
    assertion = JWT
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, TOKEN_URL, status=400,
                 body=json.dumps({"error": "invalid_grant", "error_description": "a" * MB}),
                 content_type="application/json")
        with pytest.raises(TokenExchangeError) as caught:
            client.request_token(TOKEN_URL, ClientCredentials("c", "s3cr3t-Value"), GRANT_JWT_BEARER, {"assertion": assertion})
    assert caught.value.error == "invalid_grant"
    assert caught.value.error_description is not None and len(caught.value.error_description) <= 200
    assert scanned and max(scanned) <= 1000
    client.close()
