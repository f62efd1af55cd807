"""Speed of a text generator driven from Python, the way a user drives it.

The harness behind ``tallow bench`` and ``benches/compare.py``. It only needs a ``stream``
function (prompt, max_tokens -> iterable of text pieces, greedy) and a token counter, so the
same code times tallow and llama-cpp-python. This module imports nothing from the engine:
``benches/compare.py`` loads it by path into the llama.cpp process too.

- prefill: one prompt of about ``prompt_tokens`` tokens, generating one token; rate = prompt
  tokens / time to that token;
- time to first token: the same with a ``ttft_tokens`` prompt;
- decode: ``gen_tokens`` tokens after a short prompt; rate = (pieces - 1) / time from the first
  piece to the last, so prefill is not counted;
- decode at a long context (only when ``context_tokens`` is given): the same after a prompt of
  about ``context_tokens`` tokens, where attention over the cache weighs on every token.

Every measurement uses a prompt that starts differently, so no engine can reuse a cached prefix.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

#: (prompt, max_tokens) -> text pieces of a greedy generation, one per token.
StreamFn = Callable[[str, int], Iterable[str]]
#: text -> number of tokens the engine makes of it (with BOS, as the prompt is fed).
CountFn = Callable[[str], int]

_PROSE = (
    "The river ran past the old mill, where the miller's children counted boats and argued about "
    "which of them would sail the farthest when summer came. "
)
DECODE_PROMPT = "Count from 1 to 1000: 1, 2, 3,"


@dataclass
class Measurement:
    """One run of the three measurements. Rates in tokens per second, times in seconds."""

    prefill_tok_s: float
    n_prompt: int
    ttft_s: float
    n_ttft_prompt: int
    decode_tok_s: float
    n_decode: int
    #: Decode after a ``context_tokens`` prompt, and that prompt's tokens (0 when not measured).
    context_decode_tok_s: float = 0.0
    n_context: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def context_room(context_tokens: int, gen_tokens: int) -> int:
    """Positions a measurement needs for its ``context_tokens`` prompt and the decode after it
    (0 when that is not measured)."""
    return context_tokens + gen_tokens + 8 if context_tokens > 0 else 0


def prose_prompt(n_tokens: int, count: CountFn, tag: str) -> str:
    """English prose of about ``n_tokens`` tokens (never more), starting with ``tag``."""
    text = f"{tag}. "
    while count(text + _PROSE) <= n_tokens:
        text += _PROSE
    for word in _PROSE.split(" "):
        if count(text + word + " ") > n_tokens:
            break
        text += word + " "
    return text


def time_stream(stream: StreamFn, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first piece, seconds from the first piece to the last, pieces)."""
    t0 = time.perf_counter()
    first = last = 0.0
    n = 0
    for _ in stream(prompt, max_tokens):
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
    if n == 0:
        raise RuntimeError("the generator produced no text")
    return first - t0, last - first, n


def measure(
    stream: StreamFn,
    count: CountFn,
    *,
    prompt_tokens: int = 512,
    ttft_tokens: int = 32,
    gen_tokens: int = 128,
    context_tokens: int = 0,
    run: int = 0,
) -> Measurement:
    """Prefill, time to first token and decode (and decode at a long context where
    ``context_tokens`` > 0), once. ``run`` varies the prompts between runs."""
    long_prompt = prose_prompt(prompt_tokens, count, f"Story {run}")
    ttft, _, _ = time_stream(stream, long_prompt, 1)
    prefill = count(long_prompt) / ttft
    short_prompt = prose_prompt(ttft_tokens, count, f"Tale {run}")
    ttft_short, _, _ = time_stream(stream, short_prompt, 1)
    _, decode_s, pieces = time_stream(stream, f"Run {run}. {DECODE_PROMPT}", gen_tokens)
    if pieces < 2:
        raise RuntimeError("decode produced fewer than 2 tokens; use a prompt that keeps going")
    context_rate, n_context = 0.0, 0
    if context_tokens > 0:
        # Prose up to the length, then the counting prompt, so that the model keeps going.
        tail = f" {DECODE_PROMPT}"
        context_prompt = prose_prompt(context_tokens - count(tail), count, f"Saga {run}") + tail
        _, context_s, context_pieces = time_stream(stream, context_prompt, gen_tokens)
        if context_pieces < 2:
            raise RuntimeError("decode after the long prompt produced fewer than 2 tokens")
        context_rate, n_context = (context_pieces - 1) / context_s, count(context_prompt)
    return Measurement(
        prefill_tok_s=prefill,
        n_prompt=count(long_prompt),
        ttft_s=ttft_short,
        n_ttft_prompt=count(short_prompt),
        decode_tok_s=(pieces - 1) / decode_s,
        n_decode=pieces,
        context_decode_tok_s=context_rate,
        n_context=n_context,
    )


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise median of several runs' ``as_dict()`` (or any dicts of numbers)."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}
