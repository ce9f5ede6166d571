"""The package surface: every public name resolves, and ``import propagation`` stays light
(pytest imports it in every run of every project that has it installed, for the
``propagation.testing`` plugin)."""

from __future__ import annotations

import subprocess
import sys

import propagation


def test_every_public_name_resolves() -> None:
    for name in propagation.__all__:
        assert getattr(propagation, name) is not None, name


def test_lazy_names_are_the_real_objects() -> None:
    from propagation.engine import Propagator, default_propagator, set_default_propagator
    from propagation.wsgi import PropagationMiddleware

    assert propagation.Propagator is Propagator
    assert propagation.default_propagator is default_propagator
    assert propagation.set_default_propagator is set_default_propagator
    assert propagation.PropagationMiddleware is PropagationMiddleware


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        propagation.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_loads_no_http_stack() -> None:
    heavy = ("requests", "httpx", "sap", "cfenv", "jwt", "responses", "respx", "flask", "propagation.engine")
    code = (
        "import sys, propagation, propagation.testing.plugin\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
