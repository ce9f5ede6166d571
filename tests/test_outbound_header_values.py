"""Header values from destination properties are checked before any request (issue 17):
requests/httpx refuse a bad header with its value — often an API key — in their message, and a
CR/LF could smuggle a second header. Refused with a ``ConfigurationError`` naming the header,
never its value; nothing is sent (not even the token request), and no breaker counts it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses

from propagation import Propagator
from propagation.bindings import Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.errors import ConfigurationError
from propagation.exchange.oauth import OAuthClient

from test_outbound_core import TRANSPORTS, Transport, user

SECRET = "api-key-4711-very-secret"


def engine(properties: dict[str, str], authentication: str = "OAuth2JWTBearer") -> Propagator:
    return Propagator(
        environ={"destinations": json.dumps([{
            "name": "S4", "url": "https://s4.example.com/api", "Authentication": authentication,
            "tokenServiceURL": "https://idp.example.com/oauth/token", "clientId": "c", "clientSecret": "s",
            **properties}])},
        bindings=Bindings([]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0, breaker_threshold=1))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("properties, named", [
    pytest.param({"URL.headers.X-Api-Key": SECRET + "\r\nX-Injected: 1"}, "URL.headers.X-Api-Key", id="crlf-in-url-header"),
    pytest.param({"URL.headers.X-Api-Key": SECRET + "\n"}, "URL.headers.X-Api-Key", id="lf-in-url-header"),
    pytest.param({"URL.headers.X-Api-Key": SECRET + "\x00"}, "URL.headers.X-Api-Key", id="nul-in-url-header"),
    pytest.param({"tokenServiceURL.headers.X-Tenant-Key": SECRET + "\r\n"}, "tokenServiceURL.headers.X-Tenant-Key",
                 id="crlf-in-token-service-header"),
])
def test_a_header_value_that_clients_refuse_is_a_configuration_error_before_anything_is_sent(
        transport: Transport, properties: dict[str, str], named: str) -> None:
    e = engine(properties)
    with responses.RequestsMock(assert_all_requests_are_fired=False):  # any request would fail as unmatched
        with pytest.raises(ConfigurationError, match=named.replace(".", r"\.")) as caught:
            transport.call(transport.make(e, "S4", user_token=user("alice")), "GET", "Items")
    assert SECRET not in str(caught.value) and "nothing was sent" in str(caught.value).lower()
    assert e.oauth.breakers.open_keys() == []


def test_surrounding_blanks_of_a_header_value_are_dropped_not_refused() -> None:
    e = engine({"URL.headers.X-Api-Key": f"  {SECRET}\t"}, authentication="NoAuthentication")
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, "https://s4.example.com/api/Items", json={})
        e.session("S4").get("Items")
        assert rsps.calls[0].request.headers["X-Api-Key"] == SECRET


def test_an_invalid_header_name_is_refused_naming_it() -> None:
    e = engine({"URL.headers.X Api:Key": SECRET}, authentication="NoAuthentication")
    with pytest.raises(ConfigurationError, match="not an HTTP header name") as caught:
        e.headers("S4")
    assert SECRET not in str(caught.value)
