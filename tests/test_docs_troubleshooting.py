"""docs/troubleshooting.md cannot drift from the code: every error class the library raises, every
refusal text of the inbound side (401 ``invalid_token``, 403 ``insufficient_scope``), every HTTP
status the integrations answer with and every CLI exit code has its row.

The texts are read from the source (``ast``), not copied here: a new ``raise InvalidTokenError("...")``
without a row fails this test with the text to add."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import propagation
from propagation.errors import PropagationError

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
PACKAGE = ROOT / "propagation"
#: The emulations are test tools, not what an app meets in production.
NOT_THE_LIBRARY = ("propagation.testing", "propagation.sandbox")
#: Constructors whose first argument is a refusal text an inbound caller receives.
REFUSALS = {"InvalidTokenError", "KeysUnavailableError", "InsufficientScopeError"}
#: Module-level tables of refusal texts (sap-xssec messages rewritten).
TEXT_TABLES = {"_KNOWN_FAILURES"}


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "")).strip()


PAGE_TEXT = _normal(PAGE)


def library_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages([str(PACKAGE)], "propagation."):
        if not info.name.startswith(NOT_THE_LIBRARY) and info.name != "propagation.__main__":
            names.append(info.name)
    return names


def error_classes() -> set[str]:
    """Every public PropagationError subclass defined in the library (private ones excluded)."""
    for name in library_modules():
        importlib.import_module(name)
    found: set[str] = set()
    todo = [PropagationError]
    while todo:
        cls = todo.pop()
        if not cls.__module__.startswith(NOT_THE_LIBRARY) and not cls.__name__.startswith("_"):
            found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found


def _leading_text(node: ast.expr, constants: dict[str, str]) -> str | None:
    """The literal start of a message: a string, an f-string up to its first placeholder, or a
    module constant (``_MISSING_TRUST_AUD.format(...)``) up to its first ``{``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr):
        text = ""
        for part in node.values:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                break
            text += part.value
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return _leading_text(node.func.value, constants)
    elif isinstance(node, ast.Name) and node.id in constants:
        text = constants[node.id]
    else:
        return None
    return _normal(text.split("{")[0])


def refusal_texts() -> dict[str, str]:
    """Leading text → where it is raised."""
    texts: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "propagation." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.startswith(NOT_THE_LIBRARY):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                     for t in n.targets if isinstance(t, ast.Name)
                     and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in REFUSALS
                    and node.args):
                text = _leading_text(node.args[0], constants)
                if text:
                    texts.setdefault(text, where)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id in TEXT_TABLES for t in targets):
                assert isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None
                assert isinstance(node.value, ast.Tuple)
                for pair in node.value.elts:  # (needle, text): the text a literal or a module constant
                    assert isinstance(pair, ast.Tuple)
                    text = _leading_text(pair.elts[1], constants)
                    assert text, f"{where}: a {TEXT_TABLES} text the scan cannot read"
                    texts.setdefault(text, where)
            if isinstance(node, ast.FunctionDef) and node.name == "_describe":
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and ret.value is not None:
                        value = ret.value
                        for branch in (value.body, value.orelse) if isinstance(value, ast.IfExp) else (value,):
                            text = _leading_text(branch, constants)
                            if text:
                                texts.setdefault(text, where)
    return texts


def test_every_error_class_has_a_row() -> None:
    classes = error_classes()
    assert {"MissingUserTokenError", "CircuitOpenError", "KeysUnavailableError"} <= classes  # not vacuous
    missing = sorted(name for name in classes if f"| {name} |" not in PAGE_TEXT and f"| {name} " not in PAGE_TEXT)
    assert missing == [], f"add a row starting with `{missing[0] if missing else ''}` to docs/troubleshooting.md"


def test_every_inbound_refusal_text_has_a_row() -> None:
    texts = refusal_texts()
    assert len(texts) >= 25  # the scan finds the raise sites (not vacuous)
    missing = {text: where for text, where in texts.items() if text not in PAGE_TEXT}
    assert missing == {}, "docs/troubleshooting.md lacks these texts (raised at):\n" + "\n".join(
        f"  {where}: {text!r}" for text, where in missing.items())


def test_every_status_the_integrations_answer_has_a_row() -> None:
    """401 and 403 (responses.py), the WebSocket close code, the outbound retries (401, 403 CSRF,
    407) and the 400 of Django's test client without setup_test_environment()."""
    from propagation.asgi import WS_POLICY_VIOLATION
    from propagation.inbound import responses

    source = inspect.getsource(responses)
    statuses = {int(s) for s in re.findall(r"return \((\d{3}),", source)} | {401}
    assert statuses == {401, 403}
    for status in sorted(statuses | {WS_POLICY_VIOLATION, 407, 400, 500}):
        assert re.search(rf"\| [^|]*\b{status}\b", PAGE), f"no row for status {status}"


def test_every_cli_exit_code_has_a_row() -> None:
    from propagation.cli import common

    codes = {name: value for name, value in vars(common).items() if name.startswith("EXIT_")}
    assert len(codes) >= 7
    for name, value in codes.items():
        assert f"| exit {value} |" in PAGE_TEXT, f"no row for CLI exit code {value} ({name})"


@pytest.mark.parametrize("text", ["Token expired.", "Missing scope", "Token signature verification failed."])
def test_the_scan_reads_known_texts(text: str) -> None:
    assert text in refusal_texts()
