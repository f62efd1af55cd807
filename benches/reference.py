"""Regenerate llama.cpp reference fixtures for the two real models.

Runs llama.cpp (through llama-cpp-python) on a fixed set of prompts and writes
``tests/fixtures/reference_<model>.json``, so tallow's tests can compare tokenization,
logits and greedy generation against llama.cpp without needing llama.cpp in CI.

    python benches/reference.py [--models-dir tests/.models] [--out-dir tests/fixtures]
                                [--model smollm2-135m] [--model gemma3-270m]

For every prompt the fixture records:

- ``text``, ``add_bos``, ``special``: the exact arguments given to ``Llama.tokenize``.
  ``add_bos`` is llama.cpp's ``add_special``: a BOS is only added when the vocab's
  ``tokenizer.ggml.add_bos_token`` allows it (SmolLM2: never; Gemma 3: yes), so
  ``bos_added`` says what actually happened.
- ``tokens``: llama.cpp's token ids.
- ``argmax``, ``top5_ids``, ``top5_logits``: for every prompt position ``i``, the
  next-token distribution after ``tokens[:i+1]`` (the whole prompt is evaluated as one
  batch with all logits kept). Top-5 is sorted by logit, ties by id; logits rounded to
  4 decimals.
- ``gen_tokens``: a greedy continuation of up to ``GEN_TOKENS`` tokens, produced by a
  plain eval-one-token + argmax loop (no sampler, no penalties); it stops after the
  first end-of-generation token (``llama_vocab_is_eog``), which is then the last id in
  the list and ``gen_eog`` is true. ``gen_top5_ids``/``gen_top5_logits`` give the
  distribution each generated token was chosen from (so a test can see how close a
  near-tie was). ``gen_text`` is the detokenized continuation (control tokens are not
  rendered, like ``Llama.detokenize(special=False)``).

Run it with the reference venv (``/tmp/refvenv/bin/python``; llama-cpp-python 0.3.36).
Output is deterministic on one machine (CPU, fixed thread count): run it twice and the
files are byte-identical. Logits may differ in late decimals on a CPU with other SIMD
features, so tests should compare them with a tolerance.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2.sandbox
import llama_cpp
import numpy as np
import numpy.typing as npt

GEN_TOKENS = 32
TOP_K = 5
N_CTX = 2048
N_THREADS = 2
SEED = 1234
LOGIT_DECIMALS = 4

ROOT = Path(__file__).resolve().parent.parent

MODEL_FILES = {
    "smollm2-135m": "smollm2-135m-q4_1.gguf",
    "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
}


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    add_bos: bool = True
    special: bool = False


PARAGRAPH = (
    "The history of bread is as old as agriculture itself. Archaeologists have "
    "found charred crumbs in a stone fireplace in northeastern Jordan that are more "
    "than fourteen thousand years old, predating the first farming communities by "
    "several millennia. Early bakers ground wild wheat, barley and the roots of "
    "club-rush into flour, mixed it with water and cooked the flat dough on hot "
    "stones. Leavened bread arrived much later, probably in Egypt, where brewers "
    "and bakers worked side by side and wild yeasts drifted from one vat to the "
    "other. By the time of the Roman Empire, bakeries were large commercial "
    "operations with mechanical kneaders driven by donkeys, and the state "
    "distributed free grain to hundreds of thousands of citizens. Today"
)

SHARED_PROMPTS = [
    Prompt("english", "The quick brown fox jumps over the lazy dog. Then it"),
    Prompt("question", "What is the capital of France? The capital of France is"),
    Prompt("chinese", "人工智能正在改变我们的生活方式。它可以帮助我们"),
    Prompt("japanese", "日本の首都は東京です。東京は世界で最も"),
    Prompt("korean_emoji", "안녕하세요! 오늘 날씨가 정말 좋네요 😊🌞 Let's go 🚀👩‍💻"),
    Prompt("mixed_scripts", "Café naïve façade — résumé; Привет, мир; مرحبا; नमस्ते; Ελλάδα"),
    Prompt(
        "python",
        "def fibonacci(n: int) -> int:\n"
        '    """Return the n-th Fibonacci number."""\n'
        "    if n < 2:\n"
        "        return n\n",
    ),
    Prompt(
        "json",
        '{"name": "tallow", "version": "0.1.0", "tags": ["llm", "gguf"], '
        '"config": {"threads": 2, "n_ctx": 2048, "temperature": 0.0}, "items": [',
    ),
    Prompt("paragraph", PARAGRAPH),
    Prompt(
        "numbers",
        "1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987; "
        "pi = 3.14159265, e = 2.71828, -42, 1e10, 0x1F, 1,000,000 and 2024-06-30:",
    ),
    Prompt(
        "whitespace",
        "  two leading spaces\n\n\ttab\tseparated\n   \n\nmany     spaces\r\ntrailing  \n\n\n    indented",
    ),
    Prompt("single_word", "Hello"),
    Prompt("no_bos", "Once upon a time, in a land far away,", add_bos=False),
]


def long_text() -> str:
    """~2.5k characters of varied, deterministic English (> 512 tokens for Gemma 3).

    Long enough that Gemma 3's sliding-window layers (window 512) mask old positions.
    """
    animals = ["fox", "heron", "otter", "badger", "lynx", "sparrow", "salmon", "beetle"]
    places = ["river", "forest", "meadow", "harbour", "valley", "quarry", "orchard"]
    verbs = ["watched", "followed", "ignored", "counted", "painted", "described"]
    lines = [
        f"Day {i + 1}: the {animals[i % len(animals)]} near the "
        f"{places[(i * 3) % len(places)]} was {verbs[(i * 5) % len(verbs)]} by "
        f"{i * 7 % 13 + 2} visitors before noon."
        for i in range(30)
    ]
    return "Field notes.\n" + "\n".join(lines) + "\nSummary: over the season,"


def render_chatml(template: str, bos: str, eos: str, messages: list[dict[str, str]]) -> str:
    """Render the model's own `tokenizer.chat_template` in a Jinja sandbox."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader()
    )
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
    )


def render_builtin(name: str, messages: list[dict[str, str]]) -> str:
    """Render with llama.cpp's built-in template `name` (Gemma 3's GGUF has none)."""
    keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
    arr = (llama_cpp.llama_chat_message * len(keep))()
    for i, (role, content) in enumerate(keep):
        arr[i].role = role
        arr[i].content = content
    size = 4096
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(name.encode(), arr, len(keep), True, buf, size)
    if n < 0 or n > size:
        raise RuntimeError(f"llama_chat_apply_template({name}) returned {n}")
    return buf.raw[:n].decode()


CHAT_SINGLE = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]
CHAT_MULTI = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "7"},
    {"role": "user", "content": "Another one, bigger than 10?"},
]


def model_prompts(model: str, llm: llama_cpp.Llama) -> tuple[list[Prompt], str]:
    """Prompts for `model`: the shared set plus chats rendered the model's way."""
    prompts = list(SHARED_PROMPTS)
    if model == "smollm2-135m":
        tmpl = llm.metadata["tokenizer.chat_template"]
        bos = llm.detokenize([llm.token_bos()], special=True).decode()
        eos = llm.detokenize([llm.token_eos()], special=True).decode()
        source = "gguf tokenizer.chat_template (Jinja2 sandbox)"
        for name, msgs in (("chat", CHAT_SINGLE), ("chat_multi", CHAT_MULTI)):
            prompts.append(Prompt(name, render_chatml(tmpl, bos, eos, msgs), special=True))
        prompts.append(Prompt("special_as_text", "<|im_start|>user\nhi<|im_end|>\n"))
    elif model == "gemma3-270m":
        source = "llama.cpp built-in 'gemma' template (the GGUF has no chat_template)"
        for name, msgs in (("chat", CHAT_SINGLE), ("chat_multi", CHAT_MULTI)):
            prompts.append(Prompt(name, render_builtin("gemma", msgs), special=True))
        prompts.append(Prompt("special_as_text", "<start_of_turn>user\nhi<end_of_turn>\n"))
        prompts.append(Prompt("long_swa", long_text()))
    else:
        raise ValueError(f"unknown model {model}")
    return prompts, source


def top_k(row: npt.NDArray[np.float32], k: int = TOP_K) -> tuple[list[int], list[float]]:
    """Top-k ids by logit (ties broken by lower id), with rounded logits."""
    kth = np.partition(row, row.size - k)[row.size - k]  # k-th largest logit
    cand = np.flatnonzero(row >= kth)  # every id tied at the cut is a candidate
    order = sorted(cand.tolist(), key=lambda t: (-float(row[t]), t))[:k]
    return order, [round(float(row[t]), LOGIT_DECIMALS) for t in order]


def greedy_id(row: npt.NDArray[np.float32]) -> int:
    return int(np.argmax(row))  # first maximum: lowest id wins a tie


def open_llama(path: Path, n_ctx: int = N_CTX) -> llama_cpp.Llama:
    """`path` in llama.cpp with the fixtures' settings: every position's logits kept."""
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        seed=SEED,
        verbose=False,
    )


def run_prompt(llm: llama_cpp.Llama, p: Prompt, gen_tokens: int = GEN_TOKENS) -> dict[str, Any]:
    """The fixture record of prompt `p`, evaluated fresh, with up to `gen_tokens` greedy ones."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    tokens = llm.tokenize(p.text.encode(), add_bos=p.add_bos, special=p.special)
    # llama.cpp adds BOS only if the vocab asks for it; see whether it did.
    bare = llm.tokenize(p.text.encode(), add_bos=False, special=p.special)
    if not tokens:
        raise ValueError(f"prompt {p.name} tokenizes to nothing")
    if len(tokens) + gen_tokens > llm.n_ctx():
        raise ValueError(f"prompt {p.name} too long: {len(tokens)} tokens")
    llm.reset()
    llm.eval(tokens)
    scores = llm.scores[: len(tokens)]
    argmax: list[int] = []
    top5_ids: list[list[int]] = []
    top5_logits: list[list[float]] = []
    for i in range(len(tokens)):
        ids, logits = top_k(scores[i])
        argmax.append(greedy_id(scores[i]))
        top5_ids.append(ids)
        top5_logits.append(logits)

    gen: list[int] = []
    gen_ids: list[list[int]] = []
    gen_logits: list[list[float]] = []
    eog = False
    row = scores[len(tokens) - 1]
    for _ in range(gen_tokens):
        tok = greedy_id(row)
        ids, logits = top_k(row)
        gen.append(tok)
        gen_ids.append(ids)
        gen_logits.append(logits)
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            eog = True
            break
        llm.eval([tok])
        row = llm.scores[llm.n_tokens - 1]

    text_bytes = llm.detokenize(gen, special=False)
    detok = llm.detokenize(tokens, special=False).decode("utf-8", errors="replace")
    rec: dict[str, Any] = {
        "name": p.name,
        "text": p.text,
        "add_bos": p.add_bos,
        "special": p.special,
        "bos_added": tokens != bare,
        "n_tokens": len(tokens),
        "tokens": tokens,
        "argmax": argmax,
        "top5_ids": top5_ids,
        "top5_logits": top5_logits,
        "gen_tokens": gen,
        "gen_eog": eog,
        # A continuation cut at gen_tokens can end inside a UTF-8 sequence: U+FFFD then.
        "gen_text": text_bytes.decode("utf-8", errors="replace"),
        "gen_text_utf8": _is_utf8(text_bytes),
        "gen_top5_ids": gen_ids,
        "gen_top5_logits": gen_logits,
    }
    if detok != p.text:
        # Only when the round trip is not the identity (BOS/control tokens dropped).
        rec["detok"] = detok
    return rec


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def build_fixture(model: str, path: Path) -> dict[str, Any]:
    llm = open_llama(path)
    prompts, template_source = model_prompts(model, llm)
    names = [p.name for p in prompts]
    if len(set(names)) != len(names):
        raise ValueError("duplicate prompt names")
    records = []
    for p in prompts:
        print(f"  {model}/{p.name}", file=sys.stderr, flush=True)
        records.append(run_prompt(llm, p))
    return {
        "model": model,
        "file": path.name,
        "sha256": sha256_file(path),
        "llama_cpp_python": llama_cpp.__version__,
        "settings": {
            "n_ctx": N_CTX,
            "n_threads": N_THREADS,
            "n_batch": llm.n_batch,
            "seed": SEED,
            "kv_cache": "f16 (llama.cpp default)",
            "flash_attn": False,
            "prompt_eval": "one batch, logits for every position",
            "generation": f"greedy argmax, eval one token at a time, <= {GEN_TOKENS}",
            "logit_decimals": LOGIT_DECIMALS,
        },
        "bos_id": llm.token_bos(),
        "eos_id": llm.token_eos(),
        "n_vocab": llm.n_vocab(),
        "chat_template_source": template_source,
        "prompts": records,
    }


def dump(fixture: dict[str, Any]) -> str:
    """Readable header, one compact line per prompt (small, and diffs per prompt)."""
    head = {k: v for k, v in fixture.items() if k != "prompts"}
    lines = [json.dumps(head, indent=1, ensure_ascii=False)[:-2] + ',\n "prompts": [']
    recs = [" " + json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in fixture["prompts"]]
    lines.append(",\n".join(recs))
    lines.append(" ]\n}\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate llama.cpp reference fixtures.")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "tests" / ".models")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "tests" / "fixtures")
    ap.add_argument("--model", action="append", choices=sorted(MODEL_FILES))
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for model in args.model or list(MODEL_FILES):
        path = args.models_dir / MODEL_FILES[model]
        if not path.is_file():
            print(f"error: {path} missing (run scripts/fetch_models.py)", file=sys.stderr)
            return 1
        fixture = build_fixture(model, path)
        out = args.out_dir / f"reference_{model}.json"
        text = dump(fixture)
        json.loads(text)  # the hand-assembled layout must stay valid JSON
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out} ({len(text.encode())} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
