"""Embedding input sent as token ids, turned back into text for providers that take only text.

OpenAI's embeddings accept token ids (a list of ints, or a list of such lists), and LangChain's
`OpenAIEmbeddings` sends them by default: it tokenizes with tiktoken, the encoding of the model
name it was given, and falls back to `cl100k_base` for a name tiktoken does not know (every
Gemini or Cohere alias). Gemini and Cohere take text only, so the ids are decoded here with that
same encoding: tiktoken's mapping of the client's model name, else `cl100k_base`, the ledger's
tokenizer (`ledger.tokens`), shipped offline. An encoding that is not shipped cannot be loaded
without the network, and ids outside the vocabulary name no text: both are the client's 400.

Token ids cut from a longer text (LangChain cuts inputs at the model's context length) may end
inside a character; those bytes decode to U+FFFD rather than refusing the request.
"""

from __future__ import annotations

from typing import Any

from meterway.errors import BadRequest
from meterway.ledger.tokens import ENCODING

SHIPPED = "cl100k_base"  # the one encoding available offline (as ENCODING)


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


def embedding_texts(value: Any, model: str, family: str) -> list[str]:
    """The texts of an embeddings `input`: a string, a list of strings, a list of token ids or a
    list of such lists (each decoded). Anything else, or ids that cannot be decoded, is a 400."""
    if isinstance(value, str):
        return [value]
    if _is_ids(value):
        return [_decode(value, model, family)]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(_is_ids(v) for v in value):
            return [_decode(ids, model, family) for ids in value]
    raise BadRequest(
        f"{family} embeddings take a string, a list of strings, a list of token ids or a list of token-id lists.",
        param="input",
    )


def _decode(ids: list[int], model: str, family: str) -> str:
    import tiktoken  # loaded on the first token input (tiktoken keeps the encoding once loaded)
    import tiktoken.model

    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        name = SHIPPED  # what LangChain and the openai cookbook fall back to
    if name != SHIPPED:
        raise BadRequest(
            f"Token-id input for model '{model}' is in the {name} encoding, which meterway cannot decode "
            f"to text for {family} (only {SHIPPED}); send the text instead.",
            param="input",
            code="token_input_encoding",
        )
    encoding = tiktoken.get_encoding(ENCODING)
    top = encoding.max_token_value
    bad = next((i for i in ids if not 0 <= i <= top), None)
    if bad is not None:
        raise BadRequest(
            f"Token id {bad} is outside the {SHIPPED} vocabulary (0 to {top}).",
            param="input",
            code="token_input_out_of_range",
        )
    try:
        return encoding.decode(ids, errors="replace")
    except KeyError:  # an id inside the range that names no token (the gap before the special tokens)
        raise BadRequest(
            f"The token ids include one that is not in the {SHIPPED} vocabulary.",
            param="input",
            code="token_input_out_of_range",
        ) from None
