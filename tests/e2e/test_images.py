"""Image generation end to end through the `openai` SDK: `client.images.generate(...)` through a
running gateway to OpenAI-compatible deployments at a stand-in that checks its key and answers as
OpenAI does (DALL·E without usage, gpt-image-1 with token usage). Each answer leaves a ledger row
with `images` = the images returned, billed per image (`output_cost_per_image`), per pixel
(`input_cost_per_pixel` x the size's pixels) or per reported token; the images show in `/usage`,
the invoice preview and the Lago event; a budget refuses what `n` images may cost; bad input is
an OpenAI-format 400 and a failing upstream a clear error with its row recorded."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.lago.standin import LagoStandIn, billing_ready
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import eventually
from tests.upstreams.images import IMAGES_KEY, OUTPUT_TOKENS, ImageStandIn
from tests.upstreams.standin import Script, count_words

IMAGE_PRICE = 0.04  # USD per image: DALL·E 3, standard 1024x1024
PIXEL_PRICE = 2e-8  # USD per pixel
INPUT_PRICE, OUTPUT_PRICE = 5e-6, 4e-5  # gpt-image-1's text input and image output tokens
UNIT = 10**10  # the ledger's money units per USD
# DALL·E 3's prices per pixel in the bundled table (LiteLLM's `hd/1024-x-1792/dall-e-3`, ...)
HD_TALL_PIXEL, STANDARD_SQUARE_PIXEL = Decimal("7.19343e-08"), Decimal("4.19617e-08")


@pytest.fixture(scope="module")
def upstream() -> Iterator[ImageStandIn]:
    with ImageStandIn() as s:
        yield s


@pytest.fixture(scope="module")
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        billing_ready(stand_in, ["painter"])
        yield stand_in


@pytest.fixture(scope="module")
def gw(upstream: ImageStandIn, lago: LagoStandIn) -> Iterator[RunningGateway]:
    base = upstream.base_url + "/v1"
    config = {
        "model_list": [
            {
                "model_name": "dalle",
                "litellm_params": {"model": "openai/dall-e-3", "api_base": base, "api_key": IMAGES_KEY},
                "model_info": {"output_cost_per_image": IMAGE_PRICE},
            },
            {
                "model_name": "dalle-pixels",
                "litellm_params": {"model": "openai/dall-e-2", "api_base": base, "api_key": IMAGES_KEY},
                "model_info": {"input_cost_per_pixel": PIXEL_PRICE, "output_cost_per_pixel": 0},
            },
            {
                "model_name": "gpt-image",
                "litellm_params": {
                    "model": "openai/gpt-image-1",
                    "api_base": base,
                    "api_key": IMAGES_KEY,
                    "input_cost_per_token": INPUT_PRICE,
                    "output_cost_per_token": OUTPUT_PRICE,
                },
            },
            {
                "model_name": "gpt-image-per-image",
                "litellm_params": {"model": "openai/gpt-image-1", "api_base": base, "api_key": IMAGES_KEY},
                "model_info": {"output_cost_per_image": IMAGE_PRICE},
            },
            {
                "model_name": "azure-dalle",
                "litellm_params": {"model": "azure/dall-e-3", "api_base": upstream.base_url, "api_key": IMAGES_KEY},
                "model_info": {"output_cost_per_image": IMAGE_PRICE},
            },
            {
                "model_name": "dalle-table",  # no price of its own: the bundled table's, by quality and size
                "litellm_params": {"model": "openai/dall-e-3", "api_base": base, "api_key": IMAGES_KEY},
            },
            {
                "model_name": "dalle-wrong-key",
                "litellm_params": {"model": "openai/dall-e-3", "api_base": base, "api_key": "not-the-key"},
            },
        ],
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id"},
    }
    with run_gateway(config) as g:
        yield g


def _client(gw: RunningGateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key or gw.key, max_retries=0)


def _post(gw: RunningGateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {gw.key}"}, timeout=30)


def _row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM mw_ledger WHERE request_id = ?", (request_id,)).fetchone()
    assert found is not None
    return dict(found)


def test_images_are_billed_per_image_and_exported(
    gw: RunningGateway, upstream: ImageStandIn, lago: LagoStandIn
) -> None:
    with _client(gw) as client:
        raw = client.images.with_raw_response.generate(
            model="dalle",
            prompt="a lighthouse at dusk",
            n=2,
            size="1024x1024",
            response_format="b64_json",
            user="painter",
        )
    result = raw.parse()
    assert len(result.data or []) == 2
    image = result.data[0] if result.data else None
    assert image is not None and image.b64_json is not None
    assert base64.b64decode(image.b64_json).startswith(b"\x89PNG")
    assert image.revised_prompt == "A detailed picture: a lighthouse at dusk"
    sent = upstream.received[-1]
    assert sent.path == "/v1/images/generations" and sent.json["model"] == "dall-e-3" and sent.json["n"] == 2
    row = _row(gw, raw.headers["x-request-id"])
    assert row["endpoint"] == "images" and row["status"] == "success" and row["customer_id"] == "painter"
    assert row["images"] == 2 and row["cost"] == round(2 * IMAGE_PRICE * UNIT)
    usage = httpx.get(
        gw.url + "/usage", params={"group_by": "model"}, headers={"Authorization": f"Bearer {gw.key}"}
    ).json()
    assert {x["model"]: x for x in usage["rows"]}["dalle"]["images"] >= 2 and usage["totals"]["images"] >= 2
    invoice = httpx.get(
        gw.url + "/customer/painter/invoice-preview", headers={"Authorization": f"Bearer {gw.key}"}
    ).json()
    (line,) = [x for x in invoice["lines"] if x["token_type"] == "images"]
    assert line["model"] == "dalle" and line["quantity"] == 2 and line["unit_price"] == "0.04"
    eventually(lambda: any(e.transaction_id == row["uid"] for e in lago.events), 15, "the image's event in Lago")
    (event,) = [e for e in lago.events if e.transaction_id == row["uid"]]
    assert event.properties["images"] == 2 and event.properties["model"] == "dalle"


def test_urls_pass_through_as_the_upstream_gave_them(gw: RunningGateway) -> None:
    with _client(gw) as client:
        result = client.images.generate(model="dalle", prompt="a red kite")
    (image,) = result.data or []
    assert image.url is not None and image.url.startswith("https://images.standin.example/")


def test_a_price_per_pixel_bills_the_asked_size(gw: RunningGateway) -> None:
    with _client(gw) as client:
        raw = client.images.with_raw_response.generate(model="dalle-pixels", prompt="a fox", n=3, size="512x512")
    assert len(raw.parse().data or []) == 3
    row = _row(gw, raw.headers["x-request-id"])
    assert row["images"] == 3 and row["cost"] == round(3 * 512 * 512 * PIXEL_PRICE * UNIT)


def test_gpt_image_usage_is_billed_by_its_tokens(gw: RunningGateway) -> None:
    prompt = "a watercolour of a quiet harbour"
    with _client(gw) as client:
        raw = client.images.with_raw_response.generate(model="gpt-image", prompt=prompt, n=2, quality="low")
    result = raw.parse()
    assert len(result.data or []) == 2 and result.size == "1024x1024" and result.quality == "low"
    assert result.usage is not None and result.usage.input_tokens_details.text_tokens == count_words(prompt)
    output = 2 * OUTPUT_TOKENS["low"]
    assert result.usage.output_tokens == output
    row = _row(gw, raw.headers["x-request-id"])
    assert row["images"] == 2 and row["prompt_tokens"] == count_words(prompt) and row["completion_tokens"] == output
    assert row["cost"] == round((count_words(prompt) * INPUT_PRICE + output * OUTPUT_PRICE) * UNIT)


def test_gpt_image_without_usage_is_recorded_with_its_images(gw: RunningGateway, upstream: ImageStandIn) -> None:
    upstream.script(Script(no_usage=True, path="/images/"))
    with _client(gw) as client:
        raw = client.images.with_raw_response.generate(model="gpt-image", prompt="a boat")
    assert raw.parse().usage is None
    row = _row(gw, raw.headers["x-request-id"])
    assert row["images"] == 1 and row["status"] == "success"


def test_gpt_image_usage_that_is_no_count_keeps_its_images(gw: RunningGateway, upstream: ImageStandIn) -> None:
    upstream.script(Script(usage_raw=b'{"input_tokens": "many", "output_tokens": -5}', path="/images/"))
    prompt = "two small boats"
    with _client(gw) as client:
        raw = client.images.with_raw_response.generate(model="gpt-image", prompt=prompt, n=2)
    row = _row(gw, raw.headers["x-request-id"])
    assert "usage_invalid" in (row["flags"] or "") and row["tokens_estimated"]
    assert row["images"] == 2 and row["prompt_tokens"] == 3 and row["completion_tokens"] == 0  # the prompt counted
    assert row["cost"] == round(3 * INPUT_PRICE * UNIT)


def test_a_budget_reserves_gpt_image_output_tokens(gw: RunningGateway) -> None:
    # n=2 may produce 2 x 6240 image tokens ($0.4992 at $40 per million): $0.30 does not pay for that
    key = _post(gw, "/key/generate", {"max_budget": 0.3}).json()["key"]
    with _client(gw, key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            client.images.generate(model="gpt-image", prompt="two cats", n=2)
        assert "Budget exceeded" in refused.value.message
        assert len(client.images.generate(model="gpt-image", prompt="one cat", n=1, quality="high").data or []) == 1


def test_a_budget_refuses_images_it_cannot_pay_for(gw: RunningGateway) -> None:
    # $0.10 pays for two images at $0.04, not for the three (0.12) that n=3 may cost
    key = _post(gw, "/key/generate", {"max_budget": 0.1}).json()["key"]
    with _client(gw, key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            client.images.generate(model="dalle", prompt="three cats", n=3)
        assert "Budget exceeded" in refused.value.message
        assert len(client.images.generate(model="dalle", prompt="two cats", n=2).data or []) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "dalle", "prompt": "x", "n": 0}, "n"),
        ({"model": "dalle", "prompt": "x", "n": 100}, "n"),
        ({"model": "dalle", "prompt": "x", "size": "huge"}, "size"),
        ({"model": "dalle", "prompt": "x", "size": "99999x2"}, "size"),
        ({"model": "dalle"}, "prompt"),
        ({"model": "dalle", "prompt": ""}, "prompt"),
        ({"model": "dalle", "prompt": "x" * 40_000}, "prompt"),
        ({"model": "dalle", "prompt": "x", "quality": "ultra"}, "quality"),
        ({"model": "dalle", "prompt": "x", "response_format": "gif"}, "response_format"),
        ({"model": "dalle", "prompt": "x", "n": "two"}, "n"),
    ],
)
def test_bad_image_input_is_an_openai_400(
    gw: RunningGateway, upstream: ImageStandIn, body: dict[str, Any], param: str
) -> None:
    before = len(upstream.received)
    r = _post(gw, "/v1/images/generations", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert len(upstream.received) == before  # refused before any upstream call


def test_an_azure_deployment_draws_at_its_deployments_path(gw: RunningGateway, upstream: ImageStandIn) -> None:
    with _client(gw) as client:
        raw = client.images.with_raw_response.generate(model="azure-dalle", prompt="a heron", n=2)
    result = raw.parse()
    assert len(result.data or []) == 2 and result.data and result.data[0].revised_prompt
    sent = upstream.received[-1]
    assert sent.path == "/openai/deployments/dall-e-3/images/generations" and sent.api_version
    row = _row(gw, raw.headers["x-request-id"])
    assert row["images"] == 2 and row["cost"] == round(2 * IMAGE_PRICE * UNIT)


def test_the_path_without_v1_answers(gw: RunningGateway) -> None:
    r = _post(gw, "/images/generations", {"model": "dalle", "prompt": "a moth"})
    assert r.status_code == 200 and len(r.json()["data"]) == 1, r.text


def test_the_stand_in_refuses_a_wrong_key(gw: RunningGateway) -> None:
    with _client(gw) as client, pytest.raises(openai.AuthenticationError):
        client.images.generate(model="dalle-wrong-key", prompt="x")


def test_an_upstream_failure_is_a_clear_error_and_recorded(gw: RunningGateway, upstream: ImageStandIn) -> None:
    upstream.script(Script(status=500, body={"error": {"message": "the painter is out"}}, path="/images/"))
    r = _post(gw, "/v1/images/generations", {"model": "dalle", "prompt": "a storm"})
    assert r.status_code >= 500 and r.json()["error"]["message"], r.text
    row = _row(gw, r.headers["x-request-id"])
    assert row["status"] != "success" and row["images"] == 0 and row["endpoint"] == "images"
    upstream.script(Script(status=200, body=b"<html>not an image</html>", path="/images/"))
    garbage = _post(gw, "/v1/images/generations", {"model": "dalle", "prompt": "a storm"})
    assert garbage.status_code == 502 and "dalle" in garbage.json()["error"]["message"], garbage.text
    assert _row(gw, garbage.headers["x-request-id"])["status"] != "success"
    upstream.script(Script(status=200, body={"created": 1, "data": "none"}, path="/images/"))
    shapeless = _post(gw, "/v1/images/generations", {"model": "dalle", "prompt": "a storm"})
    assert shapeless.status_code == 502, shapeless.text


def test_the_demo_model_draws_a_png() -> None:
    config = {"model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}]}
    with run_gateway(config) as demo, _client(demo) as client:
        result = client.images.generate(model="demo", prompt="a small square", n=2, response_format="b64_json")
        assert len(result.data or []) == 2 and result.data and result.data[0].b64_json
        assert base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG\r\n\x1a\n")
        url = client.images.generate(model="demo", prompt="a small square").data
        assert url and url[0].url and url[0].url.startswith("data:image/png;base64,")


def test_an_image_answer_past_the_body_bound_is_a_502_and_recorded(upstream: ImageStandIn) -> None:
    config = {
        "model_list": [
            {
                "model_name": "dalle",
                "litellm_params": {
                    "model": "openai/dall-e-3",
                    "api_base": upstream.base_url + "/v1",
                    "api_key": IMAGES_KEY,
                },
                "model_info": {"output_cost_per_image": IMAGE_PRICE},
            }
        ],
        "general_settings": {"max_upstream_body_bytes": 2048},
    }
    # ten images, each with a revised prompt of 300 characters and the PNG: well past 2 KiB
    body = {"model": "dalle", "prompt": "p" * 300, "n": 10, "response_format": "b64_json"}
    with run_gateway(config) as small:
        r = _post(small, "/v1/images/generations", body)
        assert r.status_code == 502 and r.json()["error"]["message"], r.text
        row = _row(small, r.headers["x-request-id"])
        assert row["status"] != "success" and row["images"] == 0
        one = _post(small, "/v1/images/generations", {**body, "prompt": "p", "n": 1})
        assert one.status_code == 200 and _row(small, one.headers["x-request-id"])["images"] == 1, one.text


def test_a_configured_image_price_is_not_added_to_the_tables_token_prices(gw: RunningGateway) -> None:
    # gpt-image-1 reports tokens (50 in, 4160 out); its deployment sets a price per image: billed by it alone
    with _client(gw) as client:
        raw = client.images.with_raw_response.generate(model="gpt-image-per-image", prompt="a red kite", quality="high")
    row = _row(gw, raw.headers["x-request-id"])
    assert row["images"] == 1 and row["completion_tokens"] == OUTPUT_TOKENS["high"]
    assert row["cost"] == round(IMAGE_PRICE * UNIT)


def _ceil_units(usd: Decimal) -> int:
    return int((usd * UNIT).to_integral_value(ROUND_CEILING))


def test_the_tables_dall_e_3_price_follows_the_quality_and_size(gw: RunningGateway) -> None:
    with _client(gw) as client:
        hd = client.images.with_raw_response.generate(
            model="dalle-table", prompt="a fox", quality="hd", size="1024x1792"
        )
        standard = client.images.with_raw_response.generate(model="dalle-table", prompt="a fox", size="1024x1024")
    row = _row(gw, hd.headers["x-request-id"])
    assert row["images"] == 1 and row["cost"] == _ceil_units(1024 * 1792 * HD_TALL_PIXEL)
    row = _row(gw, standard.headers["x-request-id"])
    assert row["images"] == 1 and row["cost"] == _ceil_units(1024 * 1024 * STANDARD_SQUARE_PIXEL)


def test_a_budget_reserves_the_dearest_quality_and_size(gw: RunningGateway) -> None:
    # an hd 1792x1024 image costs ~$0.132: a $0.10 budget pays a standard square one (~$0.044), not it
    key = _post(gw, "/key/generate", {"max_budget": 0.1}).json()["key"]
    with _client(gw, key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            client.images.generate(model="dalle-table", prompt="a wide fox", quality="hd", size="1792x1024")
        assert "Budget exceeded" in refused.value.message
        assert len(client.images.generate(model="dalle-table", prompt="a fox", size="1024x1024").data or []) == 1
