"""The hand-written stubs in _tallow.pyi match the compiled module."""

from __future__ import annotations

import subprocess
import sys


def test_stubtest() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "tallow._tallow", "--ignore-missing-stub"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
