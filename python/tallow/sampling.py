"""Sampling options shared by ``Model`` and ``Chat`` methods, with their defaults."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, TypedDict

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover
    from typing_extensions import NotRequired

__all__ = ["DEFAULTS", "SamplingOptions", "build_options", "check_timeout"]


class SamplingOptions(TypedDict):
    """Keyword arguments accepted by every generation method.

    Sampling runs in llama.cpp's order: penalties, top_k, top_p, min_p, temperature.
    ``temperature=0`` is greedy decoding (lowest token id wins ties).
    """

    temperature: NotRequired[float]
    top_k: NotRequired[int]
    top_p: NotRequired[float]
    min_p: NotRequired[float]
    repeat_penalty: NotRequired[float]
    repeat_last_n: NotRequired[int]
    frequency_penalty: NotRequired[float]
    presence_penalty: NotRequired[float]
    seed: NotRequired[int | None]
    stop: NotRequired[str | list[str] | None]
    #: Added to a token's logit before anything else: ``{token_id: bias}``. ``-math.inf`` bans
    #: the token, ``math.inf`` forces it.
    logit_bias: NotRequired[Mapping[int, float] | None]
    #: Seconds the request may take from the call: it waits up to that long for room when the
    #: model's engine is full (``max_sequences`` running and ``max_queue`` waiting; then
    #: ``OverloadedError``), and stops with ``RequestTimeoutError`` if it has not finished by
    #: then. ``None``: no limit, and a full engine raises ``OverloadedError`` at once.
    timeout: NotRequired[float | None]


DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
    "repeat_last_n": 64,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "seed": None,
    "stop": None,
    "logit_bias": None,
    "timeout": None,
}

_FLOATS = ("temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty")
_INTS = ("top_k", "repeat_last_n")


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def build_options(
    max_tokens: int, options: SamplingOptions, *, ignore_eos: bool = False, logprobs: int | None = None
) -> dict[str, Any]:
    """Merges ``options`` over the defaults and checks types; value ranges are checked by the
    engine. ``logprobs``: report each token's log-probability and that many alternatives."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    merged: dict[str, Any] = {**DEFAULTS, **options}
    max_tokens = _check_int("max_tokens", max_tokens)
    if max_tokens < 0:
        raise ValueError(f"invalid value for 'max_tokens': must be >= 0, got {max_tokens}")
    for name in _FLOATS:
        v = merged[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a number, not {type(v).__name__}")
        merged[name] = float(v)
        if math.isnan(merged[name]):
            raise ValueError(f"invalid value for '{name}': must not be NaN")
    for name in _INTS:
        merged[name] = _check_int(name, merged[name])
    seed = merged["seed"]
    if seed is not None:
        seed = _check_int("seed", seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"invalid value for 'seed': must be in [0, 2**64), got {seed}")
        merged["seed"] = seed
    stop = merged["stop"]
    if stop is None:
        merged["stop"] = []
    elif isinstance(stop, str):
        merged["stop"] = [stop]
    elif isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        merged["stop"] = list(stop)
    else:
        raise TypeError("stop must be a string or a list of strings")
    merged["logit_bias"] = _logit_bias(merged["logit_bias"])
    merged["timeout"] = check_timeout(merged["timeout"])
    merged["max_tokens"] = max_tokens
    merged["ignore_eos"] = ignore_eos
    merged["logprobs"] = logprobs
    return merged


def _logit_bias(bias: object) -> list[tuple[int, float]]:
    """``{token_id: bias}`` as the engine's pairs; ids beyond the vocabulary are the engine's
    to refuse (it knows the vocabulary)."""
    if bias is None:
        return []
    if not isinstance(bias, Mapping):
        raise TypeError(f"logit_bias must be a mapping of token id to bias, not {type(bias).__name__}")
    pairs = []
    for tok, b in bias.items():
        tok = _check_int("logit_bias token id", tok)
        if not 0 <= tok < 2**32:
            raise ValueError(f"invalid value for 'logit_bias': token id {tok} is outside the vocabulary")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or math.isnan(b):
            raise ValueError(f"invalid value for 'logit_bias': the bias of {tok} must be a number, got {b!r}")
        pairs.append((tok, float(b)))
    return pairs


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as float seconds (or None), or the error a bad value deserves."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if not 0 <= timeout < math.inf:
        raise ValueError(f"invalid value for 'timeout': must be a finite number >= 0, got {timeout}")
    return float(timeout)
