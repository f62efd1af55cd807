"""The public Model API on the real SmolLM2 model: info, tokens, generation, stops, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tallow
from _signals import sigint_default


def test_info(smollm2: tallow.Model) -> None:
    info = smollm2.info
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert 100_000_000 < info.n_params < 200_000_000
    assert info.vocab_size == 49152
    assert info.context_length == 8192
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.n_ctx == 1024


def test_tokenize_roundtrip(smollm2: tallow.Model) -> None:
    text = "Hello, world! 你好 🚀"
    ids = smollm2.tokenize(text, add_bos=False)
    assert ids and all(isinstance(i, int) for i in ids)
    assert smollm2.detokenize(ids) == text


def test_special_tokens_parse_only_when_asked(smollm2: tallow.Model) -> None:
    plain = smollm2.tokenize("<|im_start|>", add_bos=False, special=False)
    special = smollm2.tokenize("<|im_start|>", add_bos=False, special=True)
    assert len(special) == 1 and len(plain) > 1


def test_greedy_is_deterministic_and_streams_the_same(smollm2: tallow.Model) -> None:
    a = smollm2.generate("The capital of France is", max_tokens=16, temperature=0)
    b = "".join(smollm2.stream("The capital of France is", max_tokens=16, temperature=0))
    assert a == b and a.strip()


def test_seeded_sampling_is_reproducible(smollm2: tallow.Model) -> None:
    a = smollm2.generate("Once upon a time", max_tokens=24, temperature=1.0, seed=1234)
    b = smollm2.generate("Once upon a time", max_tokens=24, temperature=1.0, seed=1234)
    assert a == b


def test_max_tokens_bounds_the_output(smollm2: tallow.Model) -> None:
    ids = smollm2.tokenize(smollm2.generate("Count: 1, 2, 3,", max_tokens=5, temperature=0), add_bos=False)
    assert len(ids) <= 6  # re-tokenizing may merge differently by one token at most
    assert smollm2.generate("Hello", max_tokens=0) == ""


def test_stop_string_is_never_emitted(smollm2: tallow.Model) -> None:
    full = smollm2.generate("Count: 1, 2, 3,", max_tokens=20, temperature=0)
    assert "5" in full
    cut = smollm2.generate("Count: 1, 2, 3,", max_tokens=20, temperature=0, stop=["5"])
    assert "5" not in cut
    assert full.startswith(cut)


def test_context_overflow(smollm2_path: object) -> None:
    small = tallow.Model(smollm2_path, n_threads=1, n_ctx=16)  # type: ignore[arg-type]
    with pytest.raises(tallow.ContextOverflowError, match="16"):
        small.generate("word " * 100)
    # The model is still usable afterwards.
    assert isinstance(small.generate("Hi", max_tokens=2, temperature=0), str)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repeat_penalty": 0.0}, "repeat_penalty"),
        ({"repeat_last_n": -2}, "repeat_last_n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"seed": -5}, "seed"),
    ],
)
def test_bad_parameters_name_themselves(smollm2: tallow.Model, kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        smollm2.generate("Hi", **kwargs)  # type: ignore[arg-type]


def test_wrong_types(smollm2: tallow.Model) -> None:
    with pytest.raises(TypeError):
        smollm2.generate(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="top_k"):
        smollm2.generate("Hi", top_k=1.5)  # type: ignore[typeddict-item]
    with pytest.raises(TypeError, match="nonsense"):
        smollm2.generate("Hi", nonsense=1)  # type: ignore[call-arg]


def test_breaking_out_of_a_stream_leaves_the_model_ready(smollm2: tallow.Model) -> None:
    for i, _ in enumerate(smollm2.stream("Tell me a long story.", max_tokens=200, temperature=0)):
        if i == 2:
            break
    assert smollm2.generate("The capital of France is", max_tokens=4, temperature=0).strip()


def test_missing_file_and_unknown_name() -> None:
    with pytest.raises(FileNotFoundError):
        tallow.Model("/nonexistent/model.gguf")
    with pytest.raises(FileNotFoundError, match="smollm2-135m"):
        tallow.Model("no-such-catalog-model")


def test_n_ctx_zero_is_the_training_context(smollm2_path: object) -> None:
    with tallow.Model(smollm2_path, n_ctx=0) as m:  # type: ignore[arg-type]
        assert m.info.context_length == 8192 and m.info.n_ctx == 8192
        # The default caps it at 4096.
    with tallow.Model(smollm2_path) as m:  # type: ignore[arg-type]
        assert m.info.n_ctx == 4096
        assert (m.info.bos_token_id, m.info.eos_token_id) == (1, 2)


def test_bad_constructor_arguments(smollm2_path: object) -> None:
    with pytest.raises(ValueError, match="n_ctx"):
        tallow.Model(smollm2_path, n_ctx=-1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="n_threads"):
        tallow.Model(smollm2_path, n_threads="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_sequences"):
        tallow.Model(smollm2_path, max_sequences=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_sequences"):
        tallow.Model(smollm2_path, max_sequences=2.0)  # type: ignore[arg-type]


def test_gemma3_generates(gemma3: tallow.Model) -> None:
    assert gemma3.info.architecture == "gemma3"
    assert gemma3.info.vocab_size == 262144
    out = gemma3.generate("The capital of France is", max_tokens=8, temperature=0)
    assert "France" in out  # the 270M base model restates rather than answers


def test_build_info() -> None:
    info = tallow.build_info()
    assert info["version"] == tallow.__version__
    assert info["kernels"]
    assert info["attention"] in ("avx512", "portable")
    assert info["matmul_tiles"]
    if info["kernels"] == "scalar":
        assert (info["matmul_tiles"], info["attention"]) == ("none", "portable")
    elif info["kernels"] in ("avx2", "avx512vnni"):
        # A SIMD table on x86-64 brings the row tiles of the 32-element formats.
        assert info["matmul_tiles"].startswith(info["kernels"]), info


def test_build_info_with_scalar_kernels() -> None:
    """TALLOW_KERNELS=scalar (read once per process) turns every SIMD path off, and says so."""
    code = "import json, tallow; print(json.dumps(tallow.build_info()))"
    env = {**os.environ, "TALLOW_KERNELS": "scalar"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["kernels"], info["matmul_tiles"], info["attention"]) == ("scalar", "none", "portable")


def test_threads_share_one_model(smollm2: tallow.Model) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["The capital of France is", "1, 2, 3,", "def add(a, b):", "Hello"]
    expected = [smollm2.generate(p, max_tokens=12, temperature=0) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: smollm2.generate(p, max_tokens=12, temperature=0), prompts * 2))
    assert got == expected * 2


def test_requests_beyond_max_sequences_queue_and_match_alone(smollm2_path: object) -> None:
    """Two requests run at once; the other four wait their turn. Seeded sampling gives each
    the text it gives alone, batched with whichever others run beside it."""
    from concurrent.futures import ThreadPoolExecutor

    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=256, max_sequences=2)  # type: ignore[arg-type]
    jobs = [(p, seed) for p in ("Once upon a time", "The best way to cook rice is") for seed in (1, 2, 3)]

    def run(job: tuple[str, int]) -> str:
        return model.generate(job[0], max_tokens=16, temperature=0.8, seed=job[1])

    alone = [run(j) for j in jobs]
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(run, jobs)) == alone
    stats = model.stats()
    assert (stats.active, stats.queued, stats.kv_slots_in_use, stats.kv_slots) == (0, 0, 0, 2), stats
    assert (stats.finished, stats.cancelled, stats.failed) == (12, 0, 0), stats
    assert stats.generated_tokens > 0 and stats.tokens_per_second > 0


def test_stats_count_a_stream_left_early(smollm2_path: object) -> None:
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=256)  # type: ignore[arg-type]
    assert model.stats() == tallow.EngineStats(0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0.0, 0.0)
    for _ in model.stream("Once upon a time", max_tokens=50, temperature=0):
        break
    model.generate("Hi", max_tokens=2, temperature=0)  # runs after the first one has ended
    stats = model.stats()
    assert (stats.active, stats.queued, stats.kv_slots_in_use) == (0, 0, 0), stats
    assert (stats.finished, stats.cancelled) == (1, 1), stats


def test_a_full_model_raises_overloaded_or_waits(smollm2_path: object) -> None:
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=256, max_sequences=1, max_queue=1)  # type: ignore[arg-type]
    running = model.stream("Once upon a time", max_tokens=200, temperature=0)
    next(running)  # generating
    waiting = model.stream("Hello", max_tokens=200, temperature=0)  # queued
    with pytest.raises(tallow.OverloadedError, match="max_queue"):
        model.generate("Hi", max_tokens=2)
    with pytest.raises(tallow.OverloadedError):
        model.generate("Hi", max_tokens=2, timeout=0.05)
    for bad, error in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="timeout"):
            model.generate("Hi", max_tokens=2, timeout=bad)  # type: ignore[arg-type]
    running.close()
    waiting.close()
    del waiting  # never started: dropping its stream is what cancels it
    # Both ended: a request that waits gets in.
    assert isinstance(model.generate("Hi", max_tokens=2, temperature=0, timeout=60), str)
    stats = model.stats()
    assert (stats.active, stats.queued, stats.cancelled) == (0, 0, 2), stats


def test_ten_thousand_abandoned_streams_leak_nothing(smollm2_path: object) -> None:
    """Streams dropped without being read are cancelled (queued or running) and free their
    slots; the model then serves the next request."""
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=256)  # type: ignore[arg-type]
    for i in range(10_000):
        stream = model.stream(f"Story {i % 7}:", max_tokens=50, temperature=0, timeout=60)
        if i % 1000 == 0:
            next(stream)  # some get to run first
        del stream
    assert model.generate("Hi", max_tokens=3, temperature=0, timeout=60) is not None
    stats = model.stats()
    assert (stats.active, stats.queued, stats.kv_slots_in_use) == (0, 0, 0), stats
    assert (stats.cancelled, stats.finished, stats.failed) == (10_000, 1, 0), stats


_SIGINT_CHILD = """
import sys, time, tallow
model = tallow.Model(sys.argv[1], n_threads=2, n_ctx=2048)
other = model.stream("Once upon a time", max_tokens=1500, temperature=0)  # a second request, running
next(other)
print("ready", flush=True)
try:
    model.generate("Count from 1 to 1000, separated by commas.", max_tokens=1500, temperature=0)
    print("finished?!", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
other.close()
deadline = time.monotonic() + 10
while model.stats().active and time.monotonic() < deadline:
    time.sleep(0.01)
s = model.stats()
print("stats", s.active, s.queued, s.kv_slots_in_use, s.cancelled, flush=True)
print("next", repr(model.generate("Hi", max_tokens=3, temperature=0)), flush=True)
"""


def test_ctrl_c_during_generate_cancels_only_that_request(smollm2_path: object) -> None:
    """SIGINT while `generate` blocks raises KeyboardInterrupt in the caller, cancels that
    request (and nothing else that was not asked to stop), and leaves the model ready."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_CHILD, str(smollm2_path)],
        preexec_fn=sigint_default,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # generating
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "interrupted", out
    assert lines[1] == "stats 0 0 0 2", out
    assert lines[2].startswith("next '"), out


_SIGINT_WAITING_CHILD = """
import sys, time, tallow
model = tallow.Model(sys.argv[1], n_threads=2, n_ctx=512, max_sequences=1, max_queue=1)
running = model.stream("Once upon a time", max_tokens=400, temperature=0)
next(running)
waiting = model.stream("Hello", max_tokens=400, temperature=0)
print("ready", flush=True)
start = time.monotonic()
try:
    model.generate("Hi", max_tokens=3, timeout=60)
    print("got in?!", flush=True)
except KeyboardInterrupt:
    print("interrupted after", round(time.monotonic() - start, 1), flush=True)
s = model.stats()
print("stats", s.active, s.queued, flush=True)
"""


def test_ctrl_c_while_waiting_for_room(smollm2_path: object) -> None:
    """A request waiting for room (timeout=60) stops waiting at Ctrl-C, not at its timeout."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_WAITING_CHILD, str(smollm2_path)],
        preexec_fn=sigint_default,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("interrupted after ") and float(lines[0].split()[-1]) < 10, out
    assert lines[1] == "stats 1 1", out  # the running and the queued requests go on


def test_requests_reuse_a_shared_prompt_prefix_exactly(gemma3_path: object) -> None:
    # A common system prompt: later requests start from the KV prefix an earlier one left
    # (counted in stats), and give the tokens a freshly loaded model gives.
    system = "You are a concise assistant. Answer in one short sentence. Question: "
    questions = ["What is the capital of Italy?", "What colour is the sky?", "Name a large animal."]
    fresh = []
    for q in questions:
        m = tallow.Model(gemma3_path, n_threads=2, n_ctx=256)  # type: ignore[arg-type]
        fresh.append(m.generate(system + q, max_tokens=8, temperature=0))
        m.close()
    with tallow.Model(gemma3_path, n_threads=2, n_ctx=256) as model:  # type: ignore[arg-type]
        got = [model.generate(system + q, max_tokens=8, temperature=0) for q in questions]
        assert model.stats().cached_prompt_tokens >= 2 * 12
    assert got == fresh
