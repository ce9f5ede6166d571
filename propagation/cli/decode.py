"""``decode``: what a JWT says and what it can serve (the signature is not verified)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, TextIO

from ..errors import InvalidTokenError
from ..tokens import UserToken
from .common import (
    EXIT_OK,
    EXIT_USAGE,
    _ALL_AUTHENTICATIONS,
    _Io,
    _expiry_text,
    _read_token,
    _utc,
)


# -- decode -------------------------------------------------------------------------------------------
def _token_summary(token: UserToken, now: float) -> dict[str, Any]:
    return {
        "kind": token.kind,
        "issuer": token.issuer,
        "tenant": token.tenant,
        "subdomain": token.subdomain,
        "user": token.user,
        "client_id": token.client_id,
        "audiences": list(token.audiences),
        "grant_type": token.grant_type,
        "issued_at": _utc(_num(token.claims.get("iat"))),
        "expires_at": _utc(token.expires_at),
        "expires_in_seconds": None if token.expires_in(now) is None else int(token.expires_in(now) or 0),
        "expiry": _expiry_text(token, now),
        "fingerprint": token.fingerprint,
    }


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _is_technical(token: UserToken) -> tuple[bool, str | None]:
    """Technical (no user) by ``grant_type``; for IAS also by shape (``sub`` is the client, no user claims)."""
    if not token.is_user:
        return True, "grant_type is client_credentials"
    if token.kind == "ias":
        sub, azp = token.claims.get("sub"), token.claims.get("azp")
        has_user = any(token.claims.get(c) for c in ("user_uuid", "email", "user_name", "given_name"))
        if isinstance(sub, str) and sub and sub == azp and not has_user:
            return True, "sub equals azp and the token has no user claims (IAS client_credentials shape)"
    return False, None


def _diagnosis(token: UserToken, now: float, args: argparse.Namespace) -> dict[str, Any]:
    findings: list[str] = ["The signature was NOT verified: decode only reads the token."]
    technical, why = _is_technical(token)
    expired = token.is_expired(now=now)
    alg = str(token.header.get("alg") or "")
    unsigned = alg.lower() in ("", "none")
    if unsigned:
        findings.append(
            f"WARNING: alg is {alg or 'missing'!r}: the token is unsigned. The middleware (sap-xssec) and every BTP "
            "service refuse it; it cannot be a token an IdP issued."
        )
    no_exp = token.expires_at is None
    if no_exp:
        findings.append(
            "WARNING: no 'exp' claim: the middleware refuses tokens without an expiry, and no exchange will accept it."
        )
    if technical:
        findings.append(
            f"Technical token ({why}): it carries no user, so it cannot serve destinations that need a user "
            "(OAuth2JWTBearer, OAuth2UserTokenExchange, OAuth2TokenExchange, OAuth2SAMLBearerAssertion, "
            "PrincipalPropagation, forwardAuthToken). Use a token from a user login."
        )
    if expired:
        findings.append("The token is expired: every exchange with it will be refused (invalid_grant). Get a fresh one.")

    ias: dict[str, Any] | None = None
    if token.kind == "ias":
        own = {c for c in (token.claims.get("azp"), token.client_id) if isinstance(c, str) and c}
        extra = [a for a in token.audiences if a not in own]
        ias = {"own_client": sorted(own), "extra_audiences": extra}
        trust = args.xsuaa_trust_client_id
        if trust:
            present = trust in token.audiences
            ias["xsuaa_trust_client_present"] = present
            if present:
                findings.append(
                    f"aud contains the XSUAA trust client '{trust}': IAS→XSUAA exchange "
                    "(xsuaa-cross-consumption) can work."
                )
            else:
                findings.append(
                    f"aud lacks the XSUAA trust client '{trust}': an IAS→XSUAA exchange will be refused. Enable "
                    "'xsuaa-cross-consumption' in the identity binding parameters, or exchange the token at IAS first."
                )
        elif extra:
            findings.append(
                "aud holds more than the IAS application's own client: "
                + ", ".join(extra)
                + ". One of them is the XSUAA trust client if IAS→XSUAA exchange (xsuaa-cross-consumption) should "
                "work; check with --xsuaa-trust-client-id ID."
            )
        elif not (args.public_client and token.claims.get("azp") == args.public_client):
            issued_to = token.claims.get("azp") or token.client_id or "?"
            findings.append(
                f"aud holds only '{issued_to}', the client the token was issued to (the IAS application's own "
                "client, or a public client): no XSUAA trust client, so an IAS→XSUAA exchange "
                "(xsuaa-cross-consumption) will be refused until the token is exchanged at IAS /oauth2/token."
            )
        azp = token.claims.get("azp")
        only_azp = isinstance(azp, str) and list(token.audiences) == [azp]
        public: bool | None = None
        if args.public_client:
            public = azp == args.public_client
            if public and only_azp:
                findings.append(
                    f"Public-client (PKCE) token of '{azp}': aud == azp. Exchange it first at IAS /oauth2/token "
                    "(jwt-bearer with the app's confidential client) for a private token."
                )
            elif public:
                findings.append(f"Token of the public client '{azp}', with further audiences.")
            else:
                findings.append(f"Not a token of the public client '{args.public_client}' (azp is '{azp}').")
        elif only_azp:
            public = None
            findings.append(
                f"aud == azp ('{azp}'): this may be a public-client (PKCE) token; confirm with --public-client ID. "
                "Public-client tokens must be exchanged at IAS for a private token before further exchanges."
            )
        ias["public_client"] = public

    issuer = token.issuer or "(no issuer)"
    serves: dict[str, str] = {}
    for auth in _ALL_AUTHENTICATIONS:
        if auth in ("NoAuthentication", "BasicAuthentication", "OAuth2ClientCredentials", "OAuth2Password",
                    "ClientCertificateAuthentication"):
            serves[auth] = "yes (needs no user)"
        elif auth == "OAuth2RefreshToken":
            serves[auth] = "yes, through the Destination service, with refresh_token= (needs no user)"
        elif unsigned:
            serves[auth] = "no (unsigned token: refused)"
        elif no_exp:
            serves[auth] = "no (no 'exp': refused)"
        elif technical:
            serves[auth] = "no (technical token: no user)"
        elif expired:
            serves[auth] = "no (expired)"
        elif auth == "NoAuthentication+forwardAuthToken":
            serves[auth] = f"yes, if the target trusts the issuer {issuer}"
        elif auth in ("OAuth2SAMLBearerAssertion", "SAMLAssertion"):
            serves[auth] = "yes, through the Destination service only"
        elif auth == "PrincipalPropagation":
            serves[auth] = "yes, OnPremise through the Connectivity proxy"
        else:
            serves[auth] = f"yes, if the destination's token service trusts the issuer {issuer}"
    return {"technical": technical, "expired": expired, "unsigned": unsigned, "no_exp": no_exp, "findings": findings,
            "ias": ias, "serves": serves}


def _cmd_decode(args: argparse.Namespace, io_: _Io, stdin: TextIO) -> int:
    raw = _read_token(args.token, stdin, "TOKEN")
    io_.secrets.add(raw)
    try:
        token = UserToken.parse(raw)
    except InvalidTokenError as exc:
        return io_.fail("decode", str(exc.error_description), EXIT_USAGE)
    now = time.time()
    summary = _token_summary(token, now)
    diagnosis = _diagnosis(token, now, args)
    header = {k: token.header.get(k) for k in ("alg", "kid", "typ", "jku") if token.header.get(k) is not None}
    if args.json:
        data = {"header": dict(token.header), "claims": dict(token.claims), **summary, "diagnosis": diagnosis,
                "signature_verified": False}
        io_.out(json.dumps(data, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    io_.out("Header: " + ", ".join(f"{k}={v}" for k, v in header.items()))
    io_.out("Claims:")
    io_.out(json.dumps(dict(token.claims), indent=2, sort_keys=True, default=str))
    io_.out()
    labels = [
        ("kind", token.kind), ("issuer", token.issuer), ("tenant", token.tenant), ("subdomain", token.subdomain),
        ("user", token.user), ("client id", token.client_id), ("audiences", ", ".join(token.audiences) or None),
        ("grant type", token.grant_type), ("issued", summary["issued_at"]),
        ("expires", f"{summary['expires_at'] or '-'} ({summary['expiry']})"), ("fingerprint", token.fingerprint),
    ]
    width = max(len(k) for k, _ in labels)
    for key, value in labels:
        io_.out(f"{key + ':':<{width + 2}}{value if value not in (None, '') else '-'}")
    io_.out()
    io_.out("Diagnosis:")
    for finding in diagnosis["findings"]:
        io_.out(f"  - {finding}")
    io_.out("Can serve destinations with Authentication:")
    width = max(len(a) for a in diagnosis["serves"])
    for auth, verdict in diagnosis["serves"].items():
        io_.out(f"  {auth:<{width}}  {verdict}")
    return EXIT_OK


