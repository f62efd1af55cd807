"""Tokenization and greedy generation against llama.cpp's committed reference fixtures.

The fixtures come from benches/reference.py (llama-cpp-python 0.3.36, f16 KV cache, no flash
attention). Tokenization must match exactly.

Greedy generation must match token for token. SmolLM2 (Q4_1/Q8_0) does on every prompt: tallow
reproduces llama.cpp's arithmetic there bit for bit. Gemma 3's K-quant products do not yet sum in
llama.cpp's order, so its logits differ slightly (see rust/tallow-core/tests/model_real.rs) and a
near-tie can flip: for Gemma 3, at the first divergence tallow's token must be one llama.cpp itself
scores within NEAR_TIE of its best. Measured: 16/16 SmolLM2 and 9/17 Gemma 3 prompts identical;
each Gemma 3 divergence is at llama.cpp's second choice, 0.02-0.33 below its best.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tallow

FIXTURES = Path(__file__).parent / "fixtures"
#: How far below llama.cpp's best logit tallow's greedy token may score (at the first divergence).
NEAR_TIE = 0.4


def _load(model: str) -> list[dict[str, Any]]:
    data = json.loads((FIXTURES / f"reference_{model}.json").read_text())
    prompts: list[dict[str, Any]] = data["prompts"]
    return prompts


SMOLLM2_PROMPTS = _load("smollm2-135m")
GEMMA3_PROMPTS = _load("gemma3-270m")


def _model(request: pytest.FixtureRequest, name: str) -> tallow.Model:
    fixture = "smollm2" if name == "smollm2-135m" else "gemma3"
    model: tallow.Model = request.getfixturevalue(fixture)
    return model


def _greedy_ids(model: tallow.Model, prompt: dict[str, Any], n: int) -> tuple[list[int], str | None]:
    stream = model._start(
        prompt["text"], n, {"temperature": 0.0}, add_bos=prompt["add_bos"], special=prompt["special"]
    )
    ids = [tok for _text, tok in stream if tok is not None]
    return ids, stream.finish_reason


CASES = [("smollm2-135m", p) for p in SMOLLM2_PROMPTS] + [("gemma3-270m", p) for p in GEMMA3_PROMPTS]
IDS = [f"{m}-{p['name']}" for m, p in CASES]


@pytest.mark.parametrize(("model_name", "prompt"), CASES, ids=IDS)
def test_tokenization_matches_llama_cpp(
    request: pytest.FixtureRequest, model_name: str, prompt: dict[str, Any]
) -> None:
    model = _model(request, model_name)
    assert (
        model.tokenize(prompt["text"], add_bos=prompt["add_bos"], special=prompt["special"])
        == prompt["tokens"]
    )


@pytest.mark.parametrize(("model_name", "prompt"), CASES, ids=IDS)
def test_greedy_generation_matches_llama_cpp(
    request: pytest.FixtureRequest, model_name: str, prompt: dict[str, Any]
) -> None:
    model = _model(request, model_name)
    expected = list(prompt["gen_tokens"])
    if prompt["gen_eog"]:
        expected = expected[:-1]  # tallow stops at the end-of-generation token without emitting it
    ids, finish = _greedy_ids(model, prompt, 32)
    if model_name == "smollm2-135m":
        assert ids == expected
    if ids == expected:
        assert finish == ("stop" if prompt["gen_eog"] else "length")
        return
    n = 0
    while n < min(len(ids), len(expected)) and ids[n] == expected[n]:
        n += 1
    assert n < len(expected) and n < len(ids), f"lengths differ after a common prefix: {ids} vs {expected}"
    top_ids = prompt["gen_top5_ids"][n]
    top_logits = prompt["gen_top5_logits"][n]
    assert ids[n] in top_ids, f"step {n}: tallow chose {ids[n]}, llama.cpp's top-5 was {top_ids}"
    gap = top_logits[0] - top_logits[top_ids.index(ids[n])]
    assert gap < NEAR_TIE, f"step {n}: tallow's token scores {gap:.3f} below llama.cpp's best there"
