"""``GPT4All`` of the ``gpt4all`` 2.8.2 Python package, running on tallow.

Change ``from gpt4all import GPT4All`` to ``from tallow.compat.gpt4all import GPT4All`` and a
gpt4all script runs unchanged on tallow's engine (on the CPU): same constructor, ``generate()``
with the same keyword arguments and defaults, ``streaming=True``, the per-token ``callback``,
``chat_session()`` and ``current_chat_session``.

>>> from tallow.compat.gpt4all import GPT4All                          # doctest: +SKIP
>>> model = GPT4All("smollm2-135m")                                     # doctest: +SKIP
>>> with model.chat_session():                                          # doctest: +SKIP
...     print(model.generate("Name a colour.", max_tokens=16))
...     print(model.current_chat_session[-1]["content"])
>>> for text in model.generate("Once upon a time", streaming=True):     # doctest: +SKIP
...     print(text, end="", flush=True)

Models are found as gpt4all finds them (``model_path``, else ``~/.cache/gpt4all``), then in
tallow's own cache and catalog (``tallow models``); tallow cannot download gpt4all.io's models.
``Embed4All`` is not provided yet. What else differs from gpt4all is listed in
``docs/migration-gpt4all.md``.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn, TypeAlias, overload

from .. import _tallow
from ..catalog import CATALOG, CatalogEntry, fetch, models_dir, resolve_model
from ..chat import Chat
from ..errors import ModelClosedError
from ..model import Model
from ..sampling import SamplingOptions

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

__all__ = [
    "DEFAULT_MODEL_DIRECTORY",
    "DEFAULT_PROMPT_TEMPLATE",
    "GPT4All",
    "ResponseCallbackType",
    "append_extension_if_missing",
    "empty_response_callback",
]

#: Where gpt4all keeps its downloads; searched (never written) when ``model_path`` is None.
DEFAULT_MODEL_DIRECTORY = Path.home() / ".cache" / "gpt4all"

#: gpt4all's fallback chat template ("Alpaca"), ``{0}`` standing for the user's message.
DEFAULT_PROMPT_TEMPLATE = "### Human:\n{0}\n\n### Assistant:\n"

#: gpt4all's backend stops generating at these strings (never emitted), in every generate().
_STOP_SEQUENCES = (
    "### Instruction",
    "### Prompt",
    "### Response",
    "### Human",
    "### Assistant",
    "### Context",
)

ConfigType: TypeAlias = "dict[str, Any]"
MessageType: TypeAlias = "dict[str, str]"
#: ``callback(token_id, text) -> bool``: called for each piece of generated text; returning a
#: false value stops the generation.
ResponseCallbackType: TypeAlias = Callable[[int, str], bool]


def empty_response_callback(token_id: int, response: str) -> bool:
    """The default ``callback`` of ``generate()``: never stops the generation."""
    return True


def append_extension_if_missing(model_name: str) -> str:
    """``model_name`` with ``.gguf`` appended unless it ends in ``.gguf`` or ``.bin`` (as gpt4all)."""
    if not model_name.endswith((".bin", ".gguf")):
        model_name += ".gguf"
    return model_name


def __getattr__(name: str) -> NoReturn:
    if name == "Embed4All":
        raise ImportError(
            "tallow.compat.gpt4all has no Embed4All: tallow does not compute embeddings yet "
            "(only text generation). Keep `from gpt4all import Embed4All` for embeddings.",
            name=__name__,
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class GPT4All:
    """A GGUF model with gpt4all 2.8.2's interface, run by tallow on the CPU.

    ``model_name`` is a path to a ``.gguf`` file, a file name (``.gguf`` is appended if it has
    no extension) looked up in ``model_path`` (if given) or else in ``~/.cache/gpt4all`` and
    tallow's model cache, or a tallow catalog name such as ``"smollm2-135m"`` (downloaded on
    first use if ``allow_download``). ``device`` must be None or ``"cpu"``; ``ngl`` (GPU layers)
    is accepted and ignored. ``n_ctx`` is the context size, ``n_threads`` the CPU threads
    (None: tallow's default).

    >>> model = GPT4All("smollm2-135m-q4_1.gguf", model_path="models", allow_download=False)  # doctest: +SKIP
    >>> model.generate("The capital of France is", max_tokens=8, temp=0)    # doctest: +SKIP
    ' Paris.\\n\\nThe United States has'
    """

    def __init__(
        self,
        model_name: str,
        *,
        model_path: str | os.PathLike[str] | None = None,
        model_type: str | None = None,
        allow_download: bool = True,
        n_threads: int | None = None,
        device: str | None = None,
        n_ctx: int = 2048,
        ngl: int = 100,
        verbose: bool = False,
    ) -> None:
        _check_device(device)
        #: Descriptive only, as in gpt4all.
        self.model_type = model_type
        self._history: list[MessageType] | None = None
        self._chat: Chat | None = None
        self._raw: _RawConversation | None = None
        self._closed = False
        #: What is known about the model: ``path`` and ``filename``, plus the catalog's ``name``,
        #: ``filesize``, ``description`` and ``sha256sum`` for a catalog model.
        self.config: ConfigType = self.retrieve_model(
            model_name, model_path=model_path, allow_download=allow_download, verbose=verbose
        )
        self._model = Model(
            self.config["path"], n_threads=n_threads, n_ctx=n_ctx, allow_download=allow_download
        )

    def __repr__(self) -> str:
        return f"GPT4All({self.config['path']!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Frees the model (``tallow.Model.close()``); later use raises ``ModelClosedError``, a
        ``ValueError`` as gpt4all raises."""
        self._closed = True
        self._model.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError(f"{self!r} is closed")

    # -- properties -----------------------------------------------------------------------

    @property
    def model(self) -> Model:
        """The ``tallow.Model`` doing the work (gpt4all's ``LLModel`` in gpt4all)."""
        return self._model

    @property
    def backend(self) -> Literal["cpu", "kompute", "cuda", "metal"]:
        """Always ``"cpu"``."""
        self._check_open()
        return "cpu"

    @property
    def device(self) -> str | None:
        """The GPU device in use: always None, as gpt4all answers on the CPU backend."""
        self._check_open()
        return None

    @property
    def current_chat_session(self) -> list[MessageType] | None:
        """Inside ``chat_session()``, the conversation so far as ``{"role", "content"}`` dicts
        (a copy), starting with the system prompt's entry; None outside one."""
        return None if self._history is None else [dict(m) for m in self._history]

    # -- models ---------------------------------------------------------------------------

    @staticmethod
    def list_models() -> list[ConfigType]:
        """The models tallow can download (its catalog, not gpt4all.io's), described with
        gpt4all's ``models3.json`` keys: ``name``, ``filename``, ``filesize`` (bytes, as a
        string), ``description``, and ``sha256sum``.

        >>> [m["filename"] for m in GPT4All.list_models()]                      # doctest: +SKIP
        ['smollm2-135m-q4_1.gguf', 'gemma-3-270m-q4_k_m.gguf']
        """
        return [_describe(e) for e in CATALOG.values()]

    @staticmethod
    def list_gpus() -> list[str]:
        """GPU devices usable with ``device=``: none, tallow runs on the CPU only. Returns ``[]``
        rather than raising, so scripts that pick a GPU from this list fall back to the CPU."""
        return []

    @classmethod
    def retrieve_model(
        cls,
        model_name: str,
        model_path: str | os.PathLike[str] | None = None,
        allow_download: bool = True,
        verbose: bool = False,
    ) -> ConfigType:
        """Finds the model file (downloading a catalog model if ``allow_download``) and returns
        its config: ``path``, ``filename`` and, for catalog models, the ``list_models()`` keys.

        Raises ``FileNotFoundError`` naming where it looked and what tallow can download.

        >>> GPT4All.retrieve_model("smollm2-135m")["path"]                     # doctest: +SKIP
        '/home/me/.cache/tallow/models/smollm2-135m-q4_1.gguf'
        """
        if not isinstance(model_name, (str, os.PathLike)):
            raise TypeError(f"model_name must be a str, not {type(model_name).__name__}")
        name = os.fspath(model_name)
        entry = _catalog_entry(name)
        path = _find_model(name, model_path, entry, allow_download)
        config: ConfigType = {} if entry is None else _describe(entry)
        config["filename"] = path.name
        config["path"] = str(path)
        if verbose:
            print(f"Found model file at {str(path)!r}", file=sys.stderr)
        return config

    @staticmethod
    def download_model(
        model_filename: str,
        model_path: str | os.PathLike[str],
        verbose: bool = True,
        url: str | None = None,
        expected_size: int | None = None,
        expected_md5: str | None = None,
    ) -> str | os.PathLike[str]:
        """Downloads a tallow catalog model (by name or file name) into ``model_path`` and
        verifies its SHA-256; a file already there and intact is kept. Other models, and
        ``url``, raise ``ValueError``: tallow does not download from gpt4all.io.
        ``expected_size`` and ``expected_md5`` are ignored (the catalog's SHA-256 is checked)."""
        entry = _catalog_entry(model_filename)
        if entry is None or url is not None:
            what = f"url={url!r}" if url is not None else repr(model_filename)
            raise ValueError(
                f"cannot download {what}: tallow downloads only its catalog models "
                f"({_catalog_names()}), never from gpt4all.io or other URLs"
            )
        folder = Path(model_path)
        if not folder.is_dir():
            raise FileNotFoundError(f"Model directory does not exist: {str(folder)!r}")
        return fetch(entry, folder, quiet=not verbose)

    # -- generation -----------------------------------------------------------------------

    @overload
    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = ...,
        temp: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        min_p: float = ...,
        repeat_penalty: float = ...,
        repeat_last_n: int = ...,
        n_batch: int = ...,
        n_predict: int | None = ...,
        streaming: Literal[False] = ...,
        callback: ResponseCallbackType = ...,
    ) -> str: ...
    @overload
    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = ...,
        temp: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        min_p: float = ...,
        repeat_penalty: float = ...,
        repeat_last_n: int = ...,
        n_batch: int = ...,
        n_predict: int | None = ...,
        streaming: Literal[True],
        callback: ResponseCallbackType = ...,
    ) -> Generator[str, None, None]: ...
    @overload
    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = ...,
        temp: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        min_p: float = ...,
        repeat_penalty: float = ...,
        repeat_last_n: int = ...,
        n_batch: int = ...,
        n_predict: int | None = ...,
        streaming: bool,
        callback: ResponseCallbackType = ...,
    ) -> Any: ...

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 200,
        temp: float = 0.7,
        top_k: int = 40,
        top_p: float = 0.4,
        min_p: float = 0.0,
        repeat_penalty: float = 1.18,
        repeat_last_n: int = 64,
        n_batch: int = 8,
        n_predict: int | None = None,
        streaming: bool = False,
        callback: ResponseCallbackType = empty_response_callback,
    ) -> str | Generator[str, None, None]:
        """Generates a completion of ``prompt`` or, inside ``chat_session()``, the answer to
        it as the next turn of the conversation.

        Sampling runs penalties (``repeat_penalty`` over the last ``repeat_last_n`` tokens of
        prompt and answer), then ``top_k``, ``top_p``, ``min_p`` and ``temp``; ``temp=0`` is
        greedy. At most ``max_tokens`` tokens (``n_predict`` wins if given). As in gpt4all,
        generation also stops at ``"### Human"``, ``"### Assistant"`` and the other ``### ``
        headers gpt4all stops at. ``n_batch`` is ignored: tallow's prompt batch is set per
        model (``tallow.Model(n_batch=...)``).

        ``callback(token_id, text)`` is called for each piece of text as it is generated; a
        false return stops the generation (that piece is part of the returned string, but is
        not yielded by ``streaming=True``, as in gpt4all). ``token_id`` is -1 for text released
        at the end without a token of its own.

        With ``streaming=True`` it returns a generator of text pieces; leaving the loop early
        stops the generation.

        >>> model.generate("Why is the sky blue?", max_tokens=32)               # doctest: +SKIP
        >>> for text in model.generate("Tell me a story.", streaming=True):     # doctest: +SKIP
        ...     print(text, end="", flush=True)
        """
        del n_batch  # per model in tallow
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        n = max_tokens if n_predict is None else n_predict
        options: SamplingOptions = {
            "temperature": temp,
            "top_k": top_k,
            "top_p": top_p,
            "min_p": min_p,
            "repeat_penalty": repeat_penalty,
            "repeat_last_n": repeat_last_n,
            "stop": list(_STOP_SEQUENCES),
        }
        start, finish, reply = self._prepare(prompt, n, options)
        pieces = _pieces(start, finish, reply, callback)
        if streaming:
            return _stream(pieces)
        try:
            return "".join(text for text, _more in pieces)
        finally:
            pieces.close()

    def _prepare(
        self, prompt: str, n: int, options: SamplingOptions
    ) -> tuple[Callable[[], _tallow.Stream], Callable[[str], None], MessageType | None]:
        """How to start the request, what to do with its answer, and the history entry that
        receives the answer as it is generated (inside a chat session)."""
        model = self._model
        if self._history is None:
            # A plain completion: BOS, then the prompt without special-token parsing.
            return lambda: model._start(prompt, n, options), _ignore, None
        # As gpt4all, the turn enters the history at the call, even for a stream not read yet.
        self._history.append({"role": "user", "content": prompt})
        reply: MessageType = {"role": "assistant", "content": ""}
        self._history.append(reply)
        chat = self._chat
        if chat is not None:
            return lambda: chat._start(prompt, n, options), lambda answer: chat._record(prompt, answer), reply
        raw = self._raw
        assert raw is not None
        turn = raw.before_user + prompt + raw.before_reply

        def start() -> _tallow.Stream:
            return model._start(raw.text + turn, n, options, add_bos=True, special=True, session=raw.session)

        def finish(answer: str) -> None:
            raw.text += turn + answer + raw.after_reply

        return start, finish, reply

    @contextmanager
    def chat_session(
        self, system_prompt: str | None = None, prompt_template: str | None = None
    ) -> Generator[Self, None, None]:
        """A conversation: inside the ``with`` block, each ``generate()`` is the next turn, and
        the model's KV cache is kept between turns (only the new turn is computed).

        Without ``prompt_template``, turns are rendered with the model's own chat template
        (from its GGUF file) and ``system_prompt`` is the system message. With one (gpt4all
        style, ``{0}`` the user's message, optionally ``{1}`` where the answer goes), the model
        reads ``system_prompt`` verbatim, then each turn as the template with the answer after
        it (after ``{1}``'s position, or followed by a blank line); special-token text such as
        ``<|im_start|>`` is parsed into tokens. A model without a chat template falls back to
        ``DEFAULT_PROMPT_TEMPLATE`` with a ``DeprecationWarning``, as gpt4all does for models
        it does not know.

        >>> with model.chat_session(system_prompt="Be brief."):                # doctest: +SKIP
        ...     model.generate("Name a colour.", max_tokens=8)
        ...     model.generate("Another one?", max_tokens=8)
        ...     model.current_chat_session[0]
        {'role': 'system', 'content': 'Be brief.'}
        """
        self._check_open()
        if system_prompt is None:
            system_prompt = str(self.config.get("systemPrompt", ""))
        if prompt_template is None:
            prompt_template = self.config.get("promptTemplate")
        if prompt_template is None and self._model.info.chat_template is None:
            warnings.warn(
                f"{self.config['filename']} has no chat template and no prompt_template was given: "
                "defaulting to Alpaca (DEFAULT_PROMPT_TEMPLATE).",
                DeprecationWarning,
                stacklevel=3,
            )
            prompt_template = DEFAULT_PROMPT_TEMPLATE
        chat: Chat | None = None
        raw: _RawConversation | None = None
        if prompt_template is None:
            chat = self._model.chat(system=system_prompt or None)
        else:
            before_user, before_reply, after_reply = _split_template(prompt_template)
            raw = _RawConversation(
                before_user, before_reply, after_reply, system_prompt, _tallow.ChatSession()
            )
        self._history = [{"role": "system", "content": system_prompt}]
        self._chat, self._raw = chat, raw
        try:
            yield self
        finally:
            self._history = None
            self._chat = self._raw = None
            # Frees the session's KV cache now rather than when it is collected.
            if chat is not None:
                chat.reset()
            if raw is not None:
                raw.session.clear()


@dataclass
class _RawConversation:
    """A chat session with a gpt4all-style prompt template: the template's parts, the text the
    model has read so far (system prompt and finished turns) and the KV cache holding it."""

    before_user: str
    before_reply: str
    after_reply: str
    text: str
    session: _tallow.ChatSession


def _split_template(template: str) -> tuple[str, str, str]:
    """A gpt4all prompt template (``{0}`` the user's message, optional ``{1}`` the answer) as
    (text before the message, between it and the answer, after the answer)."""
    if not isinstance(template, str):
        raise TypeError(f"prompt_template must be a str, not {type(template).__name__}")
    if re.search(r"%1(?![0-9])", template):
        raise ValueError(
            "Prompt template containing a literal '%1' is not supported. For a prompt "
            "placeholder, please use '{0}' instead."
        )
    user, reply = "\x00user\x00", "\x00reply\x00"
    try:
        text = template.format(user, reply)
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(f"invalid prompt_template {template!r}: {e!r}") from e
    if text.count(user) != 1 or text.count(reply) > 1:
        raise ValueError(
            f"prompt_template must contain '{{0}}' (the user's message) once and '{{1}}' (the answer) "
            f"at most once, got {template!r}"
        )
    before_user, rest = text.split(user)
    if reply not in rest:
        # gpt4all's backend puts a blank line after an answer when the template does not say.
        return before_user, rest, "\n\n"
    before_reply, after_reply = rest.split(reply)
    return before_user, before_reply, after_reply


def _pieces(
    start: Callable[[], _tallow.Stream],
    finish: Callable[[str], None],
    reply: MessageType | None,
    callback: ResponseCallbackType,
) -> Generator[tuple[str, bool], None, None]:
    """Runs one request: yields (text, whether the callback lets it go on) for each piece of
    text, and stops after the piece the callback refused. Gives the answer to ``finish`` and
    cancels the request when it ends, also when the consumer stops early."""
    stream = start()
    parts: list[str] = []
    try:
        for item in stream:
            text, token = item[0], item[1]
            if not text:
                continue
            parts.append(text)
            if reply is not None:
                reply["content"] += text
            # Any false value stops, as gpt4all's ctypes callback converts it to a C bool.
            more = bool(callback(-1 if token is None else token, text))
            yield text, more
            if not more:
                break
    finally:
        stream.cancel()
        finish("".join(parts))


def _stream(pieces: Generator[tuple[str, bool], None, None]) -> Generator[str, None, None]:
    try:
        for text, more in pieces:
            if not more:
                return
            yield text
    finally:
        pieces.close()


def _ignore(answer: str) -> None:
    pass


def _check_device(device: object) -> None:
    if device is None:
        return
    if not isinstance(device, str):
        raise TypeError(f"device must be a str or None, not {type(device).__name__}")
    if device.strip().lower() != "cpu":
        raise ValueError(
            f"device={device!r} is not supported: tallow runs on the CPU only (no Kompute, CUDA or "
            "Metal backend). Pass device='cpu' or device=None."
        )


def _catalog_entry(name: str) -> CatalogEntry | None:
    """The catalog entry named ``name``, or whose file name is ``name`` (``.gguf`` optional)."""
    if name in CATALOG:
        return CATALOG[name]
    filename = append_extension_if_missing(name)
    return next((e for e in CATALOG.values() if e.filename in (name, filename)), None)


def _describe(entry: CatalogEntry) -> ConfigType:
    return {
        "name": entry.name,
        "filename": entry.filename,
        "filesize": str(entry.size),
        "description": entry.description,
        "sha256sum": entry.sha256,
    }


def _catalog_names() -> str:
    return ", ".join(f"{e.name} ({e.filename})" for e in CATALOG.values())


def _find_model(
    name: str, model_path: str | os.PathLike[str] | None, entry: CatalogEntry | None, allow_download: bool
) -> Path:
    direct = Path(name)
    if direct.is_file():
        return direct
    filename = append_extension_if_missing(name)
    if model_path is not None:
        folder = Path(model_path)
        if not folder.is_dir():
            raise FileNotFoundError(f"Model directory does not exist: {str(folder)!r}")
        folders = [folder]
    else:
        folders = [DEFAULT_MODEL_DIRECTORY, models_dir()]
    for folder in folders:
        for candidate in dict.fromkeys((filename, name)):
            path = folder / candidate
            if path.is_file():
                return path
    looked = ", ".join(str(f) for f in folders)
    if entry is not None:
        try:
            return resolve_model(entry.name, allow_download=allow_download)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"Model file {entry.filename!r} not found in {looked}, and {e} (or pass allow_download=True)"
            ) from e
    raise FileNotFoundError(
        f"Model file {filename!r} not found in {looked}. Pass the path of a .gguf file, or its folder "
        f"as model_path=; tallow cannot download gpt4all.io's models, only its catalog: {_catalog_names()}."
    )
