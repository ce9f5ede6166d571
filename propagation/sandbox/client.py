"""Client side of a running sandbox: log a user in as the browser flow would, for scripts.

The sandbox's XSUAA and IAS support the password grant for their registered users, so a
shell can get a real user token without an interactive login: an XSUAA token for the app's
XSUAA client, an IAS token for the app's IAS client (``aud`` with the XSUAA trust client:
``xsuaa-cross-consumption`` is on), or an IAS token of the public (PKCE) client.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import requests

__all__ = ["password_login", "ias_login", "xsuaa_credentials", "binding_credentials", "public_clients",
           "tenant_zone", "SandboxClientError"]


class SandboxClientError(RuntimeError):
    """The sandbox refused or is not reachable; the message carries no secret."""


def binding_credentials(env: Mapping[str, str], label: str) -> dict[str, Any]:
    """The credentials of the first binding with ``label`` in a sandbox environment."""
    try:
        services = json.loads(env["VCAP_SERVICES"])
        return dict(services[label][0]["credentials"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise SandboxClientError(f"the sandbox environment has no {label} binding") from None


def xsuaa_credentials(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``xsuaa`` binding's credentials from a sandbox environment."""
    return binding_credentials(env, "xsuaa")


def public_clients(env: Mapping[str, str]) -> list[str]:
    """The IAS public (PKCE) client ids the sandbox registered (``PROPAGATION_PUBLIC_CLIENTS``)."""
    return [c.strip() for c in env.get("PROPAGATION_PUBLIC_CLIENTS", "").split(",") if c.strip()]


def _password(user: str, password: str | None) -> str:
    if password is not None:
        return password
    from propagation.testing.landscape import DEFAULT_USERS

    if user not in DEFAULT_USERS:
        raise SandboxClientError(f"no user {user!r} is registered in the sandbox (users: {', '.join(DEFAULT_USERS)})")
    return DEFAULT_USERS[user][0]


def tenant_zone(env: Mapping[str, str], tenant: str) -> str:
    """The zone id of a sandbox tenant (subdomain), from ``PROPAGATION_SANDBOX_TENANTS``."""
    try:
        zones = json.loads(env.get("PROPAGATION_SANDBOX_TENANTS") or "{}")
    except ValueError:
        zones = {}
    if tenant not in zones:
        known = ", ".join(zones) or "none"
        raise SandboxClientError(f"the sandbox has no tenant {tenant!r} (tenants: {known}; start it with --tenant {tenant})")
    return str(zones[tenant])


def _token(env: Mapping[str, str], url: str, data: dict[str, str], auth: tuple[str, str] | None, service: str,
           user: str, timeout: float, headers: Mapping[str, str] | None = None) -> str:
    session = requests.Session()
    session.trust_env = False  # loopback: no corporate proxy
    try:
        r = session.post(url, data=data, auth=auth, verify=env.get("REQUESTS_CA_BUNDLE") or True, timeout=timeout,
                         headers=dict(headers or {}))
    except requests.RequestException as exc:
        raise SandboxClientError(f"the sandbox's {service} is not reachable ({type(exc).__name__}); is it running?") from None
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


def password_login(env: Mapping[str, str], user: str, password: str | None = None, *, tenant: str | None = None,
                   timeout: float = 10) -> str:
    """An XSUAA access token for ``user``, issued to the app's client (password grant).

    ``password`` defaults to the one the landscape registers for its default users
    (``propagation.testing.landscape.DEFAULT_USERS``: alice, bob). ``tenant``: a tenant's
    subdomain — the token request goes to ``https://{uaadomain}/oauth/token`` with ``X-zid``
    (its own host need not resolve).
    """
    creds = xsuaa_credentials(env)
    data = {"grant_type": "password", "username": user, "password": _password(user, password), "response_type": "token"}
    url, headers = creds["url"].rstrip("/") + "/oauth/token", {}
    if tenant is not None:
        url, headers = f"https://{creds['uaadomain']}/oauth/token", {"X-zid": tenant_zone(env, tenant)}
    return _token(env, url, data, (creds["clientid"], creds.get("clientsecret") or ""), "XSUAA", user, timeout, headers)


def ias_login(env: Mapping[str, str], user: str, password: str | None = None, *, public_client: str | None = None,
              timeout: float = 10) -> str:
    """An IAS access token for ``user`` (password grant at ``{identity url}/oauth2/token``).

    Without ``public_client``: issued to the app's IAS client (the ``identity`` binding, client
    secret by HTTP Basic); its ``aud`` also holds the XSUAA trust client. With it: issued to
    that public (PKCE) client, which has no secret (``client_id`` in the body only) — the
    token a mobile app or SPA would send.
    """
    creds = binding_credentials(env, "identity")
    data = {"grant_type": "password", "username": user, "password": _password(user, password)}
    auth: tuple[str, str] | None = None
    if public_client:
        data["client_id"] = public_client
    else:
        auth = (creds["clientid"], creds.get("clientsecret") or "")
    return _token(env, creds["url"].rstrip("/") + "/oauth2/token", data, auth, "IAS", user, timeout)
