"""The repack cache through the public API: a first load writes it, a second maps it, and the
text generated is the same with it, without it and under the portable kernels' layout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tallow

PROMPT = "The three largest cities of Japan are"


def _published(repack: Path, timeout: float = 120.0) -> list[Path]:
    """The cache files in ``repack`` once the background writer has renamed one into place."""
    t0 = time.monotonic()
    while True:
        files = sorted(repack.glob("*.repack")) if repack.is_dir() else []
        if files and not list(repack.glob("*.tmp")):
            return files
        assert time.monotonic() - t0 < timeout, f"no cache file published in {repack}"
        time.sleep(0.02)


def _greedy(model: tallow.Model) -> str:
    return model.generate(PROMPT, max_tokens=24, temperature=0)


@pytest.mark.parametrize("fixture", ["smollm2_path", "gemma3_path"])
def test_written_then_hit_with_the_same_text(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path: Path = request.getfixturevalue(fixture)
    monkeypatch.setenv("TALLOW_HOME", str(tmp_path))
    plain = tallow.Model(path, n_threads=2, n_ctx=256, repack_cache=False)
    assert plain.info.repack_cache == "off"
    expected = _greedy(plain)
    del plain

    first = tallow.Model(path, n_threads=2, n_ctx=256)
    if tallow.build_info()["matmul_tiles"] == "none":
        assert first.info.repack_cache == "skipped"
        return
    assert first.info.repack_cache == "written"
    assert _greedy(first) == expected
    files = _published(tmp_path / "repack")
    assert len(files) == 1 and files[0].stat().st_size > 2 << 20

    second = tallow.Model(path, n_threads=2, n_ctx=256)
    assert second.info.repack_cache == "hit"
    assert _greedy(second) == expected
    assert _published(tmp_path / "repack") == files  # a hit writes nothing new


def test_turned_off_by_the_environment(
    smollm2_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLOW_HOME", str(tmp_path))
    monkeypatch.setenv("TALLOW_REPACK_CACHE", "0")
    assert tallow.Model(smollm2_path, n_ctx=64).info.repack_cache == "off"
    assert not (tmp_path / "repack").exists()
    # an explicit argument wins over the environment
    on = tallow.Model(smollm2_path, n_ctx=64, repack_cache=True)
    assert on.info.repack_cache in ("written", "skipped")


def test_bad_argument(smollm2_path: Path) -> None:
    with pytest.raises(TypeError, match="repack_cache"):
        tallow.Model(smollm2_path, repack_cache="yes")  # type: ignore[arg-type]


_LOAD = """
import sys, tallow
m = tallow.Model(sys.argv[1], n_threads=1, n_ctx=64)
print(m.info.repack_cache, m.generate("Hello", max_tokens=8, temperature=0), sep="|")
"""


def test_processes_loading_at_once_all_succeed(smollm2_path: Path, tmp_path: Path) -> None:
    """Four processes load the same uncached model at the same moment: each writes its own
    temporary file, one is published, and they all generate the same text."""
    env = {**os.environ, "TALLOW_HOME": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _LOAD, str(smollm2_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    texts = {o[0].strip().split("|", 1)[1] for o in outs}
    assert len(texts) == 1, texts
    if tallow.build_info()["matmul_tiles"] != "none":
        # Each process's background writer may have been cut short by its exit; a later load
        # publishes whatever is missing, and then the cache is hit.
        again = subprocess.run(
            [sys.executable, "-c", _LOAD, str(smollm2_path)], env=env, capture_output=True, text=True
        )
        assert again.returncode == 0, again.stderr
        _published(tmp_path / "repack")
        final = subprocess.run(
            [sys.executable, "-c", _LOAD, str(smollm2_path)], env=env, capture_output=True, text=True
        )
        status, text = final.stdout.strip().split("|", 1)
        assert (status, text) == ("hit", texts.pop())
        assert len(list((tmp_path / "repack").glob("*.repack"))) == 1


def test_a_process_that_exits_right_after_loading_leaves_the_file(smollm2_path: Path, tmp_path: Path) -> None:
    """The load returns before the cache file is written; the interpreter's exit waits for the
    writer, so the next process maps the file."""
    env = {**os.environ, "TALLOW_HOME": str(tmp_path)}
    load_only = "import sys, tallow; print(tallow.Model(sys.argv[1], n_ctx=64).info.repack_cache)"
    if tallow.build_info()["matmul_tiles"] == "none":  # TALLOW_KERNELS=scalar: nothing to repack
        out = subprocess.run(
            [sys.executable, "-c", load_only, str(smollm2_path)], env=env, capture_output=True, text=True
        )
        assert out.stdout.strip() == "skipped", out.stderr
        return
    first = subprocess.run(
        [sys.executable, "-c", load_only, str(smollm2_path)], env=env, capture_output=True, text=True
    )
    assert (first.returncode, first.stdout.strip()) == (0, "written"), first.stderr
    files = list((tmp_path / "repack").glob("*.repack"))
    assert len(files) == 1 and not list((tmp_path / "repack").glob("*.tmp"))
    second = subprocess.run(
        [sys.executable, "-c", load_only, str(smollm2_path)], env=env, capture_output=True, text=True
    )
    assert (second.returncode, second.stdout.strip()) == (0, "hit"), second.stderr


def test_waiting_for_the_writers(smollm2_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tallow import _tallow

    monkeypatch.setenv("TALLOW_HOME", str(tmp_path))
    tallow.Model(smollm2_path, n_ctx=64)
    assert _tallow.wait_for_repack_writes(120.0) is True
    assert not list((tmp_path / "repack").glob("*.tmp"))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            _tallow.wait_for_repack_writes(bad)


def test_portable_kernels_do_not_read_a_tiled_cache(smollm2_path: Path, tmp_path: Path) -> None:
    """A cache written with the AVX-512 layout is never mapped by a process whose kernels want
    another (TALLOW_KERNELS=avx2 reads 4-row groups, scalar none)."""
    env = {**os.environ, "TALLOW_HOME": str(tmp_path)}

    def run(kernels: str | None) -> tuple[str, str]:
        e = dict(env)
        if kernels:
            e["TALLOW_KERNELS"] = kernels
        r = subprocess.run(
            [sys.executable, "-c", _LOAD, str(smollm2_path)], env=e, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        status, text = r.stdout.strip().split("|", 1)
        return status, text

    default = run(None)
    if default[0] == "skipped":
        return
    _published(tmp_path / "repack")
    assert run(None)[0] == "hit"
    status, text = run("scalar")
    assert status == "skipped" and text == default[1]
    if tallow.build_info()["kernels"] == "avx512vnni":
        status, text = run("avx2")
        assert status == "written" and text == default[1]
