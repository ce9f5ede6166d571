"""Fail at start-up, not at the first request (issue 20 item 1): every integration checks the
whole configuration — bindings, every ``destinations`` entry, the token cache settings — and
refuses to start with the problems ``python -m propagation doctor`` prints."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask

import jwtkit
from conftest import vcap_services
from propagation.asgi import PropagationASGIMiddleware
from propagation.checks import find_problems
from propagation.errors import ConfigurationError
from propagation.wsgi import PropagationMiddleware
from test_cli import run

GOOD = {"name": "GOOD", "url": "https://good.example.com"}
TYPO = {"name": "TYPO", "url": "https://typo.example.com", "Authentification": "BasicAuthentication"}
NO_URL = {"name": "NO_URL", "Authentication": "NoAuthentication"}
ONPREM = {"name": "ERP", "url": "http://erp.virtual:44300", "ProxyType": "OnPremise",
          "Authentication": "PrincipalPropagation"}


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xsuaa: jwtkit.Xsuaa) -> Iterator[dict[str, str]]:
    """A process environment with an XSUAA binding and broken destinations (two bad entries,
    an on-premise one without a connectivity binding), nothing else from the real one."""
    monkeypatch.chdir(tmp_path)
    values = {"VCAP_SERVICES": vcap_services(xsuaa, None), "destinations": json.dumps([GOOD, TYPO, NO_URL, ONPREM])}
    for name in [k for k in os.environ if k.startswith("PROPAGATION_") or k in ("SERVICE_BINDING_ROOT", "destinations")]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values


def doctor_problems(environ: dict[str, str]) -> list[str]:
    rc, out, _ = run(["doctor"], environ)
    assert rc == 1
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Problems ("))
    return lines[start + 1:]


def refusal_lines(exc: BaseException) -> list[str]:
    first, *rest = str(exc).splitlines()
    assert first.endswith("(`python -m propagation doctor` lists the same):")
    return rest


def test_every_bad_entry_is_named(environ: dict[str, str]) -> None:
    problems = find_problems(environ).problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("Destinations cannot be read: destinations[1] ('TYPO') in the destinations "
                                  "environment variable: unknown key 'Authentification'")
    assert problems[1].startswith("Destinations cannot be read: destinations[2] ('NO_URL')")
    assert problems[2] == ("Destination 'ERP' (destinations environment variable) has ProxyType OnPremise but no "
                           "'connectivity' service binding is bound.")


@pytest.mark.parametrize("make", [
    pytest.param(lambda: PropagationMiddleware(lambda e, s: []), id="wsgi"),
    pytest.param(lambda: PropagationASGIMiddleware(lambda s, r, w: None), id="asgi"),  # type: ignore[arg-type,return-value]
    pytest.param(lambda: __import__("propagation.flask").flask.Propagation(Flask(__name__)), id="flask"),
])
def test_integrations_refuse_to_start_with_doctors_problems(environ: dict[str, str], make: Any) -> None:
    """Without the check the app started and the bad entries broke calls at the first request."""
    with pytest.raises(ConfigurationError) as info:
        make()
    assert str(info.value).startswith("The configuration has 3 problems (`python -m propagation doctor` lists the same):")
    assert refusal_lines(info.value) == doctor_problems(environ)


def test_strict_false_starts_and_logs(environ: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="propagation"):
        middleware = PropagationMiddleware(lambda e, s: [], strict=False)
    assert middleware.problems == find_problems(environ).problems
    assert caplog.text.count("configuration problem (the app starts: strict=False)") == 3


def test_strict_from_the_environment(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPAGATION_STRICT", "false")
    assert len(PropagationMiddleware(lambda e, s: []).problems) == 3
    monkeypatch.setenv("PROPAGATION_STRICT", "maybe")
    with pytest.raises(ConfigurationError, match="PROPAGATION_STRICT must be true or false, not 'maybe'."):
        PropagationMiddleware(lambda e, s: [])


def test_flask_strict_config(environ: dict[str, str]) -> None:
    from propagation.flask import Propagation

    app = Flask(__name__)
    app.config["PROPAGATION_STRICT"] = False
    Propagation(app)
    assert len(Propagation.middleware(app).problems) == 3


@pytest.mark.parametrize("extra, problem", [
    pytest.param({"PROPAGATION_CACHE_URL": "redis://cache.internal:6379/0"},
                 "The token cache cannot be used: A Redis token cache is configured but PROPAGATION_CACHE_KEY is not set",
                 id="redis-without-key"),
    pytest.param({"PROPAGATION_CLOCK_SKEW_LEEWAY": "1 minute"},
                 "PROPAGATION_CLOCK_SKEW_LEEWAY must be a number of seconds (0 to 300), not '1 minute'.", id="leeway"),
    pytest.param({"VCAP_SERVICES": "{not json"}, "Service bindings cannot be read: VCAP_SERVICES is not valid JSON",
                 id="bindings-unreadable"),
])
def test_an_engine_that_cannot_be_built_is_refused_with_doctors_problems(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], problem: str
) -> None:
    monkeypatch.setenv("destinations", json.dumps([GOOD]))
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        PropagationMiddleware(lambda e, s: [])
    assert refusal_lines(info.value) == doctor_problems({**environ, "destinations": json.dumps([GOOD]), **extra})
    assert any(line.startswith(f"  - {problem}") for line in refusal_lines(info.value)), str(info.value)


# -- FastAPI: lifespan and no lifespan -------------------------------------------------------------------
def fastapi_app() -> FastAPI:
    from propagation.fastapi import Propagation

    app = FastAPI()
    Propagation(app, public_paths=["/health"])
    app.get("/health")(lambda: {"status": "UP"})
    return app


def test_fastapi_lifespan_refuses_to_start(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        with TestClient(fastapi_app()):
            pass
    assert refusal_lines(info.value) == doctor_problems(environ)


def test_fastapi_without_lifespan_says_so_at_the_first_request(environ: dict[str, str]) -> None:
    """Without lifespan every request was a bare 500, /health included, nothing saying why."""
    client = TestClient(fastapi_app())  # outside `with`: the lifespan does not run
    for _ in range(2):
        with pytest.raises(ConfigurationError) as info:
            client.get("/health")
        assert str(info.value).startswith(
            "The app's lifespan did not run (uvicorn --lifespan off, or a TestClient used outside `with`), so "
            "propagation checked the configuration at the first request instead of at start-up. Let the lifespan run "
            "(uvicorn's default --lifespan auto or --lifespan on; `with TestClient(app) as client:`) and a bad "
            "configuration stops the server before it serves. The configuration has 3 problems")
    served = TestClient(fastapi_app(), raise_server_exceptions=False).get("/health")
    assert served.status_code == 500


def test_fastapi_without_lifespan_and_a_good_configuration_serves(environ: dict[str, str],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("destinations", json.dumps([GOOD]))
    with caplog.at_level(logging.WARNING, logger="propagation"):
        assert TestClient(fastapi_app()).get("/health").json() == {"status": "UP"}
    assert "The app's lifespan did not run" in caplog.text


# -- Django: the middleware and manage.py check -----------------------------------------------------------
def test_django_check_and_load_refuse(environ: dict[str, str]) -> None:
    import test_django  # noqa: F401 - configures Django's settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    from propagation.django import check_settings

    with override_settings(PROPAGATION={}):
        with pytest.raises(ConfigurationError) as info:
            WSGIHandler()
        [error] = check_settings()
    assert refusal_lines(info.value) == doctor_problems(environ)
    assert error.id == "propagation.E001" and error.msg == str(info.value)
    with override_settings(PROPAGATION={"STRICT": False}):
        assert check_settings() == []
        WSGIHandler()


# -- strict=False: a bad entry fails only its own name ---------------------------------------------
def _engine(entries: list[Any]) -> Any:
    from propagation import Propagator
    from propagation.bindings import Bindings

    return Propagator(environ={"destinations": json.dumps(entries)}, bindings=Bindings([]))


@pytest.mark.parametrize("entries, broken, message", [
    pytest.param([GOOD, TYPO], "TYPO", "did you mean 'Authentication'", id="misspelt-key"),
    pytest.param([GOOD, NO_URL], "NO_URL", "NO_URL", id="no-url"),
    pytest.param([GOOD, {"name": "TWICE", "url": "https://a.example.com"}, {"name": "TWICE", "url": "https://b.example.com"}],
                 "TWICE", "duplicate name", id="duplicate-name-neither-used"),
])
def test_a_bad_entry_fails_its_own_name_and_the_others_keep_working(
        entries: list[Any], broken: str, message: str) -> None:
    import responses

    engine = _engine(entries)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, "https://good.example.com/ping", body="pong")
        assert engine.session("GOOD").get("/ping").text == "pong"
        with pytest.raises(ConfigurationError, match=message):
            engine.session(broken).get("/ping")
        assert len(rsps.calls) == 1  # nothing sent for the broken one


def test_an_entry_without_a_readable_name_fails_every_name_the_readable_entries_do_not_answer() -> None:
    engine = _engine([GOOD, {"url": "https://nameless.example.com"}])
    assert engine.destination("GOOD").url == "https://good.example.com"
    with pytest.raises(ConfigurationError, match="destinations\\[1\\]"):
        engine.destination("ANYTHING")  # it may have been meant as that name: never a silent fallback
