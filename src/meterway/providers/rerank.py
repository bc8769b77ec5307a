"""Rerank: Cohere's v2 shape on the client side (as LiteLLM's `/rerank` serves it), translated for
the two kinds of upstream that rerank: Cohere's own `/v2/rerank`, and the OpenAI-compatible
rerankers (vLLM, Jina, TEI behind a router, Infinity) that serve `/rerank` in Jina's shape.

The client always gets Cohere's answer: `id`, `results` (`index`, `relevance_score`, and
`document: {text}` when it asked for documents, filled in here from its own request, so the
upstream is never asked to send the documents back), and `meta` with `billed_units.search_units`
and, where the upstream counted them, `tokens`. The usage carries both: search units as
`queries` (what Cohere bills; 1 per request where the upstream names none) and tokens where the
upstream reports them, so a deployment priced per query and one priced per token are both billed
from what the upstream said.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from meterway.providers.base import Usage, tokens


def texts(request: Mapping[str, Any]) -> list[str]:
    """The documents as strings (a `{text}` object gives its text; the head decoder has checked them)."""
    return [d if isinstance(d, str) else str(d.get("text", "")) for d in request.get("documents") or []]


def cohere_request(request: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Cohere's `/v2/rerank` body: its documents are strings; `return_documents` is not Cohere v2's."""
    body: dict[str, Any] = {"model": model, "query": request["query"], "documents": texts(request)}
    for name in ("top_n", "max_tokens_per_doc"):
        if request.get(name) is not None:
            body[name] = request[name]
    return body


def compatible_request(request: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Jina's shape, which vLLM and the other OpenAI-compatible rerankers take: no documents back."""
    body: dict[str, Any] = {"model": model, "query": request["query"], "documents": texts(request)}
    if request.get("top_n") is not None:
        body["top_n"] = request["top_n"]
    body["return_documents"] = False
    return body


def _results(answer: Mapping[str, Any], documents: list[str] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in answer.get("results") or answer.get("data") or []:
        if not isinstance(item, Mapping):
            continue
        index = item.get("index")
        result: dict[str, Any] = {"index": index, "relevance_score": item.get("relevance_score", item.get("score"))}
        if documents is not None and isinstance(index, int) and 0 <= index < len(documents):
            result["document"] = {"text": documents[index]}
        out.append(result)
    return out


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def response(answer: Mapping[str, Any], request: Mapping[str, Any]) -> tuple[dict[str, Any], Usage]:
    """The client's answer and its usage, from either upstream's answer. Search units are
    `meta.billed_units.search_units` (Cohere's), else one for the request; tokens are Cohere's
    billed `input_tokens`, else the `usage` an OpenAI-compatible reranker reports."""
    meta = _mapping(answer.get("meta"))
    billed = _mapping(meta.get("billed_units"))
    units = tokens(billed.get("search_units")) if billed.get("search_units") is not None else 1
    usage = _mapping(answer.get("usage"))
    counted = billed.get("input_tokens")
    if counted is None:
        counted = usage.get("prompt_tokens", usage.get("total_tokens"))
    prompt = tokens(counted)
    out_meta: dict[str, Any] = {"api_version": {"version": "2"}, "billed_units": {"search_units": max(units, 0)}}
    if counted is not None:
        out_meta["tokens"] = {"input_tokens": max(prompt, 0), "output_tokens": 0}
    documents = texts(request) if request.get("return_documents") else None
    body = {
        "id": str(answer.get("id") or uuid.uuid4()),
        "results": _results(answer, documents),
        "meta": out_meta,
    }
    return body, Usage(prompt, 0, prompt, queries=units)
