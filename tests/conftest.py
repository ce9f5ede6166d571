"""Shared fixtures: test IdPs (jwtkit), sap-xssec's key endpoints routed to them with
respx, clean sap-xssec key caches per test, and engines built from their bindings.

Fixtures:

* ``xsuaa`` / ``ias`` — :class:`jwtkit.Xsuaa` / :class:`jwtkit.Ias` issuers.
* ``idp_keys`` — an active ``respx`` router answering sap-xssec's key calls
  (``https://{uaadomain}/token_keys``, ``{ias}/.well-known/openid-configuration``,
  ``{ias}/oauth2/certs``); routes are named ``xsuaa_token_keys``, ``ias_openid_configuration``
  and ``ias_jwks`` (``idp_keys["xsuaa_token_keys"].call_count``). Any other httpx request
  fails (no network). sap-xssec's retry back-off sleep is disabled while it is active.
* ``vcap_env`` — ``vcap_env(xsuaa=..., ias=..., **extra_labels) -> str``: a
  ``VCAP_SERVICES`` JSON string, label ``xsuaa`` instance ``my-xsuaa`` and label ``identity``
  instance ``my-ias`` (defaults: the ``xsuaa`` and ``ias`` fixtures; pass ``None`` to omit).
* ``bindings`` — :class:`Bindings` with both bindings; ``propagator`` — a
  :class:`Propagator` on them (``environ={}``, nothing read from the process).
* ``xssec_calls`` — counts sap-xssec security-context constructions per kind
  (``{"xsuaa": n, "ias": m}``), spying on ``sap.xssec.create_security_context_*``.

Autouse: sap-xssec's global key caches are cleared before and after every test, and the
process-wide default engine is reset after every test.
"""

from __future__ import annotations

import json
import time
import types
from collections import Counter
from typing import Any, Callable, Iterator

import pytest
import respx
import sap.xssec
import sap.xssec.key_cache
import sap.xssec.key_cache_v2
from sap.xssec.security_context_ias import SecurityContextIAS
from sap.xssec.security_context_xsuaa import SecurityContextXSUAA

import jwtkit
from propagation.bindings import Binding, Bindings
from propagation.engine import Propagator, set_default_propagator

_UNSET: Any = object()


def clear_xssec_key_caches() -> None:
    """sap-xssec caches IdP keys in class/module globals for 15 minutes: tests must not share them."""
    SecurityContextXSUAA.verificationKeyCache._cache.clear()
    SecurityContextIAS.verificationKeyCache._cache.clear()
    sap.xssec.key_cache_v2.key_cache.clear()


@pytest.fixture(autouse=True)
def _xssec_key_caches() -> Iterator[None]:
    clear_xssec_key_caches()
    yield
    clear_xssec_key_caches()


@pytest.fixture(autouse=True)
def _default_propagator() -> Iterator[None]:
    yield
    set_default_propagator(None)


@pytest.fixture
def xsuaa() -> jwtkit.Xsuaa:
    return jwtkit.Xsuaa()


@pytest.fixture
def ias() -> jwtkit.Ias:
    return jwtkit.Ias()


@pytest.fixture
def idp_keys(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias, monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.MockRouter]:
    # XSUAA key fetches retry 502/503/504 with time.sleep back-off: no sleeping in tests.
    monkeypatch.setattr(sap.xssec.key_cache, "time", types.SimpleNamespace(time=time.time, sleep=lambda s: None))
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        router.get(host=xsuaa.uaadomain, path="/token_keys", name="xsuaa_token_keys").respond(json=xsuaa.token_keys())
        router.get(host=ias.host, path="/.well-known/openid-configuration", name="ias_openid_configuration").respond(
            json=ias.openid_configuration()
        )
        router.get(host=ias.host, path="/oauth2/certs", name="ias_jwks").respond(json=ias.jwks())
        yield router


def vcap_services(xsuaa: jwtkit.Xsuaa | None = None, ias: jwtkit.Ias | None = None, **extra: list[dict[str, Any]]) -> str:
    """``VCAP_SERVICES`` with ``my-xsuaa`` (label ``xsuaa``) and ``my-ias`` (label ``identity``)."""
    services: dict[str, list[dict[str, Any]]] = {}
    if xsuaa is not None:
        services["xsuaa"] = [{"name": "my-xsuaa", "instance_name": "my-xsuaa", "label": "xsuaa", "plan": "application",
                              "tags": ["xsuaa"], "credentials": xsuaa.credentials()}]
    if ias is not None:
        services["identity"] = [{"name": "my-ias", "instance_name": "my-ias", "label": "identity", "plan": "application",
                                 "tags": ["ias"], "credentials": ias.credentials()}]
    services.update(extra)
    return json.dumps(services)


@pytest.fixture
def vcap_env(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias) -> Callable[..., str]:
    defaults = (xsuaa, ias)

    def build(xsuaa: jwtkit.Xsuaa | None = _UNSET, ias: jwtkit.Ias | None = _UNSET, **extra: list[dict[str, Any]]) -> str:
        return vcap_services(defaults[0] if xsuaa is _UNSET else xsuaa, defaults[1] if ias is _UNSET else ias, **extra)

    return build


def make_bindings(xsuaa: jwtkit.Xsuaa | None = None, ias: jwtkit.Ias | None = None) -> Bindings:
    items = []
    if xsuaa is not None:
        items.append(Binding(name="my-xsuaa", label="xsuaa", credentials=xsuaa.credentials(), plan="application",
                             tags=("xsuaa",), source="test"))
    if ias is not None:
        items.append(Binding(name="my-ias", label="identity", credentials=ias.credentials(), plan="application",
                             tags=("ias",), source="test"))
    return Bindings(items, sources=["test"])


@pytest.fixture
def bindings(xsuaa: jwtkit.Xsuaa, ias: jwtkit.Ias) -> Bindings:
    return make_bindings(xsuaa, ias)


@pytest.fixture
def propagator(bindings: Bindings) -> Propagator:
    return Propagator(bindings=bindings, environ={})


@pytest.fixture
def xssec_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    calls: Counter[str] = Counter()
    real_xsuaa, real_ias = sap.xssec.create_security_context_xsuaa, sap.xssec.create_security_context_ias

    def xsuaa_spy(token: str, credentials: Any) -> Any:
        calls["xsuaa"] += 1
        return real_xsuaa(token, credentials)

    def ias_spy(token: str, credentials: Any) -> Any:
        calls["ias"] += 1
        return real_ias(token, credentials)

    monkeypatch.setattr(sap.xssec, "create_security_context_xsuaa", xsuaa_spy)
    monkeypatch.setattr(sap.xssec, "create_security_context_ias", ias_spy)
    return calls


@pytest.fixture()
def land(box: Any) -> Any:
    """The running sandbox's landscape (``box``: a module's ``Sandbox`` fixture), records reset."""
    from propagation.testing import Landscape

    assert isinstance(box.landscape, Landscape)
    box.landscape.reset()
    return box.landscape
