"""``bench/run.py --quick`` runs to completion and reports its seven sections (no timed
assertions: the figures are for people, not for the test-suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_completes_and_prints_every_section():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for section in ("(a) inbound", "(b) outbound cache hit", "(c) 64 threads", "(d) memory per cached token",
                    "(e) a new session()/client() per call", "(f) async: ASGI app", "(g) SAP's clients vs propagation"):
        assert section in done.stdout
    assert done.stdout.count("PASS") + done.stdout.count("MISS") == 9
    assert "PASS  exchanges == users (on-premise, async)" in done.stdout  # a count, not a timing
    assert "summary:" in done.stdout
