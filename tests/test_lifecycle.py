"""Closing a model (reliability.md C12): ``close()`` and ``with``, what a closed model does, the
requests running when it closes, and memory over many load/close cycles."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from pathlib import Path

import pytest
import tallow


def test_with_closes_and_a_closed_model_raises(smollm2_path: Path) -> None:
    with tallow.Model(smollm2_path, n_threads=2, n_ctx=256) as model:
        assert model.generate("Hello", max_tokens=2, temperature=0)
    assert "closed" in repr(model)
    for use in (
        lambda: model.generate("Hello", max_tokens=2),
        lambda: model.stream("Hello"),
        lambda: model.tokenize("Hello"),
        lambda: model.stats(),
        lambda: model.chat().send("Hello"),
    ):
        with pytest.raises(tallow.ModelClosedError, match="closed"):
            use()
    with pytest.raises(ValueError):  # ModelClosedError is a ValueError, as for closed files
        model.detokenize([1])
    model.close()  # idempotent


def test_close_ends_running_and_queued_requests(smollm2_path: Path) -> None:
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=256, max_sequences=2)
    errors: list[BaseException] = []
    started = threading.Barrier(5)

    def run(i: int) -> None:
        stream = model.stream(f"Story {i}:", max_tokens=200, temperature=0)
        started.wait()
        try:
            for _ in stream:
                pass
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]  # 2 run, 2 queue
    for t in threads:
        t.start()
    started.wait()
    model.close()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert len(errors) == 4 and all(isinstance(e, tallow.ModelClosedError) for e in errors), errors


async def test_close_ends_an_async_stream(smollm2_path: Path) -> None:
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=256)
    got: list[str] = []

    async def consume() -> None:
        async for piece in model.astream("Once upon a time", max_tokens=500, temperature=0):
            got.append(piece)
            if len(got) == 3:
                model.close()

    with pytest.raises(tallow.ModelClosedError):
        await asyncio.wait_for(consume(), timeout=60)
    assert len(got) >= 3


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(sys.platform != "linux", reason="reads the RSS from /proc")
def test_load_close_cycles_return_memory(smollm2_path: Path) -> None:
    def cycle() -> None:
        with tallow.Model(smollm2_path, n_threads=2, n_ctx=512, max_sequences=2) as m:
            assert len(m.generate("Hi", max_tokens=2, temperature=0)) > 0
        gc.collect()

    for _ in range(3):  # warm-up: allocator arenas, the repack cache written
        cycle()
    base = _rss_mib()
    for _ in range(50):
        cycle()
    grown = _rss_mib() - base
    # One loaded model maps about 100 MiB of weights and 11 MiB of KV caches: a leak of either
    # per cycle would show as gigabytes.
    assert grown < 40, f"RSS grew {grown:.0f} MiB over 50 load/close cycles"
