"""Tokenization and greedy generation against llama.cpp's committed reference fixtures.

The fixtures come from benches/reference.py (llama-cpp-python 0.3.36, f16 KV cache, no flash
attention). Tokenization must match exactly, and so must greedy generation, token for token, on
both models: tallow reproduces llama.cpp's CPU arithmetic bit for bit (see
rust/tallow-core/tests/model_real.rs), so there is no tolerance to state.

llama.cpp's f32 summation orders depend on how many tokens a product has, so a prompt whose prefix
was reused from an earlier request (tallow, like llama-cpp-python, keeps the previous sequence's KV
cache) can differ from a fresh evaluation in the last bits. The references are fresh evaluations,
so each prompt here runs on a freshly loaded model (0.15 s for Gemma 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tallow

FIXTURES = Path(__file__).parent / "fixtures"


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


def _fresh_model(request: pytest.FixtureRequest, name: str) -> tallow.Model:
    path: Path = request.getfixturevalue("smollm2_path" if name == "smollm2-135m" else "gemma3_path")
    return tallow.Model(path, n_threads=2, n_ctx=1024)


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
    model = _fresh_model(request, model_name)
    expected = list(prompt["gen_tokens"])
    if prompt["gen_eog"]:
        expected = expected[:-1]  # tallow stops at the end-of-generation token without emitting it
    ids, finish = _greedy_ids(model, prompt, 32)
    assert ids == expected, _first_difference(ids, expected, prompt)
    assert finish == ("stop" if prompt["gen_eog"] else "length")


def _first_difference(ids: list[int], expected: list[int], prompt: dict[str, Any]) -> str:
    n = 0
    while n < min(len(ids), len(expected)) and ids[n] == expected[n]:
        n += 1
    if n >= len(ids) or n >= len(expected):
        return f"lengths differ after a common prefix: {ids} vs {expected}"
    return (
        f"step {n}: tallow chose {ids[n]}, llama.cpp {expected[n]} "
        f"(its top-5 {prompt['gen_top5_ids'][n]}: {prompt['gen_top5_logits'][n]})"
    )
