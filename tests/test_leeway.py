"""Clock-skew leeway on inbound tokens (issue 17 item 5): ``exp`` and ``nbf`` checked on the
validator's clock with a leeway (default 60 s, as SAP's Java security library), sap-xssec's
signature, issuer and audience checks unchanged."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest
import respx
import sap.xssec
from flask import Flask

import jwtkit
from conftest import make_bindings
from propagation.engine import Propagator
from propagation.errors import ConfigurationError, InvalidTokenError
from propagation.inbound import TokenValidator
from propagation.inbound.timestamps import check_lifetime
from propagation.tokens import UserToken
from propagation.wsgi import PropagationMiddleware

NOW = 1_900_000_000.0
MINUTE = 60.0


def claims_token(**claims: Any) -> UserToken:
    return UserToken("h.p.s", {"alg": "RS256"}, {k: v for k, v in claims.items() if v is not None})


# The Java library's JwtTimestampValidatorTest (NOW, tolerance ONE_MINUTE), case by case.
@pytest.mark.parametrize("exp, nbf, valid", [
    pytest.param(None, None, False, id="token_lacksExpiration_isNotValid"),
    pytest.param(NOW - MINUTE, None, False, id="tokenExpired_beforeClockSkewLeeway_isNotValid"),
    pytest.param(NOW + MINUTE, None, True, id="tokenExpires_afterClockSkewLeeway_isValid"),
    pytest.param(NOW - MINUTE + 1, None, True, id="tokenExpired_butStillInClockSkewLeeway_isValid"),
    pytest.param(NOW + 10**6, None, True, id="tokenLacksNotBefore_isValid"),
    pytest.param(NOW + 10**6, NOW, True, id="tokenNotBefore_now_isValid"),
    pytest.param(NOW + 10**6, NOW + MINUTE - 1, True, id="tokenNotBefore_insideClockSkewLeeway_isValid"),
    pytest.param(NOW + 10**6, NOW + MINUTE, False, id="tokenNotBefore_afterClockSkewLeeway_isNotValid"),
    pytest.param(NOW - 2 * MINUTE, NOW, False, id="tokenNotBeforeIsValidButIsAlreadyExpired_isNotValid"),
    pytest.param(NOW + 2 * MINUTE, NOW + 2 * MINUTE, False, id="tokenNotExpiredButNotBeforeNotReachedYet_isNotValid"),
])
def test_java_timestamp_vectors(exp: float | None, nbf: float | None, valid: bool) -> None:
    token = claims_token(exp=exp, nbf=nbf)
    if valid:
        assert check_lifetime(token, NOW, MINUTE) == exp + MINUTE  # type: ignore[operator]
    else:
        with pytest.raises(InvalidTokenError):
            check_lifetime(token, NOW, MINUTE)


def test_iat_stands_in_for_a_missing_nbf() -> None:
    with pytest.raises(InvalidTokenError, match=r"Token is not valid yet \(its iat lies 90 s ahead"):
        check_lifetime(claims_token(exp=NOW + 3600, iat=NOW + 90), NOW, MINUTE)
    assert check_lifetime(claims_token(exp=NOW + 3600, iat=NOW + 30), NOW, MINUTE) == NOW + 3600 + MINUTE


# -- through sap-xssec: real signatures, a controlled clock ---------------------------------------------
Issue = Callable[[jwtkit.Xsuaa, jwtkit.Ias, dict[str, Any]], str]
KINDS = [
    pytest.param(lambda x, i, c: x.token(extra=c), id="xsuaa"),
    pytest.param(lambda x, i, c: i.token(extra=c), id="ias"),
]


def outcome(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, raw: str, clock: float, **leeway: Any) -> str:
    validator = TokenValidator(xsuaa=xsuaa.credentials(), ias=ias.credentials(), clock=lambda: clock, **leeway)
    try:
        validator.validate(raw)
    except InvalidTokenError as exc:
        return exc.error_description
    return "valid"


@pytest.mark.parametrize("issue", KINDS)
@pytest.mark.parametrize("claims, leeway, expected", [
    pytest.param({"exp": -30}, {}, "valid", id="30s-past-exp-default"),
    pytest.param({"exp": -30}, {"leeway": 0}, "Token expired.", id="30s-past-exp-leeway-0"),
    pytest.param({"exp": -61}, {}, "Token expired.", id="61s-past-exp-default"),
    pytest.param({"exp": -61}, {"leeway": 90}, "valid", id="61s-past-exp-leeway-90"),
    pytest.param({"nbf": 30}, {}, "valid", id="nbf-30s-ahead-default"),
    pytest.param({"nbf": 30}, {"leeway": 0}, "Token is not valid yet", id="nbf-30s-ahead-leeway-0"),
    pytest.param({"nbf": 61}, {}, "Token is not valid yet", id="nbf-61s-ahead-default"),
    pytest.param({"iat": 30}, {}, "valid", id="iat-30s-ahead-default"),
])
def test_leeway_through_sap_xssec(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter, issue: Issue,
                                  claims: dict[str, int], leeway: dict[str, Any], expected: str) -> None:
    """The clock is the real time, so without the validator's own check sap-xssec (PyJWT,
    no leeway) would refuse every token past exp or before nbf/iat here."""
    now = float(int(time.time()))
    absolute = {"iat": now - 300, "exp": now + 3600, **{k: now + v for k, v in claims.items()}}
    result = outcome(xsuaa, ias, issue(xsuaa, ias, absolute), now, **leeway)
    assert result.startswith(expected)


@pytest.mark.parametrize("issue, forged, description", [
    pytest.param(lambda x, i, c: x.token(extra=c, key=jwtkit.rsa_key("attacker")), True,
                 "Token signature verification failed.", id="xsuaa-forged"),
    pytest.param(lambda x, i, c: i.token(extra=c, key=jwtkit.rsa_key("attacker")), True,
                 "Token signature verification failed.", id="ias-forged"),
    pytest.param(lambda x, i, c: i.token(extra=c, aud=["another-app"]), False,
                 "Token audience does not match this application's OAuth client.", id="ias-foreign-audience"),
    pytest.param(lambda x, i, c: i.token(extra=c, issuer="https://evil.example.com"), False,
                 "Token issuer is not trusted", id="ias-foreign-issuer"),
])
def test_inside_the_leeway_the_other_checks_still_refuse(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                         idp_keys: respx.MockRouter, issue: Issue, forged: bool,
                                                         description: str) -> None:
    now = float(int(time.time()))
    raw = issue(xsuaa, ias, {"iat": now - 300, "exp": now - 30})
    assert outcome(xsuaa, ias, raw, now).startswith(description)


def test_sap_xssec_outside_the_validator_keeps_its_own_time_checks(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                                    idp_keys: respx.MockRouter) -> None:
    now = float(int(time.time()))
    raw = xsuaa.token(extra={"iat": now - 300, "exp": now - 30})
    assert outcome(xsuaa, ias, raw, now) == "valid"  # the switch was on during that call only
    with pytest.raises(Exception, match="expired"):
        sap.xssec.create_security_context_xsuaa(raw, xsuaa.credentials())


# -- settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, leeway", [
    pytest.param(None, 60.0, id="default"), pytest.param("", 60.0, id="empty"), pytest.param("0", 0.0, id="zero"),
    pytest.param(" 30 ", 30.0, id="spaces"), pytest.param("2.5", 2.5, id="fraction"), pytest.param("300", 300.0, id="max"),
])
def test_leeway_from_the_environment(xsuaa: jwtkit.Xsuaa, value: str | None, leeway: float) -> None:
    environ = {} if value is None else {"PROPAGATION_CLOCK_SKEW_LEEWAY": value}
    engine = Propagator(bindings=make_bindings(xsuaa), environ=environ)
    assert engine.clock_skew_leeway == leeway
    assert engine.validator.leeway == leeway


@pytest.mark.parametrize("value, message", [
    pytest.param("-1", "PROPAGATION_CLOCK_SKEW_LEEWAY must be between 0 and 300 seconds, not '-1'.", id="negative"),
    pytest.param("301", "PROPAGATION_CLOCK_SKEW_LEEWAY must be between 0 and 300 seconds, not '301'.", id="too-large"),
    pytest.param("nan", "PROPAGATION_CLOCK_SKEW_LEEWAY must be between 0 and 300 seconds, not 'nan'.", id="nan"),
    pytest.param("60s", "PROPAGATION_CLOCK_SKEW_LEEWAY must be a number of seconds (0 to 300), not '60s'.", id="unit"),
    pytest.param("true", "PROPAGATION_CLOCK_SKEW_LEEWAY must be a number of seconds (0 to 300), not 'true'.", id="word"),
])
def test_bad_leeway_is_refused_at_start(xsuaa: jwtkit.Xsuaa, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Propagator(bindings=make_bindings(xsuaa), environ={"PROPAGATION_CLOCK_SKEW_LEEWAY": value})
    assert str(info.value) == message


@pytest.mark.parametrize("value", [pytest.param(True, id="bool"), pytest.param(-5, id="negative"),
                                   pytest.param(float("inf"), id="infinite"), pytest.param([60], id="list")])
def test_bad_leeway_option_is_refused(propagator: Propagator, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="clock_skew_leeway must be"):
        PropagationMiddleware(lambda e, s: [], propagator=propagator, clock_skew_leeway=value)


def test_middleware_and_flask_options_set_the_leeway(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                     idp_keys: respx.MockRouter) -> None:
    from propagation.flask import Propagation

    now = int(time.time())
    raw = xsuaa.token(extra={"iat": now - 300, "exp": now - 30})
    for config in ({"PROPAGATION_CLOCK_SKEW_LEEWAY": 0}, {}):
        app = Flask(__name__)
        app.config.update(config)
        Propagation(app, propagator=Propagator(bindings=make_bindings(xsuaa, ias), environ={}))
        app.get("/me")(lambda: "ok")
        status = app.test_client().get("/me", headers={"Authorization": f"Bearer {raw}"}).status_code
        assert status == (401 if config else 200)
