"""Usage reported by another proxy, over real HTTP: stored once as a `webhook` ledger row, billed to
the Lago stand-in once, however often or however concurrently it is reported.

LiteLLM's own generic API logger is one of the senders: it runs in a child process (litellm keeps
loops and clients in module state it never closes), makes a completion with `mock_response` and
posts its StandardLoggingPayload here exactly as a LiteLLM proxy would."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import openai
import orjson
import pytest
from lago_python_client.client import Client
from lago_python_client.models import Customer, Subscription
from litellm.types.utils import StandardLoggingMetadata, StandardLoggingPayload

from meterway.billing.sender import NOT_LISTED
from meterway.ledger.reported import uid_for
from tests.lago.standin import LagoStandIn, billing_ready
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.models import priced
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

SECRET = "whsec-test-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
UNITS_PER_USD = 10**10


def example(**changes: Any) -> dict[str, Any]:
    """The usage event home-made webhook services send, as the issue quotes it."""
    event = {
        "event_type": "usage",
        "timestamp": 1703123456,
        "customer_id": "customer-123",
        "model": "gpt-4o",
        "provider": "openai",
        "tokens_input": 100,
        "tokens_output": 150,
        "total_tokens": 250,
        "cost_usd": 0.00375,
        "request_id": "req-abc123",
        "api_key_hash": "key_a1b2c3",
        "metadata": {"user_id": "user-789", "team_id": "team-456"},
    }
    event.update(changes)
    return event


def standard_logging_payload(**changes: Any) -> dict[str, Any]:
    """LiteLLM's StandardLoggingPayload as its proxy fills it for a served chat request (the
    fields a proxy sets; the test checks each name against litellm's own TypedDict)."""
    now = time.time()
    metadata = {
        "user_api_key_hash": "9f2c6d1e" * 8,
        "user_api_key_alias": "checkout-service",
        "user_api_key_user_id": "user-42",
        "user_api_key_team_id": "team-7",
        "user_api_key_org_id": "org-1",
        "user_api_key_end_user_id": None,
        "spend_logs_metadata": None,
        "requester_metadata": {"project": "apollo"},
        "usage_object": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1000},
            "completion_tokens_details": {"reasoning_tokens": 100},
        },
    }
    payload: dict[str, Any] = {
        "id": "chatcmpl-AbC123xyz",
        "trace_id": "5d1f7a4e-2b8c-4e9a-9f1d-3c6b8a7e2d10",
        "litellm_call_id": "0b7a9c2e-6d4f-4a1b-8e3c-5f9d2a7b1c44",
        "call_type": "acompletion",
        "stream": True,
        "response_cost": 0.00605,
        "response_cost_failure_debug_info": None,
        "status": "success",
        "custom_llm_provider": "openai",
        "total_tokens": 1500,
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "startTime": now - 2.0,
        "endTime": now - 0.5,
        "completionStartTime": now - 1.6,
        "response_time": 1.5,
        "model": "gpt-4o",
        "model_id": "deployment-abc",
        "model_group": "gpt-4o-team",
        "api_base": "https://api.openai.com/v1",
        "metadata": metadata,
        "cache_hit": False,
        "cache_key": None,
        "saved_cache_cost": 0.0,
        "request_tags": ["checkout", "prod"],
        "end_user": "acme",
        "requester_ip_address": None,
        "messages": [{"role": "user", "content": "hi"}],
        "response": {"choices": [{"message": {"role": "assistant", "content": "hello"}}]},
        "error_str": None,
        "error_information": None,
        "model_parameters": {"temperature": 0.2},
        "hidden_params": {"model_id": "deployment-abc", "litellm_model_name": "gpt-4o-2024-08-06", "api_base": None},
    }
    payload.update(changes)
    assert set(payload) <= StandardLoggingPayload.__required_keys__ | StandardLoggingPayload.__optional_keys__
    assert set(metadata) <= StandardLoggingMetadata.__required_keys__ | StandardLoggingMetadata.__optional_keys__
    return payload


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        billing_ready(stand_in, ["customer-123", "acme"])
        yield stand_in


def config(lago: LagoStandIn, upstream: StandIn, **billing: Any) -> dict[str, Any]:
    return {
        "model_list": [priced(upstream.base_url, "house-model", input_usd=0.000003, output_usd=0.000004)],
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id", **billing},
        "general_settings": {"webhook_secret": SECRET},
    }


def sql(gw: RunningGateway, query: str, *args: Any) -> list[tuple[Any, ...]]:
    url = gw.settings.database_url.reveal()
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return db.execute(query.replace("$1", "?"), args).fetchall()

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def webhook_rows(gw: RunningGateway) -> list[dict[str, Any]]:
    columns = [
        "uid",
        "request_id",
        "source",
        "customer_id",
        "user_id",
        "team_id",
        "key_id",
        "key_alias",
        "model_group",
        "upstream_model",
        "deployment_id",
        "endpoint",
        "stream",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cost",
        "price_input",
        "status",
        "http_status",
        "error_type",
        "latency_ms",
        "ttft_ms",
        "tags",
        "metadata",
        "ended_at",
        "queries",
        "images",
        "audio_ms",
        "characters",
        "flags",
    ]
    found = sql(gw, f"SELECT {', '.join(columns)} FROM mw_ledger WHERE source = 'webhook' ORDER BY id")
    return [dict(zip(columns, row, strict=True)) for row in found]


def settled(gw: RunningGateway, within_s: float = 15) -> None:
    pending = "SELECT count(*) FROM mw_billing_outbox WHERE status = 'pending'"
    eventually(lambda: sql(gw, pending)[0][0] == 0, within_s, "every export settled")


def spend(gw: RunningGateway, table: str, column: str, ident: str) -> int:
    return int(sql(gw, f"SELECT spend FROM {table} WHERE {column} = $1", ident)[0][0])


def post(gw: RunningGateway, body: Any, path: str = "/webhooks/usage", **headers: str) -> httpx.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    send = {"Content-Type": "application/json", **(headers or AUTH)}
    return httpx.post(gw.url + path, content=data, headers=send, timeout=30)


def admin(gw: RunningGateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.key}"}


def test_the_example_event_becomes_one_webhook_row_charged_to_its_customer_and_reaches_lago_once(
    lago: LagoStandIn, upstream: StandIn
) -> None:
    with run_gateway(config(lago, upstream)) as gw:
        httpx.post(gw.url + "/customer/new", json={"user_id": "customer-123"}, headers=admin(gw)).raise_for_status()
        r = post(gw, example())
        assert r.status_code == 200, r.text
        assert r.json() == {"request_id": "req-abc123", "uid": uid_for("req-abc123"), "status": "accepted"}
        (row,) = webhook_rows(gw)
        assert row["uid"] == uid_for("req-abc123") and len(row["uid"]) == 32
        assert (row["request_id"], row["customer_id"], row["user_id"], row["team_id"], row["key_id"]) == (
            "req-abc123",
            "customer-123",
            "user-789",
            "team-456",
            "key_a1b2c3",
        )
        assert (row["model_group"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
            "gpt-4o",
            100,
            150,
            250,
        )
        assert row["cost"] == 37_500_000  # 0.00375 USD in units of 1e-10 USD: the reported cost, as reported
        assert row["status"] == "success" and row["ended_at"].startswith("2023-12-21 01:50:56")
        assert orjson.loads(row["metadata"]) == {
            "user_id": "user-789",
            "team_id": "team-456",
            "webhook": {"format": "usage_event", "provider": "openai"},
        }
        assert spend(gw, "mw_customers", "customer_id", "customer-123") == 37_500_000
        daily = sql(gw, "SELECT requests, prompt_tokens, cost FROM mw_usage_daily WHERE customer_id = 'customer-123'")
        assert daily == [(1, 100, 37_500_000)]
        logs = httpx.get(gw.url + "/spend/logs", params={"request_id": "req-abc123"}, headers=admin(gw)).json()
        assert [(e["source"], e["end_user"], e["total_tokens"]) for e in logs["data"]] == [
            ("webhook", "customer-123", 250)
        ]
        settled(gw)
        assert lago.transaction_ids() == [uid_for("req-abc123")]
        (event,) = lago.events
        assert event.external_subscription_id == "customer-123" and event.properties["total_tokens"] == 250
        assert event.properties["cost"] == "0.00375"


def test_a_resent_request_id_is_stored_counted_and_billed_once(lago: LagoStandIn, upstream: StandIn) -> None:
    now = int(time.time())
    with run_gateway(config(lago, upstream)) as gw:
        httpx.post(gw.url + "/customer/new", json={"user_id": "customer-123"}, headers=admin(gw)).raise_for_status()
        first = post(gw, example(timestamp=now))
        again = post(gw, example(timestamp=now))
        in_batch = post(gw, {"events": [example(timestamp=now), example(request_id="req-2", timestamp=now)]})
        assert first.json()["status"] == "accepted" and again.status_code == 200
        assert again.json() == {"request_id": "req-abc123", "uid": uid_for("req-abc123"), "status": "duplicate"}
        assert [r["status"] for r in in_batch.json()["results"]] == ["duplicate", "accepted"]
        assert sorted(r["request_id"] for r in webhook_rows(gw)) == ["req-2", "req-abc123"]
        assert spend(gw, "mw_customers", "customer_id", "customer-123") == 2 * 37_500_000
        assert sql(gw, "SELECT sum(requests) FROM mw_usage_daily WHERE customer_id = 'customer-123'") == [(2,)]
        settled(gw)
        assert sorted(lago.transaction_ids()) == sorted([uid_for("req-abc123"), uid_for("req-2")])
        stats = httpx.get(gw.url + "/webhooks/stats", headers=admin(gw)).json()
        assert (stats["received"], stats["accepted"], stats["duplicates"]) == (4, 2, 2)
        assert stats["ledger"] == {"rows": 2, "pending": 0, "sent": 2, "parked": 0}


def race(gw: RunningGateway, body: dict[str, Any], senders: int) -> list[httpx.Response]:
    """`senders` threads post the same body at the same moment."""
    start = threading.Barrier(senders)
    answers: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(timeout=30) as client:
            start.wait()
            answers.append(
                client.post(gw.url + "/webhooks/usage", content=orjson.dumps(body), headers=AUTH),
            )

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_two_concurrent_reports_of_one_request_make_one_row_and_one_export(
    lago: LagoStandIn, upstream: StandIn
) -> None:
    with run_gateway(config(lago, upstream)) as gw:
        httpx.post(gw.url + "/customer/new", json={"user_id": "customer-123"}, headers=admin(gw)).raise_for_status()
        answers = race(gw, example(timestamp=int(time.time())), senders=8)
        assert sorted(a.json()["status"] for a in answers) == ["accepted"] + ["duplicate"] * 7
        assert len(webhook_rows(gw)) == 1
        assert spend(gw, "mw_customers", "customer_id", "customer-123") == 37_500_000
        assert sql(gw, "SELECT count(*) FROM mw_billing_outbox") == [(1,)]
        settled(gw)
        assert lago.transaction_ids() == [uid_for("req-abc123")]


CHILD = r"""
import asyncio, json, sys
import litellm
from litellm.integrations.generic_api.generic_api_callback import GenericAPILogger
litellm.telemetry = False
litellm.suppress_debug_info = True

async def main(endpoint, secret):
    logger = GenericAPILogger(endpoint=endpoint, headers={"X-Webhook-Secret": secret})
    litellm.callbacks = [logger]
    # the metadata a LiteLLM proxy attaches for the virtual key that made the call
    proxy_metadata = {"user_api_key_hash": "ab" * 32, "user_api_key_alias": "ops",
                      "user_api_key_team_id": "team-9", "user_api_key_end_user_id": "acme", "tags": ["nightly"]}
    r = await litellm.acompletion(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                  mock_response="hello there", metadata=proxy_metadata)
    for _ in range(200):
        if logger.log_queue:
            break
        await asyncio.sleep(0.05)
    queued = len(logger.log_queue)
    await logger.async_send_batch()
    print(json.dumps({"id": r.id, "queued": queued}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_litellm_generic_logger_usage_is_stored_and_billed_to_its_end_user(
    lago: LagoStandIn, upstream: StandIn
) -> None:
    with run_gateway(config(lago, upstream)) as gw:
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, gw.url + "/webhooks/usage", SECRET],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        sent = orjson.loads(done.stdout.strip().splitlines()[-1])
        assert sent["queued"] == 1
        (row,) = webhook_rows(gw)
        assert row["request_id"] == sent["id"] and row["uid"] == uid_for(sent["id"])
        assert (row["customer_id"], row["team_id"], row["key_id"], row["key_alias"]) == (
            "acme",
            "team-9",
            "ab" * 32,
            "ops",
        )
        assert (row["model_group"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
            "gpt-4o",
            10,
            20,
            30,
        )
        assert row["cost"] == 2_250_000  # LiteLLM's response_cost, 0.000225 USD
        assert row["endpoint"] == "chat" and orjson.loads(row["tags"]) == ["nightly"]
        settled(gw)
        assert lago.transaction_ids() == [uid_for(sent["id"])]
        assert lago.events[0].external_subscription_id == "acme"


UNITS_CHILD = r"""
import asyncio, http.server, io, json, sys, threading
import litellm
from litellm.integrations.generic_api.generic_api_callback import GenericAPILogger
litellm.telemetry = False
litellm.suppress_debug_info = True

class Upstream(http.server.BaseHTTPRequestHandler):
    # OpenAI's and Cohere's answers, as the real services give them
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.endswith("/audio/speech"):
            body, kind = b"ID3\x00mp3", "audio/mpeg"
        else:
            kind = "application/json"
            body = json.dumps({
                "/v1/images/generations": {"created": 1, "data": [{"url": "https://x/1.png"}, {"url": "https://x/2.png"}]},
                "/v1/audio/transcriptions": {"text": "hello", "language": "en", "duration": 3.5},
                "/v2/rerank": {"id": "r-1", "results": [{"index": 1, "relevance_score": 0.9}],
                               "meta": {"billed_units": {"search_units": 2}}},
            }[self.path.replace("/v1/rerank", "/v2/rerank")]).encode()
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

async def main(endpoint, secret):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    logger = GenericAPILogger(endpoint=endpoint, headers={"X-Webhook-Secret": secret})
    litellm.callbacks = [logger]
    meta = {"user_api_key_end_user_id": "acme"}
    ids = {}
    r = await litellm.aimage_generation(model="openai/dall-e-3", prompt="a lighthouse", n=2, size="1024x1024",
                                        api_base=base + "/v1", api_key="sk-x", metadata=meta)
    audio = io.BytesIO(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64))
    audio.name = "note.wav"
    await litellm.atranscription(model="openai/whisper-1", file=audio, api_base=base + "/v1", api_key="sk-x",
                                 metadata=meta)
    await litellm.aspeech(model="openai/tts-1", input="Hello from the gateway", voice="alloy",
                          api_base=base + "/v1", api_key="sk-x", metadata=meta)
    await litellm.arerank(model="cohere/rerank-english-v3.0", query="which", documents=["a", "b", "c"],
                          api_base=base, api_key="sk-x", metadata=meta)
    for _ in range(200):
        if len(logger.log_queue) >= 4:
            break
        await asyncio.sleep(0.05)
    queued = len(logger.log_queue)
    await logger.async_send_batch()
    server.shutdown()
    print(json.dumps({"queued": queued}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_litellm_image_transcription_speech_and_rerank_reports_carry_their_units(
    lago: LagoStandIn, upstream: StandIn
) -> None:
    """LiteLLM's generic API logger, after real calls to OpenAI- and Cohere-shaped answers: each
    row lands under meterway's endpoint with the units LiteLLM's payload carries."""
    with run_gateway(config(lago, upstream)) as gw:
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
        done = subprocess.run(
            [sys.executable, "-c", UNITS_CHILD, gw.url + "/webhooks/usage", SECRET],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert orjson.loads(done.stdout.strip().splitlines()[-1])["queued"] == 4
        rows = {row["endpoint"]: row for row in webhook_rows(gw)}
        assert sorted(rows) == ["images", "rerank", "speech", "transcriptions"]
        units = {e: (r["queries"], r["images"], r["audio_ms"], r["characters"]) for e, r in rows.items()}
        assert units == {
            "images": (0, 2, 0, 0),
            "transcriptions": (0, 0, 3500, 0),
            "speech": (0, 0, 0, 22),  # "Hello from the gateway"
            "rerank": (2, 0, 0, 0),
        }
        assert all(r["flags"] is None and r["customer_id"] == "acme" for r in rows.values())
        # LiteLLM's own response_cost stands: whisper-1 at 0.0001 USD a second, tts-1 0.000015 a
        # character (LiteLLM counts 19, leaving out spaces; the row counts the input as the gateway does)
        assert rows["transcriptions"]["cost"] == 3_500_000 and rows["speech"]["cost"] == 2_850_000


def test_units_are_priced_here_when_litellm_could_not_and_unbelievable_ones_are_flagged(
    lago: LagoStandIn, upstream: StandIn
) -> None:
    unpriced = {"response_cost": 0.0, "response_cost_failure_debug_info": {"error_str": "model not mapped"}}
    zero = {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "metadata": {},
        "model_group": None,
        "hidden_params": {},
    }
    events = [
        standard_logging_payload(
            id="img-1", call_type="aimage_generation", model="dall-e-2", model_parameters={"n": 2}, response={}
        ),
        standard_logging_payload(
            id="stt-1", call_type="atranscription", model="whisper-1", response={"text": "hi", "duration": 3.5}
        ),
        standard_logging_payload(
            id="tts-1",
            call_type="aspeech",
            model="tts-1",
            messages=[{"role": "user", "content": "x" * 18}],
            response={"object": "binary", "content_type": "audio/mpeg", "num_bytes": 4},
        ),
        standard_logging_payload(
            id="rr-1",
            call_type="arerank",
            model="rerank-english-v3.0",
            response={"meta": {"billed_units": {"search_units": 2}}},
        ),
        standard_logging_payload(
            id="bad-1",
            call_type="aimage_generation",
            model="dall-e-2",
            model_parameters={"n": 10**9},
            response={"data": None},
        ),
        standard_logging_payload(
            id="bad-2", call_type="atranscription", model="whisper-1", response={"duration": "3.5"}
        ),
        standard_logging_payload(
            id="redacted-1",
            call_type="aspeech",
            model="tts-1",
            messages=[{"role": "user", "content": "redacted by litellm. 'litellm.turn_off_message_logging=True'"}],
        ),
    ]
    with run_gateway(config(lago, upstream)) as gw:
        r = post(gw, [{**event, **unpriced, **zero} for event in events])
        assert r.status_code == 200, r.text
        rows = {row["request_id"]: row for row in webhook_rows(gw)}
        got = {
            rid: (row["endpoint"], row["queries"], row["images"], row["audio_ms"], row["characters"], row["cost"])
            for rid, row in rows.items()
        }
        # the bundled prices: dall-e-2 0.02 USD an image, whisper-1 0.0001 a second, tts-1 0.000015 a
        # character, rerank-english-v3.0 0.002 a search unit
        assert got == {
            "img-1": ("images", 0, 2, 0, 0, 400_000_000),
            "stt-1": ("transcriptions", 0, 0, 3500, 0, 3_500_000),
            "tts-1": ("speech", 0, 0, 0, 18, 2_700_000),
            "rr-1": ("rerank", 2, 0, 0, 0, 40_000_000),
            "bad-1": ("images", 0, 0, 0, 0, 0),
            "bad-2": ("transcriptions", 0, 0, 0, 0, 0),
            "redacted-1": ("speech", 0, 0, 0, 0, 0),
        }
        assert {rid: row["flags"] for rid, row in rows.items() if row["flags"]} == {
            "bad-1": "usage_invalid",
            "bad-2": "usage_invalid",
        }


def test_standard_logging_payloads_map_end_user_key_team_tokens_and_cost(lago: LagoStandIn, upstream: StandIn) -> None:
    failed = standard_logging_payload(
        id="chatcmpl-failed-1",
        status="failure",
        prompt_tokens=0,
        completion_tokens=0,
        total_tokens=0,
        response_cost=0.0,
        error_str="RateLimitError: slow down",
        error_information={"error_code": "429", "error_class": "RateLimitError", "llm_provider": "openai"},
        metadata={"usage_object": None},
    )
    unpriced_by_litellm = standard_logging_payload(
        id="chatcmpl-unpriced-1",
        model="gpt-4o",
        model_group="house-model",
        response_cost=0.0,
        response_cost_failure_debug_info={"error_str": "model not mapped", "traceback_str": ""},
        metadata={},
        prompt_tokens=1000,
        completion_tokens=500,
        total_tokens=1500,
    )
    with run_gateway(config(lago, upstream)) as gw:
        r = post(gw, [standard_logging_payload(), failed, unpriced_by_litellm])  # LiteLLM's json_array
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 3
        rows = {row["request_id"]: row for row in webhook_rows(gw)}
        ok, fail, unpriced = rows["chatcmpl-AbC123xyz"], rows["chatcmpl-failed-1"], rows["chatcmpl-unpriced-1"]
        assert (ok["customer_id"], ok["user_id"], ok["team_id"], ok["key_id"], ok["key_alias"]) == (
            "acme",
            "user-42",
            "team-7",
            "9f2c6d1e" * 8,
            "checkout-service",
        )
        assert (ok["model_group"], ok["upstream_model"], ok["deployment_id"], ok["endpoint"], ok["stream"]) == (
            "gpt-4o-team",
            "gpt-4o-2024-08-06",
            "deployment-abc",
            "chat",
            1,
        )
        assert (ok["prompt_tokens"], ok["completion_tokens"], ok["cached_tokens"], ok["reasoning_tokens"]) == (
            1200,
            300,
            1000,
            100,
        )
        assert ok["cost"] == 60_500_000 and ok["price_input"] is None
        assert round(ok["latency_ms"]) == 1500 and round(ok["ttft_ms"]) == 400
        assert orjson.loads(ok["tags"]) == ["checkout", "prod"]
        meta = orjson.loads(ok["metadata"])
        assert meta["project"] == "apollo" and meta["webhook"]["trace_id"] == "5d1f7a4e-2b8c-4e9a-9f1d-3c6b8a7e2d10"
        assert (fail["status"], fail["http_status"], fail["error_type"], fail["total_tokens"]) == (
            "upstream_error",
            429,
            "RateLimitError",
            0,
        )
        # LiteLLM could not price it: the deployment serving the same model group here prices it
        assert unpriced["cost"] == 1000 * 30_000 + 500 * 40_000 and unpriced["price_input"] == 30_000
        settled(gw)
        # the failure used no tokens: nothing to bill
        assert sorted(lago.transaction_ids()) == sorted([ok["uid"], unpriced["uid"]])


def test_an_event_without_cost_is_priced_from_the_bundled_table(lago: LagoStandIn, upstream: StandIn) -> None:
    with run_gateway(config(lago, upstream)) as gw:
        event = example(timestamp=int(time.time()))
        del event["cost_usd"]
        assert post(gw, event).json()["status"] == "accepted"
        (row,) = webhook_rows(gw)
        # gpt-4o: 2.50 and 10.00 USD per million tokens, as in prices.json
        assert row["cost"] == 100 * 25_000 + 150 * 100_000 and row["price_input"] == 25_000


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'"usage"', 400, "must be a JSON object"),
        (b"", 400, "empty"),
        (example(tokens_input=-1), 422, "tokens_input must be a non-negative integer"),
        (example(tokens_output="150"), 422, "tokens_output must be a non-negative integer"),
        ({k: v for k, v in example().items() if k != "request_id"}, 422, "request_id is required"),
        (example(cost_usd=-0.1), 422, "cost_usd must be a non-negative number"),
        (example(total_tokens=10), 422, "total_tokens must be at least tokens_input + tokens_output (250)"),
        (example(timestamp="yesterday"), 422, "timestamp must be epoch seconds or an ISO 8601 time"),
        (example(event_type="refund"), 422, "event_type must be 'usage'"),
        ({"request_id": "r-9", "model": "gpt-4o"}, 422, "tokens_input must be a non-negative integer"),
        (example(request_id="r" * 129), 422, "request_id must be a string of at most 128 characters"),
        (standard_logging_payload(prompt_tokens=None), 422, "prompt_tokens must be a non-negative integer"),
        (standard_logging_payload(id=""), 422, "id is required"),
        (standard_logging_payload(metadata={"user_api_key_hash": 7.5}), 422, "metadata.user_api_key_hash must be"),
        ({"hello": "world"}, 422, "neither a usage event"),
        ({"events": [example(request_id="ok-1"), example(request_id="bad", tokens_output=-5)]}, 422, "events[1]."),
        ({"events": "all of them"}, 422, "'events' must be a list"),
        ([example(request_id="ok-2"), 42], 422, "events[1] must be a JSON object"),
    ],
)
def test_a_malformed_event_is_refused_naming_the_field_and_nothing_is_stored(
    body: Any, status: int, says: str, shared: RunningGateway
) -> None:
    r = post(shared, body, path="/webhooks/usage/batch")
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"
    if status == 422 and isinstance(body, dict) and "events" in body and isinstance(body["events"], list):
        assert error["param"] == "events[1].tokens_output" and "1 of 2 events are invalid" in error["message"]
    assert webhook_rows(shared) == []


@pytest.fixture(scope="module")
def shared(standin: StandIn) -> Iterator[RunningGateway]:
    """One gateway (billing off) for the refusal cases, which must never store anything."""
    with run_gateway({"model_list": [], "general_settings": {"webhook_secret": SECRET}}) as gw:
        yield gw


def test_a_batch_of_more_than_1000_events_is_refused_whole(shared: RunningGateway) -> None:
    events = [example(request_id=f"big-{i}") for i in range(1001)]
    r = post(shared, {"events": events}, path="/webhooks/usage/batch")
    assert r.status_code == 422 and "at most 1000 events" in r.json()["error"]["message"]
    assert webhook_rows(shared) == []


def test_a_wrong_or_missing_secret_is_401_and_the_master_key_or_the_secret_header_works(
    shared: RunningGateway,
) -> None:
    event = example(request_id=f"auth-{time.time_ns()}")
    for headers in (
        {"X-Unrelated": "x"},
        {"Authorization": "Bearer wrong-secret-wrong-secret"},
        {"X-Webhook-Secret": "no"},
    ):
        r = post(shared, event, **headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error" and SECRET not in r.text
    assert not [row for row in webhook_rows(shared) if row["request_id"] == event["request_id"]]
    assert post(shared, event, **{"X-Webhook-Secret": SECRET}).json()["status"] == "accepted"
    assert post(shared, event, Authorization=f"Bearer {shared.key}").json()["status"] == "duplicate"
    # the secret opens the ingest routes only, not the admin ones
    assert httpx.get(shared.url + "/webhooks/stats", headers=AUTH).status_code == 401


def test_the_batch_route_takes_events_a_bare_list_and_ndjson_and_answers_per_event(shared: RunningGateway) -> None:
    tag = time.time_ns()
    a, b, c = (example(request_id=f"batch-{tag}-{n}") for n in "abc")
    r = post(shared, {"events": [a, b, a]}, path="/webhooks/usage/batch")
    assert r.status_code == 200
    assert r.json()["accepted"] == 2 and r.json()["duplicates"] == 1
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted", "duplicate"]
    bare = post(shared, [b, c], path="/webhooks/usage/batch").json()
    assert [x["status"] for x in bare["results"]] == ["duplicate", "accepted"]
    d = standard_logging_payload(id=f"ndjson-{tag}")
    ndjson = orjson.dumps(c) + b"\n" + orjson.dumps(d) + b"\n"
    lines = post(shared, ndjson, path="/webhooks/usage").json()  # LiteLLM's ndjson log format
    assert [x["status"] for x in lines["results"]] == ["duplicate", "accepted"]
    one = post(shared, example(request_id=f"batch-{tag}-d"), path="/webhooks/usage/batch").json()
    assert one["accepted"] == 1 and one["results"][0]["status"] == "accepted"
    stored = {row["request_id"] for row in webhook_rows(shared)}
    assert {a["request_id"], b["request_id"], c["request_id"], d["id"]} <= stored


def test_reprocess_requeues_parked_webhook_exports_and_only_with_all_the_gateway_ones(
    lago: LagoStandIn, upstream: StandIn
) -> None:
    with run_gateway(config(lago, upstream)) as gw:
        # a request served here and a reported one, both for a customer Lago has no subscription for
        with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
            client.chat.completions.create(
                model="house-model", messages=[{"role": "user", "content": "hi"}], user="ghost"
            )
        post(gw, example(customer_id="ghost", timestamp=int(time.time()))).raise_for_status()
        settled(gw)
        status = httpx.get(gw.url + "/billing/status", headers=admin(gw)).json()
        assert status["parked_by_reason"] == {f"no active Lago subscription 'ghost' {NOT_LISTED}": 2}
        Client(api_key=lago.api_key, api_url=lago.url).customers.create(Customer(external_id="ghost", currency="USD"))
        Client(api_key=lago.api_key, api_url=lago.url).subscriptions.create(
            Subscription(external_customer_id="ghost", plan_code="payg", external_id="ghost")
        )
        webhook_only = httpx.post(gw.url + "/webhooks/reprocess", json={"reason": "subscription"}, headers=admin(gw))
        assert webhook_only.json() == {"reprocessed": 1}
        settled(gw)
        assert lago.transaction_ids() == [uid_for("req-abc123")]
        stats = httpx.get(gw.url + "/webhooks/stats", headers=admin(gw)).json()
        assert stats["ledger"] == {"rows": 1, "pending": 0, "sent": 1, "parked": 0}
        everything = httpx.post(gw.url + "/webhooks/reprocess", json={"all": True}, headers=admin(gw))
        assert everything.json() == {"reprocessed": 1}
        settled(gw)
        assert len(lago.transaction_ids()) == 2
        refused = httpx.post(gw.url + "/webhooks/reprocess", json={"since": "last week"}, headers=admin(gw))
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "since"


def test_validate_checks_billing_lago_the_key_and_the_metric(lago: LagoStandIn, upstream: StandIn) -> None:
    with run_gateway(config(lago, upstream)) as gw:
        good = httpx.get(gw.url + "/webhooks/validate", headers=admin(gw)).json()
        assert good["ok"] is True, good
        assert {name for name, check in good["checks"].items() if check["ok"]} == {
            "billing_configured",
            "lago_reachable",
            "api_key_accepted",
            "billable_metric",
            "ledger",
        }
        assert good["webhook_secret"] == "configured"
    with run_gateway(config(lago, upstream, event_code="no_such_metric")) as gw:
        missing = httpx.get(gw.url + "/webhooks/validate", headers=admin(gw)).json()
        assert missing["ok"] is False and "no billable metric" in missing["checks"]["billable_metric"]["detail"]
    with run_gateway(config(lago, upstream, api_key="wrong-lago-key")) as gw:
        bad_key = httpx.get(gw.url + "/webhooks/validate", headers=admin(gw)).json()
        assert bad_key["ok"] is False and bad_key["checks"]["api_key_accepted"]["ok"] is False
    lago.down()
    try:
        with run_gateway(config(lago, upstream)) as gw:
            down = httpx.get(gw.url + "/webhooks/validate", headers=admin(gw)).json()
            assert down["ok"] is False and down["checks"]["lago_reachable"]["ok"] is False
    finally:
        lago.up()


def test_validate_without_billing_says_so(shared: RunningGateway) -> None:
    report = httpx.get(shared.url + "/webhooks/validate", headers=admin(shared)).json()
    assert report["ok"] is False and report["checks"]["billing_configured"]["ok"] is False
    assert report["checks"]["ledger"]["ok"] is True


def test_on_postgresql_resent_and_racing_reports_give_one_row_one_export_and_spend_once(
    lago: LagoStandIn, upstream: StandIn, pg_url: str
) -> None:
    cfg = config(lago, upstream)
    cfg["general_settings"]["database_url"] = pg_url
    now = int(time.time())
    with run_gateway(cfg) as gw:
        httpx.post(gw.url + "/customer/new", json={"user_id": "customer-123"}, headers=admin(gw)).raise_for_status()
        answers = race(gw, example(timestamp=now), senders=8)
        assert sorted(a.json()["status"] for a in answers) == ["accepted"] + ["duplicate"] * 7
        # two overlapping batches at once: rows in either order, never a deadlock, each row once
        batch_a = {"events": [example(request_id=f"pg-{i}", timestamp=now) for i in range(20)]}
        batch_b = {"events": [example(request_id=f"pg-{i}", timestamp=now) for i in reversed(range(10, 30))]}
        results: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda b=b: results.append(post(gw, b, path="/webhooks/usage/batch")))
            for b in (batch_a, batch_b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200, 200]
        assert sum(r.json()["accepted"] for r in results) == 30 and sum(r.json()["duplicates"] for r in results) == 10
        assert sql(gw, "SELECT count(*), count(DISTINCT uid) FROM mw_ledger WHERE source = 'webhook'") == [(31, 31)]
        assert spend(gw, "mw_customers", "customer_id", "customer-123") == 31 * 37_500_000
        assert sql(gw, "SELECT sum(requests) FROM mw_usage_daily WHERE customer_id = 'customer-123'") == [(31,)]
        settled(gw)
        got = lago.transaction_ids()
        assert len(got) == len(set(got)) == 31
        assert sql(gw, "SELECT count(*) FROM mw_ledger WHERE source = 'gateway'") == [(0,)]
