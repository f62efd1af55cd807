"""``tallow.Chat``: a conversation with a model, rendered by the model's own chat template."""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Literal, TypedDict

from . import _tallow
from .sampling import SamplingOptions

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover
    from typing_extensions import Unpack

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Chat", "Message"]


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class Chat:
    """A multi-turn conversation. Create it with ``model.chat(system=...)``.

    >>> chat = model.chat(system="You are terse.")      # doctest: +SKIP
    >>> chat.send("Name a colour.", temperature=0)       # doctest: +SKIP
    'Blue.'
    >>> chat.messages[-1]["role"]                         # doctest: +SKIP
    'assistant'
    """

    def __init__(self, model: Model, system: str | None = None) -> None:
        self._model = model
        self._session = _tallow.ChatSession()
        self._system = system
        self.messages: list[Message] = []
        self.reset()

    def reset(self) -> None:
        """Forgets the conversation (keeps the system prompt)."""
        self.messages = [] if self._system is None else [{"role": "system", "content": self._system}]
        self._session.clear()

    def _prompt(self, user: str) -> str:
        if not isinstance(user, str):
            raise TypeError(f"message must be a str, not {type(user).__name__}")
        msgs: list[Message] = [*self.messages, {"role": "user", "content": user}]
        return self._model._core.apply_chat_template([(m["role"], m["content"]) for m in msgs], True)

    def _start(
        self, user: str, max_tokens: int, options: SamplingOptions, deadline: float | None = None
    ) -> _tallow.Stream:
        prompt = self._prompt(user)
        # Templates write the BOS text themselves when the model wants one.
        return self._model._start(
            prompt, max_tokens, options, add_bos=False, special=True, session=self._session, deadline=deadline
        )

    def _record(self, user: str, answer: str) -> None:
        self.messages.append({"role": "user", "content": user})
        self.messages.append({"role": "assistant", "content": answer})

    def stream(
        self, message: str, *, max_tokens: int = 512, **options: Unpack[SamplingOptions]
    ) -> Generator[str, None, None]:
        """Sends ``message`` and yields the answer as it is generated. The turn is recorded when
        the answer ends (also when the loop breaks early: the partial answer is kept)."""
        stream = self._start(message, max_tokens, options)
        parts: list[str] = []
        try:
            for text, _token, _logprobs in stream:
                if text:
                    parts.append(text)
                    yield text
        finally:
            stream.cancel()
            self._record(message, "".join(parts))

    def send(self, message: str, *, max_tokens: int = 512, **options: Unpack[SamplingOptions]) -> str:
        """Sends ``message`` and returns the whole answer."""
        return "".join(self.stream(message, max_tokens=max_tokens, **options))

    async def astream(
        self, message: str, *, max_tokens: int = 512, **options: Unpack[SamplingOptions]
    ) -> AsyncGenerator[str, None]:
        """Async version of ``stream``."""
        from .model import _aiterate, _start_in_loop

        parts: list[str] = []
        try:
            start = _start_in_loop(lambda o, d: self._start(message, max_tokens, o, d), options)
            async for text in _aiterate(start):
                parts.append(text)
                yield text
        finally:
            self._record(message, "".join(parts))

    async def asend(self, message: str, *, max_tokens: int = 512, **options: Unpack[SamplingOptions]) -> str:
        """Async version of ``send``."""
        return "".join([t async for t in self.astream(message, max_tokens=max_tokens, **options)])
