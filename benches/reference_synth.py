"""Regenerate the llama.cpp reference fixture for synthetic GGUF models.

The two real test models cover Q4_1/Q8_0 (SmolLM2) and the Q4_K_M mix (Gemma 3) at small
shapes. This script writes synthetic models with ``benches/synth.py`` (random weights, fixed
seed) in the other quant types, and in those again, at shapes with weight tensors of 2 MiB and
more (huge-page sized, as in real models), runs llama.cpp on them through
llama-cpp-python, and writes ``tests/fixtures/reference_synth.json``.
tests/test_parity_synth.py writes the same files again and compares tallow against it.

    python benches/reference_synth.py [--out tests/fixtures/reference_synth.json] [--work-dir DIR]

Files. Reading SmolLM2's 49k-token vocabulary is most of the time synth.py takes, so the
tokenizer is read from it once: a tiny ``vocab`` model (``VOCAB_ARGS``, SmolLM2's tokenizer cut
to ``VOCAB_SIZE`` tokens) is written first, and every model is then written as

    python benches/synth.py <synth_args> --vocab-from <vocab file> --out <file>

(cutting a cut vocabulary again keeps the same tokens and merges, so this is the file the
default ``--vocab-from`` would give). The fixture stores the arguments and the sha256 of every
file, the vocab file's included: a different hash means synth.py (or the ``gguf`` package it
writes with) changed, and the fixture must be regenerated, not that tallow did.

For every model and prompt the fixture records what benches/reference.py records for the real
models (its docstring has the details): ``tokens`` (llama.cpp's ids for ``text``, with
``add_bos``/``special``), per prompt position ``argmax``/``top5_ids``/``top5_logits`` (the
prompt evaluated as one batch, all logits kept; logits rounded to 4 decimals), and a greedy
continuation ``gen_tokens`` of up to ``GEN_TOKENS`` (eval one token, argmax; ends with the
end-of-generation id when ``gen_eog``), with ``gen_top5_ids``/``gen_top5_logits``, the
distribution each generated token was chosen from. The weights are random, so the text means
nothing; the prompts differ in length (batch sizes of the prompt products) and script (byte
tokens) and each starts with a different token.

Settings as benches/reference.py: llama-cpp-python 0.3.36 on the CPU, 2 threads, f16 KV cache,
no flash attention, each prompt evaluated fresh (``reset`` first); ``N_CTX`` 512. The output is
deterministic on one machine: run it twice and the file is byte-identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from reference import (
    LOGIT_DECIMALS,
    N_THREADS,
    PARAGRAPH,
    SEED,
    SHARED_PROMPTS,
    Prompt,
    open_llama,
    run_prompt,
    sha256_file,
)

ROOT = Path(__file__).resolve().parent.parent
SYNTH = ROOT / "benches" / "synth.py"
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "reference_synth.json"
VOCAB_FROM = "tests/.models/smollm2-135m-q4_1.gguf"  # relative to ROOT

GEN_TOKENS = 16
N_CTX = 512

VOCAB_SIZE = 2048
# The tokenizer source: a tiny model carrying SmolLM2's tokenizer (VOCAB_FROM) cut to
# VOCAB_SIZE tokens.
VOCAB_ARGS = [
    *("--dim", "32", "--layers", "1", "--heads", "1", "--kv-heads", "1", "--ffn", "32"),
    *("--qtype", "F32", "--vocab-size", str(VOCAB_SIZE), "--seed", "0"),
]

# dim 1024, ffn 4096, 2 layers, 16 heads of 64, 4 KV heads: ffn_gate/up/down are 2.1-4.5 MiB
# in every type here (Q4_0 2.25 MiB, Q8_0 4.25 MiB), attn_q/attn_output 0.6-1.1 MiB.
LLAMA = [
    *("--arch", "llama", "--dim", "1024", "--ffn", "4096", "--layers", "2"),
    *("--heads", "16", "--kv-heads", "4", "--seed", "7"),
]
# Gemma 3 270M's attention shape (4 heads of 256, 1 KV head) at dim 1024; a 32-token sliding
# window, so that the longer prompts reach past it (both layers are sliding-window layers).
# Untied: with random weights, a tied head (the embedding, scaled by sqrt(dim) on the way in)
# only ever repeats the last token, by margins of 2 and more.
GEMMA3 = [
    *("--arch", "gemma3", "--dim", "1024", "--ffn", "4096", "--layers", "2"),
    *("--heads", "4", "--kv-heads", "1", "--head-dim", "256", "--sliding-window", "32"),
    *("--untied", "--seed", "11"),
]

# name -> synth.py arguments (without --vocab-from/--out). Vocabulary sizes that are not a
# multiple of 16 give LM heads whose row count the 16-row tiles do not divide.
MODELS: dict[str, list[str]] = {
    "llama-q4_0": [*LLAMA, "--qtype", "Q4_0", "--vocab-size", "1024"],
    "llama-q4_1": [*LLAMA, "--qtype", "Q4_1", "--vocab-size", "1024"],
    "llama-q5_0": [*LLAMA, "--qtype", "Q5_0", "--vocab-size", "1000"],
    "llama-q5_1": [*LLAMA, "--qtype", "Q5_1", "--vocab-size", "1024"],
    # Untied: a 2.2 MiB embedding and a 2.2 MiB LM head of 2040 rows.
    "llama-q8_0": [*LLAMA, "--qtype", "Q8_0", "--vocab-size", "2040", "--untied"],
    "llama-q4_k_m": [*LLAMA, "--qtype", "Q4_K_M", "--vocab-size", "1024"],
    "llama-q5_k": [*LLAMA, "--qtype", "Q5_K", "--vocab-size", "1024"],
    "llama-q6_k": [*LLAMA, "--qtype", "Q6_K", "--vocab-size", "1024"],
    "gemma3-q4_k_m": [*GEMMA3, "--qtype", "Q4_K_M", "--vocab-size", "1024"],
    "gemma3-q8_0": [*GEMMA3, "--qtype", "Q8_0", "--vocab-size", "1000"],
}

_BY_NAME = {p.name: p for p in SHARED_PROMPTS}
# 3 to ~120 tokens with the cut vocabulary; no two start with the same token.
PROMPTS = [
    _BY_NAME["single_word"],
    _BY_NAME["english"],
    _BY_NAME["python"],
    _BY_NAME["mixed_scripts"],
    Prompt("paragraph", PARAGRAPH[PARAGRAPH.index("Early") : PARAGRAPH.index(" By the time")]),
]


def write_gguf(args: list[str], out: Path, vocab: Path) -> None:
    """Runs synth.py with `args`, reading the tokenizer from `vocab`."""
    cmd = [sys.executable, str(SYNTH), *args, "--vocab-from", str(vocab), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr}")


def write_all(work: Path) -> tuple[Path, dict[str, Path]]:
    vocab = work / "vocab.gguf"
    write_gguf(VOCAB_ARGS, vocab, ROOT / VOCAB_FROM)
    paths = {name: work / f"{name}.gguf" for name in MODELS}
    with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
        list(pool.map(lambda n: write_gguf(MODELS[n], paths[n], vocab), MODELS))
    return vocab, paths


def model_record(name: str, path: Path) -> dict[str, Any]:
    llm = open_llama(path, N_CTX)
    firsts = set()
    records = []
    for p in PROMPTS:
        print(f"  {name}/{p.name}", file=sys.stderr, flush=True)
        rec = run_prompt(llm, p, GEN_TOKENS)
        firsts.add(rec["tokens"][0])
        records.append(rec)
    if len(firsts) != len(records):
        raise ValueError(f"{name}: two prompts start with the same token")
    return {
        "name": name,
        "synth_args": MODELS[name],
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "bos_id": llm.token_bos(),
        "eos_id": llm.token_eos(),
        "n_vocab": llm.n_vocab(),
        "prompts": records,
    }


def build_fixture(work: Path) -> dict[str, Any]:
    vocab, paths = write_all(work)
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "gguf": version("gguf"),
        "numpy": np.__version__,
        "settings": {
            "n_ctx": N_CTX,
            "n_threads": N_THREADS,
            "seed": SEED,
            "kv_cache": "f16 (llama.cpp default)",
            "flash_attn": False,
            "prompt_eval": "one batch, logits for every position, each prompt after reset()",
            "generation": f"greedy argmax, eval one token at a time, <= {GEN_TOKENS}",
            "max_gen_tokens": GEN_TOKENS,
            "logit_decimals": LOGIT_DECIMALS,
        },
        "synth": "benches/synth.py <synth_args> --vocab-from <vocab file> --out <file>",
        "vocab": {
            "synth_args": VOCAB_ARGS,
            "vocab_from": VOCAB_FROM,
            "sha256": sha256_file(vocab),
        },
        "models": [model_record(name, path) for name, path in paths.items()],
    }


def dump(fixture: dict[str, Any]) -> str:
    """One line per header key, per model header and per prompt (small, and diffs per prompt)."""

    def compact(v: Any) -> str:
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)

    lines = ["{"]
    lines += [f" {compact(k)}: {compact(v)}," for k, v in fixture.items() if k != "models"]
    lines.append(' "models": [')
    models = []
    for m in fixture["models"]:
        head = compact({k: v for k, v in m.items() if k != "prompts"})[:-1] + ',"prompts":[\n'
        models.append(" " + head + ",\n".join("  " + compact(r) for r in m["prompts"]) + "\n ]}")
    lines.append(",\n".join(models))
    lines.append(" ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate the synthetic models' llama.cpp fixture.")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--work-dir", type=Path, help="where to write the GGUFs (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tallow-synth-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        fixture = build_fixture(work)
    text = dump(fixture)
    if json.loads(text) != fixture:  # the hand-assembled layout must stay valid, lossless JSON
        raise AssertionError("dump() lost data")
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode())} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
