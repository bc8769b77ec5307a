"""Users, teams and customers with LiteLLM's payloads; keys that belong to them."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.gateway import RunningGateway


def test_team_then_a_key_for_it_as_in_litellm_examples(admin: httpx.Client, gateway: RunningGateway) -> None:
    team = admin.post(
        "/team/new",
        json={
            "team_id": "team-456",
            "team_alias": "search",
            "max_budget": 600,
            "rpm_limit": 600,
            "members_with_roles": [{"role": "admin", "user_id": "ann"}],
        },
    )
    assert team.status_code == 200, team.text
    assert team.json()["members_with_roles"] == [{"user_id": "ann", "role": "admin"}]
    r = admin.post(
        "/key/generate",
        json={
            "models": ["demo"],
            "max_budget": 100.0,
            "user_id": "customer-123",
            "team_id": "team-456",
            "metadata": {"project": "x"},
        },
    )
    assert r.status_code == 200, r.text
    key = r.json()["key"]
    with openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0) as client:
        assert client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}]).choices
    info = admin.get("/team/info", params={"team_id": "team-456"}).json()
    assert info["team_info"]["team_alias"] == "search" and info["team_info"]["max_budget"] == 600.0
    assert [k["token"] for k in info["keys"]] == [r.json()["token"]]
    admin.post("/team/member_add", json={"team_id": "team-456", "member": {"role": "user", "user_id": "bob"}})
    after = admin.post("/team/member_delete", json={"team_id": "team-456", "user_id": "ann"}).json()
    assert after["members_with_roles"] == [{"user_id": "bob", "role": "user"}]
    assert admin.post("/team/update", json={"team_id": "team-456", "rpm_limit": 60}).json()["rpm_limit"] == 60
    assert "team-456" in [t["team_id"] for t in admin.get("/team/list").json()]
    assert admin.post("/team/delete", json={"team_ids": ["team-456"]}).json() == {"deleted_teams": ["team-456"]}
    assert admin.get("/team/info", params={"team_id": "team-456"}).status_code == 404
    # the key outlives its team (team_id cleared), as a key of nobody's team
    assert admin.get("/key/info", params={"key": key}).json()["info"]["team_id"] is None


def test_user_new_returns_a_key_of_its_own(admin: httpx.Client, gateway: RunningGateway) -> None:
    r = admin.post(
        "/user/new",
        json={"user_id": "krish", "user_email": "k@example.com", "user_role": "internal_user", "models": ["demo"]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_role"] == "internal_user" and body["key"].startswith("sk-")
    info = admin.get("/user/info", params={"user_id": "krish"}).json()
    assert info["user_info"]["user_email"] == "k@example.com" and len(info["keys"]) == 1
    assert admin.post("/user/new", json={"user_id": "krish"}).status_code == 400
    bad = admin.post("/user/new", json={"user_role": "superuser"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "user_role"
    assert admin.post("/user/update", json={"user_id": "krish", "tpm_limit": 1000}).json()["tpm_limit"] == 1000
    assert "krish" in [u["user_id"] for u in admin.get("/user/list").json()["users"]]
    assert admin.post("/user/delete", json={"user_ids": ["krish"]}).status_code == 200
    assert admin.get("/user/info", params={"user_id": "krish"}).status_code == 404


@pytest.mark.parametrize("prefix", ["/customer", "/end_user"])
def test_customers_under_both_names(admin: httpx.Client, prefix: str) -> None:
    cid = f"cust{prefix.replace('/', '-')}"
    r = admin.post(
        f"{prefix}/new",
        json={"user_id": cid, "alias": "Acme", "max_budget": 100.0, "billing_external_customer_id": "lago-acme"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == cid and r.json()["max_budget"] == 100.0
    assert admin.get(f"{prefix}/info", params={"end_user_id": cid}).json()["alias"] == "Acme"
    assert admin.post(f"{prefix}/update", json={"user_id": cid, "blocked": True}).json()["blocked"] is True
    assert cid in [c["user_id"] for c in admin.get(f"{prefix}/list").json()]
    assert admin.post(f"{prefix}/delete", json={"user_ids": [cid]}).status_code == 200
    assert admin.get(f"{prefix}/info", params={"end_user_id": cid}).status_code == 404
    assert admin.post(f"{prefix}/new", json={"alias": "x"}).json()["error"]["param"] == "user_id"
