from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import tallow

MODELS = Path(__file__).parent / ".models"
SMOLLM2 = MODELS / "smollm2-135m-q4_1.gguf"
GEMMA3 = MODELS / "gemma-3-270m-q4_k_m.gguf"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# The tests' downloads and repack cache go to a directory of their own, never the user's
# ~/.cache/tallow; subprocesses inherit it. Removed at exit: it holds the repacked weights of
# every model the tests load (about 550 MB), and a run that left it behind filled our CI disk.
_HOME = tempfile.mkdtemp(prefix="tallow-test-home-")
os.environ["TALLOW_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)


def _need(path: Path) -> Path:
    # A missing model is a broken setup, not a reason to skip: scripts/test.sh fetches them.
    assert path.is_file(), f"{path} missing: run `python scripts/fetch_models.py --dest tests/.models`"
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _need(SMOLLM2)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _need(GEMMA3)


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path) -> tallow.Model:
    return tallow.Model(smollm2_path, n_threads=2, n_ctx=1024)


@pytest.fixture(scope="session")
def gemma3(gemma3_path: Path) -> tallow.Model:
    return tallow.Model(gemma3_path, n_threads=2, n_ctx=1024)
