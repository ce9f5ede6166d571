"""The README's first command: ``python -m propagation.sandbox demo`` runs green end to end —
real TLS servers, a real Connectivity proxy, examples/flask_odata as a real child process —
and prints the chain inbound user → exchange → proxy → what the backend saw."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_green_and_prints_the_chain() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "propagation.sandbox", "demo"], capture_output=True, text=True,
                          timeout=90, cwd=str(ROOT), env=env)
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed\n--- stdout\n{out}\n--- stderr\n{proc.stderr}"
    assert "FAIL" not in out
    assert re.search(r"app\s+http://127\.0\.0\.1:\d+ +\(examples/flask_odata/app\.py, child process", out)
    # (1) no token: the middleware answers, nothing is sent
    assert "anonymous -> app 401, nothing sent" in out
    # (2) the forum failure: a technical proxy token, the on-premise system sees no user
    assert "exchange   xsuaa client_credentials client=sb-connectivity-instance!b137 user=- -> 200" in out
    assert "No user token (JWT) has been provided. This" in out
    assert re.search(r"anonymous -> proxy #[0-9a-f]{12} location LOC1 -> onprem saw no user \(401\)", out)
    # (4)-(6) principal propagation: one exchange per user, the proxy gets it, the backend sees the user
    for user in ("alice", "bob"):
        assert re.search(rf"{user} -> jwt-bearer \[sb-connectivity-instance!b137, user {user}\] 200 -> "
                         rf"proxy #[0-9a-f]{{12}} location LOC1 -> onprem saw {user} \(200\)", out), user
    assert re.search(r"alice -> cached token \(no exchange\) -> proxy #[0-9a-f]{12} location LOC1 -> onprem saw alice", out)
    # (7) the iFlow is called as alice
    assert "alice -> jwt-bearer [sb-it-rt-instance!b196, user alice] 200 -> iflow saw alice (201)" in out
    # S/4HANA's rows reach the caller (the V2 entity set the app reads)
    assert out.count("answer     200 3 functional location(s): 1010-PLT-01, 1010-PLT-01-PMP, 1010-PLT-01-CMP") == 3
    assert re.search(r"demo OK: 8 of 8 steps passed in \d+\.\d s", out)
    # tokens only as fingerprints; no secret of the sandbox's clients
    assert "eyJ" not in out + proc.stderr
    assert "clientsecret" not in out.lower()


def test_demo_fails_cleanly_without_the_app(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "propagation.sandbox", "demo", "--app", str(tmp_path / "nope.py")],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 1 and "not found" in proc.stdout


def test_demo_reports_an_app_that_does_not_start(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("import sys\nprint('boom: missing binding')\nsys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "propagation.sandbox", "demo", "--app", str(app)],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 1
    assert "the app exited with code 3" in proc.stdout and "boom: missing binding" in proc.stdout
