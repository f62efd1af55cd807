"""The OpenAI API's completion and chat-completion shapes, as typed dicts.

``tallow serve`` answers with them and ``tallow.compat.llama_cpp`` returns them, so code written
for OpenAI's API (or llama-cpp-python, which returns the same dicts) reads tallow's results
unchanged. Field names and meanings are OpenAI's (https://platform.openai.com/docs/api-reference).
"""

from __future__ import annotations

import sys
from typing import Literal, TypedDict

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover
    from typing_extensions import NotRequired

__all__ = [
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionDelta",
    "ChatCompletionLogprobs",
    "ChatCompletionMessage",
    "ChatMessage",
    "ChatTokenLogprob",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "ErrorBody",
    "ErrorResponse",
    "FinishReason",
    "ModelCard",
    "ModelList",
    "TopLogprob",
    "Usage",
]

#: ``"stop"``: an end-of-generation token or a stop string; ``"length"``: ``max_tokens`` or
#: the end of the context.
FinishReason = Literal["stop", "length"]


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


# -- /v1/completions ------------------------------------------------------------------------


class CompletionLogprobs(TypedDict):
    """The legacy completions API's log-probabilities: one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float]
    #: ``{token text: logprob}`` of the most likely tokens at each position.
    top_logprobs: list[dict[str, float]]
    #: Where each token's text starts in the choice's text (characters).
    text_offset: list[int]


class CompletionChoice(TypedDict):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    #: ``None`` in the stream's chunks before the last.
    finish_reason: FinishReason | None


class Completion(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: NotRequired[Usage]


#: A streamed completion's chunks have the completion's shape; the text is the new part.
CompletionChunk = Completion


# -- /v1/chat/completions -------------------------------------------------------------------


class ChatMessage(TypedDict):
    """A message of a chat request."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionMessage(TypedDict):
    role: Literal["assistant"]
    content: str


class TopLogprob(TypedDict):
    token: str
    logprob: float
    #: The token's UTF-8 bytes (a token may hold part of a character).
    bytes: list[int]


class ChatTokenLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatCompletionLogprobs(TypedDict):
    content: list[ChatTokenLogprob]


class ChatCompletionChoice(TypedDict):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatCompletionLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class ChatCompletionDelta(TypedDict):
    role: NotRequired[Literal["assistant"]]
    content: NotRequired[str]


class ChatCompletionChunkChoice(TypedDict):
    index: int
    delta: ChatCompletionDelta
    logprobs: ChatCompletionLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    #: Only in the last chunk, when the request set ``stream_options.include_usage``.
    usage: NotRequired[Usage | None]


# -- /v1/models and errors ------------------------------------------------------------------


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorBody(TypedDict):
    message: str
    type: str
    #: The request field at fault, when one is.
    param: str | None
    code: str | None


class ErrorResponse(TypedDict):
    error: ErrorBody
