"""Image edits and variations end to end through the `openai` SDK: `client.images.edit(...)` and
`client.images.create_variation(...)` through a running gateway to OpenAI-compatible (and Azure)
deployments at a stand-in that checks its key and reads the multipart form as OpenAI does. Each
answer leaves a ledger row with the images returned, priced as generation is (per image, per pixel,
or by gpt-image-1's reported tokens); an upload past `max_image_upload_bytes` is a 413 sent
nowhere; a missing image or prompt is a 400; a budget reserves the images, never the upload's bytes."""

from __future__ import annotations

import base64
import sqlite3
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.images import IMAGE_TOKENS, IMAGES_KEY, OUTPUT_TOKENS, ImageStandIn, png
from tests.upstreams.standin import Script, count_words

IMAGE_PRICE = 0.04  # USD per image
PIXEL_PRICE = 2e-8  # USD per pixel
INPUT_PRICE, OUTPUT_PRICE = 5e-6, 4e-5  # gpt-image-1's input and output tokens
UNIT = 10**10  # the ledger's money units per USD
BOUND = 300_000  # this gateway's max_image_upload_bytes
PNG = png()
# a picture of 150 kB: as prompt tokens at three bytes each it would reserve 50,000 of them ($0.25)
LARGE = PNG + bytes(150_000)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ImageStandIn]:
    with ImageStandIn() as s:
        yield s


def _deployment(name: str, model: str, base: str, **info: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": model, "api_base": base, "api_key": IMAGES_KEY}, **info}


@pytest.fixture(scope="module")
def gw(upstream: ImageStandIn) -> Iterator[RunningGateway]:
    base = upstream.base_url + "/v1"
    tokens = {"model_info": {"input_cost_per_token": INPUT_PRICE, "output_cost_per_token": OUTPUT_PRICE}}
    config = {
        "model_list": [
            _deployment("painter", "openai/dall-e-2", base, model_info={"output_cost_per_image": IMAGE_PRICE}),
            _deployment(
                "pixels",
                "openai/dall-e-2",
                base,
                model_info={"input_cost_per_pixel": PIXEL_PRICE, "output_cost_per_pixel": 0},
            ),
            _deployment("gpt-image", "openai/gpt-image-1", base, **tokens),
            _deployment("dall-e-2", "openai/dall-e-2", base, model_info={"output_cost_per_image": IMAGE_PRICE}),
            _deployment("azure-image", "azure/gpt-image-1", upstream.base_url, **tokens),
        ],
        "general_settings": {"max_image_upload_bytes": BOUND},
    }
    with run_gateway(config) as g:
        yield g


def _client(gw: RunningGateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key or gw.key, max_retries=0)


def _variation(client: openai.OpenAI, **kwargs: Any) -> Any:
    """`images.create_variation`, which the SDK marks deprecated (DALL·E 2's endpoint) but still sends."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.images.with_raw_response.create_variation(**kwargs)


def _post(gw: RunningGateway, path: str, files: Any, data: dict[str, str]) -> httpx.Response:
    return httpx.post(gw.url + path, files=files, data=data, headers={"Authorization": f"Bearer {gw.key}"}, timeout=30)


def _row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM mw_ledger WHERE request_id = ?", (request_id,)).fetchone()
    assert found is not None
    return dict(found)


def test_an_edit_is_billed_per_image_and_sent_with_the_upstreams_model(
    gw: RunningGateway, upstream: ImageStandIn
) -> None:
    with _client(gw) as client:
        raw = client.images.with_raw_response.edit(
            image=("room.png", PNG, "image/png"),
            mask=("mask.png", PNG, "image/png"),
            prompt="add a window",
            model="painter",
            n=2,
            size="512x512",
            user="decorator",
        )
    result = raw.parse()
    assert len(result.data or []) == 2 and result.data and result.data[0].url
    model, fields, images = upstream.uploads[-1]
    assert model == "dall-e-2" and fields["prompt"] == "add a window" and fields["n"] == "2" and images == 1
    assert upstream.received[-1].path == "/v1/images/edits"
    row = _row(gw, raw.headers["x-request-id"])
    assert row["endpoint"] == "image_edits" and row["status"] == "success" and row["customer_id"] == "decorator"
    assert row["images"] == 2 and row["cost"] == round(2 * IMAGE_PRICE * UNIT)


def test_a_gpt_image_edit_of_several_images_is_billed_by_its_tokens(gw: RunningGateway, upstream: ImageStandIn) -> None:
    prompt = "put these two in one picture"
    with _client(gw) as client:
        raw = client.images.with_raw_response.edit(
            image=[("a.png", PNG, "image/png"), ("b.png", PNG, "image/png")],
            prompt=prompt,
            model="gpt-image",
            quality="low",
            response_format="b64_json",
        )
    result = raw.parse()
    assert result.data and result.data[0].b64_json and base64.b64decode(result.data[0].b64_json) == PNG
    assert upstream.uploads[-1][0] == "gpt-image-1" and upstream.uploads[-1][2] == 2
    prompt_tokens = count_words(prompt) + 2 * IMAGE_TOKENS
    assert result.usage is not None and result.usage.input_tokens == prompt_tokens
    row = _row(gw, raw.headers["x-request-id"])
    assert row["images"] == 1 and row["prompt_tokens"] == prompt_tokens
    assert row["completion_tokens"] == OUTPUT_TOKENS["low"]
    assert row["cost"] == round((prompt_tokens * INPUT_PRICE + OUTPUT_TOKENS["low"] * OUTPUT_PRICE) * UNIT)


def test_an_edit_without_usage_is_recorded_with_its_images(gw: RunningGateway, upstream: ImageStandIn) -> None:
    upstream.script(Script(no_usage=True, path="/images/"))
    with _client(gw) as client:
        raw = client.images.with_raw_response.edit(image=("a.png", PNG), prompt="a hat", model="gpt-image", n=2)
    assert raw.parse().usage is None
    row = _row(gw, raw.headers["x-request-id"])
    assert row["images"] == 2 and row["status"] == "success" and row["endpoint"] == "image_edits"


def test_a_variation_is_billed_per_pixel_of_its_size(gw: RunningGateway, upstream: ImageStandIn) -> None:
    with _client(gw) as client:
        raw = _variation(client, image=("cat.png", PNG, "image/png"), model="pixels", n=3, size="256x256")
    assert len(raw.parse().data or []) == 3
    assert upstream.received[-1].path == "/v1/images/variations" and upstream.uploads[-1][0] == "dall-e-2"
    row = _row(gw, raw.headers["x-request-id"])
    assert row["endpoint"] == "image_variations" and row["images"] == 3
    assert row["cost"] == round(3 * 256 * 256 * PIXEL_PRICE * UNIT)


def test_the_paths_without_v1_answer(gw: RunningGateway) -> None:
    edit = _post(gw, "/images/edits", {"image": ("a.png", PNG)}, {"model": "painter", "prompt": "a moth"})
    assert edit.status_code == 200 and len(edit.json()["data"]) == 1, edit.text
    variation = _post(gw, "/images/variations", {"image": ("a.png", PNG)}, {"model": "painter"})
    assert variation.status_code == 200 and len(variation.json()["data"]) == 1, variation.text


def test_no_model_routes_dall_e_2_and_names_it_upstream(gw: RunningGateway, upstream: ImageStandIn) -> None:
    r = _post(gw, "/v1/images/variations", {"image": ("a.png", PNG)}, {"n": "2"})
    assert r.status_code == 200 and len(r.json()["data"]) == 2, r.text
    assert upstream.uploads[-1][1].get("model") == "dall-e-2"
    row = _row(gw, r.headers["x-request-id"])
    assert row["model_group"] == "dall-e-2" and row["cost"] == round(2 * IMAGE_PRICE * UNIT)


def test_an_azure_deployment_edits_at_its_deployments_path(gw: RunningGateway, upstream: ImageStandIn) -> None:
    with _client(gw) as client:
        raw = client.images.with_raw_response.edit(image=("a.png", PNG), prompt="a heron", model="azure-image")
    assert len(raw.parse().data or []) == 1
    sent = upstream.received[-1]
    assert sent.path == "/openai/deployments/gpt-image-1/images/edits" and sent.api_version
    assert _row(gw, raw.headers["x-request-id"])["images"] == 1


def test_an_upload_past_the_bound_is_a_413_never_sent_upstream(gw: RunningGateway, upstream: ImageStandIn) -> None:
    before = len(upstream.received)
    big = PNG + bytes(BOUND)
    for path, data in (("/v1/images/edits", {"prompt": "x"}), ("/images/variations", {})):
        r = _post(gw, path, {"image": ("big.png", big)}, {"model": "painter", **data})
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and str(BOUND) in error["message"]
    assert len(upstream.received) == before


@pytest.mark.parametrize(
    ("path", "files", "data", "param"),
    [
        ("/v1/images/edits", None, {"model": "painter", "prompt": "x"}, "image"),
        ("/v1/images/edits", {"image": ("a.png", PNG)}, {"model": "painter"}, "prompt"),
        ("/v1/images/edits", {"image": ("a.png", PNG)}, {"model": "painter", "prompt": " "}, "prompt"),
        ("/v1/images/edits", {"image": ("a.png", b"")}, {"model": "painter", "prompt": "x"}, "image"),
        ("/v1/images/edits", {"image": ("a.png", PNG)}, {"model": "painter", "prompt": "x", "n": "11"}, "n"),
        ("/v1/images/edits", {"image": ("a.png", PNG)}, {"model": "painter", "prompt": "x", "n": "two"}, "n"),
        ("/v1/images/edits", {"image": ("a.png", PNG)}, {"model": "painter", "prompt": "x", "size": "big"}, "size"),
        (
            "/v1/images/edits",
            {"image": ("a.png", PNG)},
            {"model": "painter", "prompt": "x", "quality": "ultra"},
            "quality",
        ),
        ("/v1/images/variations", None, {"model": "painter"}, "image"),
        (
            "/v1/images/variations",
            {"image": ("a.png", PNG)},
            {"model": "painter", "response_format": "gif"},
            "response_format",
        ),
    ],
)
def test_a_bad_upload_is_an_openai_400(
    gw: RunningGateway, upstream: ImageStandIn, path: str, files: Any, data: dict[str, str], param: str
) -> None:
    before = len(upstream.received)
    r = _post(gw, path, files or {"other": ("x.txt", b"x")}, data)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert len(upstream.received) == before


def test_a_json_body_is_no_upload(gw: RunningGateway) -> None:
    r = httpx.post(
        gw.url + "/v1/images/edits",
        json={"model": "painter", "prompt": "x"},
        headers={"Authorization": f"Bearer {gw.key}"},
    )
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]


def test_a_budget_refuses_images_it_cannot_pay_for(gw: RunningGateway) -> None:
    # $0.10 pays for two images at $0.04, not for the three (0.12) that n=3 may cost
    key = httpx.post(gw.url + "/key/generate", json={"max_budget": 0.1}, headers={"Authorization": f"Bearer {gw.key}"})
    with _client(gw, key.json()["key"]) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            _variation(client, image=("a.png", PNG), model="painter", n=3)
        assert "Budget exceeded" in refused.value.message
        with pytest.raises(openai.BadRequestError):
            client.images.edit(image=("a.png", PNG), prompt="three cats", model="painter", n=3)
        assert len(client.images.edit(image=("a.png", PNG), prompt="two cats", model="painter", n=2).data or []) == 2


def test_a_budget_reserves_the_images_not_the_uploads_bytes(gw: RunningGateway) -> None:
    # one gpt-image-1 image may cost 6240 output tokens ($0.2496) and its prompt and picture about 1,110
    # input tokens ($0.0056): $0.30 pays for it. Its 150 kB counted as prompt tokens would add $0.25.
    key = httpx.post(gw.url + "/key/generate", json={"max_budget": 0.3}, headers={"Authorization": f"Bearer {gw.key}"})
    with _client(gw, key.json()["key"]) as client:
        result = client.images.edit(image=("large.png", LARGE), prompt="a larger room", model="gpt-image")
    assert len(result.data or []) == 1


def test_the_demo_model_edits_and_varies() -> None:
    config = {"model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}]}
    with run_gateway(config) as demo, _client(demo) as client:
        edited = client.images.edit(image=("a.png", PNG), prompt="a blue square", n=2, model="demo")
        assert len(edited.data or []) == 2 and edited.data and edited.data[0].revised_prompt == "a blue square"
        assert edited.data[0].url and edited.data[0].url.startswith("data:image/png;base64,")
        varied = _variation(client, image=("a.png", PNG), model="demo", response_format="b64_json").parse()
        assert varied.data and varied.data[0].b64_json
        assert base64.b64decode(varied.data[0].b64_json).startswith(b"\x89PNG\r\n\x1a\n")
