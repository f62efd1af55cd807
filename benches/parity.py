"""Live parity check: tallow against llama.cpp (llama-cpp-python) on the same GGUF.

Needs both packages installed. For every prompt it compares

- tokenization: ``tallow.Model.tokenize(text, add_bos=, special=)`` against
  ``Llama.tokenize(text.encode(), add_bos=, special=)`` for all four flag combinations;
- greedy generation (unless ``--tokens-only``): tallow's greedy stream (``Model.generate``'s,
  with the same special-token flag as llama.cpp's side) against llama.cpp's exact greedy loop
  (eval one token, argmax, stop after an end-of-generation token), compared as detokenized text.

    python benches/parity.py --model tests/.models/smollm2-135m-q4_1.gguf \\
        --prompt "The capital of France is" --prompt "def add(a, b):"
    python benches/parity.py --model M.gguf --prompts-file prompts.txt --tokens-only
    python benches/parity.py --model M.gguf --fixture tests/fixtures/reference_X.json

``--prompts-file``: a ``.json`` list of strings, else one prompt per line.
``--fixture``: take the prompts of a ``benches/reference.py`` fixture.
Both sides of generation tokenize with ``add_bos=True`` and ``special=True`` (as
``Llama.create_completion`` does); ``--no-gen-special`` switches special-token parsing off.
Exit status: 0 when everything matches, 1 on any mismatch, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "人工智能正在改变世界。",
    "Numbers: 1, 2, 3, 5, 8, 13,",
    "  spaces\tand\ttabs\n\nand newlines ",
    "Emoji 😊🚀 and accents: café, naïve",
]
FLAG_COMBOS = [(True, False), (True, True), (False, False), (False, True)]


@dataclass
class Report:
    checked: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def record(self, ok: bool, what: str, prompt: str, **detail: Any) -> None:
        self.checked += 1
        status = "ok      " if ok else "MISMATCH"
        print(f"{status} {what:28} {prompt[:48]!r}")
        if not ok:
            self.mismatches.append({"check": what, "prompt": prompt, **detail})
            for k, v in detail.items():
                print(f"         {k}: {v}")


def first_diff(a: Sequence[Any], b: Sequence[Any]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def load_prompts(args: argparse.Namespace) -> list[str]:
    prompts: list[str] = list(args.prompt or [])
    if args.prompts_file:
        path: Path = args.prompts_file
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
                raise ValueError(f"{path}: expected a JSON list of strings")
            prompts.extend(data)
        else:
            prompts.extend(line for line in path.read_text("utf-8").splitlines() if line)
    if args.fixture:
        fixture = json.loads(args.fixture.read_text(encoding="utf-8"))
        prompts.extend(rec["text"] for rec in fixture["prompts"])
    return prompts or list(DEFAULT_PROMPTS)


def llama_greedy(llm: Any, tokens: list[int], max_tokens: int) -> tuple[list[int], str]:
    """llama.cpp's exact greedy continuation: eval, argmax, stop after an EOG token."""
    import llama_cpp
    import numpy as np

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    llm.reset()
    llm.eval(tokens)
    out: list[int] = []
    for _ in range(max_tokens):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            break
        llm.eval([tok])
    text = llm.detokenize(out, special=False).decode("utf-8", errors="replace")
    return out, text


def check_tokenization(model: Any, llm: Any, prompt: str, report: Report) -> None:
    for add_bos, special in FLAG_COMBOS:
        ref = llm.tokenize(prompt.encode(), add_bos=add_bos, special=special)
        got = list(model.tokenize(prompt, add_bos=add_bos, special=special))
        what = f"tokenize bos={int(add_bos)} special={int(special)}"
        if got == ref:
            report.record(True, what, prompt)
            continue
        i = first_diff(got, ref)
        report.record(
            False,
            what,
            prompt,
            first_diff=i,
            tallow=got[max(0, i - 2) : i + 6],
            llama=ref[max(0, i - 2) : i + 6],
            lengths=(len(got), len(ref)),
        )


def check_generation(
    new_model: Any, llm: Any, prompt: str, max_tokens: int, special: bool, report: Report
) -> None:
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=special)
    ref_ids, ref_text = llama_greedy(llm, tokens, max_tokens)
    # A fresh model per prompt, as llama.cpp's side is evaluated afresh: a prefix reused from
    # the previous prompt is computed in different batch sizes, which changes the last bits.
    # Both sides parse special tokens the same way: `Model.generate` leaves them as text, so
    # this goes through the method under it, which takes the flag.
    stream = new_model()._start(prompt, max_tokens, {"temperature": 0.0}, add_bos=True, special=special)
    got_text = "".join(text for text, _tok, _lp in stream if text)
    # A continuation cut at max_tokens may end inside a UTF-8 sequence: llama.cpp's
    # side then ends in U+FFFD, tallow's may hold the bytes back. Compare without it.
    ref_cmp = ref_text.rstrip("\ufffd")
    got_cmp = got_text.rstrip("\ufffd")
    ok = got_cmp == ref_cmp
    if ok:
        report.record(True, f"greedy {len(ref_ids)} tokens", prompt)
        return
    i = first_diff(got_cmp, ref_cmp)
    # Which llama.cpp token produced the first differing character.
    pieces = [llm.detokenize([t], special=False) for t in ref_ids]
    acc, tok_index = 0, len(ref_ids)
    ref_bytes_at = len(ref_cmp[:i].encode())
    for k, piece in enumerate(pieces):
        acc += len(piece)
        if acc > ref_bytes_at:
            tok_index = k
            break
    report.record(
        False,
        f"greedy {len(ref_ids)} tokens",
        prompt,
        first_diff_char=i,
        first_diff_token=tok_index,
        tallow=got_cmp[max(0, i - 20) : i + 40],
        llama=ref_cmp[max(0, i - 20) : i + 40],
        llama_ids=ref_ids,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compare tallow with llama-cpp-python.")
    ap.add_argument("--model", type=Path, required=True, help="GGUF file")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    ap.add_argument("--prompts-file", type=Path, help=".json list, or one per line")
    ap.add_argument("--fixture", type=Path, help="use a reference fixture's prompts")
    ap.add_argument("--tokens-only", action="store_true", help="skip generation")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--no-gen-special", dest="gen_special", action="store_false")
    ap.add_argument("--json", type=Path, help="also write the mismatches here")
    args = ap.parse_args(argv)

    try:
        import llama_cpp
        import tallow  # type: ignore[import-not-found]
    except ImportError as e:
        print(f"error: {e} (install both tallow and llama-cpp-python)", file=sys.stderr)
        return 2
    if not args.model.is_file():
        print(f"error: {args.model} not found", file=sys.stderr)
        return 2
    try:
        prompts = load_prompts(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    llm = llama_cpp.Llama(
        model_path=str(args.model),
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        # Llama.eval() keeps logits (even the last position's) only with logits_all.
        logits_all=not args.tokens_only,
        vocab_only=args.tokens_only,
        verbose=False,
    )

    def new_model() -> Any:
        return tallow.Model(str(args.model), n_threads=args.threads, n_ctx=args.n_ctx)

    model = new_model()

    report = Report()
    for prompt in prompts:
        check_tokenization(model, llm, prompt, report)
        if not args.tokens_only:
            check_generation(new_model, llm, prompt, args.max_tokens, args.gen_special, report)
    n_bad = len(report.mismatches)
    n_ok = report.checked - n_bad
    print(f"\n{n_ok}/{report.checked} checks match ({len(prompts)} prompts)")
    if args.json:
        args.json.write_text(json.dumps(report.mismatches, ensure_ascii=False, indent=1))
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
