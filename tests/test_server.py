"""``tallow serve``: a real server process on 127.0.0.1, driven by the official ``openai`` client
(sync and async, streaming and not) and by ``httpx`` for the error, overload and disconnect
cases (C5, C6, C17 of ../shared/docs/reliability.md).

Generations that must run long ban SmolLM2's end-of-generation tokens with ``logit_bias``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import tallow
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = "test-key"
MODEL_ID = "smollm2"
#: SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_start|>, <|im_end|>): banned, the
#: model writes until max_tokens.
NO_EOS = {"0": -100, "1": -100, "2": -100}
CHAT = [{"role": "user", "content": "Write a short poem about the sea."}]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60, **kw)

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/health", timeout=10).json())

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_idle(self, within: float) -> float:
        """Seconds until nothing is active or queued; fails past ``within``."""
        began = time.monotonic()
        while True:
            h = self.health()
            if h["active"] == 0 and h["queued"] == 0:
                return time.monotonic() - began
            assert time.monotonic() - began < within, h
            time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serve(model: Path, *args: str) -> Iterator[Server]:
    port = _free_port()
    cmd = [sys.executable, "-m", "tallow", "serve", str(model), "--port", str(port), "-t", "2"]
    cmd += ["--model-id", MODEL_ID, "--api-key", KEY, "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield Server(url, proc)
    finally:
        proc.terminate()
        try:
            out = proc.communicate(timeout=20)[0].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode()
        # A clean shutdown: no traceback from the app; uvicorn shuts down, then re-raises the
        # SIGTERM it caught, so the exit status is the signal's.
        assert "Traceback" not in out, out
        assert proc.returncode in (0, -15), (proc.returncode, out)


@pytest.fixture(scope="module")
def server(smollm2_path: Path) -> Iterator[Server]:
    with _serve(smollm2_path, "--max-sequences", "4", "-c", "1024") as s:
        yield s


@pytest.fixture(scope="module")
def small(smollm2_path: Path) -> Iterator[Server]:
    """Room for one running and one waiting request."""
    with _serve(smollm2_path, "--max-sequences", "1", "--max-queue", "1", "-c", "512") as s:
        yield s


@pytest.fixture(scope="module")
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


# -- the openai client ------------------------------------------------------------------------


def test_models(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == [MODEL_ID]
    assert oai.models.retrieve(MODEL_ID).id == MODEL_ID


def test_chat_matches_the_library(oai: openai.OpenAI, smollm2: tallow.Model) -> None:
    r = oai.chat.completions.create(model=MODEL_ID, messages=CHAT, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    choice = r.choices[0]
    expected = smollm2.chat().send(CHAT[0]["content"], max_tokens=24, temperature=0)
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert choice.finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + 24
    assert r.id.startswith("chatcmpl-") and r.model == MODEL_ID


def test_streamed_equals_whole_for_a_seed(oai: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": MODEL_ID, "max_tokens": 40, "temperature": 0.9, "seed": 1234}
    whole = oai.chat.completions.create(messages=CHAT, **args)  # type: ignore[call-overload]
    chunks = list(oai.chat.completions.create(messages=CHAT, stream=True, **args))  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason

    prompt = "Once upon a time"
    whole_c = oai.completions.create(prompt=prompt, **args)
    parts = list(oai.completions.create(prompt=prompt, stream=True, **args))
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole_c.choices[0].text
    assert whole_c.choices[0].text  # something was generated


def test_completion_options(oai: openai.OpenAI, smollm2: tallow.Model) -> None:
    prompt = "The capital of France is"
    r = oai.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0, echo=True)
    assert r.choices[0].text == prompt + smollm2.generate(prompt, max_tokens=8, temperature=0)
    # The default max_tokens is OpenAI's 16.
    r = oai.completions.create(model=MODEL_ID, prompt=prompt, temperature=0, logit_bias=NO_EOS)
    assert r.usage is not None and r.usage.completion_tokens == 16
    r = oai.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=30, temperature=0, stop=["."])
    assert "." not in r.choices[0].text and r.choices[0].finish_reason == "stop"
    # Token-id prompts, and banning the greedy token with logit_bias.
    ids = smollm2.tokenize(prompt)
    a = oai.completions.create(model=MODEL_ID, prompt=ids, max_tokens=1, temperature=0)
    first = smollm2.tokenize(a.choices[0].text, add_bos=False)[0]
    b = oai.completions.create(
        model=MODEL_ID, prompt=ids, max_tokens=1, temperature=0, logit_bias={str(first): -100}
    )
    assert a.choices[0].text and b.choices[0].text != a.choices[0].text


def test_logprobs(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL_ID,
        messages=CHAT,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 6
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob
        assert t.logprob <= 0 and sum(2.718281828**a.logprob for a in t.top_logprobs) <= 1.0001
        assert bytes(t.bytes or []).decode() == t.token
    prompt = "1, 2, 3,"
    c = oai.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=4, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert lp is not None and lp.tokens and len(lp.tokens) == 4 and lp.top_logprobs
    # OpenAI's legacy shape: offsets count from the prompt's start; the chosen token is among
    # the alternatives (here the most likely one, so there are still 2).
    assert lp.text_offset == [len(prompt) + sum(len(t) for t in lp.tokens[:i]) for i in range(4)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs or [], lp.top_logprobs, strict=True):
        assert len(top) == 2 and top[token] == logprob == max(top.values())


async def test_async_client_batches_concurrent_requests(server: Server) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    prompts = [f"Count from {i} to {i + 20}:" for i in range(4)]
    solo = []
    for p in prompts:
        r = await client.completions.create(model=MODEL_ID, prompt=p, max_tokens=24, temperature=0)
        solo.append(r.choices[0].text)
    seen_active = 0

    async def watch() -> None:
        nonlocal seen_active
        async with httpx.AsyncClient(base_url=server.url) as h:
            while True:
                seen_active = max(seen_active, (await h.get("/health")).json()["active"])
                await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())

    async def one(p: str) -> str:
        stream = await client.completions.create(
            model=MODEL_ID, prompt=p, max_tokens=24, temperature=0, stream=True, logit_bias=NO_EOS
        )
        return "".join([c.choices[0].text async for c in stream if c.choices])

    together = await asyncio.gather(*(one(p) for p in prompts))
    watcher.cancel()
    await client.close()
    # Same text as alone (the ban does not matter for 24 tokens unless one stopped early).
    for a, b in zip(solo, together, strict=True):
        assert b.startswith(a)
    assert seen_active >= 2, "concurrent requests ran one at a time"


# -- errors (httpx) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "top_k": -1}, "top_k"),
        ({"prompt": "x", "max_tokens": -5}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": "x", "n": 3}, "n"),
        ({"prompt": "x", "n": -1}, "n"),
        ({"prompt": "x", "logit_bias": {"49152": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"-3": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"5": 1000}}, "logit_bias"),
        ({"prompt": "x", "stop": ["s"] * 10_000}, "stop"),
        ({"prompt": "x", "seed": 1.5}, "seed"),
        ({"prompt": "x", "logprobs": 50}, "logprobs"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": [1, 2, 99_999_999]}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
    ],
)
def test_bad_completion_fields_are_named(server: Server, body: dict[str, Any], param: str) -> None:
    with server.client() as c:
        r = c.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"messages": CHAT, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": CHAT, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": CHAT, "chat_template": "{{ 'pwned' }}"}, "chat_template"),
    ],
)
def test_bad_chat_fields_are_named(server: Server, body: dict[str, Any], param: str) -> None:
    with server.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_auth_model_and_routes(server: Server) -> None:
    body = {"prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    with server.client() as c:
        r = c.post("/v1/completions", json={**body, "model": "gpt-4"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert c.get("/v1/models/gpt-4").status_code == 404
        assert c.get("/v1/nothing").status_code == 404 and "error" in c.get("/v1/nothing").json()
        assert c.get("/v1/completions").status_code == 405
        r = c.post("/v1/completions", content=b'{"prompt": ')
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
        assert c.post("/v1/completions", content=b"[1, 2]").status_code == 400


def test_oversize_prompts(server: Server) -> None:
    with server.client() as c:
        # Longer than n_ctx (1024): refused before tokenizing, whatever its size.
        for n in (5_000, 3_000_000):
            r = c.post("/v1/completions", json={"prompt": "word " * n})
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi " * 5_000}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        # Past the body limit (16 MiB): refused without reading it all.
        r = c.post("/v1/completions", content=b'{"prompt": "' + b"x" * (17 << 20) + b'"}')
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_large"
    assert server.health()["active"] == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(
    ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed", "n",
     "logit_bias", "logprobs", "top_logprobs", "presence_penalty", "stream", "stream_options", "echo",
     "repeat_penalty", "model", "response_format"]
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(fields, json_values, max_size=6), chat=st.booleans())
def test_no_input_gives_a_500(server: Server, body: dict[str, Any], chat: bool) -> None:
    body.setdefault("max_tokens", 2)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    with server.client() as c:
        r = c.post(path, content=json.dumps(body, allow_nan=True))
    assert r.status_code in (200, 400, 404), (r.status_code, r.text)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


# -- overload and disconnects -----------------------------------------------------------------


async def test_overload_is_429_with_retry_after(small: Server) -> None:
    body = {"prompt": "Tell me a story.", "max_tokens": 48, "logit_bias": NO_EOS}
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=small.url, headers=auth, timeout=60) as c:
        rs = await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(200)))
    codes = sorted(r.status_code for r in rs)
    # One runs, one waits; the rest are refused at once (C6), and the server stays responsive.
    assert set(codes) == {200, 429} and codes.count(200) >= 2 and codes.count(429) >= 100, codes
    for r in rs:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
        else:
            assert r.json()["usage"]["completion_tokens"] == 48
    small.wait_idle(within=10)


def _long(stream: bool) -> dict[str, Any]:
    return {"prompt": "Tell me a story.", "max_tokens": 5000, "logit_bias": NO_EOS, "stream": stream}


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_cancels_the_generation(server: Server, stream: bool) -> None:
    cancelled = server.metric("tallow_requests_cancelled_total")
    disconnects = server.metric("tallow_http_disconnects_total")
    with server.client() as c:
        if stream:
            with c.stream("POST", "/v1/completions", json=_long(True)) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))
        else:
            with pytest.raises(httpx.ReadTimeout):
                c.post("/v1/completions", json=_long(False), timeout=0.5)
    # The connection is closed: the generation stops within a second.
    assert server.wait_idle(within=1.0) < 1.0
    assert server.metric("tallow_requests_cancelled_total") == cancelled + 1
    assert server.metric("tallow_http_disconnects_total") == disconnects + 1


def test_disconnect_while_queued(small: Server) -> None:
    body = {**_long(False), "max_tokens": 200}
    cancelled = small.metric("tallow_requests_cancelled_total")
    finished = small.metric("tallow_requests_finished_total")
    result: list[int] = []
    with small.client() as c, small.client() as d:
        # The first request occupies the only slot; the next waits in the queue, and its client
        # leaves before it starts.
        t = threading.Thread(target=lambda: result.append(c.post("/v1/completions", json=body).status_code))
        t.start()
        time.sleep(0.3)
        with pytest.raises(httpx.ReadTimeout):
            d.post("/v1/completions", json=body, timeout=0.3)
        t.join()
    assert result == [200]
    small.wait_idle(within=1.0)
    assert small.metric("tallow_requests_cancelled_total") == cancelled + 1
    assert small.metric("tallow_requests_finished_total") == finished + 1


def test_stream_ends_with_done(server: Server) -> None:
    body = {"messages": CHAT, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
    with server.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4


def test_metrics(server: Server) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "tallow_http_requests_total",
        "tallow_completion_tokens_total",
        "tallow_prompt_tokens_total",
        "tallow_queue_depth",
        "tallow_requests_cancelled_total",
        "tallow_request_duration_seconds_bucket",
        "tallow_time_to_first_token_seconds_bucket",
    ):
        assert name in text, name
    assert server.metric("tallow_completion_tokens_total") > 0
    assert server.metric('tallow_http_requests_total{endpoint="/v1/completions",status="400"}') > 0


def test_serve_needs_no_key_by_default(smollm2_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TALLOW_API_KEY"}
    port = _free_port()
    cmd = [sys.executable, "-m", "tallow", "serve", str(smollm2_path), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        # The default model id is the file's name without .gguf.
        assert r.status_code == 200 and r.json()["data"][0]["id"] == smollm2_path.stem
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_shutdown_with_a_running_stream(smollm2_path: Path) -> None:
    """SIGTERM with a stream running: the server gives it a few seconds, cancels it and exits."""
    with _serve(smollm2_path, "-c", "8192") as s, s.client() as c:
        with c.stream("POST", "/v1/completions", json={**_long(True), "max_tokens": 8000}) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            began = time.monotonic()
            s.proc.terminate()
            with contextlib.suppress(httpx.HTTPError):
                for _ in lines:
                    pass
        s.proc.wait(timeout=30)
        assert time.monotonic() - began < 15
