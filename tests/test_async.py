"""asyncio: astream is a real async iterator and the event loop keeps running."""

from __future__ import annotations

import asyncio
import time

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
    await smollm2.agenerate("Write a paragraph about the sea.", max_tokens=48, temperature=0)
    done.set()
    await task
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 5
    # The loop was never blocked for a whole generation (which takes far longer than this).
    assert max(gaps) < 0.5


async def test_cancelling_a_task_stops_generation(smollm2: tallow.Model) -> None:
    async def consume() -> str:
        return await smollm2.agenerate("Tell me a very long story.", max_tokens=500, temperature=0)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    task.cancel()
    try:
        await task
        raise AssertionError("expected CancelledError")
    except asyncio.CancelledError:
        pass
    # The engine moved on: a new request completes promptly.
    out = await asyncio.wait_for(smollm2.agenerate("Hi", max_tokens=3, temperature=0), timeout=30)
    assert isinstance(out, str)
