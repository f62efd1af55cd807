"""Continuous batching on one model: aggregate decode throughput and time between tokens.

    python benches/concurrency.py --model tests/.models/smollm2-135m-q4_1.gguf --threads 2 \\
        --streams 1 2 4 8 32 --json concurrency.json

For each stream count ``k`` it loads the model once (``max_sequences`` 8 by default, the
engine's default: with more streams than that, the rest wait in the queue for a slot, which
keeps the time between tokens of the running ones bounded) and starts ``k`` asyncio tasks that
each stream
``--gen-tokens`` tokens from a short prompt of its own with ``Model.astream``, greedy, as an
asyncio service would. It records when every chunk arrives and reports, with the medians of
``--reps`` repetitions:

- aggregate throughput: all streams' tokens over the wall time from the first task's start to
  the last task's end (prompts are a dozen tokens, so this is decode throughput);
- the time between consecutive tokens of a stream (from its second token on), over all
  streams: median and 99th percentile;
- both as ratios over the single stream (``k = 1``) of the same run;
- the time to each stream's first token (queueing included): median and 99th percentile.

The engine batches the decode tokens of all live sequences into one forward pass per step, so
the weights are read once per step for all of them (README, "Concurrency").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import tallow

PROMPTS = [
    "Once upon a time",
    "The history of the printing press",
    "How to bake bread at home:",
    "def fibonacci(n):",
    "The capital of France is",
    "A short poem about the sea:",
    "Photosynthesis is the process",
    "Ten tips for learning a language:",
]


def _prompt(i: int) -> str:
    return f"{PROMPTS[i % len(PROMPTS)]} (story {i})"


async def _one(model: tallow.Model, i: int, gen_tokens: int, stamps: list[float]) -> int:
    n = 0
    stamps.append(time.perf_counter())
    async for _ in model.astream(_prompt(i), max_tokens=gen_tokens, temperature=0.0):
        stamps.append(time.perf_counter())
        n += 1
    return n


async def _round(model: tallow.Model, k: int, gen_tokens: int) -> dict[str, Any]:
    stamps: list[list[float]] = [[] for _ in range(k)]
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(_one(model, i, gen_tokens, stamps[i]) for i in range(k)))
    wall = time.perf_counter() - t0
    gaps = sorted(b - a for s in stamps for a, b in itertools.pairwise(s[1:]))
    firsts = sorted(s[1] - s[0] for s in stamps if len(s) > 1)
    return {
        "tokens": sum(counts),
        "wall_s": wall,
        "tok_s": sum(counts) / wall,
        "gap_median_ms": 1e3 * statistics.median(gaps),
        "gap_p99_ms": 1e3 * _p99(gaps),
        "first_median_ms": 1e3 * statistics.median(firsts),
        "first_p99_ms": 1e3 * _p99(firsts),
    }


def _p99(xs: list[float]) -> float:
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def measure(args: argparse.Namespace, k: int) -> dict[str, Any]:
    model = tallow.Model(
        args.model, n_threads=args.threads, n_ctx=args.n_ctx, max_sequences=args.max_sequences
    )
    gen_tokens, reps = args.gen_tokens, args.reps
    with model:
        asyncio.run(_round(model, min(k, 2), 8))  # warm-up: page in the weights, grow buffers
        runs = [asyncio.run(_round(model, k, gen_tokens)) for _ in range(reps)]
        stats = model.stats()
        assert stats.active == 0 and stats.kv_slots_in_use == 0, stats
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "tokens"}
    return {"streams": k, "runs": runs, **med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 32])
    ap.add_argument("--n-ctx", type=int, default=256, help="context of each sequence")
    ap.add_argument("--max-sequences", type=int, default=8, help="sequences running at once")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    streams = sorted(set(args.streams) | {1})
    rows = [measure(args, k) for k in streams]
    base = rows[0]
    print(
        f"{args.model.name}, {args.threads} threads, max_sequences {args.max_sequences},"
        f" {args.gen_tokens} tokens per stream, medians of {args.reps} runs"
    )
    print(
        "| streams | aggregate tok/s | vs 1 stream | between tokens: median | p99"
        " | p99 / 1 stream's median | first token: median | p99 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['streams']} | {r['tok_s']:.0f} | {r['tok_s'] / base['tok_s']:.2f}x"
            f" | {r['gap_median_ms']:.1f} ms | {r['gap_p99_ms']:.1f} ms"
            f" | {r['gap_p99_ms'] / base['gap_median_ms']:.2f}x"
            f" | {r['first_median_ms']:.0f} ms | {r['first_p99_ms']:.0f} ms |"
        )
    if args.json:
        meta = {"model": str(args.model), "threads": args.threads, "max_sequences": args.max_sequences}
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
