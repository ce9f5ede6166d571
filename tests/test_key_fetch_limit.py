"""Key-fetch amplification (issue 11, finding 8): tokens naming an unknown key id or zone
make sap-xssec fetch the IdP's keys before any signature check. Unknown key slots get a
small budget of fetches per issuer/zone and per process; beyond it: 401 without a fetch."""

from __future__ import annotations

from typing import Any, Callable

import jwt
import pytest
import respx

import jwtkit
from propagation.errors import InvalidTokenError
from propagation.inbound import TokenValidator
from propagation.inbound.key_fetch import KeyFetchLimiter

LIMITED = "rate-limited after repeated unknown keys"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_header(raw: str, key: Any, **header: str) -> str:
    claims = jwt.decode(raw, options={"verify_signature": False})
    return jwt.encode(claims, key, algorithm="RS256", headers=header)


def outcome(validator: TokenValidator, raw: str) -> str:
    try:
        validator.validate(raw)
    except InvalidTokenError as exc:
        return "limited" if LIMITED in exc.error_description else "refused"
    return "valid"


Bogus = Callable[[jwtkit.Xsuaa, jwtkit.Ias, int], str]
CASES = [
    pytest.param(lambda x, i, n: with_header(x.token(), x.key, kid=f"bogus-{n}"), "xsuaa_token_keys",
                 id="xsuaa-unknown-kid"),
    pytest.param(lambda x, i, n: x.token(zid=f"zone-{n}", key=jwtkit.rsa_key("attacker")), "xsuaa_token_keys", id="xsuaa-varying-zid"),
    pytest.param(lambda x, i, n: with_header(i.token(), i.key, kid=f"bogus-{n}"), "ias_jwks", id="ias-unknown-kid"),
    pytest.param(lambda x, i, n: i.token(app_tid=f"tenant-{n}", key=jwtkit.rsa_key("attacker")), "ias_jwks", id="ias-varying-app-tid"),
]


@pytest.mark.parametrize("bogus, route", CASES)
def test_forty_bogus_tokens_cost_a_few_fetches(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, idp_keys: respx.MockRouter,
                                               bogus: Bogus, route: str) -> None:
    validator = TokenValidator(xsuaa=xsuaa.credentials(), ias=ias.credentials(),
                               key_fetches=KeyFetchLimiter(clock=Clock()))
    outcomes = [outcome(validator, bogus(xsuaa, ias, n)) for n in range(40)]
    fetches = idp_keys[route].call_count
    assert 1 <= fetches <= 20, fetches  # without the limit: 40 (per zone: 3, per process: 20 in a burst)
    assert outcomes.count("limited") == 40 - fetches and "valid" not in outcomes


def test_known_keys_pass_while_unknown_ones_are_limited(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias,
                                                       idp_keys: respx.MockRouter) -> None:
    clock = Clock()
    validator = TokenValidator(xsuaa=xsuaa.credentials(), key_fetches=KeyFetchLimiter(clock=clock))
    assert outcome(validator, xsuaa.token("first@example.com")) == "valid"
    outcomes = [outcome(validator, with_header(xsuaa.token(), xsuaa.key, kid=f"bogus-{n}")) for n in range(20)]
    assert outcomes[:3] == ["refused"] * 3 and set(outcomes[3:]) == {"limited"}
    # Genuine users of the known key are unaffected, each a new token:
    assert [outcome(validator, xsuaa.token(f"u{n}@example.com")) for n in range(5)] == ["valid"] * 5
    fetched = idp_keys["xsuaa_token_keys"].call_count
    # A bucket refills with time (injected clock): one more fetch after refill_seconds.
    clock.now += 10.0
    assert outcome(validator, with_header(xsuaa.token(), xsuaa.key, kid="bogus-late")) == "refused"
    assert outcome(validator, with_header(xsuaa.token(), xsuaa.key, kid="bogus-later")) == "limited"
    assert idp_keys["xsuaa_token_keys"].call_count in (fetched, fetched + 1)


def test_a_new_genuine_key_gives_its_fetch_back(xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    limiter = KeyFetchLimiter(per_issuer=1, overall=1, clock=Clock())
    validator = TokenValidator(xsuaa=xsuaa.credentials(), key_fetches=limiter)
    for n in range(3):  # three subscriber zones, one after the other, all genuine
        assert outcome(validator, xsuaa.token(zid=f"zone-{n}")) == "valid"


def test_limiter_table() -> None:
    clock = Clock()
    limiter = KeyFetchLimiter(per_issuer=2, overall=3, refill_seconds=10.0, clock=clock)
    a1, a2, a3, b1, c1 = ("x", "", "a", "k1"), ("x", "", "a", "k2"), ("x", "", "a", "k3"), ("x", "", "b", "k"), ("x", "", "c", "k")
    assert limiter.acquire(a1) and not limiter.known(a1)
    limiter.done(a1, False)
    assert limiter.acquire(a2)
    limiter.done(a2, False)
    assert not limiter.acquire(a3)  # zone a: 2 in a burst
    assert limiter.acquire(b1)
    limiter.done(b1, False)
    assert not limiter.acquire(c1)  # the process: 3 in a burst
    clock.now += 10.0 / 3  # the process bucket refills at 3 per 10 s, zone buckets at 1 per 10 s
    assert limiter.acquire(c1)
    limiter.done(c1, True)
    assert limiter.known(c1) and limiter.acquire(c1)  # known: no budget needed
