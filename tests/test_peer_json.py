"""JSON from peers is parsed within bounds, and every failure is a typed ``PropagationError``
(issue 17: an answer nesting 100,000 arrays raised a raw ``RecursionError``)."""

from __future__ import annotations

import base64
import json

import pytest
import responses

from propagation.errors import PeerAnswerError, PropagationError, TokenExchangeError
from propagation.exchange.flow import Answer
from propagation.exchange.oauth import GRANT_CLIENT_CREDENTIALS, ClientCredentials, OAuthClient

TOKEN_URL = "https://idp.example.com/oauth/token"
DEEP = b"[" * 100_000 + b"]" * 100_000


def nested(depth: int) -> bytes:
    return ('{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)).encode()


@pytest.mark.parametrize("content, message", [
    pytest.param(DEEP, "nests deeper than 64 levels", id="100000-arrays"),
    pytest.param(nested(65), "nests deeper than 64 levels", id="65-objects"),
    pytest.param(b"[" * 70 + b"]" * 70, "nests deeper than 64 levels", id="70-arrays"),
    pytest.param(b'{"secret-looking": "value"', r"not JSON \(at character", id="truncated"),
    pytest.param(b"\xff\xfe", "not JSON", id="not-utf-8"),
    pytest.param(b" " * (8 * 1024 * 1024 + 1), "more than the 8388608-byte limit", id="too-large"),
])
def test_an_unusable_answer_is_a_typed_error_naming_the_limit_never_the_content(content: bytes, message: str) -> None:
    with pytest.raises(PeerAnswerError, match=message) as caught:
        Answer(200, {}, content).json()
    assert isinstance(caught.value, PropagationError) and isinstance(caught.value, ValueError)
    assert "secret-looking" not in str(caught.value) and "value" not in str(caught.value)


@pytest.mark.parametrize("content", [
    pytest.param(nested(64), id="64-levels"),
    pytest.param(b"[" * 64 + b"]" * 64, id="64-arrays"),
    pytest.param(b'{"destinationConfiguration": {"Name": "S4"}, "authTokens": [{"http_header": {"key": "k"}}]}',
                 id="destination-answer"),
])
def test_answers_within_the_limits_parse(content: bytes) -> None:
    assert Answer(200, {}, content).json() == json.loads(content)


@pytest.mark.parametrize("status", [200, 400, 503])
def test_an_idp_answering_100000_nested_arrays_is_a_token_exchange_error(status: int) -> None:
    client = OAuthClient(retries=0)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, TOKEN_URL, status=status, body=DEEP, content_type="application/json")
        with pytest.raises(TokenExchangeError) as caught:
            client.request_token(TOKEN_URL, ClientCredentials("c", "s"), GRANT_CLIENT_CREDENTIALS)
    assert caught.value.status == status
    client.close()


def test_an_access_token_with_deeply_nested_claims_keeps_its_expires_in() -> None:
    """The access token's own ``exp`` is read only to shorten a lifetime: nested claims do not
    break the token request."""
    payload = base64.urlsafe_b64encode(b'{"x":' + DEEP + b"}").decode().rstrip("=")
    token = f"eyJhbGciOiJub25lIn0.{payload}.sig"
    client = OAuthClient(retries=0)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, TOKEN_URL, json={"access_token": token})
        result = client.request_token(TOKEN_URL, ClientCredentials("c", "s"), GRANT_CLIENT_CREDENTIALS)
    assert result.access_token == token and result.expires_at is None
    client.close()
