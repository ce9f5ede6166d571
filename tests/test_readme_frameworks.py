"""The README's Flask, FastAPI and Django sections are copy-paste apps: each code block is
run as written (environment: VCAP_SERVICES with the test IdPs' bindings) and called with a
token, without one, and on its public path."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any, Callable

import pytest
import respx

import jwtkit

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def blocks(section: str) -> list[str]:
    """The ```python blocks of the README section ``## <section>``."""
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.fixture
def environment(vcap_env: Callable[..., str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    monkeypatch.setenv("VCAP_SERVICES", vcap_env(ias=None))


def test_flask_section(environment: None, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    [code] = blocks("Flask")
    namespace: dict[str, Any] = {"__name__": "readme_flask"}
    exec(compile(code, "README:Flask", "exec"), namespace)
    client = namespace["app"].test_client()
    assert client.get("/health").json == {"status": "UP"}
    assert client.get("/me").status_code == 401
    assert client.get("/me", headers={"Authorization": f"Bearer {xsuaa.token()}"}).json == {
        "user": "alice@example.com", "tenant": xsuaa.zid}
    assert client.get("/me", headers={"Authorization": f"Bearer {xsuaa.token(extra={'scope': ['openid']})}"}
                      ).status_code == 403


def test_fastapi_section(environment: None, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter) -> None:
    from fastapi.testclient import TestClient

    [code] = blocks("FastAPI")
    namespace: dict[str, Any] = {"__name__": "readme_fastapi"}
    exec(compile(code, "README:FastAPI", "exec"), namespace)
    with TestClient(namespace["app"]) as client:
        assert client.get("/health").json() == {"status": "UP"}
        assert client.get("/me").status_code == 401
        assert client.get("/me", headers={"Authorization": f"Bearer {xsuaa.token()}"}).json() == {
            "user": "alice@example.com", "tenant": xsuaa.zid}
        assert client.get("/me", headers={"Authorization": f"Bearer {xsuaa.token(extra={'scope': ['openid']})}"}
                          ).status_code == 403


def test_django_section(environment: None, xsuaa: jwtkit.Xsuaa, idp_keys: respx.MockRouter,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    import test_django  # noqa: F401 - configures Django for this process
    from django.test import Client, override_settings

    settings_code, urls_code = blocks("Django")
    settings: dict[str, Any] = {"MIDDLEWARE": [], "INSTALLED_APPS": []}  # as startproject made them (trimmed)
    exec(compile(settings_code, "README:Django settings.py", "exec"), settings)
    urls = types.ModuleType("readme_django_urls")
    exec(compile(urls_code, "README:Django urls.py", "exec"), urls.__dict__)
    monkeypatch.setitem(sys.modules, urls.__name__, urls)
    assert settings["INSTALLED_APPS"] == ["propagation.django.PropagationConfig"]
    with override_settings(ROOT_URLCONF=urls.__name__, MIDDLEWARE=settings["MIDDLEWARE"],
                           PROPAGATION=settings["PROPAGATION"]):
        client = Client()
        assert client.get("/health").json() == {"status": "UP"}
        assert client.get("/me").status_code == 401
        assert client.get("/me", HTTP_AUTHORIZATION=f"Bearer {xsuaa.token()}").json() == {
            "user": "alice@example.com", "tenant": xsuaa.zid}
        assert client.get("/me", HTTP_AUTHORIZATION=f"Bearer {xsuaa.token(extra={'scope': ['openid']})}"
                          ).status_code == 403
