"""Cohere and Gemini translation, offline: the parts of each wire format the e2e stand-ins do not
exercise (thinking and cached tokens, images, response formats, finish reasons)."""

from __future__ import annotations

import meterway.config  # noqa: F401  # first: config imports the provider registry, not the reverse
from meterway.providers import cohere, gemini
from meterway.providers.base import Usage


def test_gemini_usage_counts_thinking_as_output_and_reasoning_and_cached_content() -> None:
    meta = {
        "promptTokenCount": 100,
        "candidatesTokenCount": 20,
        "thoughtsTokenCount": 30,
        "cachedContentTokenCount": 60,
        "totalTokenCount": 150,
    }
    assert gemini.usage_of(meta) == Usage(100, 50, 150, cached_tokens=60, reasoning_tokens=30)


def test_gemini_request_maps_images_json_mode_and_named_tool_choice() -> None:
    body = gemini.chat_request(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ],
                }
            ],
            "response_format": {"type": "json_object"},
            "stop": "END",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        }
    )
    assert body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    assert body["generationConfig"] == {"responseMimeType": "application/json", "stopSequences": ["END"]}
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}


def test_gemini_safety_stop_is_a_content_filter_finish() -> None:
    chat, _ = gemini.chat_response({"candidates": [{"content": {"parts": []}, "finishReason": "SAFETY"}]}, "g")
    assert chat["choices"][0]["finish_reason"] == "content_filter"


def test_cohere_bills_from_billed_units_not_the_template_tokens() -> None:
    usage = {
        "billed_units": {"input_tokens": 10, "output_tokens": 4},
        "tokens": {"input_tokens": 210, "output_tokens": 4},
    }
    assert cohere.usage_of(usage) == Usage(10, 4, 14)
    assert cohere.usage_of({"tokens": {"input_tokens": 3, "output_tokens": 2}}) == Usage(3, 2, 5)


def test_cohere_request_maps_parameters_and_json_schema() -> None:
    body = cohere.chat_request(
        {
            "messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}],
            "top_p": 0.5,
            "max_completion_tokens": 9,
            "stop": ["a"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
            "tool_choice": "required",
        },
        "command-a",
        stream=False,
    )
    assert body["messages"][0] == {"role": "system", "content": "x"}
    assert (body["p"], body["max_tokens"], body["stop_sequences"], body["tool_choice"]) == (0.5, 9, ["a"], "REQUIRED")
    assert body["response_format"] == {"type": "json_object", "json_schema": {"type": "object"}}
