"""OpenAI-shaped completions over a ``tallow.Model``: request checking and response building.

Shared by ``tallow serve`` (which checks JSON bodies with :func:`parse_completion` and
:func:`parse_chat`) and ``tallow.compat.llama_cpp`` (which builds the same requests from keyword
arguments). A request runs as one engine request; its results come back whole or as chunks,
from sync or async code:

>>> req = parse_chat({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}, model)
>>> chat_completion(model, req, "smollm2")["choices"][0]["message"]["content"]  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _tallow
from .errors import TallowError
from .openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChunk,
    CompletionLogprobs,
    FinishReason,
    Usage,
)
from .sampling import SamplingOptions

if TYPE_CHECKING:
    from .model import Model

__all__ = [
    "MAX_STOP",
    "MAX_TOP_LOGPROBS",
    "ChatRequest",
    "CompletionRequest",
    "InvalidRequestError",
    "achat_completion",
    "achat_completion_chunks",
    "acompletion",
    "acompletion_chunks",
    "chat_completion",
    "chat_completion_chunks",
    "completion",
    "completion_chunks",
    "parse_chat",
    "parse_completion",
]

#: Most alternatives per token a request may ask for (OpenAI's limit for ``top_logprobs``).
MAX_TOP_LOGPROBS = 20
#: Most stop strings per request, and their longest length (characters): the stop matcher
#: checks every one at every token.
MAX_STOP = 16
MAX_STOP_CHARS = 1024


class InvalidRequestError(TallowError, ValueError):
    """A request field has a wrong type or value; ``param`` names it (OpenAI's ``param``)."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class _Request:
    #: ``None``: until the context is full.
    max_tokens: int | None
    options: SamplingOptions
    stream: bool = False
    #: Alternatives per token to report; ``None``: no log-probabilities.
    logprobs: int | None = None
    #: Streams end with a chunk holding ``usage`` (``stream_options.include_usage``).
    include_usage: bool = False
    #: The model the request names, if it names one.
    model: str | None = None


@dataclass
class CompletionRequest(_Request):
    prompt: str | list[int] = ""
    #: The prompt's text starts the completion's text.
    echo: bool = False


@dataclass
class ChatRequest(_Request):
    #: ``(role, content)``, roles ``system``, ``user`` and ``assistant``.
    messages: list[tuple[str, str]] = field(default_factory=list)


# -- checking requests -----------------------------------------------------------------------

#: Server defaults for fields a request leaves out: tallow's sampling defaults (those of
#: llama-cpp-python's server, whose users this serves), and OpenAI's ``max_tokens``.
_COMPLETION_MAX_TOKENS = 16


def _fail(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(param, f"invalid value for '{param}': {message}")


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(name, f"must be a number, got {type(v).__name__}")
    if not (lo <= v <= hi):  # NaN fails too
        raise _fail(name, f"must be in [{lo:g}, {hi:g}], got {v}")
    return float(v)


def _int(body: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(name, f"must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise _fail(name, f"must be in [{lo}, {hi}], got {v}")
    return v


def _bool(body: Mapping[str, Any], name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _fail(name, f"must be a boolean, got {type(v).__name__}")
    return v


def _stop(v: object) -> list[str] | None:
    if v is None:
        return None
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _fail("stop", "must be a string or a list of strings")
    if len(stops) > MAX_STOP:
        raise _fail("stop", f"at most {MAX_STOP} stop strings, got {len(stops)}")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise _fail("stop", f"a stop string may have at most {MAX_STOP_CHARS} characters")
    return [s for s in stops if s]


def _logit_bias(v: object, vocab_size: int) -> dict[int, float] | None:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise _fail("logit_bias", "must be an object mapping token ids to biases")
    bias: dict[int, float] = {}
    for key, b in v.items():
        try:
            tok = int(key)
        except (TypeError, ValueError):
            raise _fail("logit_bias", f"{key!r} is not a token id") from None
        if not 0 <= tok < vocab_size:
            raise _fail("logit_bias", f"token id {tok} is outside the vocabulary (size {vocab_size})")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            raise _fail("logit_bias", f"the bias of token {tok} must be a number in [-100, 100], got {b!r}")
        bias[tok] = float(b)
    return bias


def _unsupported(body: Mapping[str, Any], names: Iterable[str]) -> None:
    for name in names:
        v = body.get(name)
        if v not in (None, [], {}, ""):
            raise InvalidRequestError(name, f"'{name}' is not supported by tallow")


def _common(body: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """The fields completions and chat completions share, checked."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError(None, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _fail("model", "must be a string")
    for name in ("n", "best_of"):
        n = _int(body, name, -(2**63), 2**63)
        if n is not None and n != 1:
            raise _fail(name, f"tallow generates one choice per request; got {n}")
    _unsupported(body, ("tools", "functions", "tool_choice", "function_call", "grammar"))
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise _fail("response_format", "only {'type': 'text'} is supported by tallow")
    options: SamplingOptions = {}
    floats = {
        "temperature": (0.0, 1e6),
        "top_p": (0.0, 1.0),
        "min_p": (0.0, 1.0),
        "repeat_penalty": (1e-6, 1e6),
        "presence_penalty": (-2.0, 2.0),
        "frequency_penalty": (-2.0, 2.0),
    }
    for name, (lo, hi) in floats.items():
        v = _number(body, name, lo, hi)
        if v is not None:
            options[name] = v  # type: ignore[literal-required]
    top_k = _int(body, "top_k", 0, 2**31 - 1)
    if top_k is not None:
        options["top_k"] = top_k
    last_n = _int(body, "repeat_last_n", -1, 2**31 - 1)
    if last_n is not None:
        options["repeat_last_n"] = last_n
    seed = _int(body, "seed", -(2**63), 2**64 - 1)
    if seed is not None:
        options["seed"] = seed % 2**64
    stop = _stop(body.get("stop"))
    if stop:
        options["stop"] = stop
    bias = _logit_bias(body.get("logit_bias"), vocab_size)
    if bias:
        options["logit_bias"] = bias
    stream = _bool(body, "stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, Mapping):
            raise _fail("stream_options", "must be an object")
        include_usage = _bool(stream_options, "include_usage")
    return {"options": options, "stream": stream, "include_usage": include_usage, "model": model}


def parse_completion(body: Mapping[str, Any], model: Model) -> CompletionRequest:
    """Checks a ``/v1/completions`` body; ``InvalidRequestError`` names the first bad field.
    Unknown fields are ignored, as OpenAI's clients send some tallow has no use for."""
    common = _common(body, model.info.vocab_size)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise _fail("prompt", "must be a string or a list of token ids (one prompt per request)")
        vocab = model.info.vocab_size
        if bad := [t for t in prompt if not 0 <= t < vocab]:
            raise _fail("prompt", f"token id {bad[0]} is outside the vocabulary (size {vocab})")
    elif not isinstance(prompt, str):
        raise _fail("prompt", "must be a string or a list of token ids")
    _unsupported(body, ("suffix",))
    max_tokens = _int(body, "max_tokens", 0, 2**31 - 1) if body.get("max_tokens") is not None else None
    if "max_tokens" not in body:
        max_tokens = _COMPLETION_MAX_TOKENS
    logprobs = _int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    echo = _bool(body, "echo")
    if echo and logprobs is not None:
        raise InvalidRequestError("echo", "'echo' with 'logprobs' is not supported by tallow")
    return CompletionRequest(max_tokens=max_tokens, logprobs=logprobs, prompt=prompt, echo=echo, **common)


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _content(i: int, content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            text = part.get("text") if isinstance(part, Mapping) and part.get("type") == "text" else None
            if not isinstance(text, str):
                raise _fail(f"messages[{i}].content", "only text parts are supported by tallow")
            parts.append(text)
        return "".join(parts)
    raise _fail(f"messages[{i}].content", "must be a string or a list of text parts")


def parse_chat(body: Mapping[str, Any], model: Model) -> ChatRequest:
    """Checks a ``/v1/chat/completions`` body. The chat template is the model's own: a
    request cannot supply one."""
    common = _common(body, model.info.vocab_size)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages", "must be a non-empty list of messages")
    msgs: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise _fail(f"messages[{i}]", "must be an object with 'role' and 'content'")
        role = _ROLES.get(m.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise _fail(f"messages[{i}].role", f"must be one of {', '.join(_ROLES)}, got {m.get('role')!r}")
        msgs.append((role, _content(i, m.get("content"))))
    _unsupported(body, ("chat_template", "chat_format"))
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, name, 0, 2**31 - 1)
    top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    logprobs = (top or 0) if _bool(body, "logprobs") else None
    if top is not None and logprobs is None:
        raise InvalidRequestError("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    return ChatRequest(max_tokens=max_tokens, logprobs=logprobs, messages=msgs, **common)


# -- running them ----------------------------------------------------------------------------


def _start(model: Model, req: CompletionRequest | ChatRequest) -> _tallow.Stream:
    max_tokens = model.info.n_ctx if req.max_tokens is None else req.max_tokens
    if isinstance(req, ChatRequest):
        prompt = model._core.apply_chat_template(req.messages, True)
        # The template writes BOS itself when the model wants one.
        return model._start(
            prompt, max_tokens, req.options, add_bos=False, special=True, logprobs=req.logprobs
        )
    # Like llama.cpp's completion endpoints, special-token text in the prompt is parsed.
    return model._start(
        req.prompt, max_tokens, req.options, add_bos=True, special=True, logprobs=req.logprobs
    )


async def _astart(model: Model, req: CompletionRequest | ChatRequest) -> _tallow.Stream:
    """``_start`` off the event loop: rendering a chat template and tokenizing a long prompt take
    milliseconds (with the GIL released), while other requests' tokens keep flowing."""
    return await asyncio.to_thread(_start, model, req)


class _Builder:
    """Turns one request's engine pieces into OpenAI chunks, and the chunks into a response."""

    def __init__(self, model: Model, req: CompletionRequest | ChatRequest, model_id: str) -> None:
        self.model = model
        self.req = req
        self.chat = isinstance(req, ChatRequest)
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_id = model_id
        self.text: list[str] = []
        self.tokens: list[tuple[int, _tallow._Logprobs]] = []
        self.echo = ""
        #: Where the next token's text starts in prompt + completion (completions' logprobs).
        self.offset = 0
        if isinstance(req, CompletionRequest):
            prompt = req.prompt if isinstance(req.prompt, str) else model.detokenize(req.prompt)
            self.echo = prompt if req.echo else ""
            self.offset = len(prompt)

    def _head(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_id}

    def first(self) -> dict[str, Any] | None:
        """The chunk a stream starts with: the assistant's role (chat), the echoed prompt."""
        if self.chat:
            return {**self._head(), "choices": [_delta({"role": "assistant", "content": ""})]}
        if self.echo:
            return self._text_chunk(self.echo, None)
        return None

    def _text_chunk(self, text: str, logprobs: CompletionLogprobs | None) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": None}
        return {**self._head(), "choices": [choice]}

    def record(self, piece: _tallow._Piece) -> tuple[str, list[tuple[int, _tallow._Logprobs]]]:
        """Keeps one engine piece for the whole response: its text, and its token with its
        log-probabilities when the request asked for them."""
        text, token, logprobs = piece
        self.text.append(text)
        new: list[tuple[int, _tallow._Logprobs]] = []
        if token is not None and logprobs is not None:
            new = [(token, logprobs)]
            self.tokens.extend(new)
        return text, new

    def piece(self, piece: _tallow._Piece) -> dict[str, Any] | None:
        """A chunk for one engine piece, or None when it carries nothing to send yet."""
        text, new = self.record(piece)
        if not text and not new:
            return None
        if self.chat:
            delta = _delta({"content": text})
            delta["logprobs"] = self._chat_logprobs(new) if new else None
            return {**self._head(), "choices": [delta]}
        return self._text_chunk(text, self._completion_logprobs(new) if new else None)

    def last(self, stream: _tallow.Stream) -> list[dict[str, Any]]:
        """The chunk with the finish reason, and the usage chunk when asked for."""
        reason = _finish_reason(stream)
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": reason}
        chunks: list[dict[str, Any]] = [{**self._head(), "choices": [choice]}]
        if self.req.include_usage:
            chunks.append({**self._head(), "choices": [], "usage": _usage(stream)})
        return chunks

    def whole(self, stream: _tallow.Stream) -> dict[str, Any]:
        text = "".join(self.text)
        reason = _finish_reason(stream)
        kind = "chat.completion" if self.chat else "text_completion"
        head = {**self._head(), "object": kind}
        if self.chat:
            logprobs = self._chat_logprobs(self.tokens) if self.req.logprobs is not None else None
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": reason,
            }
        else:
            lp = self._completion_logprobs(self.tokens) if self.req.logprobs is not None else None
            choice = {"text": self.echo + text, "index": 0, "logprobs": lp, "finish_reason": reason}
        return {**head, "choices": [choice], "usage": _usage(stream)}

    def _pieces(self, tokens: list[tuple[int, _tallow._Logprobs]]) -> tuple[list[bytes], list[list[bytes]]]:
        ids = [t for t, _ in tokens]
        alts = [a for _, (_, top) in tokens for a, _ in top]
        data = self.model._core.token_bytes(ids + alts)
        own, rest = data[: len(ids)], iter(data[len(ids) :])
        return own, [[next(rest) for _ in top] for _, (_, top) in tokens]

    def _chat_logprobs(self, tokens: list[tuple[int, _tallow._Logprobs]]) -> ChatCompletionLogprobs:
        own, alts = self._pieces(tokens)
        content: list[ChatTokenLogprob] = []
        for (_, (lp, top)), b, top_b in zip(tokens, own, alts, strict=True):
            content.append(
                {
                    "token": _text(b),
                    "logprob": _finite(lp),
                    "bytes": list(b),
                    "top_logprobs": [
                        {"token": _text(tb), "logprob": _finite(tl), "bytes": list(tb)}
                        for (_, tl), tb in zip(top, top_b, strict=True)
                    ],
                }
            )
        return {"content": content}

    def _completion_logprobs(self, tokens: list[tuple[int, _tallow._Logprobs]]) -> CompletionLogprobs:
        """OpenAI's legacy shape: ``text_offset`` counts from the prompt's start, and each
        position's ``top_logprobs`` holds the chosen token too (so up to ``logprobs + 1``)."""
        own, alts = self._pieces(tokens)
        out: CompletionLogprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for (_, (lp, top)), b, top_b in zip(tokens, own, alts, strict=True):
            token = _text(b)
            out["tokens"].append(token)
            out["token_logprobs"].append(_finite(lp))
            top_text = {_text(tb): _finite(tl) for (_, tl), tb in zip(top, top_b, strict=True)}
            top_text[token] = _finite(lp)
            out["top_logprobs"].append(top_text)
            out["text_offset"].append(self.offset)
            self.offset += len(token)
        return out


def _delta(delta: dict[str, Any]) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def _finite(lp: float) -> float:
    # JSON has no -inf: an impossible token (a banned one) gets the lowest float.
    return lp if math.isfinite(lp) else -3.4028234663852886e38


def _finish_reason(stream: _tallow.Stream) -> FinishReason:
    reason = stream.finish_reason
    return "length" if reason == "length" else "stop"


def _usage(stream: _tallow.Stream) -> Usage:
    prompt, generated, _cached = stream.usage or (0, 0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def _chunks(builder: _Builder, stream: _tallow.Stream) -> Iterator[Any]:
    try:
        if (first := builder.first()) is not None:
            yield first
        for piece in stream:
            if (chunk := builder.piece(piece)) is not None:
                yield chunk
        yield from builder.last(stream)
    finally:
        stream.cancel()


async def _achunks(builder: _Builder, stream: _tallow.Stream) -> AsyncIterator[Any]:
    from .model import _apieces

    pieces = _apieces(stream)
    try:
        if (first := builder.first()) is not None:
            yield first
        async for piece in pieces:
            if (chunk := builder.piece(piece)) is not None:
                yield chunk
        for chunk in builder.last(stream):
            yield chunk
    finally:
        await pieces.aclose()


def _whole(model: Model, req: CompletionRequest | ChatRequest, model_id: str) -> Any:
    builder = _Builder(model, req, model_id)
    stream = _start(model, req)
    try:
        for piece in stream:
            builder.record(piece)
    finally:
        stream.cancel()
    return builder.whole(stream)


async def _awhole(model: Model, req: CompletionRequest | ChatRequest, model_id: str) -> Any:
    from .model import _apieces

    builder = _Builder(model, req, model_id)
    stream = await _astart(model, req)
    pieces = _apieces(stream)
    try:
        async for piece in pieces:
            builder.record(piece)
    finally:
        await pieces.aclose()
    return builder.whole(stream)


def completion(model: Model, req: CompletionRequest, model_id: str) -> Completion:
    """Runs ``req`` and returns the whole completion."""
    result: Completion = _whole(model, req, model_id)
    return result


def completion_chunks(model: Model, req: CompletionRequest, model_id: str) -> Iterator[CompletionChunk]:
    """Starts ``req`` (errors such as ``OverloadedError`` raise here, before any chunk) and
    returns its chunks as tokens come; closing the iterator cancels it."""
    return _chunks(_Builder(model, req, model_id), _start(model, req))


async def acompletion(model: Model, req: CompletionRequest, model_id: str) -> Completion:
    """Async ``completion``; cancelling the awaiting task cancels the request."""
    result: Completion = await _awhole(model, req, model_id)
    return result


async def acompletion_chunks(
    model: Model, req: CompletionRequest, model_id: str
) -> AsyncIterator[CompletionChunk]:
    """Async ``completion_chunks``: awaiting it starts ``req``; the chunks are awaited."""
    return _achunks(_Builder(model, req, model_id), await _astart(model, req))


def chat_completion(model: Model, req: ChatRequest, model_id: str) -> ChatCompletion:
    """Runs ``req`` and returns the whole chat completion."""
    result: ChatCompletion = _whole(model, req, model_id)
    return result


def chat_completion_chunks(model: Model, req: ChatRequest, model_id: str) -> Iterator[ChatCompletionChunk]:
    """Starts ``req`` (errors such as ``OverloadedError`` raise here, before any chunk) and
    returns its chunks as tokens come; closing the iterator cancels it."""
    return _chunks(_Builder(model, req, model_id), _start(model, req))


async def achat_completion(model: Model, req: ChatRequest, model_id: str) -> ChatCompletion:
    """Async ``chat_completion``; cancelling the awaiting task cancels the request."""
    result: ChatCompletion = await _awhole(model, req, model_id)
    return result


async def achat_completion_chunks(
    model: Model, req: ChatRequest, model_id: str
) -> AsyncIterator[ChatCompletionChunk]:
    """Async ``chat_completion_chunks``: awaiting it starts ``req``; the chunks are awaited."""
    return _achunks(_Builder(model, req, model_id), await _astart(model, req))
