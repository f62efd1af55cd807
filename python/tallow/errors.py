"""Exceptions raised by tallow. ``TallowError`` is the base of all of them."""

from __future__ import annotations

__all__ = [
    "ContextOverflowError",
    "GGUFError",
    "ModelClosedError",
    "OverloadedError",
    "RequestTimeoutError",
    "TallowError",
    "TemplateError",
    "UnsupportedModelError",
]


class TallowError(Exception):
    """Base class of tallow's own errors."""


class GGUFError(TallowError, ValueError):
    """A malformed or hostile GGUF file. The message names the byte offset and field."""


class UnsupportedModelError(TallowError):
    """A valid GGUF file whose architecture, tensor type or hyperparameters tallow does not support."""


class ContextOverflowError(TallowError):
    """The prompt does not fit in the model's context (``n_ctx``)."""


class OverloadedError(TallowError):
    """The engine cannot take another request now."""


class TemplateError(TallowError):
    """The model's chat template is missing, invalid, or failed to render."""


class ModelClosedError(TallowError, ValueError):
    """The model was closed (``Model.close()``): it takes no more requests, and the ones running
    when it closed end with this error."""


class RequestTimeoutError(TallowError, TimeoutError):
    """A request ran past its ``timeout`` (seconds from the call, waiting for room included): it
    was stopped there and its slot freed. ``text`` holds what ``generate``/``agenerate`` had
    produced; a stream has already yielded it."""

    text: str = ""
