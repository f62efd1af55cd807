"""Tokenization and greedy generation against llama.cpp's committed reference fixtures.

The fixtures come from benches/reference.py (llama-cpp-python 0.3.36, f16 KV cache, no flash
attention). Tokenization must match exactly, and so must greedy generation, token for token, on
both models: tallow reproduces llama.cpp's CPU arithmetic bit for bit (see
rust/tallow-core/tests/model_real.rs), so there is no tolerance to state.

Each prompt runs on a freshly loaded model (0.15 s for Gemma 3), so nothing but the prompt
decides the result. (A request that reuses another's cached prompt prefix gives the same tokens:
the engine reuses only positions computed with the summation orders the prompt gets alone,
rust/tallow-core/src/engine/prefix.rs.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tallow
from _greedy import check_greedy

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
    check_greedy(_fresh_model(request, model_name), prompt, 32)
