"""Greedy generation on synthetic GGUF models against llama.cpp's committed reference fixture.

tests/fixtures/reference_synth.json comes from benches/reference_synth.py (llama-cpp-python
0.3.36, f16 KV cache, no flash attention): synthetic models written by benches/synth.py in the
quant types and at the shapes the two real models do not cover (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
Q5_K, Q6_K and the Q4_K_M mix; llama and gemma3 layouts; weight tensors of 2 MiB and more,
which the repack cache maps from its file). This test writes the same files again, checks they
are byte for byte the files the fixture was made from (their sha256), and compares:

- tokenization (SmolLM2's BPE cut to the model's vocabulary size), exactly;
- greedy generation, token for token, each prompt on a freshly loaded model (see
  tests/test_parity.py for why), with the repack cache as it is by default (on): the first load
  of a file repacks and writes the cache, the later ones map it;
- the same through each repack path: off (in memory), written, hit.

tallow reproduces llama.cpp's x86 arithmetic bit for bit, so there is no tolerance. The
fixture also holds llama.cpp's per-position top-5 logits of every prompt; the Python API gives
no logits, so only their consequence is checked here: the first generated token is the argmax
of the last prompt position, and each later one that of a decode step (the fixture's
``gen_top5_logits`` show how narrow the margins were: down to 0.0013).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import tallow
from _greedy import check_greedy
from gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "benches" / "synth.py"
FIXTURE: dict[str, Any] = json.loads((ROOT / "tests" / "fixtures" / "reference_synth.json").read_text())
MODELS: dict[str, dict[str, Any]] = {m["name"]: m for m in FIXTURE["models"]}
N_CTX: int = FIXTURE["settings"]["n_ctx"]
MAX_GEN: int = FIXTURE["settings"]["max_gen_tokens"]

REGENERATE = (
    "benches/synth.py (or the gguf/numpy it writes with) now writes a different {what} than the "
    "one tests/fixtures/reference_synth.json was made from (gguf {gguf}, numpy {numpy} there; "
    "gguf {gguf_now} here): regenerate the fixture with `python benches/reference_synth.py` "
    "(needs llama-cpp-python 0.3.36) and check the diff"
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _synth(args: list[str], vocab: Path, out: Path) -> None:
    cmd = [sys.executable, str(SYNTH), *args, "--vocab-from", str(vocab), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr}"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """The fixture's synthetic GGUFs, written again (two at a time: ~10 s on 2 cores)."""
    out = tmp_path_factory.mktemp("synth")
    _synth(FIXTURE["vocab"]["synth_args"], smollm2_path, out / "vocab.gguf")
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
        jobs = [
            pool.submit(_synth, m["synth_args"], out / "vocab.gguf", out / f"{name}.gguf")
            for name, m in MODELS.items()
        ]
        for job in jobs:
            job.result()
    return out


def _regenerate(what: str) -> str:
    return REGENERATE.format(
        what=what, gguf=FIXTURE["gguf"], numpy=FIXTURE["numpy"], gguf_now=version("gguf")
    )


@pytest.fixture(scope="session")
def synth_files(synth_dir: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, sha256) of the files written again."""
    assert _sha256(synth_dir / "vocab.gguf") == FIXTURE["vocab"]["sha256"], _regenerate("vocab file")
    paths = {name: synth_dir / f"{name}.gguf" for name in MODELS}
    return {name: (path, _sha256(path)) for name, path in paths.items()}


def _path(synth_files: dict[str, tuple[Path, str]], name: str) -> Path:
    """The file of model `name`, once its hash is the fixture's."""
    path, sha = synth_files[name]
    assert sha == MODELS[name]["sha256"], _regenerate(f"{name}.gguf")
    return path


def _load(path: Path, **kw: Any) -> tallow.Model:
    return tallow.Model(path, n_threads=2, n_ctx=N_CTX, **kw)


CASES = [(name, p) for name, m in MODELS.items() for p in m["prompts"]]
IDS = [f"{name}-{p['name']}" for name, p in CASES]


def test_fixture_covers_its_quant_types_and_layouts() -> None:
    """The quant types and shapes the fixture exists for (a regenerated fixture keeps them)."""
    qtypes = {m["synth_args"][m["synth_args"].index("--qtype") + 1] for m in MODELS.values()}
    assert {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q5_K", "Q6_K", "Q4_K_M"} <= qtypes
    archs = {m["synth_args"][m["synth_args"].index("--arch") + 1] for m in MODELS.values()}
    assert archs == {"llama", "gemma3"}


@pytest.mark.parametrize(("name", "prompt"), CASES, ids=IDS)
def test_tokenization_matches_llama_cpp(
    synth_files: dict[str, tuple[Path, str]], name: str, prompt: dict[str, Any]
) -> None:
    model = _tokenizer(_path(synth_files, name))
    assert (
        model.tokenize(prompt["text"], add_bos=prompt["add_bos"], special=prompt["special"])
        == prompt["tokens"]
    )


_TOKENIZERS: dict[Path, tallow.Model] = {}


def _tokenizer(path: Path) -> tallow.Model:
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = _load(path)
    return _TOKENIZERS[path]


@pytest.mark.parametrize(("name", "prompt"), CASES, ids=IDS)
def test_greedy_generation_matches_llama_cpp(
    synth_files: dict[str, tuple[Path, str]], name: str, prompt: dict[str, Any]
) -> None:
    model = _load(_path(synth_files, name))
    assert model.info.vocab_size == MODELS[name]["n_vocab"]
    check_greedy(model, prompt, MAX_GEN, f"{name}/{prompt['name']}: ")


def _published(repack: Path, timeout: float = 120.0) -> None:
    """Waits until the background writer has renamed the new cache file into place."""
    t0 = time.monotonic()
    while not (repack.is_dir() and list(repack.glob("*.repack")) and not list(repack.glob("*.tmp"))):
        assert time.monotonic() - t0 < timeout, f"no cache file published in {repack}"
        time.sleep(0.02)


def _cached_tensors(path: Path) -> list[str]:
    """The tensors tallow repacks into the cache: those of a tiled type in whole groups of rows
    (16 for the AVX-512 tiles, 4 for the AVX2 ones)."""
    group: dict[str, int] = {}  # tiled type -> rows per group
    for part in tallow.build_info()["matmul_tiles"].split("; "):
        if ":" in part:
            label, types = part.split(":", 1)
            group.update((t, 16 if "x16" in label else 4) for t in types.strip().split(","))
    cached = []
    for t in GGUFReader(path).tensors:
        g = group.get(t.tensor_type.name)
        if g and len(t.shape) == 2 and int(t.shape[1]) % g == 0:  # shape: [cols, rows]
            cached.append(t.name)
    return cached


@pytest.mark.parametrize("name", list(MODELS))
def test_repack_cache_off_written_hit_match_llama_cpp(
    synth_files: dict[str, tuple[Path, str]], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy tokens of the longest prompt with the repacked weights in memory, written to a
    new cache file, and mapped from it on the next load: all three are llama.cpp's."""
    path = _path(synth_files, name)
    prompt = max(MODELS[name]["prompts"], key=lambda p: p["n_tokens"])
    monkeypatch.setenv("TALLOW_HOME", str(tmp_path))  # an empty cache of this test's own
    off = _load(path, repack_cache=False)
    assert off.info.repack_cache == "off"
    check_greedy(off, prompt, MAX_GEN, f"{name}/{prompt['name']}: ")
    del off

    first = _load(path, repack_cache=True)
    if not _cached_tensors(path):
        assert first.info.repack_cache == "skipped"  # no tiled kernel for its type: nothing repacked
        check_greedy(first, prompt, MAX_GEN, f"{name}/{prompt['name']}: ")
        return
    assert first.info.repack_cache == "written"
    check_greedy(first, prompt, MAX_GEN, f"{name}/{prompt['name']}: ")
    _published(tmp_path / "repack")
    second = _load(path)  # the default: on
    assert second.info.repack_cache == "hit"
    check_greedy(second, prompt, MAX_GEN, f"{name}/{prompt['name']}: ")
