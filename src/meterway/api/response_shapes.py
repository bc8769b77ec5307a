"""The Responses API's bodies as the gateway handles them, pure (no I/O): the Response in an
answer's last bytes (a whole object, or a stream's terminal event); stored items as input again; the input-items listing; a stored Response replayed
as the event sequence that streams it. Checked against OpenAI's spec in tests/unit."""

from __future__ import annotations

from typing import Any

import orjson

from meterway.errors import BadRequest

_TERMINAL_EVENTS = {b"response.completed", b"response.incomplete", b"response.failed"}


def as_input(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored input items as input again: the ids and statuses the listing shows are not input."""
    return [{k: v for k, v in item.items() if k not in ("id", "status")} for item in items if isinstance(item, dict)]


def _terminal(block: bytes) -> dict[str, Any] | None:
    """The terminal event (`response.completed`, `.incomplete`, `.failed`) one SSE block holds."""
    payload = b"".join(line[5:].strip() for line in block.splitlines() if line.startswith(b"data:"))
    if not payload or not any(name in payload for name in _TERMINAL_EVENTS):
        return None
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("response"), dict) else None


def _whole(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and value.get("object") == "response" else None


def final_response(last: bytes) -> dict[str, Any] | None:
    """The Response in an answer's last bytes: the whole JSON object, or the `response` of the
    terminal event at the end of a stream."""
    data = last.strip()
    if data.startswith(b"{"):
        return _whole(data)
    for block in reversed(data.split(b"\n\n")):
        event = _terminal(block)
        if event is not None:
            response: dict[str, Any] = event["response"]
            return response
    return None


def list_items(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """OpenAI's list shape over a response's input items: `limit` (1-100, 20), `order` (`desc`,
    OpenAI's default, or `asc`), `after` (an item id: the items after it in that order)."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise BadRequest("'limit' must be a whole number.", param="limit", code="invalid_type") from None
    if not 1 <= limit <= 100:
        raise BadRequest("'limit' must be between 1 and 100.", param="limit", code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    ordered = list(items) if order == "asc" else list(reversed(items))
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise BadRequest(f"No input item with id '{after}'.", param="after", code="invalid_value")
        ordered = ordered[ids.index(after) + 1 :]
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(ordered) > limit,
    }


def replay_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished Response as the events that stream it: created, in_progress, each output item
    (its parts and text, or its arguments, in one delta each), then the terminal event."""
    events: list[dict[str, Any]] = []

    def add(event: dict[str, Any]) -> None:
        event["sequence_number"] = len(events)
        events.append(event)

    opening = {k: v for k, v in response.items() if k not in ("usage", "completed_at")}
    opening.update(status="in_progress", output=[])
    add({"type": "response.created", "response": opening})
    add({"type": "response.in_progress", "response": opening})
    for index, item in enumerate(response.get("output") or []):
        kind = item.get("type")
        item_id = item.get("id")
        if kind == "message":
            add(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": dict(item, status="in_progress", content=[]),
                }
            )
            for c, part in enumerate(item.get("content") or []):
                where = {"item_id": item_id, "output_index": index, "content_index": c}
                if part.get("type") == "output_text":
                    add(
                        {
                            "type": "response.content_part.added",
                            **where,
                            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                        }
                    )
                    add({"type": "response.output_text.delta", **where, "delta": part.get("text", ""), "logprobs": []})
                    add({"type": "response.output_text.done", **where, "text": part.get("text", ""), "logprobs": []})
                elif part.get("type") == "refusal":
                    add({"type": "response.content_part.added", **where, "part": {"type": "refusal", "refusal": ""}})
                    add({"type": "response.refusal.delta", **where, "delta": part.get("refusal", "")})
                    add({"type": "response.refusal.done", **where, "refusal": part.get("refusal", "")})
                add({"type": "response.content_part.done", **where, "part": part})
        elif kind == "function_call":
            add(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": dict(item, status="in_progress", arguments=""),
                }
            )
            where = {"item_id": item_id, "output_index": index}
            add({"type": "response.function_call_arguments.delta", **where, "delta": item.get("arguments", "")})
            add(
                {
                    "type": "response.function_call_arguments.done",
                    **where,
                    "name": item.get("name", ""),
                    "arguments": item.get("arguments", ""),
                }
            )
        else:
            add({"type": "response.output_item.added", "output_index": index, "item": item})
        add({"type": "response.output_item.done", "output_index": index, "item": item})
    status = response.get("status")
    terminal = {"completed": "response.completed", "failed": "response.failed"}.get(str(status), "response.incomplete")
    add({"type": terminal, "response": response})
    return events
