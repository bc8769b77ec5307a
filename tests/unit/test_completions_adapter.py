"""/v1/completions over a chat-only provider: the pure translation both ways."""

from __future__ import annotations

from typing import Any

import pytest

from meterway.errors import BadRequest
from meterway.providers.completions_adapter import chat_request, completion_chunk, completion_response


def test_the_prompt_becomes_one_user_message_and_the_sampling_options_are_carried() -> None:
    request = {"model": "m", "prompt": ["say hi"], "max_tokens": 5, "temperature": 0.1, "stop": ["\n"], "n": 1}
    request |= {"stream": True, "stream_options": {"include_usage": True}, "echo": False, "logprobs": None}
    assert chat_request(request) == {
        "model": "m",
        "messages": [{"role": "user", "content": "say hi"}],
        "max_tokens": 5,
        "temperature": 0.1,
        "stop": ["\n"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 3}, "n"),
        ({"best_of": 2}, "best_of"),
        ({"echo": True}, "echo"),
        ({"logprobs": 0}, "logprobs"),
        ({"suffix": "x"}, "suffix"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
    ],
)
def test_what_chat_cannot_do_is_refused_by_name(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as e:
        chat_request({"model": "m", "prompt": "hi", **extra})
    assert e.value.param == param


def test_a_chat_answer_becomes_a_text_completion_with_its_usage() -> None:
    chat = {
        "id": "c1",
        "object": "chat.completion",
        "created": 7,
        "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    assert completion_response(chat) == {
        "id": "c1",
        "object": "text_completion",
        "created": 7,
        "model": "up",
        "choices": [{"text": "hello", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }


def test_chunks_keep_text_finish_and_usage_and_drop_the_role_chunk() -> None:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "up"}
    role = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    assert completion_chunk(role) is None
    text = completion_chunk({**base, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]})
    assert text is not None and text["choices"] == [{"text": "hi", "index": 0, "logprobs": None, "finish_reason": None}]
    usage = {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    last = completion_chunk({**base, "choices": [], "usage": usage, "meterway": {"usage_estimated": True}})
    assert last == {
        **base,
        "object": "text_completion",
        "choices": [],
        "usage": usage,
        "meterway": {"usage_estimated": True},
    }
