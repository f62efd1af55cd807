"""tallow: run GGUF language models locally on the CPU, from Python.

>>> import tallow
>>> model = tallow.Model("smollm2-135m")                 # doctest: +SKIP
>>> print(model.generate("Why is the sky blue?", max_tokens=64))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from . import _tallow
from ._tallow import Sampler
from .chat import Chat, Message
from .errors import (
    ContextOverflowError,
    GGUFError,
    ModelClosedError,
    OverloadedError,
    RequestTimeoutError,
    TallowError,
    TemplateError,
    UnsupportedModelError,
)
from .model import EngineStats, Model, ModelInfo

__version__: str = _tallow.__version__

__all__ = [
    "Chat",
    "ContextOverflowError",
    "EngineStats",
    "GGUFError",
    "Message",
    "Model",
    "ModelClosedError",
    "ModelInfo",
    "OverloadedError",
    "RequestTimeoutError",
    "Sampler",
    "TallowError",
    "TemplateError",
    "UnsupportedModelError",
    "__version__",
    "build_info",
]


def build_info() -> dict[str, Any]:
    """Version, CPU features and the kernels this machine runs with.

    ``kernels`` is the dot-product table (``avx512vnni``, ``avx2``, ``scalar``...),
    ``matmul_tiles`` the row-by-token tiles of the products and the weight types they serve
    (``avx512vnni x16: ...`` for 16-row tiles, ``avx2 4x1,1x4: ...``, ``none`` without),
    ``attention`` the attention kernel (``avx512`` or ``portable``).
    ``TALLOW_KERNELS=scalar`` in the environment forces the reference path for all three.
    """
    return dict(_tallow.build_info())
