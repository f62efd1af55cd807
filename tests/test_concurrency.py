"""Concurrency, cancellation and stream-boundary cases C1-C16 of docs/reliability.md (section 5).

Each test names its case. What other files test is not repeated here; ``name`` = in this file:

=====  ====================================================================================
Case   Test
=====  ====================================================================================
C1     ``test_load_64_tasks_and_8_threads_with_aborts`` (here); also
       test_model_api.py::test_threads_share_one_model,
       test_async.py::test_concurrent_tasks_share_one_model
C2     test_async.py::test_event_loop_keeps_running, test_async.py::test_ticker_jitter_with_16_streams
C3     ``test_stopping_an_astream_frees_its_slot`` (task.cancel, wait_for, aclose, break),
       ``test_cancelling_a_queued_request_never_runs_it`` (here); also
       test_async.py::test_cancelling_a_task_stops_generation,
       test_model_api.py::test_breaking_out_of_a_stream_leaves_the_model_ready
C4     ``test_cancel_during_a_long_prefill`` (here)
C5     (HTTP server: not in this package yet)
C6     test_model_api.py::test_a_full_model_raises_overloaded_or_waits,
       test_model_api.py::test_requests_beyond_max_sequences_queue_and_match_alone
C7     ``test_timeout_stops_a_generation_with_its_text_so_far``,
       ``test_async_timeout_stops_a_generation``, ``test_timeout_expires_in_the_queue``,
       ``test_async_timeout_expires_and_leaves_nothing_behind``,
       ``test_a_blocked_sync_request_gets_in_when_room_frees``,
       ``test_cancelling_a_task_that_waits_for_room`` (here); also
       test_model_api.py::test_a_full_model_raises_overloaded_or_waits,
       test_async.py::test_a_task_waits_for_room_without_blocking_the_loop.
       ``timeout=`` is the request's deadline: the wait for room and the generation
C8     test_model_api.py::test_context_overflow
C9     test_model_api.py::test_ctrl_c_during_generate_cancels_only_that_request,
       test_model_api.py::test_ctrl_c_while_waiting_for_room
C10    (needs a panicking model: not reachable from the public API)
C11    (not covered here)
C12    test_lifecycle.py (``close()``, ``with``, 50 load/close cycles)
C13    ``test_interpreter_exit_with_live_streams`` (here)
C14    test_model_api.py::test_ten_thousand_abandoned_streams_leak_nothing,
       test_model_api.py::test_stats_count_a_stream_left_early
C15    ``test_same_text_alone_in_any_batch_position_and_streamed``,
       ``test_long_prompt_prefilled_beside_decoding_requests``,
       ``test_same_text_from_a_differently_sized_engine`` (here); also
       test_model_api.py::test_seeded_sampling_is_reproducible,
       test_model_api.py::test_greedy_is_deterministic_and_streams_the_same
C16    ``test_multibyte_characters_split_across_tokens``,
       ``test_stop_string_spanning_two_tokens``, ``test_stop_string_at_the_first_token`` (here);
       also test_model_api.py::test_stop_string_is_never_emitted
=====  ====================================================================================

Counters: ``Model.stats()`` is the equivalent of vLLM's ``has_unfinished_requests()``. The
scheduler thread retires a cancelled request at its next step, so tests poll it (``_idle``) with
a generous deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tallow
from tallow.sampling import SamplingOptions

#: How long a test waits for the engine to retire requests whose callers stopped. Not a speed
#: bound: only a guard against hanging forever.
IDLE_WITHIN = 60.0

#: Greedy output of this prompt runs for hundreds of tokens without an end-of-generation token.
COUNTING = "Count from 1 to 1000: 1, 2, 3,"
#: A short request whose text checks that the model still works after something was stopped.
CHECK = "The capital of France is"

GREEDY: SamplingOptions = {"temperature": 0.0}
SEEDED: SamplingOptions = {"temperature": 0.8, "seed": 123}


@pytest.fixture(scope="module")
def model(smollm2_path: Path) -> tallow.Model:
    """This module's own model, so its counters see only this module's requests."""
    return tallow.Model(smollm2_path, n_threads=2, n_ctx=2048, max_sequences=8)


# -- helpers ------------------------------------------------------------------------------------


async def _idle(model: tallow.Model, within: float = IDLE_WITHIN) -> tallow.EngineStats:
    """The model's stats once nothing runs or waits (polled; the scheduler thread retires)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        stats = model.stats()
        if stats.active == 0 and stats.queued == 0:
            return stats
        assert loop.time() < deadline, (
            f"requests still running {within} s after their callers stopped: {stats}"
        )
        await asyncio.sleep(0.005)


def _idle_sync(model: tallow.Model, within: float = IDLE_WITHIN) -> tallow.EngineStats:
    deadline = time.monotonic() + within
    while True:
        stats = model.stats()
        if stats.active == 0 and stats.queued == 0:
            return stats
        assert time.monotonic() < deadline, (
            f"requests still running {within} s after their callers stopped: {stats}"
        )
        time.sleep(0.005)


def _delta(before: tallow.EngineStats, after: tallow.EngineStats) -> dict[str, int]:
    """What happened between two snapshots: requests ended by kind, tokens computed."""
    return {
        "finished": after.finished - before.finished,
        "cancelled": after.cancelled - before.cancelled,
        "failed": after.failed - before.failed,
        "prompt_tokens": after.prompt_tokens - before.prompt_tokens,
        "generated_tokens": after.generated_tokens - before.generated_tokens,
    }


def _assert_no_slot_in_use(stats: tallow.EngineStats) -> None:
    assert (stats.active, stats.queued, stats.kv_slots_in_use) == (0, 0, 0), stats


def _solo(
    model: tallow.Model, prompt: str, max_tokens: int, options: SamplingOptions
) -> tuple[list[str], int]:
    """The chunks a request streams when it runs alone, and how many tokens it generates."""
    before = model.stats()
    chunks = list(model.stream(prompt, max_tokens=max_tokens, **options))
    after = _idle_sync(model)
    return chunks, after.generated_tokens - before.generated_tokens


def _pieces(model: tallow.Model, prompt: str, max_tokens: int) -> list[tuple[str, int | None]]:
    """Greedy ``(text, token id)`` events, as the engine sends them (empty texts included)."""
    return [(text, tok) for text, tok, _lp in model._start(prompt, max_tokens, {"temperature": 0.0})]


async def _collect(stream: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in stream]


# -- C1: load test with aborts ------------------------------------------------------------------

N_TASKS = 64
N_THREADS = 8
PER_THREAD = 2
N_REQUESTS = N_TASKS + N_THREADS * PER_THREAD
LOAD_TOKENS = 16
#: Cancelled requests ask for many more tokens than they get, so none can end on its own before
#: its caller stops it.
ABORTED_TOKENS = 400
TOPICS = ["the sea", "a red fox", "prime numbers", "the moon", "bread", "a violin", "rain", "a library"]


def _load_prompt(i: int, aborted: bool) -> str:
    if aborted:
        return f"Count from {i} to 1000: {i}, {i + 1}, {i + 2},"
    return f"Note {i}. A short fact about {TOPICS[i % len(TOPICS)]}:"


async def test_load_64_tasks_and_8_threads_with_aborts(smollm2_path: Path) -> None:
    """C1 (vLLM's test_load and test_abort): 64 asyncio tasks and 8 threads stream greedily from
    one model at once; every 10th request is stopped after a random number of chunks
    (``task.cancel()`` for tasks, ``break`` for threads). Every other request streams exactly
    the chunks and tokens it streams alone; a stopped one got a prefix of them and its task
    raised the very CancelledError it was cancelled with; nothing is left running; the model
    then serves one more request."""
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=512, max_sequences=8)
    rng = random.Random(20240611)
    aborted = {i for i in range(N_REQUESTS) if i % 10 == 5}
    cancel_after = {i: rng.randint(1, 8) for i in sorted(aborted)}
    prompts = [_load_prompt(i, i in aborted) for i in range(N_REQUESTS)]
    max_tokens = [ABORTED_TOKENS if i in aborted else LOAD_TOKENS for i in range(N_REQUESTS)]

    # Alone first: the chunks each request must stream, and the tokens each must generate.
    solo: list[list[str]] = []
    n_tokens: list[int] = []
    for prompt in prompts:
        chunks, n = _solo(model, prompt, LOAD_TOKENS, GREEDY)
        solo.append(chunks)
        n_tokens.append(n)
    assert all(len(solo[i]) > 8 for i in aborted), "a cancelled request must stream more than 8 chunks"
    full_length = sum(n == LOAD_TOKENS for i, n in enumerate(n_tokens) if i not in aborted)
    assert full_length > N_REQUESTS // 2, n_tokens  # most run to max_tokens: the counts mean something

    before = model.stats()
    _assert_no_slot_in_use(before)
    received: dict[int, list[str]] = {i: [] for i in range(N_REQUESTS)}
    reached = {i: asyncio.Event() for i in aborted if i < N_TASKS}

    async def consume(i: int) -> list[str]:
        got = received[i]
        async for chunk in model.astream(prompts[i], max_tokens=max_tokens[i], **GREEDY):
            got.append(chunk)
            if len(got) == cancel_after.get(i):
                reached[i].set()
        return got

    def consume_in_thread(first: int) -> None:
        for i in range(first, first + PER_THREAD):
            got = received[i]
            for chunk in model.stream(prompts[i], max_tokens=max_tokens[i], **GREEDY):
                got.append(chunk)
                if len(got) == cancel_after.get(i):
                    break

    async def cancel_when_reached(i: int, task: asyncio.Task[list[str]]) -> None:
        waiting = asyncio.ensure_future(reached[i].wait())
        await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        task.cancel(f"abort {i}")

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(N_THREADS) as pool:
        threads = [
            loop.run_in_executor(pool, consume_in_thread, N_TASKS + t * PER_THREAD) for t in range(N_THREADS)
        ]
        tasks = {i: asyncio.create_task(consume(i)) for i in range(N_TASKS)}
        cancellers = [asyncio.create_task(cancel_when_reached(i, tasks[i])) for i in reached]
        everything: list[asyncio.Future[Any]] = [*tasks.values(), *threads, *cancellers]
        await asyncio.wait(everything)
    for fut in threads:
        assert fut.result() is None

    for i, task in tasks.items():
        if i in aborted:
            assert task.cancelled(), f"request {i} was not cancelled: it ended with {received[i]}"
            with pytest.raises(asyncio.CancelledError) as raised:
                await task
            assert raised.value.args == (f"abort {i}",), "the CancelledError was replaced on its way out"
        else:
            assert task.result() == solo[i], f"request {i}"
    for i in range(N_REQUESTS):
        if i in aborted:
            assert received[i] == solo[i][: cancel_after[i]], f"request {i}"
        else:
            assert received[i] == solo[i], f"request {i}"

    after = await _idle(model)
    _assert_no_slot_in_use(after)
    d = _delta(before, after)
    assert (d["finished"], d["cancelled"], d["failed"]) == (N_REQUESTS - len(aborted), len(aborted), 0), d
    # No prompt ran twice (each request ran its prompt once, less any prefix the engine reused).
    assert 0 < d["prompt_tokens"] <= sum(len(model.tokenize(p)) for p in prompts), d
    # The others generated exactly their tokens; a stopped one at least as many as it streamed
    # chunks, and fewer than it asked for.
    extra = d["generated_tokens"] - sum(n for i, n in enumerate(n_tokens) if i not in aborted)
    assert sum(cancel_after.values()) <= extra < len(aborted) * ABORTED_TOKENS, d

    assert await model.agenerate(prompts[0], max_tokens=LOAD_TOKENS, **GREEDY) == "".join(solo[0])
    assert _delta(after, await _idle(model))["finished"] == 1


# -- C3: stopping an async stream ---------------------------------------------------------------

#: Far more than any stopped stream gets to: it must stop long before.
LONG_TOKENS = 1500


@pytest.mark.parametrize("how", ["task.cancel", "wait_for", "aclose", "break"])
async def test_stopping_an_astream_frees_its_slot(model: tallow.Model, how: str) -> None:
    """C3: a stream stopped mid-generation by cancelling its task, by an ``asyncio.wait_for``
    deadline, by ``aclose()`` or by ``break`` raises what it should (CancelledError unchanged,
    TimeoutError, nothing), frees its sequence and KV slot, is counted as cancelled, stops long
    before max_tokens, and the next request gives the text it gave before."""
    expected = model.generate(CHECK, max_tokens=12, **GREEDY)
    before = await _idle(model)
    got: list[str] = []
    three = asyncio.Event()

    async def consume() -> None:
        async for chunk in model.astream(COUNTING, max_tokens=LONG_TOKENS, **GREEDY):
            got.append(chunk)
            if len(got) == 3:
                three.set()

    if how == "task.cancel":
        task = asyncio.create_task(consume())
        await asyncio.wait_for(three.wait(), IDLE_WITHIN)
        task.cancel("stop now")
        with pytest.raises(asyncio.CancelledError) as raised:
            await task
        assert raised.value.args == ("stop now",)
        assert task.cancelled()
    elif how == "wait_for":
        # The deadline falls in the middle of the stream (or, on a very slow machine, in its
        # prefill): either way it becomes a cancellation of the request.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consume(), timeout=0.5)
    elif how == "aclose":
        stream = model.astream(COUNTING, max_tokens=LONG_TOKENS, **GREEDY)
        for _ in range(3):
            got.append(await stream.__anext__())
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
    else:
        async for chunk in model.astream(COUNTING, max_tokens=LONG_TOKENS, **GREEDY):
            got.append(chunk)
            if len(got) == 3:
                break  # the generator is closed by the loop's async-generator finalizer

    after = await _idle(model)
    _assert_no_slot_in_use(after)
    d = _delta(before, after)
    assert (d["finished"], d["cancelled"], d["failed"]) == (0, 1, 0), d
    assert len(got) < LONG_TOKENS // 2 and d["generated_tokens"] < LONG_TOKENS // 2, d
    # What it streamed before it stopped is what it streams alone.
    assert got == list(model.stream(COUNTING, max_tokens=2 * len(got) + 8, **GREEDY))[: len(got)]
    assert await model.agenerate(CHECK, max_tokens=12, **GREEDY) == expected


async def test_cancelling_a_queued_request_never_runs_it(smollm2_path: Path) -> None:
    """C3: a task cancelled while its request waits in the queue raises CancelledError, and the
    request never starts: no prompt token of it is computed."""
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=256, max_sequences=1)
    running = model.astream(COUNTING, max_tokens=200, **GREEDY)
    await running.__anext__()
    before = model.stats()
    queued_prompt = "A prompt that must never reach the model: " + "word " * 50

    async def consume() -> list[str]:
        return [c async for c in model.astream(queued_prompt, max_tokens=8, **GREEDY)]

    task = asyncio.create_task(consume())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + IDLE_WITHIN
    while model.stats().queued == 0:  # until the task has submitted its request
        assert loop.time() < deadline and not task.done()
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await running.aclose()
    after = await _idle(model)
    _assert_no_slot_in_use(after)
    d = _delta(before, after)
    assert (d["cancelled"], d["failed"]) == (2, 0), d
    assert d["prompt_tokens"] == 0, d  # the running one had computed its prompt already
    assert (await model.agenerate(CHECK, max_tokens=4, **GREEDY)).strip()


# -- C4: cancel during a long prefill -----------------------------------------------------------


async def test_cancel_during_a_long_prefill(smollm2_path: Path) -> None:
    """C4: a request cancelled while its long prompt is being computed stops between prefill
    chunks (``n_batch`` tokens, 32 here): the prompt is never computed to its end, no token is
    generated, the slot is freed. The task is cancelled as soon as the counters show the first
    chunk done, so the prompt has many more chunks to go."""
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=1024, n_batch=32)
    prompt = " ".join(f"item{i} is number {i};" for i in range(60))
    n_prompt = len(model.tokenize(prompt))
    assert 8 * 32 < n_prompt < model.info.n_ctx - 8, n_prompt
    before = await _idle(model)
    got: list[str] = []

    async def consume() -> None:
        async for chunk in model.astream(prompt, max_tokens=8, **GREEDY):
            got.append(chunk)

    task = asyncio.create_task(consume())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + IDLE_WITHIN
    while model.stats().prompt_tokens == before.prompt_tokens:
        assert loop.time() < deadline and not task.done()
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await _idle(model)
    _assert_no_slot_in_use(after)
    d = _delta(before, after)
    assert got == []
    assert (d["finished"], d["cancelled"], d["failed"], d["generated_tokens"]) == (0, 1, 0, 0), d
    assert 0 < d["prompt_tokens"] < n_prompt and d["prompt_tokens"] % 32 == 0, d
    expected = model.generate(CHECK, max_tokens=8, **GREEDY)
    assert await model.agenerate(CHECK, max_tokens=8, **GREEDY) == expected


# -- C7: timeout= is the wait for room ----------------------------------------------------------


Held = list[Generator[str, None, None]]


@pytest.fixture
def full_model(smollm2_path: Path) -> Iterator[tuple[tallow.Model, Held]]:
    """A model with room for one running and one queued request, both taken (by the streams in
    the list, its only references to them)."""
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=512, max_sequences=1, max_queue=1)
    held: Held = [model.stream(COUNTING, max_tokens=400, **GREEDY)]
    next(held[0])
    held.append(model.stream("Hello", max_tokens=400, **GREEDY))
    yield model, held
    held.clear()


def _free_room(held: Held) -> None:
    for stream in held:
        stream.close()
    held.clear()  # the queued stream never started: dropping it is what cancels it


def test_timeout_stops_a_generation_with_its_text_so_far(model: tallow.Model) -> None:
    """C7: ``timeout`` is the request's deadline: a generation still running then stops at the
    engine's next step with ``RequestTimeoutError`` (a ``TimeoutError``), ``generate`` hands
    over the text so far as ``.text``, and the slot is freed. One that ends in time is whole."""
    chunks, _ = _solo(model, COUNTING, 400, GREEDY)
    whole = "".join(chunks)
    before = model.stats()
    with pytest.raises(tallow.RequestTimeoutError) as raised:
        model.generate(COUNTING, max_tokens=400, timeout=0.1, temperature=0)
    assert isinstance(raised.value, TimeoutError)
    assert whole.startswith(raised.value.text) and len(raised.value.text) < len(whole)
    got: list[str] = []
    with pytest.raises(tallow.RequestTimeoutError):
        for piece in model.stream(COUNTING, max_tokens=400, timeout=0.1, temperature=0):
            got.append(piece)
    assert got == chunks[: len(got)] and len(got) < len(chunks)
    assert model.generate(COUNTING, max_tokens=8, timeout=60, temperature=0) == "".join(
        _solo(model, COUNTING, 8, GREEDY)[0]
    )
    d = _delta(before, _idle_sync(model))
    assert (d["cancelled"], d["failed"]) == (2, 0), d
    _assert_no_slot_in_use(model.stats())


def test_timeout_expires_in_the_queue(smollm2_path: Path) -> None:
    """C7: a request queued behind a running one (``max_sequences=1``) whose deadline passes
    before it gets a slot ends with ``RequestTimeoutError`` and no text, and leaves the queue."""
    model = tallow.Model(smollm2_path, n_threads=2, n_ctx=512, max_sequences=1)
    running = model.stream(COUNTING, max_tokens=400, **GREEDY)
    next(running)
    before = model.stats()
    with pytest.raises(tallow.RequestTimeoutError) as raised:
        model.generate(CHECK, max_tokens=4, timeout=0.2, temperature=0)
    assert raised.value.text == ""
    after = model.stats()
    assert (after.active, after.queued) == (1, 0), after
    assert _delta(before, after)["cancelled"] == 1
    running.close()
    _assert_no_slot_in_use(_idle_sync(model))


async def test_async_timeout_stops_a_generation(model: tallow.Model) -> None:
    """C7: the same deadline in async code: ``agenerate`` raises ``RequestTimeoutError`` with
    the text so far; the loop stays live and the next request works."""
    chunks, _ = _solo(model, COUNTING, 400, GREEDY)
    with pytest.raises(tallow.RequestTimeoutError) as raised:
        await model.agenerate(COUNTING, max_tokens=400, timeout=0.1, temperature=0)
    assert "".join(chunks).startswith(raised.value.text)
    _assert_no_slot_in_use(await _idle(model))
    assert (await model.agenerate(CHECK, max_tokens=4, **GREEDY)).strip()


async def test_async_timeout_expires_and_leaves_nothing_behind(
    full_model: tuple[tallow.Model, Held],
) -> None:
    """C7: on a full model, ``agenerate(timeout=t)`` waits t seconds (the loop running), then
    raises OverloadedError; ``timeout=0`` raises at once. Neither leaves a request behind."""
    model, held = full_model
    before = model.stats()
    assert (before.active, before.queued) == (1, 1), before
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(tallow.OverloadedError):
        await model.agenerate(CHECK, max_tokens=4, timeout=0.3, temperature=0)
    assert loop.time() - start >= 0.3 - 1e-3  # it waited its timeout out (a lower bound only)
    with pytest.raises(tallow.OverloadedError):
        await model.agenerate(CHECK, max_tokens=4, timeout=0, temperature=0)
    with pytest.raises(tallow.OverloadedError):
        model.generate(CHECK, max_tokens=4, timeout=0, temperature=0)
    stats = model.stats()
    assert (stats.active, stats.queued) == (1, 1), stats
    _free_room(held)
    after = await _idle(model)
    d = _delta(before, after)
    # Only the two requests the fixture started ever ran or waited.
    assert (d["finished"], d["cancelled"], d["failed"]) == (0, 2, 0), d
    assert (await model.agenerate(CHECK, max_tokens=4, **GREEDY)).strip()


def test_a_blocked_sync_request_gets_in_when_room_frees(
    full_model: tuple[tallow.Model, Held], model: tallow.Model
) -> None:
    """C7: a thread blocked in ``generate(timeout=60)`` on a full model gets in as soon as room
    frees, and its text is the one it gives alone."""
    small, held = full_model
    before = small.stats()
    expected = model.generate(CHECK, max_tokens=8, **GREEDY)
    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(lambda: small.generate(CHECK, max_tokens=8, timeout=60, temperature=0))
        time.sleep(0.2)  # lets it reach the wait; the model is full, so it cannot be done
        assert not waiter.done()
        _free_room(held)
        assert waiter.result(timeout=IDLE_WITHIN) == expected
    d = _delta(before, _idle_sync(small))
    assert (d["finished"], d["cancelled"], d["failed"]) == (1, 2, 0), d


async def test_cancelling_a_task_that_waits_for_room(
    full_model: tuple[tallow.Model, Held],
) -> None:
    """C7/C3: a task waiting for room (``timeout=60``) that is cancelled raises CancelledError
    and its request is never submitted, not even once room frees."""
    model, held = full_model
    before = model.stats()
    task = asyncio.create_task(model.agenerate(CHECK, max_tokens=4, timeout=60, temperature=0))
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel("no more waiting")
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert raised.value.args == ("no more waiting",)
    _free_room(held)
    after = await _idle(model)
    d = _delta(before, after)
    assert (d["finished"], d["cancelled"], d["failed"]) == (0, 2, 0), d


# -- C13: interpreter exit with live streams ----------------------------------------------------

_EXIT_CHILD = """
import asyncio, sys, threading, time, tallow

model = tallow.Model(sys.argv[1], n_threads=2, n_ctx=512, max_sequences=2)
scenario, run = sys.argv[2], int(sys.argv[3])
started = threading.Event()
held = []


async def consume(prompt):
    async for _ in model.astream(prompt, max_tokens=400, temperature=0):
        started.set()


class SlowWakeupLoop(asyncio.SelectorEventLoop):
    # Widens a window that exists with any loop: the engine thread wakes the loop up by calling
    # call_soon_threadsafe, which releases the GIL (the default loop's does, to write to its
    # self-pipe). Here it stays released for 50 ms, and the program exits meanwhile.
    def call_soon_threadsafe(self, callback, *args, context=None):
        if threading.current_thread() is not loop_thread:
            started.set()
            time.sleep(0.05)
        return super().call_soon_threadsafe(callback, *args, context=context)


if scenario == "sync-streams":
    running = model.stream("Count from 1 to 1000: 1, 2, 3,", max_tokens=400, temperature=0)
    next(running)
    second = model.stream("Once upon a time", max_tokens=400, temperature=0)
    next(second)
    queued = model.stream("Hello", max_tokens=400, temperature=0)
    never = model.stream("Hi there", max_tokens=400, temperature=0)
elif scenario == "asyncio-run-pending":
    async def main():
        agen = model.astream("Count from 1 to 1000: 1, 2, 3,", max_tokens=400, temperature=0)
        await agen.__anext__()
        held.append(agen)
        held.append(asyncio.create_task(consume("Once upon a time")))
        held.append(asyncio.create_task(consume("Hello")))  # queued
        while not started.is_set():
            await asyncio.sleep(0.01)
        held.append(model.astream("Never iterated", max_tokens=400))  # queued, never started
    asyncio.run(main())
    sync = model.stream("Left open", max_tokens=400, temperature=0)
    next(sync)
elif scenario == "daemon-thread-stream":
    def work():
        for _ in model.stream("Count from 1 to 1000: 1, 2, 3,", max_tokens=400, temperature=0):
            started.set()
    threading.Thread(target=work, daemon=True).start()
elif scenario == "daemon-thread-event-loop":
    coro = consume("Count from 1 to 1000: 1, 2,")
    threading.Thread(target=asyncio.run, args=(coro,), daemon=True).start()
elif scenario == "daemon-thread-event-loop-slow-wakeup":
    coro = consume("Count from 1 to 1000: 1, 2,")
    loop_thread = threading.Thread(target=SlowWakeupLoop().run_until_complete, args=(coro,), daemon=True)
    loop_thread.start()
else:
    raise SystemExit(f"unknown scenario {scenario}")

# Application state the interpreter takes a moment (about 0.1 s) to tear down at exit.
state = [{"i": i} for i in range(300_000)]
for d in state:
    d["self"] = d
if scenario.startswith("daemon-thread"):
    started.clear()
    started.wait()  # generating now (with the slow wake-up: the engine is in the wake-up call)
    if not scenario.endswith("slow-wakeup"):
        time.sleep(0.011 * run)  # each run exits at another point of the engine's step
print("ready", flush=True)
"""

#: Each scenario runs this many times, exiting at different moments of the engine's work.
EXIT_RUNS = 3
EXIT_NOISE = ("Exception ignored", "Traceback", "panicked", "Event loop is closed", "Fatal Python error")


@pytest.mark.parametrize(
    "scenario",
    [
        "sync-streams",
        "asyncio-run-pending",
        "daemon-thread-stream",
        "daemon-thread-event-loop",
        "daemon-thread-event-loop-slow-wakeup",
    ],
)
def test_interpreter_exit_with_live_streams(smollm2_path: Path, scenario: str) -> None:
    """C13: a program that exits with generations still running (sync streams open, queued and
    never iterated; async streams and tasks pending when ``asyncio.run`` returns; a daemon
    thread blocked in a sync stream; an event loop in a daemon thread awaiting a stream, also
    while the engine thread is in the loop's wake-up call) exits with status 0 and writes
    nothing to stderr: no traceback, no "Exception ignored", no "Event loop is closed", no Rust
    panic, no abort. The engine thread must not be inside Python when the interpreter
    finalizes (CPython ends a foreign thread that takes the GIL then, by unwinding it)."""
    for run in range(EXIT_RUNS):
        proc = subprocess.run(
            [sys.executable, "-c", _EXIT_CHILD, str(smollm2_path), scenario, str(run)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        where = f"{scenario}, run {run + 1}: exit status {proc.returncode}, stderr {proc.stderr!r}"
        assert proc.stdout.strip() == "ready", where
        assert proc.returncode == 0, where
        assert not any(noise in proc.stderr for noise in EXIT_NOISE), where
        assert proc.stderr == "", where


# -- C15: determinism ---------------------------------------------------------------------------

TARGET = "Once upon a time, in a small village by the sea,"
FILLERS: list[tuple[str, SamplingOptions]] = [
    ("The best way to cook rice is", {"temperature": 1.0, "seed": 7}),
    ("def fibonacci(n):", {"temperature": 0.0}),
    ("My favourite colour is", {"temperature": 0.8, "seed": 123}),
    ("The three primary colours are", {"temperature": 1.2, "seed": 99, "top_k": 0}),
    ("Dear diary, today", {"temperature": 0.7, "seed": 1, "repeat_penalty": 1.3}),
    (COUNTING, {"temperature": 0.0}),
    ("Water boils at", {"temperature": 0.9, "seed": 2024, "top_p": 0.5}),
    ("In the year 2050,", {"temperature": 0.6, "seed": 5}),
    ("Photosynthesis is", {"temperature": 0.0}),
    ("The quick brown fox", {"temperature": 1.0, "seed": 3}),
    ("Here is a list of fruits:", {"temperature": 0.8, "seed": 8}),
]
C15_TOKENS = 32


async def _batch(
    model: tallow.Model, requests: list[tuple[str, SamplingOptions]], max_tokens: int
) -> list[str]:
    """Submits ``requests`` in this order (``astream`` submits when called), then reads them
    all at once."""
    streams = [model.astream(p, max_tokens=max_tokens, **o) for p, o in requests]
    return ["".join(chunks) for chunks in await asyncio.gather(*(_collect(s) for s in streams))]


@pytest.mark.parametrize("options", [SEEDED, GREEDY], ids=["seeded", "greedy"])
async def test_same_text_alone_in_any_batch_position_and_streamed(
    model: tallow.Model, options: SamplingOptions
) -> None:
    """C15: the same prompt and options give byte-identical text alone (generate, stream,
    astream), 1st, 4th and 8th in a batch of 8 mixed requests, and 11th of 12 (queued, then
    joining a running batch); every filler also gives its own solo text."""
    alone = model.generate(TARGET, max_tokens=C15_TOKENS, **options)
    assert alone.strip()
    assert "".join(model.stream(TARGET, max_tokens=C15_TOKENS, **options)) == alone
    assert await model.agenerate(TARGET, max_tokens=C15_TOKENS, **options) == alone
    filler_alone = [model.generate(p, max_tokens=C15_TOKENS, **o) for p, o in FILLERS]
    for position, size in ((0, 8), (3, 8), (7, 8), (10, 12)):
        fillers = list(zip(FILLERS, filler_alone, strict=True))[: size - 1]
        requests = [f for f, _ in fillers]
        requests.insert(position, (TARGET, options))
        expected = [t for _, t in fillers]
        expected.insert(position, alone)
        got = await _batch(model, requests, C15_TOKENS)
        assert got[position] == alone, f"position {position} of {size}"
        assert got == expected, f"target at position {position} of {size}"
    _assert_no_slot_in_use(await _idle(model))


async def test_long_prompt_prefilled_beside_decoding_requests(model: tallow.Model) -> None:
    """C15: a prompt longer than one prefill chunk (512 tokens), whose chunks run in the same
    forward passes as other requests' decode tokens, gives the text it gives alone."""
    prompt = "Here is a long story. " + " ".join(
        f"On day {i} the traveller walked to the town of {TOPICS[i % 8]}." for i in range(50)
    )
    assert 512 < len(model.tokenize(prompt)) < 1500
    alone = model.generate(prompt, max_tokens=C15_TOKENS, **SEEDED)
    alone_greedy = model.generate(prompt, max_tokens=C15_TOKENS, **GREEDY)
    fillers = FILLERS[:6]
    filler_alone = [model.generate(p, max_tokens=C15_TOKENS, **o) for p, o in fillers]
    requests = [*fillers[:3], (prompt, SEEDED), *fillers[3:], (prompt, GREEDY)]
    got = await _batch(model, requests, C15_TOKENS)
    assert got == [*filler_alone[:3], alone, *filler_alone[3:], alone_greedy]


def test_same_text_from_a_differently_sized_engine(model: tallow.Model, smollm2_path: Path) -> None:
    """C15: another Model of the same file with other engine sizes (``max_sequences``,
    ``n_ctx``, ``n_batch``: the scratch buffers, KV caches and prompt chunks differ) gives the
    same text, streamed or not. (The chunk size can change llama.cpp's summation orders: with
    K-quant weights, and for a chunk of a single token. SmolLM2 is Q4_1, and chunks of 5 leave
    no one-token chunk of this prompt.)"""
    n_prompt = len(model.tokenize(TARGET))
    assert n_prompt % 5 != 1, n_prompt
    other = tallow.Model(smollm2_path, n_threads=2, n_ctx=300, max_sequences=3, n_batch=5)
    for options in (SEEDED, GREEDY):
        alone = model.generate(TARGET, max_tokens=C15_TOKENS, **options)
        assert other.generate(TARGET, max_tokens=C15_TOKENS, **options) == alone
        assert "".join(other.stream(TARGET, max_tokens=C15_TOKENS, **options)) == alone


# -- C16: stream boundaries ---------------------------------------------------------------------

#: Prompts whose greedy continuations are characters of several tokens each (an emoji of three
#: byte-level tokens; kana and kanji of two).
MULTIBYTE = ["😀😀😀😀😀😀😀😀", "東京は日本の首都です。大阪は"]


@pytest.mark.parametrize("prompt", MULTIBYTE)
async def test_multibyte_characters_split_across_tokens(model: tallow.Model, prompt: str) -> None:
    """C16: where a character's bytes come in several tokens, no chunk carries part of it: every
    chunk is whole characters, with no replacement character except where ``max_tokens`` ends
    the output mid-character; the chunks, sync or async, join to ``generate()``'s text and to
    the detokenized token ids."""
    pieces = _pieces(model, prompt, 24)
    ids = [t for _, t in pieces if t is not None]
    held_back = [t for text, t in pieces if text == "" and t is not None]
    assert held_back, f"no token of {prompt!r}'s continuation is part of a character: {pieces}"
    text = model.generate(prompt, max_tokens=24, **GREEDY)
    assert any(ord(c) > 0x2FFF for c in text), text
    chunks = list(model.stream(prompt, max_tokens=24, **GREEDY))
    achunks = await _collect(model.astream(prompt, max_tokens=24, **GREEDY))
    assert chunks == achunks
    assert "".join(chunks) == text == "".join(t for t, _ in pieces)
    assert model.detokenize(ids) == text
    assert chunks == [t for t, _ in pieces if t]  # one chunk per token with text, none split
    for chunk in chunks:
        assert chunk and chunk.encode("utf-8").decode("utf-8") == chunk
    assert "\ufffd" not in text.rstrip("\ufffd"), text


def _boundaries(pieces: list[tuple[str, int | None]]) -> Iterator[tuple[int, int]]:
    """(index, offset in the text) of the end of each token's text."""
    offset = 0
    for i, (text, _) in enumerate(pieces):
        offset += len(text)
        yield i, offset


async def _all_ways(model: tallow.Model, prompt: str, max_tokens: int, stop: list[str]) -> list[str]:
    """The text of generate, stream and astream with these stop strings."""
    return [
        model.generate(prompt, max_tokens=max_tokens, stop=stop, temperature=0),
        "".join(model.stream(prompt, max_tokens=max_tokens, stop=stop, temperature=0)),
        "".join(await _collect(model.astream(prompt, max_tokens=max_tokens, stop=stop, temperature=0))),
    ]


async def test_stop_string_spanning_two_tokens(model: tallow.Model) -> None:
    """C16: a stop string made of the end of one generated token and the start of the next
    ends the output right before it: nothing of it is emitted, the chunks streamed before it
    are exactly the text before it. A stop string that starts to match and then diverges, or
    that is cut short by max_tokens, holds nothing back for good."""
    pieces = _pieces(model, CHECK, 24)
    full = "".join(t for t, _ in pieces)
    assert model.generate(CHECK, max_tokens=24, **GREEDY) == full
    stop, at = "", -1
    for i, end in _boundaries(pieces[:-1]):
        left, right = pieces[i][0], pieces[i + 1][0]
        candidate = left[-2:] + right[:2]
        if i >= 2 and len(left) >= 2 and len(right) >= 2 and full.find(candidate) == end - 2:
            stop, at = candidate, end - 2
            break
    assert stop, f"no two adjacent tokens to build a stop string from: {pieces}"
    for out in await _all_ways(model, CHECK, 24, [stop]):
        assert out == full[:at], (stop, out)
        assert stop not in out

    diverging = stop[:3] + "\u00a7\u00a7"
    assert diverging not in full
    for out in await _all_ways(model, CHECK, 24, [diverging, "never appears"]):
        assert out == full, (diverging, out)
    cut_short = full[-2:] + "\u00a7"
    for out in await _all_ways(model, CHECK, 24, [cut_short]):
        assert out == full, (cut_short, out)
    in_prompt = "capital"
    assert in_prompt not in full
    for out in await _all_ways(model, CHECK, 24, [in_prompt]):
        assert out == full


async def test_stop_string_at_the_first_token(model: tallow.Model) -> None:
    """C16: a stop string matching the first generated token (in whole or its start), or the
    first character when it spans several tokens, gives empty output, finished normally."""
    before = await _idle(model)
    first = _pieces(model, CHECK, 4)[0][0]
    assert len(first) >= 2, first
    for stop in (first, first[:2]):
        assert await _all_ways(model, CHECK, 16, [stop]) == ["", "", ""], stop
    emoji = MULTIBYTE[0]
    assert model.generate(emoji, max_tokens=6, **GREEDY).startswith("😀")
    assert await _all_ways(model, emoji, 16, ["😀"]) == ["", "", ""]
    assert list(model.stream(emoji, max_tokens=16, stop=["😀"], temperature=0)) == []
    stream = model._start(emoji, 16, {"temperature": 0.0, "stop": ["😀"]})
    assert [t for t, _, _ in stream if t] == []
    assert stream.finish_reason == "stop"
    d = _delta(before, await _idle(model))
    assert (d["cancelled"], d["failed"]) == (0, 0), d
