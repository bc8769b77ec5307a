"""OpenAI's Responses API through the gateway with the real `openai` SDK over real HTTP: on a native
OpenAI deployment (the stand-in speaks the Responses API) and bridged to the chat APIs of
Anthropic, Gemini, a chat-only OpenAI-compatible server and the demo model. Each generation has
one ledger row with the usage the client saw; retrieving, listing and deleting add nothing; a
response is another key's business only as a 404. The store is PostgreSQL here."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import eventually
from tests.upstreams.providers import ProviderStandIn
from tests.upstreams.standin import REPLY_PREFIX, Script

PRICES = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
BRIDGED = ["claude", "gemini", "llama", "demo"]
UPSTREAM_NAMES = {
    "gpt": "gpt-up",
    "claude": "claude-up",
    "gemini": "gemini-2.5-flash",
    "llama": "llama3",
    "demo": "demo",
}
EVERY = ["gpt", *BRIDGED]
TOOLS: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
SCHEMA: Any = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def providers() -> Iterator[ProviderStandIn]:
    with ProviderStandIn() as s:
        yield s


@pytest.fixture
def up(providers: ProviderStandIn) -> ProviderStandIn:
    providers.reset()
    return providers


def _model(name: str, model: str, base: str, key: str) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": model, "api_base": base, "api_key": key, **PRICES}}


@pytest.fixture(scope="module")
def gw(providers: ProviderStandIn, module_pg_url: str) -> Iterator[RunningGateway]:
    base = providers.base_url
    config = {
        "model_list": [
            _model("gpt", "openai/gpt-up", base + "/v1", "sk-up"),
            _model("claude", "anthropic/claude-up", base, "sk-ant"),
            _model("gemini", "gemini/gemini-2.5-flash", base, "g-key"),
            _model("llama", "ollama/llama3", base, "ollama"),
            {"model_name": "demo", "litellm_params": {"model": "mock/demo", **PRICES}},
        ],
        "general_settings": {"database_url": module_pg_url, "responses_background_max": 4},
    }
    with run_gateway(config) as g:
        yield g


def _admin(gw: RunningGateway, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {gw.key}"}
    r = httpx.request("POST" if body is not None else "GET", gw.url + path, json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def key(gw: RunningGateway) -> str:
    return str(_admin(gw, "/key/generate", {})["key"])


@pytest.fixture
def client(gw: RunningGateway, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as c:
        yield c


def _rows(gw: RunningGateway, **query: str) -> list[dict[str, Any]]:
    return list(_admin(gw, "/spend/logs?" + "&".join(f"{k}={v}" for k, v in query.items()))["data"])


def _row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    (row,) = _rows(gw, request_id=request_id)
    return row


def _spend(gw: RunningGateway, key: str) -> Decimal:
    info = _admin(gw, f"/key/info?key={key}")
    return Decimal(str(info.get("info", info)["spend"]))


def _total_rows(gw: RunningGateway) -> int:
    return int(_admin(gw, "/spend/logs?page_size=1")["total"])


def _matches(row: dict[str, Any], usage: Any) -> None:
    assert row["call_type"] == "responses" and row["status"] == "success"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert row["tokens_estimated"] is False


@pytest.mark.parametrize("model", EVERY)
def test_create_retrieve_list_delete(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI, key: str
) -> None:
    raw = client.responses.with_raw_response.create(model=model, input="hello there", instructions="Be brief.")
    response = raw.parse()
    assert response.status == "completed" and response.output_text
    if model != "demo":
        assert response.output_text == REPLY_PREFIX + "hello there"
    # the reply names the model that answered, as every reply does: never the name asked for
    assert response.model.startswith(UPSTREAM_NAMES[model]) and (model == "demo" or response.model != model)
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    _matches(_row(gw, raw.headers["x-request-id"]), response.usage)
    spent, rows = _spend(gw, key), _total_rows(gw)
    assert spent > 0
    for _ in range(3):
        again = client.responses.retrieve(response.id)
        assert again.id == response.id and again.output_text == response.output_text
    items = client.responses.input_items.list(response.id)
    assert [getattr(i, "role", None) for i in items.data] == ["user"]
    assert _spend(gw, key) == spent and _total_rows(gw) == rows, "retrieval and listing are never charged"
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    assert _total_rows(gw) == rows


@pytest.mark.parametrize("model", EVERY)
def test_streamed_with_the_sdk_helper(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    rid = f"stream-{model}-{uuid.uuid4().hex}"
    with client.responses.stream(model=model, input="hello there", extra_headers={"x-request-id": rid}) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text and final.status == "completed"
    assert final.usage is not None
    row = _row(gw, rid)
    _matches(row, final.usage)
    assert row["stream"] is True
    assert client.responses.retrieve(final.id).output_text == final.output_text


@pytest.mark.parametrize("model", ["gpt", "claude", "llama"])
def test_a_tool_round_trip_with_function_call_output(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    first = client.responses.create(model=model, input="Weather in Paris?", tools=TOOLS)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}],
        tools=TOOLS,
        tool_choice="none",
    )
    assert second.status == "completed" and second.output_text
    assert second.previous_response_id == first.id


@pytest.mark.parametrize("model", ["gpt", "claude", "gemini", "llama"])
def test_text_format_json_schema_parses_and_validates(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    response = client.responses.create(
        model=model,
        input="hello there",
        text={"format": {"type": "json_schema", "name": "reply", "schema": SCHEMA, "strict": True}},
    )
    jsonschema.validate(json.loads(response.output_text), SCHEMA)


@pytest.mark.parametrize("model", ["claude", "llama"])
def test_previous_response_id_sends_the_earlier_turns_upstream(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    first = client.responses.create(model=model, input="my name is Ada")
    second = client.responses.create(model=model, input="what is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text
    sent = up.last.json
    texts = json.dumps(sent["messages"])
    assert "my name is Ada" in texts and first.output_text in texts and "what is my name?" in texts
    third = client.responses.create(model=model, input="and again?", previous_response_id=second.id)
    assert "my name is Ada" in json.dumps(up.last.json["messages"]) and third.output_text


def test_item_references_are_resolved_from_the_key_s_stored_responses(
    gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    first = client.responses.create(model="claude", input="my name is Ada")
    reference: Any = {"type": "item_reference", "id": first.output[0].id}
    second = client.responses.create(model="claude", input=[reference, {"role": "user", "content": "and then?"}])
    assert second.output_text and first.output_text in json.dumps(up.last.json["messages"])
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="claude", input=[{"type": "item_reference", "id": "msg_nothing_0"}])
    assert e.value.param == "input[0]"


def test_an_unknown_previous_response_is_refused_as_openai_does(
    gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="claude", input="hi", previous_response_id="resp_nothing_here")
    assert e.value.code == "previous_response_not_found" and e.value.param == "previous_response_id"
    assert up.received == []


@pytest.mark.parametrize("model", ["gpt", "claude", "demo"])
def test_background_then_retrieve_until_completed_metered_once(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI, key: str
) -> None:
    raw = client.responses.with_raw_response.create(model=model, input="hello there", background=True)
    queued = raw.parse()
    assert queued.status in ("queued", "in_progress") and queued.background is True

    def done() -> Any:
        found = client.responses.retrieve(queued.id)
        return found if found.status == "completed" else None

    final = eventually(done, what="the background response completed")
    assert final.output_text and final.usage is not None and final.background is True
    if model != "gpt":  # bridged: its one row is the request's, written when it ended
        _matches(_row(gw, raw.headers["x-request-id"]), final.usage)
    else:  # native: the generation's row is written once it is seen ended (by the gateway's poll or a retrieve)
        _matches(eventually(lambda: _rows(gw, request_id=queued.id), what="the generation's row")[0], final.usage)
    spent = _spend(gw, key)
    for _ in range(3):
        client.responses.retrieve(queued.id)
    assert _spend(gw, key) == spent


def test_a_native_background_request_s_own_row_charges_nothing(
    gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    raw = client.responses.with_raw_response.create(model="gpt", input="hello there", background=True)
    row = _row(gw, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_estimated"]) == (0, 0, False)


def test_background_cancelled_while_it_runs(gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI) -> None:
    up.script_delay(30.0, path="/v1/messages")
    raw = client.responses.with_raw_response.create(model="claude", input="hello there", background=True)
    queued = raw.parse()
    up.wait_for_received(1)
    cancelled = client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(queued.id).status == "cancelled"
    (row,) = eventually(lambda: _rows(gw, request_id=raw.headers["x-request-id"]), what="the cancelled run's row")
    assert row["call_type"] == "responses" and row["status"] == "client_aborted" and row["completion_tokens"] == 0
    finished = client.responses.create(model="claude", input="hi")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(finished.id)  # only a background response still running is cancelled


def test_a_native_background_response_cancelled_upstream_is_metered_once(
    gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    up.responses.background_step_s = 5.0
    try:
        queued = client.responses.create(model="gpt", input="hello there", background=True)
        assert client.responses.cancel(queued.id).status == "cancelled"
        assert up.last.path == f"/v1/responses/{queued.id}/cancel"
        rows = eventually(lambda: _rows(gw, request_id=queued.id), what="the cancelled generation's row")
        assert len(rows) == 1 and rows[0]["call_type"] == "responses"
        client.responses.retrieve(queued.id)
        assert len(_rows(gw, request_id=queued.id)) == 1
    finally:
        up.responses.background_step_s = 0.05


def test_background_cancelled_mid_stream_records_what_was_delivered(
    gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    up.script(Script(event_gap=0.3, path="/chat/completions"))
    raw = client.responses.with_raw_response.create(model="llama", input="one two three four five", background=True)
    queued = raw.parse()
    eventually(lambda: client.responses.retrieve(queued.id).status == "in_progress", what="the run under way")
    assert client.responses.cancel(queued.id).status == "cancelled"
    (row,) = eventually(lambda: _rows(gw, request_id=raw.headers["x-request-id"]), what="the cancelled run's row")
    assert row["status"] == "client_aborted" and row["stream"] is True
    assert client.responses.retrieve(queued.id).status == "cancelled"


@pytest.mark.parametrize("stream", [False, True])
def test_usage_the_upstream_did_not_report_is_shown_as_billed(
    gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI, stream: bool
) -> None:
    up.script(Script(no_usage=True, path="/chat/completions"))
    rid = f"no-usage-{uuid.uuid4().hex}"
    if stream:
        with client.responses.stream(model="llama", input="hello there", extra_headers={"x-request-id": rid}) as s:
            response = s.get_final_response()
    else:
        raw = client.responses.with_raw_response.create(
            model="llama", input="hello there", extra_headers={"x-request-id": rid}
        )
        response = raw.parse()
        assert raw.headers["x-meterway-usage-estimated"] == "true"
    row = _row(gw, rid)
    assert response.usage is not None and row["tokens_estimated"] is True
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )
    assert client.responses.retrieve(response.id).usage == response.usage


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_another_key_gets_404(model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI) -> None:
    response = client.responses.create(model=model, input="hello there")
    other = str(_admin(gw, "/key/generate", {})["key"])
    with openai.OpenAI(base_url=gw.v1, api_key=other, max_retries=0) as stranger:
        with pytest.raises(openai.NotFoundError):
            stranger.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            stranger.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            stranger.responses.input_items.list(response.id)
        with pytest.raises(openai.BadRequestError) as refused:
            stranger.responses.create(model=model, input="hi", previous_response_id=response.id)
        assert refused.value.code == "previous_response_not_found"
    assert client.responses.retrieve(response.id).id == response.id  # still there for its owner
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as master:
        assert master.responses.retrieve(response.id).id == response.id  # the master key sees all


def test_store_false_is_not_retrievable(gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI) -> None:
    response = client.responses.create(model="claude", input="hello there", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


@pytest.mark.parametrize("background", [False, True])
def test_an_over_budget_key_is_refused(gw: RunningGateway, up: ProviderStandIn, background: bool) -> None:
    broke = str(_admin(gw, "/key/generate", {"max_budget": 0.0000001})["key"])
    with openai.OpenAI(base_url=gw.v1, api_key=broke, max_retries=0) as c, pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="claude", input="hello there", background=background)
    assert e.value.code == "budget_exceeded"
    assert up.received == []


@pytest.mark.parametrize("model", ["gemini", "gpt"])  # replayed from the store; passed to the upstream's replay
def test_stream_replay_of_a_stored_response(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    response = client.responses.create(model=model, input="hello there")
    events = list(client.responses.retrieve(response.id, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_input_items_pages(gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": f"part {n}"} for n in range(5)]
    response = client.responses.create(model="llama", input=messages)
    page = client.responses.input_items.with_raw_response.list(response.id, limit=2, order="asc").parse()
    assert len(page.data) == 2 and page.has_more is True
    everything = list(client.responses.input_items.list(response.id, limit=2, order="asc"))
    assert [item.content[0].text for item in everything] == [f"part {n}" for n in range(5)]  # type: ignore[union-attr]
    newest = client.responses.input_items.list(response.id).data[0]
    assert newest.content[0].text == "part 4"  # type: ignore[union-attr]


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_input_tokens_never_charged(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI, key: str
) -> None:
    rows = _total_rows(gw)
    r = httpx.post(
        gw.v1 + "/responses/input_tokens",
        json={"model": model, "input": "hello there", "instructions": "Be brief."},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "response.input_tokens" and r.json()["input_tokens"] > 0
    assert _total_rows(gw) == rows and _spend(gw, key) == 0
    assert (up.last.path == "/v1/responses/input_tokens") if model == "gpt" else up.received == []


@pytest.mark.parametrize("path", ["/responses/input_tokens", "/messages/count_tokens"])
def test_token_counts_of_a_body_nested_too_deep_are_400(path: str, gw: RunningGateway, key: str) -> None:
    deep = "[" * 300 + "]" * 300  # valid JSON the head decoder takes, deeper than the JSON encoder goes
    body = '{"model": "claude", "input": "hi", "max_tokens": 5, "messages": [], "tools": ' + deep + "}"
    r = httpx.post(
        gw.v1 + path, content=body, headers={"Authorization": f"Bearer {key}", "content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert "nested deeper than" in r.json()["error"]["message"]  # in OpenAI's or (count_tokens) Anthropic's shape


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/v1/responses/resp_unknown", 404, "invalid_request_error"),  # OpenAI's words for it
        ("DELETE", "/v1/responses/resp_unknown", 404, "invalid_request_error"),
        ("POST", "/v1/responses/resp_unknown/cancel", 404, "invalid_request_error"),
        ("GET", "/v1/responses/resp_unknown/input_items", 404, "invalid_request_error"),
        ("GET", "/v1/responses/resp_unknown/else", 404, "not_found_error"),  # no such route
        ("GET", "/v1/responses/resp%00nul", 404, "invalid_request_error"),  # never looked up (PostgreSQL)
        ("GET", "/v1/responses/resp_" + "x" * 300, 404, "invalid_request_error"),
        ("PUT", "/v1/responses/resp_unknown", 405, "invalid_request_error"),
        ("GET", "/v1/responses", 405, "invalid_request_error"),
        ("POST", "/v1/responses", 400, "invalid_request_error"),  # no input
    ],
)
def test_errors_in_openai_shape(gw: RunningGateway, method: str, path: str, status: int, kind: str) -> None:
    r = httpx.request(method, gw.url + path, headers={"Authorization": f"Bearer {gw.key}"}, json={"model": "claude"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == kind


@pytest.mark.parametrize(
    "body",
    [
        {"input": [1, 2]},
        {"input": [None]},
        {"input": [{"type": "item_reference", "id": 5}]},
        {"input": "hi", "previous_response_id": "resp_\u0000"},
        {"input": {"role": "user"}},
        {"input": "hi", "background": True, "store": False},
    ],
)
def test_bad_input_on_a_bridged_deployment_is_400(
    gw: RunningGateway, up: ProviderStandIn, body: dict[str, Any]
) -> None:
    r = httpx.post(gw.v1 + "/responses", json={"model": "demo", **body}, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_shutdown_cancels_a_running_background_response_and_writes_its_row(tmp_path: Path, up: ProviderStandIn) -> None:
    config = {
        "model_list": [_model("claude", "anthropic/claude-up", up.base_url, "sk-ant")],
        "general_settings": {"database_url": f"sqlite:///{tmp_path / 'gw.db'}"},
    }
    up.script_delay(30.0, path="/v1/messages")
    with run_gateway(config) as first, openai.OpenAI(base_url=first.v1, api_key=first.key, max_retries=0) as c:
        raw = c.responses.with_raw_response.create(model="claude", input="hello there", background=True)
        queued = raw.parse()
        up.wait_for_received(1)
    with run_gateway(config) as again, openai.OpenAI(base_url=again.v1, api_key=again.key, max_retries=0) as c:
        assert c.responses.retrieve(queued.id).status == "cancelled"
        (row,) = _rows(again, request_id=raw.headers["x-request-id"])
        assert row["status"] == "client_aborted" and row["call_type"] == "responses"


def test_a_response_too_large_to_keep_is_served_not_stored_and_background_is_bounded(
    tmp_path: Path, up: ProviderStandIn
) -> None:
    config = {
        "model_list": [_model("claude", "anthropic/claude-up", up.base_url, "sk-ant")],
        "general_settings": {
            "database_url": f"sqlite:///{tmp_path / 'gw.db'}",
            "max_request_size_mb": 0.05,  # also the most one response's object and input items take in the store
            "responses_background_max": 0,
        },
    }
    with run_gateway(config) as small, openai.OpenAI(base_url=small.v1, api_key=small.key, max_retries=0) as c:
        # many short messages: their stored items (ids, types, statuses, content parts) outgrow the request
        many: Any = [{"role": "user", "content": f"message {n:03d} " + "x" * 40} for n in range(400)]
        raw = c.responses.with_raw_response.create(model="claude", input=many)
        response = raw.parse()
        assert response.output_text and _row(small, raw.headers["x-request-id"])["status"] == "success"
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(response.id)
        with pytest.raises(openai.RateLimitError) as e:
            c.responses.create(model="claude", input="hi", background=True)
        assert e.value.code == "too_many_background_responses"
