"""Client side of a running sandbox: log a user in as the browser flow would, for scripts.

The sandbox's XSUAA supports the password grant for its registered users, so a shell can
get a real user token for the app's client without an interactive login.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import requests

__all__ = ["password_login", "xsuaa_credentials", "SandboxClientError"]


class SandboxClientError(RuntimeError):
    """The sandbox refused or is not reachable; the message carries no secret."""


def xsuaa_credentials(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``xsuaa`` binding's credentials from a sandbox environment."""
    try:
        services = json.loads(env["VCAP_SERVICES"])
        return dict(services["xsuaa"][0]["credentials"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise SandboxClientError("the sandbox environment has no xsuaa binding") from None


def password_login(env: Mapping[str, str], user: str, password: str | None = None, *, timeout: float = 10) -> str:
    """An XSUAA access token for ``user``, issued to the app's client (password grant).

    ``password`` defaults to the one the landscape registers for its default users
    (``propagation.testing.landscape.DEFAULT_USERS``: alice, bob).
    """
    creds = xsuaa_credentials(env)
    if password is None:
        from propagation.testing.landscape import DEFAULT_USERS

        if user not in DEFAULT_USERS:
            raise SandboxClientError(f"no user {user!r} is registered in the sandbox (users: {', '.join(DEFAULT_USERS)})")
        password = DEFAULT_USERS[user][0]
    session = requests.Session()
    session.trust_env = False  # loopback: no corporate proxy
    try:
        r = session.post(
            creds["url"].rstrip("/") + "/oauth/token",
            data={"grant_type": "password", "username": user, "password": password, "response_type": "token"},
            auth=(creds["clientid"], creds.get("clientsecret") or ""),
            verify=env.get("REQUESTS_CA_BUNDLE") or True,
            timeout=timeout,
        )
    except requests.RequestException as exc:
        raise SandboxClientError(f"the sandbox's XSUAA is not reachable ({type(exc).__name__}); is it running?") from None
    finally:
        session.close()
    try:
        body = r.json()
    except ValueError:
        body = {}
    if r.status_code != 200 or not isinstance(body.get("access_token"), str):
        raise SandboxClientError(
            f"login of {user!r} refused: HTTP {r.status_code} {body.get('error', '')} {body.get('error_description', '')}".strip()
        )
    return str(body["access_token"])
