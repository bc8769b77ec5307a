"""Audio end to end through the `openai` SDK: transcriptions and translations (a multipart upload)
and speech (audio bytes streamed back), against a stand-in that checks its key and answers as
OpenAI does. A transcription is billed per second of audio (the seconds the upstream reported,
else the WAV header's), or by tokens where the upstream reported tokens; speech per character of
its input. The units reach the ledger row, `/usage` and the Lago event; an upload past the bound
is a 413 that never reaches the upstream."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from meterway.ledger.tokens import TokenCounter
from meterway.providers import mock
from tests.e2e.test_rerank_moderations import UNIT, _row
from tests.lago.standin import LagoStandIn, billing_ready
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import eventually
from tests.upstreams.audio import (
    AUDIO_KEY,
    AUDIO_TOKENS,
    TEXT_TOKENS,
    TRANSCRIPT,
    AudioStandIn,
    forged_mp3,
    mp3,
    speech_bytes,
    wav,
)

SECOND_PRICE = Decimal("0.0001")  # USD per second of audio, whisper-1's list price ($0.006 a minute)
CHARACTER_PRICE = Decimal("0.000015")  # USD per character, tts-1's list price ($15 per million)
TOKEN_PRICES = (Decimal("0.0000025"), Decimal("0.00001"))  # gpt-4o-transcribe's, per input and output token
TTS_TOKEN_PRICE = Decimal("0.0000006")  # gpt-4o-mini-tts's, per input (text) token
BOUND = 200_000  # bytes of one upload in this gateway
CLIP = wav(2.5)  # 2.5 s: the stand-in reports 3 s for whisper-1 (rounded up), the header says 2500 ms


@pytest.fixture(scope="module")
def upstream() -> Iterator[AudioStandIn]:
    with AudioStandIn() as s:
        yield s


@pytest.fixture(scope="module")
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        billing_ready(stand_in, ["acme"])
        yield stand_in


def _model(name: str, upstream: str, base: str, **info: Any) -> dict[str, Any]:
    params = {"model": f"openai/{upstream}", "api_base": base, "api_key": AUDIO_KEY}
    return {"model_name": name, "litellm_params": params, "model_info": {k: str(v) for k, v in info.items()}}


@pytest.fixture(scope="module")
def gw(upstream: AudioStandIn, lago: LagoStandIn) -> Iterator[RunningGateway]:
    base = upstream.base_url + "/v1"
    config = {
        "model_list": [
            _model("whisper", "whisper-1", base, input_cost_per_second=SECOND_PRICE),
            _model("whisper-selfhosted", "whisper-large-v3", base, input_cost_per_second=SECOND_PRICE),
            _model(
                "transcribe",
                "gpt-4o-transcribe",
                base,
                input_cost_per_token=TOKEN_PRICES[0],
                output_cost_per_token=TOKEN_PRICES[1],
            ),
            _model("whisper-broken", "broken", base, input_cost_per_second=SECOND_PRICE),
            _model("whisper-badusage", "bad-tokens", base, input_cost_per_second=SECOND_PRICE),
            _model("tts", "tts-1", base, input_cost_per_character=CHARACTER_PRICE),
            _model("mini-tts", "gpt-4o-mini-tts", base, input_cost_per_token=TTS_TOKEN_PRICE),
            {"model_name": "demo", "litellm_params": {"model": "mock/demo"}},
        ],
        "general_settings": {"max_audio_bytes": BOUND},
        "litellm_settings": {"cache": True, "cache_params": {"type": "local"}},  # audio is never cached
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id"},
    }
    with run_gateway(config) as g:
        yield g


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as c:
        yield c


def _units(usd: Decimal) -> int:
    return int(usd * UNIT)


def test_a_transcription_is_billed_by_the_seconds_the_upstream_reported(
    gw: RunningGateway, upstream: AudioStandIn, client: openai.OpenAI
) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        file=("clip.wav", CLIP, "audio/wav"),
        model="whisper",
        language="en",
        temperature=0.2,
        extra_body={"user": "acme"},
    )
    assert raw.parse().text == TRANSCRIPT
    sent = upstream.last
    assert sent.path == "/v1/audio/transcriptions" and sent.credential == AUDIO_KEY
    assert b"whisper-1" in sent.body and CLIP in sent.body and b'filename="clip.wav"' in sent.body
    row = _row(gw, raw.headers["x-request-id"])
    assert row["endpoint"] == "transcriptions" and row["status"] == "success" and row["customer_id"] == "acme"
    assert row["audio_ms"] == 3000 and row["prompt_tokens"] == 0
    assert row["cost"] == _units(3 * SECOND_PRICE)


def test_without_reported_usage_the_wav_header_is_measured(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(file=("clip.wav", CLIP), model="whisper-selfhosted")
    assert raw.parse().text == TRANSCRIPT
    row = _row(gw, raw.headers["x-request-id"])
    assert row["audio_ms"] == 2500 and row["cost"] == _units(Decimal("2.5") * SECOND_PRICE)


def test_an_mp3_without_reported_usage_is_measured_from_its_frames(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(file=("clip.mp3", mp3(100)), model="whisper-selfhosted")
    assert raw.parse().text == TRANSCRIPT
    audio_ms = _row(gw, raw.headers["x-request-id"])["audio_ms"]
    assert abs(audio_ms - 100 * 1152 * 1000 / 44100) < 20  # 2612 ms, as mutagen reads it from the frames


def test_verbose_json_duration_is_the_billed_seconds(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        file=("clip.wav", wav(1.25)),
        model="whisper",
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert raw.parse().duration == 1.25
    assert _row(gw, raw.headers["x-request-id"])["audio_ms"] == 1250


def test_token_usage_is_billed_by_tokens(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(file=("clip.wav", CLIP), model="transcribe")
    assert raw.parse().text == TRANSCRIPT
    row = _row(gw, raw.headers["x-request-id"])
    assert row["prompt_tokens"] == AUDIO_TOKENS and row["completion_tokens"] == TEXT_TOKENS
    assert row["audio_ms"] == 0  # billed by its tokens, not twice
    assert row["cost"] == _units(AUDIO_TOKENS * TOKEN_PRICES[0] + TEXT_TOKENS * TOKEN_PRICES[1])


def test_a_streamed_transcription_is_relayed_and_billed_by_its_tokens(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    with client.audio.transcriptions.with_streaming_response.create(
        file=("clip.wav", CLIP), model="transcribe", stream=True
    ) as response:
        rid = response.headers["x-request-id"]
        events = list(response.parse())
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == TRANSCRIPT
    assert events[-1].type == "transcript.text.done" and events[-1].text == TRANSCRIPT
    row = _row(gw, rid)
    assert row["stream"] and row["prompt_tokens"] == AUDIO_TOKENS and row["completion_tokens"] == TEXT_TOKENS
    assert row["cost"] == _units(AUDIO_TOKENS * TOKEN_PRICES[0] + TEXT_TOKENS * TOKEN_PRICES[1])


def test_a_text_answer_and_a_translation_without_v1(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        file=("clip.wav", CLIP), model="whisper-selfhosted", response_format="text"
    )
    assert raw.headers["content-type"].startswith("text/plain") and raw.text.strip() == TRANSCRIPT
    r = httpx.post(
        gw.url + "/audio/translations",
        files={"file": ("clip.wav", CLIP, "audio/wav")},
        data={"model": "whisper"},
        headers={"Authorization": f"Bearer {gw.key}"},
    )
    assert r.status_code == 200 and r.json()["text"] == TRANSCRIPT
    row = _row(gw, r.headers["x-request-id"])
    assert row["endpoint"] == "translations" and row["audio_ms"] == 3000


def test_an_upload_past_the_bound_is_a_413_never_sent_upstream(gw: RunningGateway, upstream: AudioStandIn) -> None:
    before = len(upstream.received)
    big = wav(BOUND / 16000 + 1)  # 16 kB a second at 8 kHz, 16-bit
    for path in ("/v1/audio/transcriptions", "/audio/translations"):
        r = httpx.post(
            gw.url + path,
            files={"file": ("big.wav", big)},
            data={"model": "whisper"},
            headers={"Authorization": f"Bearer {gw.key}"},
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"]["type"] == "invalid_request_error" and str(BOUND) in r.json()["error"]["message"]
    assert len(upstream.received) == before


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        (None, {"model": "whisper"}, "file"),
        ({"file": ("clip.wav", CLIP)}, {}, "model"),
        ({"file": ("clip.wav", CLIP)}, {"model": "whisper", "response_format": "mp3"}, "response_format"),
        ({"file": ("clip.wav", CLIP)}, {"model": "whisper", "temperature": "7"}, "temperature"),
    ],
)
def test_a_bad_upload_is_an_openai_400(
    gw: RunningGateway, files: dict[str, Any] | None, data: dict[str, str], param: str
) -> None:
    r = httpx.post(
        gw.url + "/v1/audio/transcriptions",
        files=files or {"other": ("x.txt", b"x")},
        data=data,
        headers={"Authorization": f"Bearer {gw.key}"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_json_body_is_no_upload(gw: RunningGateway) -> None:
    r = httpx.post(
        gw.url + "/v1/audio/transcriptions", json={"model": "whisper"}, headers={"Authorization": f"Bearer {gw.key}"}
    )
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]


def test_an_upstream_error_is_clear_and_recorded(gw: RunningGateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client.audio.transcriptions.create(file=("clip.wav", CLIP), model="whisper-broken")
    assert failed.value.status_code >= 500 and "The server had an error" in failed.value.message
    row = _row(gw, failed.value.response.headers["x-request-id"])
    assert row["status"] != "success" and row["endpoint"] == "transcriptions" and row["cost"] in (0, None)


def test_speech_is_streamed_byte_exact_and_billed_per_character(
    gw: RunningGateway, upstream: AudioStandIn, client: openai.OpenAI
) -> None:
    text = "Hello from the gateway, spoken."
    with client.audio.speech.with_streaming_response.create(
        model="tts", voice="alloy", input=text, response_format="mp3", speed=1.5, extra_body={"user": "acme"}
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        rid = response.headers["x-request-id"]
        pieces = list(response.iter_bytes(1000))
    assert b"".join(pieces) == speech_bytes(text) and len(pieces) > 1
    assert upstream.last.json["model"] == "tts-1" and upstream.last.json["speed"] == 1.5
    row = _row(gw, rid)
    assert row["endpoint"] == "speech" and row["characters"] == len(text) and row["status"] == "success"
    assert row["cost"] == _units(len(text) * CHARACTER_PRICE)
    r = httpx.post(
        gw.url + "/audio/speech",
        json={"model": "tts", "voice": "alloy", "input": "x"},
        headers={"Authorization": f"Bearer {gw.key}"},
    )
    assert r.status_code == 200 and r.content == speech_bytes("x")
    before = len(upstream.received)
    again = httpx.post(
        gw.url + "/audio/speech",
        json={"model": "tts", "voice": "alloy", "input": "x"},
        headers={"Authorization": f"Bearer {gw.key}"},
    )
    assert again.content == speech_bytes("x") and len(upstream.received) == before + 1  # not from the cache


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tts", "voice": "alloy", "input": "x" * 4097}, "input"),
        ({"model": "tts", "voice": "alloy", "input": ""}, "input"),
        ({"model": "tts", "voice": "alloy", "input": "x", "response_format": "ogg"}, "response_format"),
        ({"model": "tts", "voice": "alloy", "input": "x", "speed": 9}, "speed"),
        ({"voice": "alloy", "input": "x"}, "model"),
    ],
)
def test_bad_speech_is_an_openai_400(gw: RunningGateway, body: dict[str, Any], param: str) -> None:
    r = httpx.post(gw.url + "/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_usage_and_lago_carry_audio_seconds_and_characters(
    gw: RunningGateway, lago: LagoStandIn, client: openai.OpenAI
) -> None:
    heard = client.audio.transcriptions.with_raw_response.create(
        file=("clip.wav", CLIP), model="whisper", extra_body={"user": "acme"}
    )
    spoken = client.audio.speech.with_raw_response.create(
        model="tts", voice="alloy", input="abcdef", extra_body={"user": "acme"}
    )
    uids = {_row(gw, r.headers["x-request-id"])["uid"]: r for r in (heard, spoken)}
    usage = httpx.get(
        gw.url + "/usage", params={"group_by": "model"}, headers={"Authorization": f"Bearer {gw.key}"}
    ).json()
    by_model = {x["model"]: x for x in usage["rows"]}
    assert by_model["whisper"]["audio_ms"] >= 3000 and by_model["tts"]["characters"] >= 6
    invoice = httpx.get(gw.url + "/customer/acme/invoice-preview", headers={"Authorization": f"Bearer {gw.key}"}).json()
    lines = {(x["model"], x["token_type"]): x for x in invoice["lines"]}
    assert lines[("tts", "characters")]["quantity"] >= 6 and lines[("tts", "characters")]["unit_price"] == "0.000015"
    assert lines[("whisper", "audio_ms")]["quantity"] >= 3000
    assert Decimal(lines[("whisper", "audio_ms")]["unit_price"]) == SECOND_PRICE / 1000
    eventually(lambda: all(any(e.transaction_id == u for e in lago.events) for u in uids), 15, "audio events in Lago")
    events = {e.transaction_id: e for e in lago.events if e.transaction_id in uids}
    heard_event, spoken_event = (events[u] for u in uids)
    assert heard_event.properties["audio_seconds"] == "3" and heard_event.properties["model"] == "whisper"
    assert spoken_event.properties["characters"] == 6 and "audio_seconds" not in spoken_event.properties


def test_the_demo_model_transcribes_and_speaks(gw: RunningGateway, client: openai.OpenAI) -> None:
    heard = client.audio.transcriptions.with_raw_response.create(file=("clip.wav", CLIP), model="demo")
    assert heard.parse().text == mock.TRANSCRIPT
    assert _row(gw, heard.headers["x-request-id"])["audio_ms"] == 3000  # reported as OpenAI does, whole seconds
    streamed = client.audio.transcriptions.create(file=("clip.wav", CLIP), model="demo", stream=True)
    assert "".join(e.delta for e in streamed if e.type == "transcript.text.delta") == mock.TRANSCRIPT
    with client.audio.speech.with_streaming_response.create(model="demo", voice="alloy", input="hello") as spoken:
        assert spoken.headers["content-type"] == "audio/wav"
        data = spoken.read()
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnframes() > 0 and w.getframerate() == mock.SPEECH_RATE
    assert _row(gw, spoken.headers["x-request-id"])["characters"] == len("hello")


def test_a_budget_reserves_the_most_audio_and_characters(gw: RunningGateway) -> None:
    # $0.0002 pays for 2 s of whisper or 13 characters of tts-1: a 2.5 s file (measured from its
    # header before it is sent) and 14 characters are refused, a 1 s file is served
    key = httpx.post(
        gw.url + "/key/generate", json={"max_budget": 0.0002}, headers={"Authorization": f"Bearer {gw.key}"}
    ).json()["key"]
    with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as c:
        with pytest.raises(openai.BadRequestError, match="Budget exceeded"):
            c.audio.transcriptions.create(file=("clip.wav", CLIP), model="whisper-selfhosted")
        with pytest.raises(openai.BadRequestError, match="Budget exceeded"):
            c.audio.speech.create(model="tts", voice="alloy", input="x" * 14)
        # a header that reads 27 ms for 150 kB reserves what the bytes may hold (150 s at 8 kbit/s)
        with pytest.raises(openai.BadRequestError, match="Budget exceeded"):
            c.audio.transcriptions.create(file=("clip.mp3", forged_mp3(360)), model="whisper-selfhosted")
        # 1.6 kB: never more than 1.7 s, whatever its header says
        assert c.audio.transcriptions.create(file=("clip.wav", wav(0.1)), model="whisper-selfhosted").text == TRANSCRIPT


def _flags(row: dict[str, Any]) -> list[str]:
    return (row["flags"] or "").split(",")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("clip.webm", b"\x1aE\xdf\xa3" + bytes(range(256)) * 40),  # WebM: no header either reader knows
        ("clip.mp3", forged_mp3(360)),  # its Xing tag says one frame: 27 ms for 150 kB
    ],
)
def test_audio_no_header_can_be_trusted_on_is_billed_at_its_most_and_flagged(
    gw: RunningGateway, client: openai.OpenAI, name: str, data: bytes
) -> None:
    # whisper-1 reports no usage for text, srt and vtt: the file itself is all there is to bill
    raw = client.audio.transcriptions.with_raw_response.create(
        file=(name, data), model="whisper", response_format="text"
    )
    assert raw.text.strip() == TRANSCRIPT
    row = _row(gw, raw.headers["x-request-id"])
    assert row["audio_ms"] == len(data)  # its size at 8 kbit/s: 1 ms a byte
    assert "audio_estimated" in _flags(row)
    assert row["cost"] == _units(len(data) * SECOND_PRICE / 1000) and row["cost"] > 0


def test_a_readable_header_without_reported_usage_is_billed_unflagged(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        file=("clip.mp3", mp3(100)), model="whisper", response_format="srt"
    )
    row = _row(gw, raw.headers["x-request-id"])
    assert abs(row["audio_ms"] - 2612) < 20 and "audio_estimated" not in _flags(row)


def test_token_usage_that_is_no_count_bills_the_audio_and_is_flagged(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(file=("clip.wav", CLIP), model="whisper-badusage")
    assert raw.parse().text == TRANSCRIPT
    row = _row(gw, raw.headers["x-request-id"])
    assert "usage_invalid" in _flags(row) and row["audio_ms"] == 2500
    assert row["cost"] == _units(Decimal("2.5") * SECOND_PRICE)


def _post_form(gw: RunningGateway, body: bytes, boundary: str = "b0und") -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/audio/transcriptions",
        content=body,
        headers={"Authorization": f"Bearer {gw.key}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


def _part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--b0und\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def test_a_form_of_many_parts_is_refused_at_once(gw: RunningGateway, upstream: AudioStandIn) -> None:
    before = len(upstream.received)
    body = (
        _part("file", CLIP, "clip.wav")
        + _part("model", b"whisper")
        + b"".join(_part(f"x{i}", b"") for i in range(1000))
    )
    r = _post_form(gw, body + b"--b0und--\r\n")
    assert r.status_code == 400 and "32 parts" in r.json()["error"]["message"]
    unnamed = b"".join(b"--b0und\r\nContent-Type: text/plain\r\n\r\n\r\n" for _ in range(1000))
    r = _post_form(gw, _part("file", CLIP, "clip.wav") + _part("model", b"whisper") + unnamed + b"--b0und--\r\n")
    assert r.status_code == 400 and "32 parts" in r.json()["error"]["message"]
    long_header = b'--b0und\r\nContent-Disposition: form-data; name="model"\r\nX-Pad: ' + b"a" * 5000 + b"\r\n\r\nw\r\n"
    r = _post_form(gw, _part("file", CLIP, "clip.wav") + long_header + b"--b0und--\r\n")
    assert r.status_code == 400 and "header" in r.json()["error"]["message"]
    assert len(upstream.received) == before


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (_part("file", wav(5), "long.wav"), "file"),  # measured one file, the upstream would read the other
        (_part("model", b"whisper-selfhosted"), "model"),
        (_part("response_format", b"text"), "response_format"),
    ],
)
def test_a_field_sent_twice_is_a_400_naming_it(
    gw: RunningGateway, upstream: AudioStandIn, extra: bytes, param: str
) -> None:
    before = len(upstream.received)
    body = _part("file", wav(0.5), "clip.wav") + _part("model", b"whisper") + _part("response_format", b"json")
    r = _post_form(gw, body + extra + b"--b0und--\r\n")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and param in r.json()["error"]["message"]
    assert len(upstream.received) == before


def test_a_list_field_may_repeat(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        file=("clip.wav", CLIP),
        model="whisper",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert raw.http_response.status_code == 200


def test_token_priced_speech_is_billed_its_input_tokens(gw: RunningGateway, client: openai.OpenAI) -> None:
    text = "Token-priced speech is billed by the tokens of its input."
    with client.audio.speech.with_streaming_response.create(model="mini-tts", voice="alloy", input=text) as response:
        rid = response.headers["x-request-id"]
        assert response.read() == speech_bytes(text)
    row = _row(gw, rid)
    counted = TokenCounter().count(text)
    assert row["characters"] == len(text) and row["prompt_tokens"] == counted > 0
    assert row["cost"] == _units(counted * TTS_TOKEN_PRICE)
