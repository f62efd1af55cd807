"""asyncio: astream is a real async iterator and the event loop keeps running."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import time

import pytest
import tallow


async def test_astream_matches_stream(smollm2: tallow.Model) -> None:
    sync = "".join(smollm2.stream("The capital of France is", max_tokens=12, temperature=0))
    parts = [t async for t in smollm2.astream("The capital of France is", max_tokens=12, temperature=0)]
    assert "".join(parts) == sync
    assert await smollm2.agenerate("The capital of France is", max_tokens=12, temperature=0) == sync


async def test_event_loop_keeps_running(smollm2: tallow.Model) -> None:
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    out = await smollm2.agenerate("Count from 1 to 100: 1, 2, 3,", max_tokens=96, temperature=0)
    elapsed = time.perf_counter() - start
    done.set()
    await task
    assert len(out) > 50
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    # The ticker kept running all along: at least one tick per 30 ms of generation, and never a
    # stall anywhere near the generation's length (loose bounds: CI machines are shared).
    assert len(ticks) >= elapsed / 0.03
    assert max(gaps) < max(0.25, elapsed / 4)


async def test_cancelling_a_task_stops_generation(smollm2: tallow.Model) -> None:
    started = asyncio.Event()
    pieces: list[str] = []

    async def consume() -> None:
        async for piece in smollm2.astream("Count from 1 to 1000: 1, 2, 3,", max_tokens=900, temperature=0):
            pieces.append(piece)
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=60)
    task.cancel()
    try:
        await task
        raise AssertionError("expected CancelledError")
    except asyncio.CancelledError:
        pass
    assert len(pieces) < 200  # stopped long before max_tokens
    # The engine moved on: a new request completes promptly.
    out = await asyncio.wait_for(smollm2.agenerate("Hi", max_tokens=3, temperature=0), timeout=30)
    assert isinstance(out, str)


async def test_concurrent_tasks_share_one_model(smollm2: tallow.Model) -> None:
    prompts = ["The capital of France is", "1, 2, 3,", "def add(a, b):"]
    expected = [smollm2.generate(p, max_tokens=10, temperature=0) for p in prompts]
    got = await asyncio.gather(*(smollm2.agenerate(p, max_tokens=10, temperature=0) for p in prompts * 2))
    assert list(got) == expected * 2


async def test_a_task_waits_for_room_without_blocking_the_loop(smollm2_path: object) -> None:
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=256, max_sequences=1, max_queue=1)  # type: ignore[arg-type]
    running = model.astream("Once upon a time", max_tokens=200, temperature=0)
    await running.__anext__()
    queued = model.astream("Hello", max_tokens=200, temperature=0)
    with pytest.raises(tallow.OverloadedError):
        await model.agenerate("Hi", max_tokens=2)
    waiter = asyncio.create_task(model.agenerate("Hi", max_tokens=2, temperature=0, timeout=60))
    ticks = 0
    for _ in range(10):  # the loop runs while the task waits for room
        await asyncio.sleep(0.01)
        ticks += 1
    assert not waiter.done() and ticks == 10
    await running.aclose()
    await queued.aclose()
    del queued  # never started: dropping its stream is what cancels it
    assert isinstance(await asyncio.wait_for(waiter, timeout=60), str)
    assert model.stats().active == 0


async def test_ticker_jitter_with_16_streams(smollm2: tallow.Model) -> None:
    """A 10 ms ticker keeps its rhythm while 16 streams generate at once: the streams' tokens
    reach the loop through call_soon_threadsafe, and nothing in tallow's async path blocks it."""
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    prompts = [f"Story number {i}: once upon a time" for i in range(16)]
    outs = await asyncio.gather(*(smollm2.agenerate(p, max_tokens=48, temperature=0) for p in prompts))
    done.set()
    await task
    assert all(outs)
    jitter = sorted(b - a - 0.01 for a, b in itertools.pairwise(ticks))
    p99 = jitter[int(0.99 * (len(jitter) - 1))]
    msg = f"ticker jitter p99 {p99 * 1000:.1f} ms, max {jitter[-1] * 1000:.1f} ms over {len(jitter)} ticks"
    print(msg)
    assert len(jitter) > 20 and p99 < 0.020, msg


@pytest.mark.skipif(sys.platform != "linux", reason="reopens the pipe through /proc")
async def test_a_full_wake_up_pipe_loses_no_task(smollm2: tallow.Model) -> None:
    # The engine wakes an asyncio task by writing its key to the loop's pipe. With the pipe full
    # (a loop that has not read it for a long while), the key cannot be written: the loop must
    # then wake every waiting task rather than leave this one waiting forever.
    from tallow import model as model_module

    loop = asyncio.get_running_loop()
    wake = model_module._loop_wake(loop)
    assert wake is not None
    loop.remove_reader(wake._read)  # the loop stops reading while the pipe fills
    write_end = os.open(f"/proc/self/fd/{wake._read}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        for size in (4096, 8):
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(write_end, b"\0" * size)
    finally:
        os.close(write_end)
    expected = smollm2.generate("Hello", max_tokens=4, temperature=0)
    before = smollm2.stats().generated_tokens
    task = asyncio.create_task(smollm2.agenerate("Hello", max_tokens=4, temperature=0))
    # Until the engine has produced a token, so its wake-up met the full pipe.
    deadline = loop.time() + 30
    while smollm2.stats().generated_tokens == before:
        assert loop.time() < deadline
        await asyncio.sleep(0.005)
    loop.add_reader(wake._read, wake._wake)
    assert await asyncio.wait_for(task, timeout=60) == expected
