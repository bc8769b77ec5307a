"""`GET /openapi.json` describes every management route, from the structs that decode them."""

from __future__ import annotations

import httpx

from meterway.api import openapi, responses, webhooks
from meterway.api.admin_routes import ROUTES
from tests.support.gateway import RunningGateway


def test_openapi_describes_every_management_route(gateway: RunningGateway) -> None:
    r = httpx.get(gateway.url + "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {route for route in ROUTES if not route[1].startswith("/end_user/")}
    served.add(("GET", "/customer/{customer_id}/invoice-preview"))  # the one route with an id in its path
    served |= {("POST", path) for path in webhooks.INGEST}  # served apart: they take the webhook secret
    served.add(("POST", openapi.LAGO_WEBHOOK[0]))  # Lago's signed wallet webhooks
    served |= {(method, path) for method, path, _, _ in openapi.RESPONSES}  # OpenAI's Responses API
    served |= {("POST", path) for path, _, _ in openapi.MODEL_ENDPOINTS}  # rerank, moderations
    served |= {("POST", path) for path, _ in openapi.AUDIO_UPLOADS} | {("POST", openapi.SPEECH_PATH)}  # audio
    served |= {("POST", path) for path, _, _ in openapi.IMAGE_UPLOADS}  # image edits and variations
    # every method the Responses routes take is documented
    assert {op[0] for op in openapi.RESPONSES} == {m for methods in responses.ALLOWED.values() for m in methods} | {
        "POST"
    }
    assert documented == served
    schemas = doc["components"]["schemas"]
    generate = doc["paths"]["/key/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = generate["$ref"].rsplit("/", 1)[1]
    assert {"models", "max_budget", "duration", "team_id", "metadata"} <= set(schemas[name]["properties"])
    assert schemas["KeyDeleteRequest"]["required"] == ["keys"]
    assert set(schemas["Rerank"]["required"]) == {"model", "query", "documents"}
    upload = doc["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["file", "model"] and set(schemas["Speech"]["required"]) >= {"input"}
    edit = doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert edit["schema"]["required"] == ["image", "prompt"]
    for path, ops in doc["paths"].items():
        for op in ops.values():
            body = op.get("requestBody")
            if body and "$ref" in body["content"].get("application/json", {}).get("schema", {}):
                ref = body["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in schemas, path


def test_the_lago_webhook_is_not_found_while_prepaid_credits_are_off(gateway: RunningGateway) -> None:
    """Documented always, taken only with prepaid credits on: otherwise a clear 404, never a 5xx."""
    r = httpx.post(
        gateway.url + openapi.LAGO_WEBHOOK[0],
        content=b'{"webhook_type": "wallet_transaction.created"}',
        headers={"X-Lago-Signature": "x", "X-Lago-Signature-Algorithm": "hmac", "X-Lago-Unique-Key": "k"},
    )
    assert r.status_code == 404
    assert "billing.prepaid" in r.json()["error"]["message"]
