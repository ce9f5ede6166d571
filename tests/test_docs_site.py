"""The documentation site builds with ``mkdocs build --strict`` — a broken link, a missing anchor, an
unresolved API reference or a page left out of the navigation is a warning, and a warning fails — offline
(no font or plugin download: every proxy points at a closed port), and the API reference is generated
from the code's docstrings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, any download fails at once
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HTTP_PROXY": closed, "HTTPS_PROXY": closed,
           "http_proxy": closed, "https_proxy": closed, "NO_PROXY": "", "no_proxy": ""}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if "No module named mkdocs" in result.stderr:
        pytest.fail('mkdocs is not installed: python -m pip install -e ".[test]" (or ".[docs]")')
    warnings = [line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and warnings == [], "\n".join(warnings) or result.stderr[-3000:]
    return out


def test_every_page_of_the_navigation_is_built(site: Path) -> None:
    pages = sorted(p.relative_to(ROOT / "docs").with_suffix(".html") for p in (ROOT / "docs").rglob("*.md"))
    assert len(pages) >= 30
    assert [p for p in pages if not (site / p).is_file()] == []


def test_the_api_reference_is_generated_from_the_docstrings(site: Path) -> None:
    import propagation

    html = (site / "reference" / "propagation.html").read_text(encoding="utf-8")
    first_line = (propagation.session.__doc__ or "").split("\n")[0].split("``")[0].strip()
    assert first_line and first_line in html
    for name in ("propagation.session", "propagation.async_client", "propagation.Propagator", "propagation.UserToken"):
        assert f'id="{name}"' in html, name
    errors = (site / "reference" / "errors.html").read_text(encoding="utf-8")
    assert 'id="propagation.errors.MissingUserTokenError"' in errors
    # the docstrings' Sphinx roles are shown as code (docs/.hooks/sphinx_roles.py), not as ":func:"
    assert "<code>client</code>" in html and not re.search(r":(func|class|meth|mod):<code>", html + errors)


def test_the_site_loads_no_web_font(site: Path) -> None:
    html = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html


def test_the_changelog_page_is_the_changelog(site: Path) -> None:
    html = (site / "changelog.html").read_text(encoding="utf-8")
    first_entry = re.search(r"^- (.{20})", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert first_entry and first_entry.group(1).split("`")[0] in html


def test_the_readme_is_a_landing_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    for command in ('python -m pip install -e ".[sandbox]" && python -m propagation.sandbox demo',
                    'python -m pip install -e ".[test]" && python -m pytest -q'):
        assert command in readme
    assert 'python -m pip install -e ".[test]" && python -m pytest -q' in (ROOT / ".ci" / "run").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 20
    assert [link for link in links if not link.startswith("http") and not (ROOT / link).is_file()] == []
