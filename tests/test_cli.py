"""The `tallow` command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tallow
from _signals import sigint_default


def tallow_cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tallow", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        input=input,
    )


def test_run_streams_text(smollm2_path: Path) -> None:
    # Chat format by default (SmolLM2 is instruction-tuned) ...
    r = tallow_cli(
        "run",
        str(smollm2_path),
        "What is the capital of France? Answer briefly.",
        "-n",
        "16",
        "--temperature",
        "0",
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    # ... or plain completion.
    r = tallow_cli(
        "run",
        str(smollm2_path),
        "The capital of France is",
        "-n",
        "8",
        "--temperature",
        "0",
        "-t",
        "2",
        "--raw",
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_run_uses_the_catalog_cache(smollm2_path: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "smollm2-135m-q4_1.gguf").symlink_to(smollm2_path)
    r = tallow_cli("run", "smollm2-135m", "Hi", "-n", "2", env={"TALLOW_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    r = tallow_cli("models", env={"TALLOW_HOME": str(tmp_path)})
    assert r.returncode == 0 and "smollm2-135m" in r.stdout and "gemma3-270m" in r.stdout


def test_chat_repl(smollm2_path: Path) -> None:
    r = tallow_cli(
        "chat", str(smollm2_path), "-n", "8", "--temperature", "0", input="Hello\n/reset\nHi again\n/exit\n"
    )
    assert r.returncode == 0, r.stderr
    assert "conversation cleared" in r.stderr
    assert len([line for line in r.stdout.splitlines() if line.strip()]) >= 2


def test_inspect(smollm2_path: Path) -> None:
    r = tallow_cli("inspect", str(smollm2_path))
    assert r.returncode == 0, r.stderr
    assert "general.architecture" in r.stdout and "llama" in r.stdout
    assert "token_embd.weight" in r.stdout
    assert "49152" in r.stdout  # the vocabulary array is summarised with its length


def test_bench_reports_prefill_decode_and_first_token(smollm2_path: Path) -> None:
    r = tallow_cli(
        "bench", str(smollm2_path), "-t", "2", "--reps", "2", "--prompt-tokens", "48", "--gen-tokens", "8"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "kernels" in lines[0] and "load" in lines[0]
    runs = [line for line in lines if line.startswith("run ")]
    assert len(runs) == 2
    # The prompt is as long as asked (never longer), and decode produced every token asked for.
    assert all("(48 tokens)" in line and "(8 tokens)" in line for line in runs), runs
    assert lines[-1].startswith("median: prefill ")


def test_bench_decodes_after_a_long_prompt_when_asked(smollm2_path: Path) -> None:
    # 300 tokens with the default context (4096) and with one too short for them (it grows).
    for ctx in ([], ["-c", "64"]):
        r = tallow_cli(
            "bench", str(smollm2_path), "-t", "2", "--reps", "1", "--prompt-tokens", "32",
            "--gen-tokens", "8", "--context-tokens", "300", *ctx,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        run = next(line for line in r.stdout.splitlines() if line.startswith("run "))
        n = int(run.split("decode after ")[1].split(" tokens")[0])
        assert 280 <= n <= 300, run  # as long as asked, never longer
        assert "decode after 300 tokens" in r.stdout.splitlines()[-1]


def test_bench_prompts_have_the_asked_length(smollm2: tallow.Model) -> None:
    from tallow import bench

    def count(text: str) -> int:
        return len(smollm2.tokenize(text))

    for n in (8, 33, 200):
        prompt = bench.prose_prompt(n, count, "Story 1")
        assert n - 3 <= count(prompt) <= n
    assert bench.prose_prompt(40, count, "Story 1") != bench.prose_prompt(40, count, "Story 2")


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "/nonexistent.gguf"],
        ["run", "/nonexistent.gguf", "hi"],
        ["inspect", "/nonexistent.gguf"],
        ["pull", "nope"],
    ],
)
def test_errors_are_one_line_not_tracebacks(args: list[str]) -> None:
    r = tallow_cli(*args)
    assert r.returncode == 1
    assert r.stderr.startswith("tallow: error:") and "Traceback" not in r.stderr


def test_ctrl_c_stops_the_answer_not_the_chat(smollm2_path: Path) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "tallow", "chat", str(smollm2_path), "-n", "2000", "--temperature", "0"],
        preexec_fn=sigint_default,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("Count from 1 to 1000, separated by commas.\n")
    proc.stdin.flush()
    first = proc.stdout.read(8)  # the answer has started streaming
    assert first
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.stdin.write("/exit\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "[stopped]" in out
    assert "Traceback" not in err
