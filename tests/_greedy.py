"""Greedy generation checked against a llama.cpp reference record (benches/reference.py's
``gen_tokens``, ``gen_eog`` and ``gen_top5_*``), shared by the parity tests."""

from __future__ import annotations

from typing import Any

import tallow


def greedy_ids(model: tallow.Model, prompt: dict[str, Any], n: int) -> tuple[list[int], str | None]:
    """Up to `n` greedy token ids for the record's prompt, and the finish reason."""
    stream = model._start(
        prompt["text"], n, {"temperature": 0.0}, add_bos=prompt["add_bos"], special=prompt["special"]
    )
    ids = [tok for _text, tok, _lp in stream if tok is not None]
    return ids, stream.finish_reason


def check_greedy(model: tallow.Model, prompt: dict[str, Any], n: int, label: str = "") -> None:
    """Asserts `model` generates llama.cpp's greedy tokens for the record, and stops as it did."""
    expected = list(prompt["gen_tokens"])
    if prompt["gen_eog"]:
        expected = expected[:-1]  # tallow stops at the end-of-generation token without emitting it
    ids, finish = greedy_ids(model, prompt, n)
    assert ids == expected, label + first_difference(ids, expected, prompt)
    assert finish == ("stop" if prompt["gen_eog"] else "length")


def first_difference(ids: list[int], expected: list[int], prompt: dict[str, Any]) -> str:
    n = 0
    while n < min(len(ids), len(expected)) and ids[n] == expected[n]:
        n += 1
    if n >= len(ids) or n >= len(expected):
        return f"lengths differ after a common prefix: {ids} vs {expected}"
    return (
        f"step {n}: tallow chose {ids[n]}, llama.cpp {expected[n]} "
        f"(its top-5 {prompt['gen_top5_ids'][n]}: {prompt['gen_top5_logits'][n]})"
    )
