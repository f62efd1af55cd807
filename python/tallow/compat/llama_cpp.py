"""``Llama`` of llama-cpp-python 0.3's high-level API, running on tallow.

Change ``from llama_cpp import Llama`` to ``from tallow.compat.llama_cpp import Llama`` and a
llama-cpp-python script runs unchanged on tallow's engine (on the CPU): the same constructor,
``create_completion()`` / ``__call__()`` and ``create_chat_completion()`` with the same
parameters and defaults (``max_tokens=16``, ``temperature=0.8`` for completions; no token limit
and ``temperature=0.2`` for chats; ``top_p=0.95``, ``min_p=0.05``, ``top_k=40``,
``repeat_penalty=1.0``), the same OpenAI-shaped result dicts, ``stream=True`` iterators of
chunks, ``tokenize()`` / ``detokenize()`` on bytes, ``n_ctx()``, ``n_vocab()``,
``token_bos()``, ``token_eos()``.

>>> from tallow.compat.llama_cpp import Llama                              # doctest: +SKIP
>>> llm = Llama(model_path="models/smollm2-135m-q4_1.gguf", n_ctx=2048)  # doctest: +SKIP
>>> out = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\\n"])
>>> print(out["choices"][0]["text"])                                      # doctest: +SKIP
>>> llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}])  # doctest: +SKIP

Requests are checked and answered by the same code as ``tallow serve``
(:mod:`tallow.openai_completions`). Sampling features tallow does not have (mirostat, locally
typical sampling, grammars, logits processors, stopping criteria, infill ``suffix``, tools)
raise ``ValueError`` naming the parameter instead of being ignored; embeddings raise
``NotImplementedError``. What else differs is listed in ``docs/migration-llama-cpp.md``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, NoReturn, TypeVar, overload

from ..errors import ContextOverflowError, ModelClosedError
from ..model import Model
from ..openai_completions import (
    ChatRequest,
    CompletionRequest,
    InvalidRequestError,
    chat_completion,
    chat_completion_chunks,
    completion,
    completion_chunks,
    parse_chat,
    parse_completion,
)
from ..openai_types import ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

__all__ = ["LLAMA_DEFAULT_SEED", "Llama", "LlamaContextWindowError"]

#: llama.cpp's "no seed": a ``Llama(seed=LLAMA_DEFAULT_SEED)`` (the default, also ``-1``)
#: samples with a fresh random seed; a per-call ``seed`` of this value samples that call at random.
LLAMA_DEFAULT_SEED = 0xFFFFFFFF

#: Constructor arguments of llama-cpp-python 0.3 that only tune llama.cpp's own machinery
#: (GPU offload, memory mapping, batching, KV-cache precision, NUMA, speculative drafts...):
#: accepted and ignored, as a CPU build of llama-cpp-python ignores ``n_gpu_layers``.
_IGNORED = frozenset(
    {
        "split_mode",
        "main_gpu",
        "tensor_split",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "n_ubatch",
        "rope_scaling_type",
        "pooling_type",
        "attention_type",
        "yarn_ext_factor",
        "yarn_attn_factor",
        "yarn_beta_fast",
        "yarn_beta_slow",
        "yarn_orig_ctx",
        "offload_kqv",
        "flash_attn",
        "op_offload",
        "swa_full",
        "no_perf",
        "numa",
        "draft_model",
        "type_k",
        "type_v",
        "spm_infill",
        "kv_unified",
    }
)

#: Constructor arguments whose non-default values would change the model's output, with those
#: defaults and what to do instead: refused rather than ignored.
_REFUSED: dict[str, tuple[object, str]] = {
    "rope_freq_base": (0.0, "tallow uses the RoPE base from the model file"),
    "rope_freq_scale": (0.0, "tallow uses the RoPE scaling from the model file"),
    "kv_overrides": (None, "tallow reads the model file's metadata as it is"),
    "lora_path": (None, "tallow does not apply LoRA adapters; merge the adapter into the GGUF file"),
    "lora_base": (None, "tallow does not apply LoRA adapters; merge the adapter into the GGUF file"),
    "tokenizer": (None, "tallow uses the tokenizer in the model file"),
}


class LlamaContextWindowError(ContextOverflowError, ValueError):
    """The prompt does not fit in the context: a ``ValueError``, as llama-cpp-python raises,
    and a ``tallow.ContextOverflowError``."""


_T = TypeVar("_T")


class Llama:
    """A GGUF model with llama-cpp-python 0.3's ``Llama`` interface, run by tallow on the CPU.

    ``model_path`` is the path of a ``.gguf`` file. ``n_ctx`` is the context (prompt plus
    generated tokens; ``0``: the model's training context), ``n_batch`` the prompt tokens
    computed per step, ``n_threads`` the CPU threads (None: tallow's default, one per core).
    ``seed`` seeds the calls that give no ``seed`` of their own (``LLAMA_DEFAULT_SEED`` or
    ``-1``: random). ``last_n_tokens_size`` is the window of ``repeat_penalty`` and the other
    penalties. The chat template is the model's own (from its GGUF file).

    ``n_gpu_layers``, ``n_threads_batch``, ``logits_all`` and ``verbose`` are accepted and
    ignored (logprobs work without ``logits_all``; nothing is printed), as are llama.cpp's
    tuning knobs (``use_mmap``, ``use_mlock``, ``n_ubatch``, ``flash_attn``, ``offload_kqv``,
    ``type_k``/``type_v``, ``numa``, ``yarn_*``, ``draft_model``...). Options that would
    change results tallow cannot reproduce (``lora_path``, ``kv_overrides``, ``rope_freq_base``,
    ``rope_freq_scale``, ``tokenizer``, ``chat_handler``, ``embedding=True``) raise
    ``NotImplementedError``; ``chat_format`` warns that the model's own template is used.

    One ``Llama`` may be used from several threads at once (tallow's engine batches their
    requests), unlike llama-cpp-python's.
    """

    def __init__(
        self,
        model_path: str,
        *,
        n_gpu_layers: int = 0,
        seed: int = LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        logits_all: bool = False,
        embedding: bool = False,
        last_n_tokens_size: int = 64,
        chat_format: str | None = None,
        chat_handler: Any = None,
        verbose: bool = True,
        **kwargs: Any,
    ) -> None:
        self._model: Model | None = None
        # Accepted and ignored (see the class docstring).
        del n_gpu_layers, n_threads_batch, logits_all
        if embedding:
            raise NotImplementedError(
                "Llama(embedding=True): tallow does not compute embeddings yet (only text generation)"
            )
        if chat_handler is not None:
            raise NotImplementedError(
                "Llama(chat_handler=...): tallow renders chats with the model's own chat template "
                "(from its GGUF file) and cannot run llama-cpp-python chat handlers; leave it None"
            )
        for name, (default, instead) in _REFUSED.items():
            if kwargs.get(name) and kwargs[name] != default:
                raise NotImplementedError(f"Llama({name}={kwargs[name]!r}) is not supported: {instead}")
        unknown = sorted(set(kwargs) - _IGNORED - set(_REFUSED))
        if unknown:
            # llama-cpp-python ignores unknown keyword arguments silently; a typo deserves a word.
            warnings.warn(
                f"Llama() ignores unknown keyword argument(s): {', '.join(unknown)}",
                UserWarning,
                stacklevel=2,
            )
        if chat_format not in (None, "chat_template.default"):
            warnings.warn(
                f"Llama(chat_format={chat_format!r}) is ignored: tallow renders chats with the "
                "model's own chat template (from its GGUF file)",
                UserWarning,
                stacklevel=2,
            )
        for name, value in (("seed", seed), ("n_ctx", n_ctx), ("n_batch", n_batch)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if n_ctx < 0:
            raise ValueError(f"invalid value for 'n_ctx': must be >= 0 (0: the model's), got {n_ctx}")
        if not os.path.exists(model_path):
            raise ValueError(f"Model path does not exist: {model_path}")
        #: The model file's path; results name it as their ``model``.
        self.model_path: str = os.fspath(model_path)
        self.verbose = verbose
        self.chat_format: str = "chat_template.default"
        self.last_n_tokens_size = last_n_tokens_size
        self._seed = seed
        #: As in llama-cpp-python, 0 (or None) is the default thread count.
        self.n_threads = n_threads or None
        # n_ctx=0: the model's training context, as in llama.cpp (and tallow.Model). A prompt
        # batch larger than the context is harmless: no prompt is longer than the context.
        self._model = Model(
            model_path, n_threads=self.n_threads, n_ctx=n_ctx, n_batch=max(1, n_batch), allow_download=False
        )
        #: As in llama-cpp-python: the prompt batch never exceeds the context.
        self.n_batch = min(self._model.info.n_ctx, n_batch)

    def __repr__(self) -> str:
        return f"Llama(model_path={self.model_path!r})"

    @property
    def model(self) -> Model:
        """The ``tallow.Model`` doing the work (in llama-cpp-python, a ctypes model pointer)."""
        model = self._model
        if model is None:
            raise ModelClosedError(f"{self!r} is closed")
        return model

    def close(self) -> None:
        """Frees the model; later use raises ``tallow.ModelClosedError`` (a ``ValueError``).
        Idempotent."""
        model, self._model = self.__dict__.get("_model"), None
        if model is not None:
            model.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105 - no module lookups at interpreter shutdown
            self.close()
        except Exception:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the model ------------------------------------------------------------------------

    def n_ctx(self) -> int:
        """The context size (tokens)."""
        return self.model.info.n_ctx

    def n_vocab(self) -> int:
        """The vocabulary size."""
        return self.model.info.vocab_size

    def token_bos(self) -> int:
        """The beginning-of-sequence token id, ``-1`` if the model file names none."""
        bos = self.model.info.bos_token_id
        return -1 if bos is None else bos

    def token_eos(self) -> int:
        """The end-of-sequence token id, ``-1`` if the model file names none."""
        eos = self.model.info.eos_token_id
        return -1 if eos is None else eos

    def token_nl(self) -> int:
        """The id of the newline token."""
        return self.model.tokenize("\n", add_bos=False)[-1]

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of the UTF-8 ``text``. ``add_bos`` adds BOS if the model uses one;
        ``special`` parses special-token text such as ``<|im_start|>`` into its token.
        ``text`` must be valid UTF-8 (``UnicodeDecodeError`` otherwise)."""
        if isinstance(text, str):
            raise TypeError("tokenize() takes bytes, as llama-cpp-python's: pass text.encode('utf-8')")
        if not isinstance(text, (bytes, bytearray, memoryview)):
            raise TypeError(f"text must be bytes, not {type(text).__name__}")
        return self.model.tokenize(bytes(text).decode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        """The bytes of ``tokens``, exactly (a token may hold part of a UTF-8 character).
        ``special=False`` gives nothing for control tokens (BOS, EOS, ``<|im_end|>``...).
        ``prev_tokens`` is ignored, as in llama-cpp-python. As there, a leading space is dropped
        after a leading BOS."""
        del prev_tokens
        ids = list(tokens)
        out = b"".join(self.model._core.token_bytes(ids, special))
        if ids and ids[0] == self.token_bos() and out[:1] == b" ":
            out = out[1:]
        return out

    # -- seeds ----------------------------------------------------------------------------

    def set_seed(self, seed: int) -> None:
        """Sets the seed the next call without a ``seed`` of its own derives its seed from."""
        self._seed = _check_seed(seed)

    def _call_seed(self, seed: int | None) -> int | None:
        """The engine seed of one call (None: random). As in llama-cpp-python 0.3, a call's
        ``seed`` is used and becomes the instance's seed; a call without one uses
        ``random.Random(previous).randint(0, 2**32)`` and keeps it, so a fixed constructor seed
        gives a reproducible sequence of calls. Unlike llama-cpp-python 0.3 (issue #1809), the
        default ``LLAMA_DEFAULT_SEED`` really is random: each call gets a fresh seed."""
        if seed is not None:
            self._seed = seed
        elif self._seed % 2**32 == LLAMA_DEFAULT_SEED:
            return None
        else:
            self._seed = random.Random(self._seed).randint(0, 2**32)
        s = self._seed % 2**32  # llama.cpp's seeds are 32-bit
        return None if s == LLAMA_DEFAULT_SEED else s

    # -- completions ----------------------------------------------------------------------

    @overload
    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = ...,
        max_tokens: int | None = ...,
        temperature: float = ...,
        top_p: float = ...,
        min_p: float = ...,
        typical_p: float = ...,
        logprobs: int | None = ...,
        echo: bool = ...,
        stop: str | list[str] | None = ...,
        frequency_penalty: float = ...,
        presence_penalty: float = ...,
        repeat_penalty: float = ...,
        top_k: int = ...,
        stream: Literal[False] = ...,
        seed: int | None = ...,
        tfs_z: float = ...,
        mirostat_mode: int = ...,
        mirostat_tau: float = ...,
        mirostat_eta: float = ...,
        model: str | None = ...,
        stopping_criteria: Any = ...,
        logits_processor: Any = ...,
        grammar: Any = ...,
        logit_bias: Mapping[int, float] | None = ...,
    ) -> Completion: ...
    @overload
    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = ...,
        max_tokens: int | None = ...,
        temperature: float = ...,
        top_p: float = ...,
        min_p: float = ...,
        typical_p: float = ...,
        logprobs: int | None = ...,
        echo: bool = ...,
        stop: str | list[str] | None = ...,
        frequency_penalty: float = ...,
        presence_penalty: float = ...,
        repeat_penalty: float = ...,
        top_k: int = ...,
        *,
        stream: Literal[True],
        seed: int | None = ...,
        tfs_z: float = ...,
        mirostat_mode: int = ...,
        mirostat_tau: float = ...,
        mirostat_eta: float = ...,
        model: str | None = ...,
        stopping_criteria: Any = ...,
        logits_processor: Any = ...,
        grammar: Any = ...,
        logit_bias: Mapping[int, float] | None = ...,
    ) -> Iterator[CompletionChunk]: ...
    @overload
    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = ...,
        max_tokens: int | None = ...,
        temperature: float = ...,
        top_p: float = ...,
        min_p: float = ...,
        typical_p: float = ...,
        logprobs: int | None = ...,
        echo: bool = ...,
        stop: str | list[str] | None = ...,
        frequency_penalty: float = ...,
        presence_penalty: float = ...,
        repeat_penalty: float = ...,
        top_k: int = ...,
        stream: bool = ...,
        seed: int | None = ...,
        tfs_z: float = ...,
        mirostat_mode: int = ...,
        mirostat_tau: float = ...,
        mirostat_eta: float = ...,
        model: str | None = ...,
        stopping_criteria: Any = ...,
        logits_processor: Any = ...,
        grammar: Any = ...,
        logit_bias: Mapping[int, float] | None = ...,
    ) -> Completion | Iterator[CompletionChunk]: ...

    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = [],  # noqa: B006 - llama-cpp-python's default, never mutated
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: Any = None,
        logits_processor: Any = None,
        grammar: Any = None,
        logit_bias: Mapping[int, float] | None = None,
    ) -> Completion | Iterator[CompletionChunk]:
        """Completes ``prompt`` (text, in which special-token text is parsed, or token ids) and
        returns an OpenAI ``text_completion`` dict, or with ``stream=True`` an iterator of its
        chunks (leaving the loop early stops the generation).

        At most ``max_tokens`` tokens (None or ``<= 0``: until the context is full); stops at
        an end-of-generation token or a ``stop`` string (not included). Sampling: penalties
        (over the last ``last_n_tokens_size`` tokens), ``top_k``, ``top_p``, ``min_p``,
        ``temperature`` (0: greedy; below 0: plain sampling from the whole distribution).
        ``logprobs=n``: each token's log-probability and the ``n`` most likely alternatives.
        ``echo``: the result's text starts with the prompt. ``tfs_z`` is ignored, as in
        llama-cpp-python 0.3; ``mirostat_tau``/``mirostat_eta`` only matter with mirostat,
        which is not supported.
        """
        del tfs_z, mirostat_tau, mirostat_eta
        _refuse(temperature, typical_p, mirostat_mode, logits_processor, stopping_criteria, grammar)
        if suffix is not None:
            raise InvalidRequestError("suffix", "'suffix' (fill-in-the-middle) is not supported by tallow")
        body = self._body(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            min_p=min_p,
            top_k=top_k,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            stop=stop,
            seed=seed,
            stream=stream,
            model=model,
            logit_bias=logit_bias,
        )
        body["prompt"] = prompt
        body["logprobs"] = logprobs
        body["echo"] = echo
        req: CompletionRequest = self._prepare(parse_completion, body, seed, logit_bias)
        model_id = self.model_path if model is None else model
        if stream:
            with _context_window():
                return self._hold(completion_chunks(self.model, req, model_id))
        with _context_window():
            return completion(self.model, req, model_id)

    __call__ = create_completion

    # -- chat completions -----------------------------------------------------------------

    @overload
    def create_chat_completion(
        self,
        messages: list[Any],
        functions: Any = ...,
        function_call: Any = ...,
        tools: Any = ...,
        tool_choice: Any = ...,
        temperature: float = ...,
        top_p: float = ...,
        top_k: int = ...,
        min_p: float = ...,
        typical_p: float = ...,
        stream: Literal[False] = ...,
        stop: str | list[str] | None = ...,
        seed: int | None = ...,
        response_format: Any = ...,
        max_tokens: int | None = ...,
        presence_penalty: float = ...,
        frequency_penalty: float = ...,
        repeat_penalty: float = ...,
        tfs_z: float = ...,
        mirostat_mode: int = ...,
        mirostat_tau: float = ...,
        mirostat_eta: float = ...,
        model: str | None = ...,
        logits_processor: Any = ...,
        grammar: Any = ...,
        logit_bias: Mapping[int, float] | None = ...,
        logprobs: bool | None = ...,
        top_logprobs: int | None = ...,
    ) -> ChatCompletion: ...
    @overload
    def create_chat_completion(
        self,
        messages: list[Any],
        functions: Any = ...,
        function_call: Any = ...,
        tools: Any = ...,
        tool_choice: Any = ...,
        temperature: float = ...,
        top_p: float = ...,
        top_k: int = ...,
        min_p: float = ...,
        typical_p: float = ...,
        *,
        stream: Literal[True],
        stop: str | list[str] | None = ...,
        seed: int | None = ...,
        response_format: Any = ...,
        max_tokens: int | None = ...,
        presence_penalty: float = ...,
        frequency_penalty: float = ...,
        repeat_penalty: float = ...,
        tfs_z: float = ...,
        mirostat_mode: int = ...,
        mirostat_tau: float = ...,
        mirostat_eta: float = ...,
        model: str | None = ...,
        logits_processor: Any = ...,
        grammar: Any = ...,
        logit_bias: Mapping[int, float] | None = ...,
        logprobs: bool | None = ...,
        top_logprobs: int | None = ...,
    ) -> Iterator[ChatCompletionChunk]: ...
    @overload
    def create_chat_completion(
        self,
        messages: list[Any],
        functions: Any = ...,
        function_call: Any = ...,
        tools: Any = ...,
        tool_choice: Any = ...,
        temperature: float = ...,
        top_p: float = ...,
        top_k: int = ...,
        min_p: float = ...,
        typical_p: float = ...,
        stream: bool = ...,
        stop: str | list[str] | None = ...,
        seed: int | None = ...,
        response_format: Any = ...,
        max_tokens: int | None = ...,
        presence_penalty: float = ...,
        frequency_penalty: float = ...,
        repeat_penalty: float = ...,
        tfs_z: float = ...,
        mirostat_mode: int = ...,
        mirostat_tau: float = ...,
        mirostat_eta: float = ...,
        model: str | None = ...,
        logits_processor: Any = ...,
        grammar: Any = ...,
        logit_bias: Mapping[int, float] | None = ...,
        logprobs: bool | None = ...,
        top_logprobs: int | None = ...,
    ) -> ChatCompletion | Iterator[ChatCompletionChunk]: ...

    def create_chat_completion(
        self,
        messages: list[Any],
        functions: Any = None,
        function_call: Any = None,
        tools: Any = None,
        tool_choice: Any = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = [],  # noqa: B006 - llama-cpp-python's default, never mutated
        seed: int | None = None,
        response_format: Any = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logits_processor: Any = None,
        grammar: Any = None,
        logit_bias: Mapping[int, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
    ) -> ChatCompletion | Iterator[ChatCompletionChunk]:
        """Answers ``messages`` (``{"role": "system" | "user" | "assistant", "content": ...}``
        dicts) with the model's own chat template; returns an OpenAI ``chat.completion`` dict,
        or with ``stream=True`` an iterator of ``chat.completion.chunk`` dicts (the first holds
        the role, the last the finish reason).

        Parameters as in :meth:`create_completion`; ``max_tokens`` None (the default): until
        the context is full. ``logprobs=True`` with ``top_logprobs=n``: OpenAI's per-token
        log-probabilities with ``n`` alternatives. ``tools``, ``functions``, ``function_call``,
        ``tool_choice`` and a ``response_format`` other than ``{"type": "text"}`` raise
        ``ValueError``: tallow has no tool calls or constrained output.
        """
        del tfs_z, mirostat_tau, mirostat_eta
        _refuse(temperature, typical_p, mirostat_mode, logits_processor, None, grammar)
        body = self._body(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            min_p=min_p,
            top_k=top_k,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            stop=stop,
            seed=seed,
            stream=stream,
            model=model,
            logit_bias=logit_bias,
        )
        body["messages"] = messages
        body.update(functions=functions, function_call=function_call, tools=tools, tool_choice=tool_choice)
        body["response_format"] = response_format
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        req: ChatRequest = self._prepare(parse_chat, body, seed, logit_bias)
        model_id = self.model_path if model is None else model
        with _context_window():
            if stream:
                return self._hold(chat_completion_chunks(self.model, req, model_id))
            return chat_completion(self.model, req, model_id)

    # -- not provided ---------------------------------------------------------------------

    def create_embedding(self, input: str | list[str], model: str | None = None) -> NoReturn:
        """Not provided: tallow does not compute embeddings yet."""
        raise NotImplementedError("create_embedding(): tallow does not compute embeddings yet")

    def embed(self, input: str | list[str], *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: tallow does not compute embeddings yet."""
        raise NotImplementedError("embed(): tallow does not compute embeddings yet")

    # -- helpers --------------------------------------------------------------------------

    def _body(
        self,
        *,
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        min_p: float,
        top_k: int,
        repeat_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
        stop: str | list[str] | None,
        seed: int | None,
        stream: bool,
        model: str | None,
        logit_bias: Mapping[int, float] | None,
    ) -> dict[str, Any]:
        """An OpenAI request body with llama-cpp-python's meanings of the sampling values
        translated into tallow's (the body checker refuses values the OpenAI API refuses)."""
        _check_seed(seed, allow_none=True)
        if _is_number(temperature) and temperature < 0:
            # llama.cpp samples from the whole (penalized) distribution: no filters, no scaling.
            temperature, top_k, top_p, min_p = 1.0, 0, 1.0, 0.0
        if _is_int(top_k) and top_k < 0:
            top_k = 0  # <= 0: no top-k filter, in llama.cpp and tallow
        if _is_number(top_p) and top_p > 1:
            top_p = 1.0  # >= 1: no top-p filter
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens <= 0:
            max_tokens = None
        if not isinstance(stream, bool):
            stream = bool(stream)
        bias: Any = logit_bias
        if isinstance(logit_bias, Mapping):
            # Infinite biases (ban or force a token) are checked as the largest the API allows.
            bias = {k: math.copysign(100.0, b) if _is_inf(b) else b for k, b in logit_bias.items()}
        return {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "min_p": min_p,
            "top_k": top_k,
            "repeat_penalty": repeat_penalty,
            "repeat_last_n": self.last_n_tokens_size,
            "frequency_penalty": frequency_penalty,
            "presence_penalty": presence_penalty,
            "stop": stop,
            "stream": stream,
            "model": model,
            "logit_bias": bias,
        }

    def _prepare(
        self, parse: Any, body: dict[str, Any], seed: int | None, logit_bias: Mapping[int, float] | None
    ) -> Any:
        req: CompletionRequest | ChatRequest = parse(body, self.model)
        if isinstance(logit_bias, Mapping) and any(_is_inf(b) for b in logit_bias.values()):
            bias = dict(req.options.get("logit_bias") or {})
            bias.update({int(k): float(b) for k, b in logit_bias.items() if _is_inf(b)})
            req.options["logit_bias"] = bias
        call_seed = self._call_seed(seed)
        if call_seed is not None:
            req.options["seed"] = call_seed
        return req

    def _hold(self, chunks: Iterator[_T]) -> Iterator[_T]:
        """``chunks``, keeping this ``Llama`` alive while they are read (as llama-cpp-python's
        generators do): ``for c in Llama(...)(..., stream=True)`` must not close the model."""
        try:
            yield from chunks
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


@contextlib.contextmanager
def _context_window() -> Iterator[None]:
    """A prompt too long for the context raises ``ValueError``, as in llama-cpp-python."""
    try:
        yield
    except ContextOverflowError as e:
        raise LlamaContextWindowError(str(e)) from e


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_inf(v: object) -> bool:
    return isinstance(v, float) and math.isinf(v)


def _check_seed(seed: object, allow_none: bool = False) -> Any:
    if seed is None and allow_none:
        return None
    if not _is_int(seed):
        raise InvalidRequestError("seed", f"invalid value for 'seed': must be an integer, got {seed!r}")
    return seed


def _refuse(
    temperature: object,
    typical_p: object,
    mirostat_mode: object,
    logits_processor: object,
    stopping_criteria: object,
    grammar: object,
) -> None:
    """Refuses the llama-cpp-python features tallow lacks, where they would change the result
    (greedy decoding and ``temperature < 0`` ignore mirostat and typical sampling there)."""
    sampled = _is_number(temperature) and temperature > 0  # type: ignore[operator]
    if sampled and mirostat_mode in (1, 2):
        raise InvalidRequestError(
            "mirostat_mode", "mirostat sampling (mirostat_mode=1 or 2) is not supported by tallow"
        )
    if sampled and _is_number(typical_p) and typical_p < 1:  # type: ignore[operator]
        raise InvalidRequestError(
            "typical_p", "locally typical sampling (typical_p < 1) is not supported by tallow"
        )
    if logits_processor:
        raise InvalidRequestError(
            "logits_processor", "'logits_processor' is not supported by tallow (use logit_bias)"
        )
    if stopping_criteria:
        raise InvalidRequestError(
            "stopping_criteria", "'stopping_criteria' is not supported by tallow (use stop or max_tokens)"
        )
    if grammar is not None:
        raise InvalidRequestError("grammar", "'grammar' (constrained sampling) is not supported by tallow")
