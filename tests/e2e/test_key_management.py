"""Key management with LiteLLM's paths and payloads, and its effect on model requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import e2e_config
from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.standin import StandIn

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


def test_generate_for_an_unknown_user_creates_it_with_the_least_role(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    admin.post("/user/delete", json={"user_ids": ["user-123"]})
    body = {
        "user_id": "user-123",
        "key_alias": "user-123-app",
        "max_budget": 10,
        "models": ["demo"],
        "metadata": {"team": "research"},
    }
    made = admin.post("/key/generate", json=body)
    assert made.status_code == 200, made.text
    key = made.json()["key"]
    user = admin.get("/user/info", params={"user_id": "user-123"})
    assert user.status_code == 200, user.text
    info = user.json()
    assert [k["token"] for k in info["keys"]] == [made.json()["token"]]
    # the key's budget stays the key's; the user made for it may read its own keys, nothing more
    assert info["user_info"]["user_role"] == "internal_user_viewer" and info["user_info"]["max_budget"] is None
    assert _chat(gateway, key).choices[0].message.content
    own = {"Authorization": f"Bearer {key}"}
    assert httpx.get(gateway.url + "/key/info", params={"key": key}, headers=own).status_code == 200
    for path in ("/key/generate", "/key/delete", "/user/new"):
        denied = httpx.post(gateway.url + path, json={"keys": [key], "user_id": "user-123"}, headers=own)
        assert denied.status_code == 403, (path, denied.text)


def test_generate_for_an_existing_user_leaves_it_as_it_was(admin: httpx.Client) -> None:
    admin.post("/user/delete", json={"user_ids": ["kept-admin"]})
    admin.post("/user/new", json={"user_id": "kept-admin", "user_role": "proxy_admin_viewer", "max_budget": 5})
    assert admin.post("/key/generate", json={"user_id": "kept-admin"}).status_code == 200
    user = admin.get("/user/info", params={"user_id": "kept-admin"}).json()["user_info"]
    assert user["user_role"] == "proxy_admin_viewer" and user["max_budget"] == 5


def test_generate_with_an_unknown_team_creates_no_user(admin: httpx.Client) -> None:
    r = admin.post("/key/generate", json={"user_id": "user-no-team", "team_id": "team-absent"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "team_id" and error["code"] == "unknown_team" and "team-absent" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert admin.get("/user/info", params={"user_id": "user-no-team"}).status_code == 404


def test_key_info_and_list_carry_budget_reset_at(admin: httpx.Client) -> None:
    made = admin.post("/key/generate", json={"user_id": "resetter", "max_budget": 1, "budget_duration": "30d"})
    key = made.json()["key"]
    info = admin.get("/key/info", params={"key": key}).json()["info"]
    reset = datetime.fromisoformat(info["budget_reset_at"])
    assert timedelta(days=29, hours=23) < reset - datetime.now(UTC) <= timedelta(days=30)
    listed = admin.get("/key/list", params={"user_id": "resetter", "return_full_object": "true"}).json()
    assert [k["budget_reset_at"] for k in listed["keys"]] == [info["budget_reset_at"]]
    plain = admin.post("/key/generate", json={}).json()["key"]
    assert admin.get("/key/info", params={"key": plain}).json()["info"]["budget_reset_at"] is None


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


def _refused_keys_leave_no_user(admin: httpx.Client) -> None:
    existing = admin.post("/key/generate", json={}).json()["key"]
    for user_id in ("ghost", "ghost-team"):
        admin.post("/user/delete", json={"user_ids": [user_id]})
    duplicate = admin.post("/key/generate", json={"user_id": "ghost", "key": existing})
    assert duplicate.status_code == 400 and duplicate.json()["error"]["code"] == "duplicate_key", duplicate.text
    assert admin.get("/user/info", params={"user_id": "ghost"}).status_code == 404
    no_team = admin.post("/key/generate", json={"user_id": "ghost-team", "team_id": "team-absent"})
    assert no_team.status_code == 400
    assert admin.get("/user/info", params={"user_id": "ghost-team"}).status_code == 404
    # /key/update naming an unknown user makes it as /key/generate does; for no key, it makes none
    admin.post("/user/delete", json={"user_ids": ["moved-to", "nobody-key"]})
    missing = admin.post("/key/update", json={"key": "sk-" + "0" * 40, "user_id": "nobody-key"})
    assert missing.status_code == 404
    assert admin.get("/user/info", params={"user_id": "nobody-key"}).status_code == 404
    moved = admin.post("/key/update", json={"key": existing, "user_id": "moved-to"})
    assert moved.status_code == 200, moved.text
    user = admin.get("/user/info", params={"user_id": "moved-to"})
    assert user.status_code == 200, user.text
    assert user.json()["user_info"]["user_role"] == "internal_user_viewer"
    assert [k["token"] for k in user.json()["keys"]] == [moved.json()["token"]]


def test_a_refused_key_leaves_no_user_behind(admin: httpx.Client) -> None:
    _refused_keys_leave_no_user(admin)


def test_a_refused_key_leaves_no_user_behind_on_postgresql(standin: StandIn, pg_url: str) -> None:
    config = e2e_config(standin.base_url)
    config.setdefault("general_settings", {})["database_url"] = pg_url
    with (
        run_gateway(config) as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}"}, timeout=10) as admin,
    ):
        _refused_keys_leave_no_user(admin)
