"""Every Python snippet of the documentation site (docs/**/*.md) and of README.md runs as written.

The rule (docs/contributing.md says it for contributors):

* A fenced ```python block whose first line is ``# <path>.py`` is a **file**. The file blocks of one
  section (up to the next ``##`` heading) form a **project**, written into an empty folder; when it
  has ``test_*.py`` files, pytest runs them there (with this package's pytest plugin) and every test
  must pass — that is how a reader would run it.
* Any other ```python block is **executed** (``exec``; top-level ``await`` allowed) in a fresh
  namespace, in an empty working directory, inside an emulated landscape
  (:func:`propagation.testing.emulate` with the destinations of :data:`DESTINATIONS`); the name
  ``raw_jwt`` holds alice's XSUAA token. ``<!-- check: NAME -->`` on the line before the fence
  runs the check ``NAME`` of :data:`CHECKS` on the namespace afterwards (an app is called with and
  without a token, ...).
* ``<!-- no-test: REASON -->`` on the line before the fence skips a block; the reason is required.
  Only for text that cannot run as written (another library's code, a deliberately broken
  example). Blocks in other languages (``bash``, output) are not executed, but every
  ``python -m propagation[.sandbox] ...`` command of a shell block must be accepted by that CLI's
  argument parser.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: The destinations every executed block finds (as in the sandbox).
DESTINATIONS = (
    "S4 OnPremise PrincipalPropagation location=LOC1",
    "S4_CLOUD OAuth2JWTBearer",
    "S4_TECHNICAL OAuth2ClientCredentials",
    "BACKEND NoAuthentication forward source=env",
)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>no-test|check)\s*:?\s*(?P<arg>.*?)\s*-->\s*$")
_FILE = re.compile(r"^# (?P<path>[\w./-]+\.py)[ \t]*$", re.M)


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    section: str
    marker: tuple[str, str] | None = None

    @property
    def file(self) -> str | None:
        match = _FILE.match(self.code)
        return match["path"] if match and self.lang == "python" else None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Project:
    page: str
    section: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page}#{self.section}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def parse(path: Path) -> list[Block]:
    """The fenced blocks of one page, with their marker and section."""
    lines = path.read_text(encoding="utf-8").split("\n")
    page = str(path.relative_to(ROOT))
    blocks: list[Block] = []
    section, marker, i = "", None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = _FENCE.match(line)
        if fence is None:
            found = _MARKER.match(line)
            if found:
                marker = (found["kind"], found["arg"])
            elif line.strip():
                marker = None
            i += 1
            continue
        indent, body = fence["indent"], []
        i += 1
        while i < len(lines) and not (lines[i].strip() == "```" and lines[i].startswith(indent)):
            body.append(lines[i])
            i += 1
        blocks.append(Block(page, i - len(body), fence["lang"] or "text",
                            textwrap.dedent("\n".join(body)) + "\n", section, marker))
        marker = None
        i += 1
    return blocks


ALL_BLOCKS = [block for path in pages() for block in parse(path)]
PYTHON = [b for b in ALL_BLOCKS if b.lang in ("python", "py")]


def projects() -> list[Project]:
    found: dict[tuple[str, str], Project] = {}
    for block in PYTHON:
        if block.file and (block.marker is None or block.marker[0] != "no-test"):
            project = found.setdefault((block.page, block.section), Project(block.page, block.section))
            assert block.file not in project.files, f"{block.id}: {block.file} twice in one section"
            project.files[block.file] = block.code
    return list(found.values())


EXECUTED = [b for b in PYTHON if b.file is None and (b.marker is None or b.marker[0] == "check")]


# ---------------------------------------------------------------------------------- checks
def _bearer(landscape: Any, scopes: tuple[str, ...] = ("Read",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {landscape.user_token('alice', scopes=list(scopes))}"}


def check_forum_app(ns: dict[str, Any], landscape: Any) -> None:
    client = ns["app"].test_client()
    assert client.get("/functional-locations").status_code == 401
    r = client.get("/functional-locations", headers=_bearer(landscape))
    assert r.status_code == 200 and r.json["seenBy"] == "alice"
    assert landscape.calls.where(service="onprem").values("user") == ["alice"]


def _me_answers(get: Callable[..., Any], landscape: Any, json: Callable[[Any], Any]) -> None:
    """The framework pages' apps: /health public, /me needs a token and the scope Read."""
    token = landscape.user_token("alice", scopes=["Read"])
    assert json(get("/health")) == {"status": "UP"}
    assert get("/me").status_code == 401
    assert json(get("/me", token)) == {"user": "alice", "tenant": landscape.provider.zid}
    assert get("/me", landscape.user_token("alice", scopes=[])).status_code == 403


def check_flask_section(ns: dict[str, Any], landscape: Any) -> None:
    client = ns["app"].test_client()
    _me_answers(lambda p, t=None: client.get(p, headers={"Authorization": f"Bearer {t}"} if t else {}),
                landscape, lambda r: r.json)


def check_fastapi_section(ns: dict[str, Any], landscape: Any) -> None:
    from fastapi.testclient import TestClient

    with TestClient(ns["app"]) as client:
        _me_answers(lambda p, t=None: client.get(p, headers={"Authorization": f"Bearer {t}"} if t else {}),
                    landscape, lambda r: r.json())
        r = client.get("/orders", headers=_bearer(landscape))
        assert r.status_code == 200 and all(row for row in r.json())


def check_django_settings(ns: dict[str, Any], landscape: Any) -> None:
    assert ns["MIDDLEWARE"][-1] == "propagation.django.PropagationMiddleware"
    assert ns["INSTALLED_APPS"] == ["propagation.django.PropagationConfig"]


def check_django_section(ns: dict[str, Any], landscape: Any) -> None:
    import test_django  # noqa: F401 - configures Django for this process
    import types

    from django.test import Client, override_settings

    [settings_block] = [b for b in EXECUTED if b.marker == ("check", "django-settings")]
    settings: dict[str, Any] = {"MIDDLEWARE": [], "INSTALLED_APPS": []}  # as startproject made them (trimmed)
    exec(compile(settings_block.code, settings_block.id, "exec"), settings)
    urls = types.ModuleType("docs_django_urls")
    urls.__dict__.update(ns)
    sys.modules[urls.__name__] = urls
    try:
        with override_settings(ROOT_URLCONF=urls.__name__, MIDDLEWARE=settings["MIDDLEWARE"],
                               PROPAGATION=settings["PROPAGATION"]):
            client = Client()
            _me_answers(lambda p, t=None: client.get(p, **({"HTTP_AUTHORIZATION": f"Bearer {t}"} if t else {})),
                        landscape, lambda r: r.json())
            r = client.get("/functional-locations", HTTP_AUTHORIZATION=_bearer(landscape)["Authorization"])
            assert r.status_code == 200 and len(r.json()) == 3
    finally:
        del sys.modules[urls.__name__]


def check_outbound_fastapi(ns: dict[str, Any], landscape: Any) -> None:
    from fastapi.testclient import TestClient

    with TestClient(ns["app"]) as client:
        assert client.get("/functional-locations").status_code == 401
        r = client.get("/functional-locations", headers=_bearer(landscape))
        assert r.status_code == 200 and r.json()["seenBy"] == "alice"


def check_migration_xssec(ns: dict[str, Any], landscape: Any) -> None:
    client = ns["app"].test_client()
    assert client.get("/orders").status_code == 401
    assert client.get("/orders", headers=_bearer(landscape, ())).status_code == 403
    r = client.get("/orders", headers=_bearer(landscape))
    assert r.status_code == 200 and r.json["seenBy"] == "alice"
    assert landscape.exchanges.where(grant="jwt-bearer").values("user") == ["alice"]


def check_migration_js(ns: dict[str, Any], landscape: Any) -> None:
    from fastapi.testclient import TestClient

    with TestClient(ns["app"]) as client:
        assert client.get("/orders").status_code == 401
        r = client.get("/orders", headers=_bearer(landscape))
        assert r.status_code == 200 and r.json()["seenBy"] == "alice"


CHECKS: dict[str, Callable[[dict[str, Any], Any], None]] = {
    "migration-xssec": check_migration_xssec,
    "migration-js": check_migration_js,
    "forum-app": check_forum_app,
    "flask-section": check_flask_section,
    "fastapi-section": check_fastapi_section,
    "django-settings": check_django_settings,
    "django-section": check_django_section,
    "outbound-fastapi": check_outbound_fastapi,
}

#: What a check block's namespace starts with, besides ``raw_jwt``.
PREPARE: dict[str, dict[str, Any]] = {"django-settings": {"MIDDLEWARE": [], "INSTALLED_APPS": []}}


# ---------------------------------------------------------------------------------- tests
@pytest.fixture
def landscape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from propagation.testing import emulate

    monkeypatch.chdir(tmp_path)
    with emulate(*DESTINATIONS) as emulation:
        yield emulation.landscape


def run(code: str, name: str, namespace: dict[str, Any]) -> None:
    compiled = compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if compiled.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(compiled, namespace))
    else:
        exec(compiled, namespace)


@pytest.fixture
def logging_levels() -> Any:
    """A snippet may set logger levels (the logging page does): give them back, so no later test
    runs with, e.g., the library's DEBUG event records switched on."""
    import logging

    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)] + [logging.getLogger()]
    levels = [(logger, logger.level) for logger in loggers]
    yield
    for logger, level in levels:
        logger.setLevel(level)


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in EXECUTED])
def test_snippet_runs(block: Block, landscape: Any, logging_levels: Any) -> None:
    check = block.marker[1] if block.marker else None
    namespace: dict[str, Any] = {"__name__": f"docs_snippet_{block.line}",
                                 "raw_jwt": landscape.user_token("alice", scopes=["Read"]),
                                 **PREPARE.get(check or "", {})}
    run(block.code, block.id, namespace)
    if check:
        CHECKS[check](namespace, landscape)


def _uses_django(project: Project) -> bool:
    return any("django" in code for code in project.files.values())


@pytest.mark.parametrize("project", [pytest.param(p, id=p.id) for p in projects()])
def test_project_tests_pass(project: Project, pytester: pytest.Pytester) -> None:
    tests = [name for name in project.files if Path(name).name.startswith("test_")]
    assert tests, f"{project.id}: file blocks without a test_*.py file are never run"
    for name, code in project.files.items():
        target = pytester.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code, encoding="utf-8")
    args = ("-p", "no:cacheprovider", "--strict-markers", "-q")
    if _uses_django(project):  # Django's settings are per process
        # Only this package's plugin (the entry point's module): other installed plugins cost start-up time.
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        out = subprocess.run([sys.executable, "-m", "pytest", "-p", "propagation.testing.plugin", *args],
                             cwd=pytester.path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert re.search(r"\b\d+ passed\b", out.stdout) and " failed" not in out.stdout, out.stdout[-3000:]
    else:
        result = pytester.runpytest(*args)
        outcomes = result.parseoutcomes()
        assert outcomes.get("passed", 0) >= 1 and set(outcomes) <= {"passed", "warnings"}, result.stdout.str()


def test_markers_are_known_and_reasoned() -> None:
    problems = []
    used = set()
    for block in ALL_BLOCKS:
        if block.marker is None:
            continue
        kind, arg = block.marker
        if block.lang not in ("python", "py"):
            problems.append(f"{block.id}: a marker before a {block.lang} block means nothing")
        elif kind == "no-test" and not arg:
            problems.append(f"{block.id}: <!-- no-test: REASON --> needs its reason")
        elif kind == "check" and arg not in CHECKS:
            problems.append(f"{block.id}: unknown check {arg!r}")
        used.add(arg)
    problems += [f"check {name!r} is used by no block" for name in CHECKS if name not in used]
    assert problems == []


def test_the_rule_finds_the_pages_snippets() -> None:
    """The parser is not vacuous: the quick start's three projects and the checked apps are found."""
    ids = {p.id for p in projects()}
    assert {"docs/quickstart.md#Flask", "docs/quickstart.md#FastAPI", "docs/quickstart.md#Django"} <= ids
    assert {b.marker[1] for b in EXECUTED if b.marker} == set(CHECKS)
    assert len(EXECUTED) >= 10


# ------------------------------------------------------------------------ shell commands
_COMMAND = re.compile(r"python -m (propagation(?:\.sandbox)?)(?=\s|$)(.*)$")


def cli_commands() -> list[tuple[str, str, list[str]]]:
    """Every ``python -m propagation[.sandbox] ...`` of a shell block: (where, module, argv)."""
    import shlex

    found = []
    for block in ALL_BLOCKS:
        if block.lang not in ("bash", "sh", "shell", "console"):
            continue
        for offset, line in enumerate(block.code.splitlines()):
            for match in _COMMAND.finditer(line):
                lexer = shlex.shlex(match[2], posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                argv = []
                for token in lexer:  # up to the end of the command: a pipe, ), <, &&, ;
                    if token and set(token) <= set("|&;()<>"):
                        break
                    argv.append(token)
                found.append((f"{block.page}:{block.line + offset}", match[1], argv))
    return found


@pytest.mark.parametrize(("where", "module", "argv"), [pytest.param(*c, id=c[0]) for c in cli_commands()])
def test_shell_commands_parse(where: str, module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A documented command line is accepted by the CLI's own parser (nothing is run)."""
    if module == "propagation":
        from propagation.cli import _parser as parser
    else:
        from propagation.sandbox.cli import build_parser as parser
    try:
        parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: python -m {module} {' '.join(argv)} is refused: {capsys.readouterr().err.strip()}")
