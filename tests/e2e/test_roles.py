"""Who may call the management API, with LiteLLM's role names."""

from __future__ import annotations

import httpx

from tests.support.gateway import RunningGateway


def _as(gw: RunningGateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def _user(admin: httpx.Client, user_id: str, role: str) -> str:
    admin.post("/user/delete", json={"user_ids": [user_id]})
    r = admin.post("/user/new", json={"user_id": user_id, "user_role": role})
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


def test_internal_user_manages_only_its_own_keys(admin: httpx.Client, gateway: RunningGateway) -> None:
    ann = _user(admin, "ann-roles", "internal_user")
    other = admin.post("/key/generate", json={"user_id": "someone-else"}).json()
    with _as(gateway, ann) as c:
        made = c.post("/key/generate", json={"models": ["demo"]})
        assert made.status_code == 200 and made.json()["user_id"] == "ann-roles"
        assert c.post("/key/generate", json={"user_id": "someone-else"}).status_code == 403
        listed = c.get("/key/list", params={"user_id": "someone-else"}).json()
        assert other["token"] not in listed["keys"] and made.json()["token"] in listed["keys"]
        assert c.get("/key/info", params={"key": other["key"]}).status_code == 403
        assert c.post("/key/delete", json={"keys": [other["key"]]}).status_code == 403
        assert c.post("/key/delete", json={"keys": [made.json()["key"]]}).status_code == 200
        for method, path in (("POST", "/team/new"), ("POST", "/key/block"), ("GET", "/user/list")):
            assert c.request(method, path, json={}).status_code == 403


def test_an_internal_users_new_key_reaches_no_further_than_its_own(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    admin.post("/user/delete", json={"user_ids": ["lim-roles"]})
    key = admin.post(
        "/user/new", json={"user_id": "lim-roles", "user_role": "internal_user", "models": ["demo"]}
    ).json()["key"]
    admin.post("/team/delete", json={"team_ids": ["team-lim"]})
    admin.post("/team/new", json={"team_id": "team-lim"})
    with _as(gateway, key) as c:
        assert c.post("/key/generate", json={"models": ["gpt-test"]}).status_code == 403
        made = c.post("/key/generate", json={})
        assert made.status_code == 200 and made.json()["models"] == ["demo"], "inherits its maker's models"
        assert c.post("/key/generate", json={"team_id": "team-lim"}).status_code == 403
    admin.post("/team/member_add", json={"team_id": "team-lim", "member": {"user_id": "lim-roles"}})
    with _as(gateway, key) as c:
        assert c.post("/key/generate", json={"team_id": "team-lim"}).status_code == 200


def test_viewers_read_but_do_not_write(admin: httpx.Client, gateway: RunningGateway) -> None:
    viewer = _user(admin, "vic-roles", "proxy_admin_viewer")
    with _as(gateway, viewer) as c:
        assert c.get("/team/list").status_code == 200 and c.get("/key/list").status_code == 200
        assert c.post("/key/generate", json={}).status_code == 403
    reader = _user(admin, "rita-roles", "internal_user_viewer")
    with _as(gateway, reader) as c:
        assert c.get("/key/list").status_code == 200
        assert c.post("/key/generate", json={}).status_code == 403


def test_a_proxy_admin_users_key_may_do_everything(admin: httpx.Client, gateway: RunningGateway) -> None:
    boss = _user(admin, "boss-roles", "proxy_admin")
    with _as(gateway, boss) as c:
        assert c.post("/team/new", json={"team_alias": "made-by-boss"}).status_code == 200
        assert c.post("/key/generate", json={"user_id": "anyone"}).status_code == 200
