"""Chat sessions: template rendering, turns, KV reuse across turns, reset."""

from __future__ import annotations

import tallow


def test_chat_turns_are_recorded(smollm2: tallow.Model) -> None:
    chat = smollm2.chat(system="You are a helpful assistant.")
    answer = chat.send("What is 2+2? Answer with a number.", max_tokens=16, temperature=0)
    assert answer.strip()
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"]
    assert chat.messages[-1]["content"] == answer
    second = chat.send("And 3+3?", max_tokens=16, temperature=0)
    assert second.strip()
    assert len(chat.messages) == 5


def test_second_turn_reuses_the_cache(smollm2: tallow.Model) -> None:
    chat = smollm2.chat()
    chat.send("Say hello.", max_tokens=8, temperature=0)
    stream = chat._start("Say goodbye.", 8, {"temperature": 0})
    list(stream)
    usage = stream.usage
    assert usage is not None
    prompt_tokens, _completion, cached = usage
    # Everything up to the previous answer was already in the KV cache.
    assert cached > 10 and cached < prompt_tokens


def test_chat_template_renders_chatml(smollm2: tallow.Model) -> None:
    text = smollm2._model.apply_chat_template([("user", "Hi")], True)
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_reset(smollm2: tallow.Model) -> None:
    chat = smollm2.chat(system="Be brief.")
    chat.send("Hello", max_tokens=4, temperature=0)
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "Be brief."}]


async def test_async_chat(gemma3: tallow.Model) -> None:
    chat = gemma3.chat()
    answer = await chat.asend("What is the capital of France?", max_tokens=16, temperature=0)
    # gemma3-270m is a base model: its answers are weak, so check the mechanics only.
    assert answer.strip()
    assert chat._model._model.apply_chat_template([("user", "Hi")], True).endswith("<start_of_turn>model\n")
    assert chat.messages[-1] == {"role": "assistant", "content": answer}
