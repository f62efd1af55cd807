"""tallow.compat.gpt4all: gpt4all 2.8.2's GPT4All API on tallow (drop-in contract, greedy parity
with tallow's own API, chat sessions, callbacks, cancellation, model lookup errors)."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tallow
from tallow.compat import gpt4all as compat
from tallow.compat.gpt4all import GPT4All, empty_response_callback

MODELS = Path(__file__).parent / ".models"
STOPS = ["### Instruction", "### Prompt", "### Response", "### Human", "### Assistant", "### Context"]
ALPACA = "### Human:\n{0}\n\n### Assistant:\n"


@pytest.fixture(scope="session")
def gpt(smollm2_path: Path) -> GPT4All:
    return GPT4All(smollm2_path.name, model_path=smollm2_path.parent, allow_download=False, n_threads=2)


@pytest.fixture(autouse=True)
def _no_gpt4all_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Model lookups must not depend on what this machine has in ~/.cache/gpt4all.
    monkeypatch.setattr(compat, "DEFAULT_MODEL_DIRECTORY", tmp_path_factory.mktemp("gpt4all-cache"))


def _idle(model: tallow.Model, within: float = 5.0) -> tallow.EngineStats:
    """The stats once no request runs or waits (a cancelled request retires at its next step)."""
    deadline = time.monotonic() + within
    while True:
        stats = model.stats()
        if stats.active == 0 and stats.queued == 0:
            return stats
        assert time.monotonic() < deadline, f"a request still runs {within} s after it was stopped: {stats}"
        time.sleep(0.005)


# -- the drop-in contract ------------------------------------------------------------------


def _params(fn: object) -> list[tuple[str, str, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind.name, p.default) for p in sig.parameters.values()]


def test_signatures_match_gpt4all_2_8_2() -> None:
    empty = inspect.Parameter.empty
    kw = "KEYWORD_ONLY"
    assert _params(GPT4All.__init__) == [
        ("self", "POSITIONAL_OR_KEYWORD", empty),
        ("model_name", "POSITIONAL_OR_KEYWORD", empty),
        ("model_path", kw, None),
        ("model_type", kw, None),
        ("allow_download", kw, True),
        ("n_threads", kw, None),
        ("device", kw, None),
        ("n_ctx", kw, 2048),
        ("ngl", kw, 100),
        ("verbose", kw, False),
    ]
    assert _params(GPT4All.generate) == [
        ("self", "POSITIONAL_OR_KEYWORD", empty),
        ("prompt", "POSITIONAL_OR_KEYWORD", empty),
        ("max_tokens", kw, 200),
        ("temp", kw, 0.7),
        ("top_k", kw, 40),
        ("top_p", kw, 0.4),
        ("min_p", kw, 0.0),
        ("repeat_penalty", kw, 1.18),
        ("repeat_last_n", kw, 64),
        ("n_batch", kw, 8),
        ("n_predict", kw, None),
        ("streaming", kw, False),
        ("callback", kw, empty_response_callback),
    ]
    pk = "POSITIONAL_OR_KEYWORD"
    assert _params(GPT4All.chat_session) == [
        ("self", pk, empty),
        ("system_prompt", pk, None),
        ("prompt_template", pk, None),
    ]
    assert _params(GPT4All.retrieve_model) == [
        ("model_name", pk, empty),
        ("model_path", pk, None),
        ("allow_download", pk, True),
        ("verbose", pk, False),
    ]
    assert empty_response_callback(7, "x") is True


def test_a_gpt4all_script_runs_with_only_the_import_changed(tmp_path: Path, smollm2_path: Path) -> None:
    # As in gpt4all's README and documentation, plus a callback.
    script = textwrap.dedent(
        f"""
        from gpt4all import GPT4All

        model = GPT4All({smollm2_path.name!r}, model_path={str(smollm2_path.parent)!r}, allow_download=False)
        with model.chat_session():
            print(model.generate("How can I run LLMs efficiently on my laptop?", max_tokens=24))
            print(model.generate("Tell me more.", max_tokens=24))
            print(len(model.current_chat_session))
        output = model.generate("The capital of France is ", max_tokens=3)
        print(output)
        for token in model.generate("Tell me a story.", streaming=True, max_tokens=24):
            print(token, end="", flush=True)
        print()

        def stop_at_newline(token_id, response):
            return "\\n" not in response

        print(repr(model.generate("List three colours:", max_tokens=24, callback=stop_at_newline)))
        print(model.backend, model.device, GPT4All.list_gpus())
        model.close()
        """
    )
    assert "from gpt4all import GPT4All" in script
    script = script.replace("from gpt4all import GPT4All", "from tallow.compat.gpt4all import GPT4All")
    path = tmp_path / "gpt4all_script.py"
    path.write_text(script)
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "5" in lines, result.stdout  # system, user, assistant, user, assistant
    assert lines[-1] == "cpu None []", result.stdout
    assert len("".join(lines[:-1]).strip()) > 20, result.stdout


# -- generate() --------------------------------------------------------------------------------


def test_greedy_generate_equals_tallow(gpt: GPT4All) -> None:
    prompt = "The capital of France is"
    # gpt4all's repeat_penalty defaults to 1.18 and applies before greedy choice, as tallow's.
    assert gpt.generate(prompt, max_tokens=24, temp=0, repeat_penalty=1.0) == gpt.model.generate(
        prompt, max_tokens=24, temperature=0
    )
    expected = gpt.model.generate(prompt, max_tokens=24, temperature=0, repeat_penalty=1.18, repeat_last_n=64)
    text = gpt.generate(prompt, max_tokens=24, temp=0)
    assert text == expected
    assert text.strip()
    streamed = gpt.generate(prompt, max_tokens=24, temp=0, streaming=True)
    assert not isinstance(streamed, str)
    pieces = list(streamed)
    assert len(pieces) > 3
    assert "".join(pieces) == text
    # n_predict wins over max_tokens.
    short = gpt.generate(prompt, max_tokens=24, n_predict=4, temp=0)
    assert text.startswith(short) and len(short) < len(text)
    assert gpt.generate(prompt, max_tokens=4, temp=0) == short


def test_generation_stops_at_gpt4all_stop_sequences(gpt: GPT4All) -> None:
    # The model continues an Alpaca transcript with another "### Human" turn; gpt4all's
    # backend stops there without emitting any of it.
    prompt = "### Human:\nSay hi.\n\n### Assistant:\nHi!\n\n### Human:\nSay bye.\n\n### Assistant:\n"
    free = gpt.model.generate(prompt, max_tokens=60, temperature=0)
    text = gpt.generate(prompt, max_tokens=60, temp=0, repeat_penalty=1.0)
    cut = min((free.find(s) for s in STOPS if s in free), default=-1)
    assert cut > 0, f"the model did not write a stop sequence: {free!r}"
    assert text == free[:cut]


def test_callback_sees_every_piece_and_stops_the_engine(gpt: GPT4All) -> None:
    seen: list[tuple[int, str]] = []

    def three(token_id: int, response: str) -> bool:
        seen.append((token_id, response))
        return len(seen) < 3

    before = _idle(gpt.model)
    text = gpt.generate("Once upon a time", max_tokens=200, temp=0, callback=three)
    after = _idle(gpt.model)
    assert len(seen) == 3
    # As gpt4all: the refused piece is part of the returned text.
    assert text == "".join(t for _, t in seen)
    assert all(tok >= 0 for tok, _ in seen)
    assert gpt.model.detokenize([tok for tok, _ in seen]) == text
    assert after.cancelled == before.cancelled + 1
    assert after.generated_tokens - before.generated_tokens < 20  # far from max_tokens=200

    # Streaming: the refused piece is not yielded (gpt4all yields only accepted pieces).
    seen.clear()
    pieces = list(gpt.generate("Once upon a time", max_tokens=200, temp=0, streaming=True, callback=three))
    assert pieces == [t for _, t in seen[:2]]
    assert _idle(gpt.model).cancelled == before.cancelled + 2


def test_a_callback_returning_none_stops_as_in_gpt4all(gpt: GPT4All) -> None:
    calls: list[str] = []
    text = gpt.generate("Once upon a time", max_tokens=50, temp=0, callback=lambda _t, r: calls.append(r))  # type: ignore[arg-type,func-returns-value]
    assert calls == [text]


def test_breaking_out_of_a_stream_cancels_it(gpt: GPT4All) -> None:
    before = _idle(gpt.model)
    stream = gpt.generate("Once upon a time", max_tokens=200, temp=0, streaming=True)
    for i, _piece in enumerate(stream):
        if i == 2:
            break
    stream.close()
    after = _idle(gpt.model)
    assert after.cancelled == before.cancelled + 1
    assert after.generated_tokens - before.generated_tokens < 20


# -- chat sessions -----------------------------------------------------------------------------


def test_chat_session_matches_tallow_chat(gpt: GPT4All) -> None:
    assert gpt.current_chat_session is None
    with gpt.chat_session() as session:
        assert session is gpt
        assert gpt.current_chat_session == [{"role": "system", "content": ""}]
        a1 = gpt.generate("What is the capital of France?", max_tokens=24, temp=0, repeat_penalty=1.0)
        a2 = gpt.generate("And of Italy?", max_tokens=24, temp=0, repeat_penalty=1.0)
        history = gpt.current_chat_session
    assert gpt.current_chat_session is None
    assert history == [
        {"role": "system", "content": ""},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": a2},
    ]
    chat = gpt.model.chat()
    assert chat.send("What is the capital of France?", max_tokens=24, temperature=0) == a1
    assert chat.send("And of Italy?", max_tokens=24, temperature=0) == a2
    assert a2.strip() and a2 != a1


def test_chat_session_system_prompt_and_streaming(gpt: GPT4All) -> None:
    with gpt.chat_session(system_prompt="You are a pirate."):
        streamed = "".join(gpt.generate("Who are you?", max_tokens=16, temp=0, streaming=True))
        history = gpt.current_chat_session
        assert history is not None
        # A stream left early keeps the partial answer, and the conversation goes on.
        partial = []
        for piece in gpt.generate("Where do you live?", max_tokens=64, temp=0, streaming=True):
            partial.append(piece)
            live = gpt.current_chat_session
            assert live is not None and live[-1]["content"] == "".join(partial)
            if len(partial) == 3:
                break
        third = gpt.generate("Thanks.", max_tokens=8, temp=0)
        final = gpt.current_chat_session
    assert history[0] == {"role": "system", "content": "You are a pirate."}
    assert history[-1] == {"role": "assistant", "content": streamed}
    assert final is not None and [m["role"] for m in final] == ["system"] + ["user", "assistant"] * 3
    assert final[4]["content"] == "".join(partial)
    assert final[6]["content"] == third
    chat = gpt.model.chat(system="You are a pirate.")
    opts = {"temperature": 0.0, "repeat_penalty": 1.18, "stop": STOPS}
    assert chat.send("Who are you?", max_tokens=16, **opts) == streamed  # type: ignore[arg-type]


def test_prompt_template_session(gpt: GPT4All) -> None:
    system = "You answer in one word."
    with gpt.chat_session(system_prompt=system, prompt_template=ALPACA):
        a1 = gpt.generate("Name a fruit.", max_tokens=12, temp=0)
        before = gpt.model.stats()
        a2 = gpt.generate("Name a colour.", max_tokens=12, temp=0)
        after = gpt.model.stats()
        history = gpt.current_chat_session
    assert history is not None and [m["content"] for m in history] == [
        system,
        "Name a fruit.",
        a1,
        "Name a colour.",
        a2,
    ]
    # The model read the system prompt, then each turn as the template plus the answer and a
    # blank line (gpt4all's default after an answer); turn 1 came from the KV cache.
    transcript = f"{system}{ALPACA.format('Name a fruit.')}{a1}\n\n{ALPACA.format('Name a colour.')}"
    opts = {"temperature": 0.0, "repeat_penalty": 1.18, "stop": STOPS}
    expected = "".join(
        p[0]
        for p in gpt.model._start(transcript, 12, opts, add_bos=True, special=True)
        if p[0]  # type: ignore[arg-type]
    )
    assert a2 == expected
    assert after.cached_prompt_tokens - before.cached_prompt_tokens > 20


def test_prompt_template_with_reply_placeholder(gpt: GPT4All) -> None:
    template = "<|im_start|>user\n{0}<|im_end|>\n<|im_start|>assistant\n{1}<|im_end|>\n"
    with gpt.chat_session(system_prompt="", prompt_template=template):
        a1 = gpt.generate("What is 2+2?", max_tokens=16, temp=0, repeat_penalty=1.0)
        a2 = gpt.generate("And 3+3?", max_tokens=16, temp=0, repeat_penalty=1.0)
    # Special tokens of the template are parsed: the same as the model's ChatML rendering.
    rendered = gpt.model._core.apply_chat_template(
        [("user", "What is 2+2?"), ("assistant", a1), ("user", "And 3+3?")], True
    )
    prefix = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    )
    assert rendered.startswith(prefix)
    stream = gpt.model._start(rendered[len(prefix) :], 16, {"temperature": 0.0, "stop": STOPS}, special=True)
    assert a2 == "".join(p[0] for p in stream)


def test_bad_prompt_templates(gpt: GPT4All) -> None:
    with (
        pytest.raises(ValueError, match="literal '%1'"),
        gpt.chat_session(prompt_template="### Human:\n%1\n"),
    ):
        pass
    with pytest.raises(ValueError, match=r"\{0\}"), gpt.chat_session(prompt_template="no placeholder"):
        pass
    assert gpt.current_chat_session is None


def test_a_model_without_chat_template_falls_back_to_alpaca(
    gpt: GPT4All, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpt.model, "info", dataclasses.replace(gpt.model.info, chat_template=None))
    with pytest.warns(DeprecationWarning, match="Alpaca"), gpt.chat_session():
        answer = gpt.generate("Say hi.", max_tokens=8, temp=0)
    opts = {"temperature": 0.0, "repeat_penalty": 1.18, "stop": STOPS}
    expected = gpt.model._start(ALPACA.format("Say hi."), 8, opts, special=True)  # type: ignore[arg-type]
    assert answer == "".join(p[0] for p in expected)


def test_callback_in_a_chat_session_keeps_the_refused_piece(gpt: GPT4All) -> None:
    with gpt.chat_session():
        pieces = list(
            gpt.generate("Tell me a story.", max_tokens=64, temp=0, streaming=True, callback=lambda *_: False)
        )
        history = gpt.current_chat_session
    assert pieces == []
    # gpt4all records the piece the callback refused in the history, but does not yield it.
    assert history is not None and history[-1]["role"] == "assistant" and history[-1]["content"]


# -- construction, models, devices -------------------------------------------------------------


@pytest.mark.parametrize("device", ["gpu", "cuda", "cuda:0", "kompute", "metal", "amd", "nvidia", "intel"])
def test_gpu_devices_are_refused(smollm2_path: Path, device: str) -> None:
    with pytest.raises(ValueError, match=r"CPU only.*device='cpu' or device=None"):
        GPT4All(str(smollm2_path), device=device, allow_download=False)


def test_cpu_device_and_lifecycle(smollm2_path: Path) -> None:
    with GPT4All(str(smollm2_path), device="CPU", allow_download=False, n_ctx=512, ngl=0) as gpt:
        assert gpt.backend == "cpu"
        assert gpt.device is None  # gpt4all: no GPU device on the CPU backend
        assert gpt.model.info.n_ctx == 512
        assert gpt.config["path"] == str(smollm2_path)
        assert gpt.generate("Hi", max_tokens=2, temp=0)
    with pytest.raises(ValueError, match="closed"):
        gpt.generate("Hi", max_tokens=2)
    with pytest.raises(ValueError, match="closed"):
        gpt.backend  # noqa: B018


def test_missing_model_error_names_the_file_and_places(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        GPT4All("mistral-7b-openorca.Q4_0", model_path=tmp_path, allow_download=False)
    msg = str(e.value)
    assert "mistral-7b-openorca.Q4_0.gguf" in msg and str(tmp_path) in msg
    assert "smollm2-135m" in msg and "gemma3-270m" in msg
    with pytest.raises(FileNotFoundError, match="Model directory does not exist"):
        GPT4All("x.gguf", model_path=tmp_path / "nowhere", allow_download=False)
    # A catalog model that is not downloaded yet, downloads off (conftest's empty TALLOW_HOME).
    with pytest.raises(FileNotFoundError, match="tallow pull gemma3-270m") as e:
        GPT4All("gemma3-270m", allow_download=False)
    assert str(compat.DEFAULT_MODEL_DIRECTORY) in str(e.value)


def test_model_lookup(smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = str(smollm2_path.parent)
    # gpt4all appends ".gguf" when the name has no extension.
    config = GPT4All.retrieve_model(smollm2_path.stem, model_path=folder, allow_download=False)
    assert config["path"] == str(smollm2_path) and config["filename"] == smollm2_path.name
    # A catalog file's config carries the catalog's description.
    assert config["name"] == "smollm2-135m" and config["filesize"] == str(smollm2_path.stat().st_size)
    # Without model_path: gpt4all's download folder is searched.
    monkeypatch.setattr(compat, "DEFAULT_MODEL_DIRECTORY", smollm2_path.parent)
    assert GPT4All.retrieve_model(smollm2_path.name, allow_download=False)["path"] == str(smollm2_path)
    # A full path.
    assert GPT4All.retrieve_model(str(smollm2_path), allow_download=False)["path"] == str(smollm2_path)


def test_list_models_and_gpus() -> None:
    models = GPT4All.list_models()
    assert [m["name"] for m in models] == list(tallow.catalog.CATALOG)
    for m in models:
        entry = tallow.catalog.CATALOG[m["name"]]
        assert m["filename"] == entry.filename and m["filesize"] == str(entry.size)
        assert set(m) == {"name", "filename", "filesize", "description", "sha256sum"}
    assert GPT4All.list_gpus() == []


def test_download_model_uses_the_catalog(smollm2_path: Path, tmp_path: Path) -> None:
    # An intact file already there is verified and kept (no download).
    path = GPT4All.download_model(smollm2_path.name, smollm2_path.parent, verbose=False)
    assert Path(path) == smollm2_path
    with pytest.raises(ValueError, match="only its catalog"):
        GPT4All.download_model("orca-mini-3b-gguf2-q4_0.gguf", tmp_path)


def test_embed4all_is_not_provided() -> None:
    with pytest.raises(ImportError, match="embeddings"):
        from tallow.compat.gpt4all import Embed4All  # noqa: F401
    with pytest.raises(AttributeError):
        compat.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
