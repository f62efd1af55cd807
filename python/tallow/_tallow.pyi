# Type stubs for the compiled module tallow._tallow. Kept in sync with rust/tallow-py by
# tests/test_stubs.py (mypy.stubtest).

from collections.abc import Callable
from typing import Any, final

import numpy as np
import numpy.typing as npt

__version__: str

@final
class ChatSession:
    def __new__(cls) -> ChatSession: ...
    def clear(self) -> None: ...

#: A token's log-probability and its position's most likely tokens, ``(id, logprob)``.
_Logprobs = tuple[float, list[tuple[int, float]]]
#: ``(text, token_id, logprobs)``; no token id for text released at the end.
_Piece = tuple[str, int | None, _Logprobs | None]

@final
class Stream:
    def __iter__(self) -> Stream: ...
    def __next__(self) -> _Piece: ...
    def poll(self) -> _Piece | None: ...
    def set_waker(self, waker: LoopWaker | Callable[[], object], key: int = 0) -> None: ...
    def cancel(self) -> None: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def usage(self) -> tuple[int, int, int] | None: ...

@final
class LoopWaker:
    def __new__(cls, write_fd: int) -> LoopWaker: ...
    def take_overflow(self) -> bool: ...

@final
class Model:
    def __new__(
        cls,
        path: str,
        n_threads: int | None = None,
        n_ctx: int | None = None,
        repack_cache: str | None = None,
        max_sequences: int | None = None,
        max_queue: int | None = None,
        n_batch: int | None = None,
    ) -> Model: ...
    def info(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]: ...
    def detokenize(self, ids: list[int], skip_special: bool = False) -> str: ...
    def token_bytes(self, ids: list[int], special: bool = True) -> list[bytes]: ...
    def apply_chat_template(
        self, messages: list[tuple[str, str]], add_generation_prompt: bool = True
    ) -> str: ...
    def start(
        self,
        prompt: str | list[int],
        options: dict[str, Any],
        add_bos: bool = True,
        special: bool = False,
        session: ChatSession | None = None,
    ) -> Stream: ...

@final
class Sampler:
    def __new__(
        cls,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        seed: int | None = None,
    ) -> Sampler: ...
    def sample(self, logits: npt.NDArray[np.float32], history: list[int] = ...) -> int: ...

def inspect(path: str) -> str: ...
def build_info() -> dict[str, str]: ...
def wait_for_repack_writes(timeout: float | None = None) -> bool: ...
