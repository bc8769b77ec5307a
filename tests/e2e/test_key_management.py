"""Key management with LiteLLM's paths and payloads, and its effect on model requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import RunningGateway

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def _chat(gw: RunningGateway, key: str, model: str = "demo") -> Any:
    with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
        return client.chat.completions.create(model=model, messages=MESSAGES)


def test_generate_as_litellm_scripts_call_it_then_use_the_key(admin: httpx.Client, gateway: RunningGateway) -> None:
    r = admin.post(
        "/key/generate",
        json={
            "models": ["demo"],
            "max_budget": 100.0,
            "user_id": "customer-123",
            "metadata": {"project": "x"},
            "key_alias": "proj-x",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    key = body["key"]
    assert key.startswith("sk-") and len(key) >= 35 and body["expires"] is None
    assert body["models"] == ["demo"] and body["max_budget"] == 100.0 and body["user_id"] == "customer-123"
    assert body["metadata"] == {"project": "x"} and body["token"] != key and len(body["token"]) == 64
    assert _chat(gateway, key).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        _chat(gateway, key, model="gpt-test")


def test_generate_with_an_unknown_team_is_400_naming_team_id(admin: httpx.Client) -> None:
    r = admin.post("/key/generate", json={"models": ["demo"], "team_id": "team-456"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "team_id"


def test_duration_sets_expiry(admin: httpx.Client) -> None:
    body = admin.post("/key/generate", json={"duration": "20m"}).json()
    expires = datetime.fromisoformat(body["expires"])
    assert timedelta(minutes=19) < expires - datetime.now(UTC) <= timedelta(minutes=20)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"max_budget": "lots"}, "max_budget"),
        ({"duration": "soon"}, "duration"),
        ({"rpm_limit": -1}, "rpm_limit"),
        ({"models": "demo"}, "models"),
        ({"budget_duration": "1y"}, "budget_duration"),
    ],
)
def test_bad_fields_are_400_naming_them(admin: httpx.Client, payload: dict[str, Any], param: str) -> None:
    r = admin.post("/key/generate", json=payload)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_info_update_block_unblock_delete(admin: httpx.Client, gateway: RunningGateway) -> None:
    key = admin.post("/key/generate", json={"models": ["demo"]}).json()["key"]
    info = admin.get("/key/info", params={"key": key}).json()
    assert info["key"] == key and info["info"]["models"] == ["demo"] and "sk-" not in info["info"]["token"]

    assert admin.post("/key/update", json={"key": key, "models": ["gpt-test"]}).json()["models"] == ["gpt-test"]
    with pytest.raises(openai.PermissionDeniedError):  # seen at once on the replica that changed it
        _chat(gateway, key)

    admin.post("/key/update", json={"key": key, "models": []})
    assert admin.post("/key/block", json={"key": key}).json()["blocked"] is True
    with pytest.raises(openai.AuthenticationError):
        _chat(gateway, key)
    assert admin.post("/key/unblock", json={"key": key}).json()["blocked"] is False
    assert _chat(gateway, key).choices

    assert admin.post("/key/delete", json={"keys": [key]}).json() == {"deleted_keys": [key]}
    with pytest.raises(openai.AuthenticationError):
        _chat(gateway, key)
    assert admin.post("/key/delete", json={"keys": [key]}).status_code == 404
    assert admin.get("/key/info", params={"key": key}).status_code == 404


def test_list_pages_through_keys(admin: httpx.Client) -> None:
    made = [admin.post("/key/generate", json={"user_id": "lister"}).json() for _ in range(3)]
    page = admin.get("/key/list", params={"user_id": "lister", "size": 2}).json()
    assert page["total_count"] == 3 and page["total_pages"] == 2 and len(page["keys"]) == 2
    assert set(page["keys"]) <= {m["token"] for m in made}
    full = admin.get("/key/list", params={"user_id": "lister", "page": 2, "size": 2, "return_full_object": "true"})
    assert full.json()["keys"][0]["user_id"] == "lister"


def test_only_the_master_key_manages_keys(admin: httpx.Client, gateway: RunningGateway) -> None:
    key = admin.post("/key/generate", json={}).json()["key"]
    r = httpx.post(gateway.url + "/key/generate", json={}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert httpx.post(gateway.url + "/key/generate", json={}).status_code == 401


def test_regenerate_keeps_settings_honours_the_grace_period_and_is_idempotent(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    old = admin.post("/key/generate", json={"models": ["demo"], "key_alias": "rotating", "rpm_limit": 50}).json()
    first = admin.post("/key/regenerate", json={"key": old["key"], "grace_period": "1h"})
    assert first.status_code == 200, first.text
    new = first.json()
    assert new["key"] != old["key"] and new["models"] == ["demo"] and new["rpm_limit"] == 50
    assert new["key_alias"] == "rotating" and new["regenerated_from"] == old["token"]
    again = admin.post("/key/regenerate", json={"key": old["key"], "grace_period": "1h"}).json()
    assert again["key"] == new["key"], "a retried regeneration returns the same new key"
    assert _chat(gateway, new["key"]).choices and _chat(gateway, old["key"]).choices  # both, within the grace
    expires = datetime.fromisoformat(admin.get("/key/info", params={"key": old["key"]}).json()["info"]["expires"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)


def test_regenerate_without_grace_retires_the_old_key_at_once(admin: httpx.Client, gateway: RunningGateway) -> None:
    old = admin.post("/key/generate", json={}).json()
    new = admin.post("/key/regenerate", json={"key": old["key"]}).json()
    with pytest.raises(openai.AuthenticationError):
        _chat(gateway, old["key"])
    assert _chat(gateway, new["key"]).choices
    assert admin.post("/key/regenerate", json={"key": "sk-not-a-key-at-all-here"}).status_code == 404
