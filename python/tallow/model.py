"""``tallow.Model``: a loaded GGUF model and its generation methods."""

from __future__ import annotations

import functools
import itertools
import os
import struct
import sys
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from . import _tallow
from .catalog import repack_dir, resolve_model
from .errors import ModelClosedError, OverloadedError, RequestTimeoutError
from .sampling import SamplingOptions, build_options, check_timeout

if sys.version_info >= (3, 11):
    from typing import Self, Unpack
else:  # pragma: no cover
    from typing_extensions import Self, Unpack

if TYPE_CHECKING:
    # asyncio is imported where async code runs: it is most of the cost of `import tallow`
    # (28 of 52 ms), which synchronous users should not pay.
    import asyncio

    from .chat import Chat

__all__ = ["EngineStats", "Model", "ModelInfo"]

#: Values of ``TALLOW_REPACK_CACHE`` that turn the repack cache off.
_OFF = frozenset({"0", "off", "false", "no"})


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself."""

    architecture: str
    name: str | None
    n_params: int
    quantization: str
    context_length: int | None
    vocab_size: int
    #: The beginning- and end-of-sequence token ids, if the model has them.
    bos_token_id: int | None
    eos_token_id: int | None
    chat_template: str | None
    n_ctx: int
    n_threads: int
    #: What the repack cache did for this load: ``"hit"`` (the repacked weights were mapped from
    #: the cache), ``"written"`` (a new cache file is being written after the load, see
    #: ``Model``), ``"skipped"`` (nothing to repack, or the cache directory could not be
    #: written) or ``"off"``.
    repack_cache: Literal["hit", "written", "skipped", "off"]


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of a model's engine (``Model.stats()``), counted since it was loaded."""

    #: Requests generating now, and requests submitted but not started yet.
    active: int
    queued: int
    #: Requests that ended by a stop string or token, ``max_tokens`` or the context's end; that
    #: were cancelled (before or after they started); that failed with an error.
    finished: int
    cancelled: int
    failed: int
    #: KV caches held by running requests, and how many may be (``max_sequences``).
    kv_slots_in_use: int
    kv_slots: int
    #: Prompt tokens computed and tokens generated.
    prompt_tokens: int
    generated_tokens: int
    #: Prompt tokens taken from a cached prefix instead of computed: a chat's history, or
    #: another request's prompt (exactly reused: the result is the same as without it).
    cached_prompt_tokens: int
    #: Seconds spent computing, and generated tokens per second of it.
    busy_seconds: float
    tokens_per_second: float


class Model:
    """A GGUF model loaded for generation.

    ``model`` is a path to a ``.gguf`` file or a catalog name (see ``tallow models``), which is
    downloaded on first use. One ``Model`` may be shared by many threads and asyncio tasks: its
    engine thread runs up to ``max_sequences`` requests at once (default 8), batching their
    tokens into one forward pass per step, and queues up to ``max_queue`` more (default 256);
    past that a request raises ``OverloadedError``, or waits for room when given a
    ``timeout``. The GIL is released while it computes. Each request gives the same text as it
    would alone. Prompts run in chunks of ``n_batch`` tokens (default 512), in smaller pieces
    beside requests that are generating; a cancelled request stops between them. ``n_ctx`` is
    the context of each request (prompt and generated tokens; default: the model's training
    context, up to 4096; ``0``: the model's, uncapped); each running request holds a KV cache
    of that size.

    Weights are repacked into the layout this CPU's kernels read fastest. The repacked copies
    are kept in ``$TALLOW_HOME/repack`` (``~/.cache/tallow/repack``), so later loads of the same
    file map them instead of repacking: ``repack_cache=False`` (or ``TALLOW_REPACK_CACHE=0`` in
    the environment) turns that off, and every load repacks in memory. The first load of a file
    returns once it is mapped, and a background thread writes the copies (a generation that
    needs a weight first packs it itself); before the interpreter exits it waits for that
    thread, so that the next load finds the file. The cache holds at most 32 GiB
    (``TALLOW_REPACK_CACHE_MAX_GB``), least recently used first out, and drops the copies of
    files that were changed or deleted.

    >>> model = tallow.Model("smollm2-135m")                      # doctest: +SKIP
    >>> model.generate("The capital of France is", max_tokens=8, temperature=0)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        n_ctx: int | None = None,
        allow_download: bool = True,
        repack_cache: bool | None = None,
        max_sequences: int | None = None,
        max_queue: int | None = None,
        n_batch: int | None = None,
    ) -> None:
        if repack_cache is not None and not isinstance(repack_cache, bool):
            raise TypeError(f"repack_cache must be a bool or None, not {type(repack_cache).__name__}")
        sizes = {
            "n_threads": n_threads,
            "n_ctx": n_ctx,
            "max_sequences": max_sequences,
            "max_queue": max_queue,
            "n_batch": n_batch,
        }
        for name, value in sizes.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
            least = 0 if name == "n_ctx" else 1  # n_ctx=0: the model's training context
            if value is not None and value < least:
                raise ValueError(f"invalid value for '{name}': must be >= {least}, got {value}")
        self.path: Path = resolve_model(model, allow_download=allow_download)
        if repack_cache is None:
            repack_cache = os.environ.get("TALLOW_REPACK_CACHE", "1").strip().lower() not in _OFF
        cache = str(repack_dir()) if repack_cache else None
        self._model: _tallow.Model | None = _tallow.Model(
            str(self.path),
            n_threads=n_threads,
            n_ctx=n_ctx,
            repack_cache=cache,
            max_sequences=max_sequences,
            max_queue=max_queue,
            n_batch=n_batch,
        )
        self.info: ModelInfo = ModelInfo(**self._core.info())
        if self.info.repack_cache == "written":
            _finish_repack_writes_at_exit()

    def __repr__(self) -> str:
        closed = ", closed" if self._model is None else ""
        return f"tallow.Model({str(self.path)!r}, architecture={self.info.architecture!r}{closed})"

    @property
    def _core(self) -> _tallow.Model:
        core = self._model
        if core is None:
            raise ModelClosedError(f"{self!r} is closed")
        return core

    def close(self) -> None:
        """Ends every running and queued request (they raise ``ModelClosedError``), stops the
        engine thread and frees the KV caches and, unless a stream still refers to them, the
        weights. Idempotent; any later use of the model raises ``ModelClosedError``.
        ``with tallow.Model(...) as model:`` closes it at the end of the block."""
        core, self._model = self._model, None
        if core is not None:
            core.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> EngineStats:
        """What runs and waits now, and what ended, since the model was loaded.

        >>> model.stats().active                                   # doctest: +SKIP
        0
        """
        return EngineStats(**self._core.stats())

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text``. ``add_bos`` adds BOS if the model uses one; ``special`` parses
        special-token text such as ``<|im_start|>`` into its token."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        return self._core.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, ids: list[int], *, skip_special: bool = False) -> str:
        """The text of token ``ids``."""
        return self._core.detokenize(list(ids), skip_special=skip_special)

    # -- generation -----------------------------------------------------------------------

    def _start(
        self,
        prompt: str | list[int],
        max_tokens: int,
        options: SamplingOptions,
        *,
        add_bos: bool = True,
        special: bool = False,
        session: _tallow.ChatSession | None = None,
        deadline: float | None = None,
        logprobs: int | None = None,
    ) -> _tallow.Stream:
        """Starts a request on the engine. ``prompt``: text, or token ids used as they are."""
        if isinstance(prompt, list):
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**32 for t in prompt):
                raise TypeError("a prompt of tokens must be a list of non-negative token ids")
        elif not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        opts = build_options(max_tokens, options, logprobs=logprobs)
        # Seconds the request may take from now, waiting for room included (``timeout``).
        opts["deadline"] = opts["timeout"] if deadline is None else deadline
        return self._core.start(prompt, opts, add_bos=add_bos, special=special, session=session)

    def stream(
        self, prompt: str, *, max_tokens: int = 256, **options: Unpack[SamplingOptions]
    ) -> Generator[str, None, None]:
        """Generates from ``prompt``, yielding text as it is produced.

        Stops at an end-of-generation token, a ``stop`` string (never emitted, even in part)
        or ``max_tokens``. Breaking out of the loop cancels the generation.
        """
        return _iterate(self._start(prompt, max_tokens, options))

    def generate(self, prompt: str, *, max_tokens: int = 256, **options: Unpack[SamplingOptions]) -> str:
        """Generates from ``prompt`` and returns the whole text. Ctrl-C cancels it; past its
        ``timeout`` it raises ``RequestTimeoutError`` with the text so far as ``.text``."""
        parts: list[str] = []
        try:
            parts.extend(self.stream(prompt, max_tokens=max_tokens, **options))
        except RequestTimeoutError as e:
            e.text = "".join(parts)
            raise
        return "".join(parts)

    def astream(
        self, prompt: str, *, max_tokens: int = 256, **options: Unpack[SamplingOptions]
    ) -> AsyncGenerator[str, None]:
        """Async version of ``stream``: the event loop keeps running while the engine computes
        (and while a request with a ``timeout`` waits for room). Cancelling the task (or
        ``aclose()``) stops the generation."""
        return _aiterate(_start_in_loop(lambda o, d: self._start(prompt, max_tokens, o, deadline=d), options))

    async def agenerate(
        self, prompt: str, *, max_tokens: int = 256, **options: Unpack[SamplingOptions]
    ) -> str:
        """Async version of ``generate``."""
        parts: list[str] = []
        try:
            async for t in self.astream(prompt, max_tokens=max_tokens, **options):
                parts.append(t)
        except RequestTimeoutError as e:
            e.text = "".join(parts)
            raise
        return "".join(parts)

    def chat(self, system: str | None = None) -> Chat:
        """A multi-turn conversation rendered with the model's chat template; the KV cache is
        kept between turns, so each turn only computes its new tokens."""
        from .chat import Chat

        return Chat(self, system=system)


def _start_in_loop(
    start: Callable[[SamplingOptions, float | None], _tallow.Stream], options: SamplingOptions
) -> _tallow.Stream | Callable[[], Awaitable[_tallow.Stream]]:
    """Starts a generation from async code without blocking the event loop: now, or, when the
    engine is full and ``options`` has a ``timeout``, a coroutine function that waits for room
    with ``asyncio.sleep`` and then starts it (``OverloadedError`` once the time is up). The
    request keeps what is left of its ``timeout`` as its deadline."""
    timeout = check_timeout(options.get("timeout"))
    now = options.copy()
    now["timeout"] = None
    try:
        return start(now, timeout)
    except OverloadedError:
        if not timeout:
            raise
    limit: float = timeout
    began = time.monotonic()

    async def wait() -> _tallow.Stream:
        import asyncio

        delay = 0.005
        while True:
            left = limit - (time.monotonic() - began)
            await asyncio.sleep(min(delay, max(0.0, left)))
            left = limit - (time.monotonic() - began)
            try:
                return start(now, max(0.0, left))
            except OverloadedError:
                if left <= 0:
                    raise
                delay = min(2 * delay, 0.1)

    return wait


def _iterate(stream: _tallow.Stream) -> Generator[str, None, None]:
    try:
        for text, _token, _logprobs in stream:
            if text:
                yield text
    finally:
        stream.cancel()


async def _aiterate(
    start: _tallow.Stream | Callable[[], Awaitable[_tallow.Stream]],
) -> AsyncGenerator[str, None]:
    pieces = _apieces(start)
    try:
        async for text, _token, _logprobs in pieces:
            if text:
                yield text
    finally:
        await pieces.aclose()


async def _apieces(
    start: _tallow.Stream | Callable[[], Awaitable[_tallow.Stream]],
) -> AsyncGenerator[_tallow._Piece, None]:
    """The stream's pieces, awaited without blocking the loop; closing the generator (or
    cancelling the task awaiting it) cancels the request."""
    import asyncio

    stream = start if isinstance(start, _tallow.Stream) else await start()
    loop = asyncio.get_running_loop()
    wake = _loop_wake(loop)
    try:
        while True:
            try:
                item = stream.poll()
            except StopIteration:
                return
            if item is None:
                ready = loop.create_future()
                if wake is not None:
                    key = wake.register(ready)
                    try:
                        stream.set_waker(wake.waker, key)
                        await ready
                    finally:
                        wake.pending.pop(key, None)
                else:
                    stream.set_waker(functools.partial(loop.call_soon_threadsafe, _resolve, ready))
                    await ready
                continue
            yield item
    finally:
        stream.cancel()


class _LoopWake:
    """One event loop's wake-up pipe: the engine thread writes a waiting task's key (8 bytes)
    to it when that task's stream has events (it never runs Python code, see ``stream.rs``),
    and the loop wakes that task, which polls its stream again."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        read, write = os.pipe()
        try:
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            loop.add_reader(read, self._wake)
        except BaseException:
            os.close(read)
            os.close(write)
            raise
        self.waker = _tallow.LoopWaker(write)  # owns `write` from here on
        self.pending: dict[int, asyncio.Future[None]] = {}
        self._keys = itertools.count(1)
        self._read = read
        # Closed with the loop's last reference, not at exit: a loop in a daemon thread may
        # still watch it then.
        weakref.finalize(self, os.close, read).atexit = False

    def register(self, fut: asyncio.Future[None]) -> int:
        key = next(self._keys)
        self.pending[key] = fut
        return key

    def _wake(self) -> None:
        data = b""
        try:
            while chunk := os.read(self._read, 4096):  # a multiple of 8: whole keys
                data += chunk
        except OSError:  # drained (EAGAIN)
            pass
        if self.waker.take_overflow():
            # A key was lost to a full pipe: every waiting task polls its stream again.
            pending, self.pending = self.pending, {}
            for waiting in pending.values():
                _resolve(waiting)
            return
        for (key,) in struct.iter_unpack("<Q", data[: len(data) // 8 * 8]):
            fut = self.pending.pop(key, None)
            if fut is not None:
                _resolve(fut)


_LOOP_WAKES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWake | None]
_LOOP_WAKES = weakref.WeakKeyDictionary()


def _loop_wake(loop: asyncio.AbstractEventLoop) -> _LoopWake | None:
    """``loop``'s wake-up pipe, or None for loops that cannot watch a file descriptor (the
    Windows proactor): their streams get ``call_soon_threadsafe`` instead."""
    try:
        return _LOOP_WAKES[loop]
    except KeyError:
        pass
    try:
        wake: _LoopWake | None = _LoopWake(loop)
    except (NotImplementedError, AttributeError, OSError):
        wake = None
    _LOOP_WAKES[loop] = wake
    return wake


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@functools.cache
def _finish_repack_writes_at_exit() -> None:
    """Registers (once) the wait for the repack cache's writer thread at interpreter exit."""
    import atexit

    atexit.register(_finish_repack_writes)


def _finish_repack_writes() -> None:
    """Lets the repack cache files this process is writing be finished; Ctrl-C gives up, and the
    next load of the model writes its file again."""
    try:
        while not _tallow.wait_for_repack_writes(0.1):
            pass
    except KeyboardInterrupt:
        pass
