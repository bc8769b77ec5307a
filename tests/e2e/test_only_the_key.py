"""Only the key is the key: a key's digest (shown by `/key/list`, `/key/info`, `/spend/logs` and the
ledger) and credentials that are almost right are refused on every route that takes a key, while a
digest still names a key in the management calls that take one, for a caller allowed to manage it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import httpx
import pytest

from meterway.app import _MANAGEMENT
from tests.e2e.conftest import e2e_config
from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.standin import StandIn

MODEL_CALLS = (
    ("POST", "/v1/chat/completions", {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/chat/completions", {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/completions", {"model": "gpt-test", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "gpt-test", "input": "hi"}),
    ("GET", "/v1/models", None),
)
MESSAGES = {"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gw(standin: StandIn) -> Iterator[RunningGateway]:
    with run_gateway(e2e_config(standin.base_url)) as running:
        yield running


@pytest.fixture(scope="module")
def admin_key(gw: RunningGateway) -> tuple[str, str]:
    """A proxy admin's key and its digest, as `/key/list` shows it to any admin viewer."""
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}"}, timeout=10) as master:
        key = master.post("/user/new", json={"user_id": "root-digest", "user_role": "proxy_admin"}).json()["key"]
        listed = master.get("/key/list", params={"user_id": "root-digest"}).json()["keys"]
    assert listed == [hashlib.sha256(key.encode()).hexdigest()]
    return key, listed[0]


def _ui_login(gw: RunningGateway, secret: str) -> int:
    with httpx.Client(base_url=gw.url, timeout=10) as browser:
        form = browser.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        return browser.post("/ui/login", data={"csrf": csrf.group(1), "key": secret}).status_code


def _refused_everywhere(gw: RunningGateway, authorization: str) -> None:
    """401 on every model route and every route of the management table the gateway serves."""
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for method, path, body in MODEL_CALLS:
            r = c.request(method, path, json=body, headers={"Authorization": authorization})
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
        token = authorization.removeprefix("Bearer ")
        r = c.post("/v1/messages", json=MESSAGES, headers={"x-api-key": token, "anthropic-version": "2023-06-01"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
        assert _MANAGEMENT, "the management route table is empty"
        for method, path in sorted(_MANAGEMENT):
            r = c.request(method, path, headers={"Authorization": authorization})
            assert r.status_code == 401, (method, path, r.status_code, r.text)
        r = c.get("/customer/anyone/invoice-preview", headers={"Authorization": authorization})
        assert r.status_code == 401, r.text


def test_a_digest_from_key_list_authenticates_nowhere(gw: RunningGateway, admin_key: tuple[str, str]) -> None:
    key, key_digest = admin_key
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as real:
        assert real.get("/key/list").status_code == 200, "the key itself is an admin's"
    _refused_everywhere(gw, f"Bearer {key_digest}")
    assert _ui_login(gw, key_digest) == 401
    assert _ui_login(gw, key) == 303, "the key itself logs in"


def test_almost_right_credentials_are_refused(gw: RunningGateway, admin_key: tuple[str, str]) -> None:
    key, key_digest = admin_key
    changed = key[:-1] + ("A" if key[-1] != "A" else "B")
    master_digest = hashlib.sha256(gw.key.encode()).hexdigest()
    for authorization in (
        f"Bearer {changed}",
        f"Bearer {key[:10]} {key[10:]}",  # whitespace inside the key
        f"Bearer {key}\tx",
        f"Bearer {key_digest.upper()}",
        f"Bearer Bearer {key}",
        f"Bearer {master_digest}",
        f"Bearer {key[:-1]}",
    ):
        _refused_everywhere(gw, authorization)
    assert _ui_login(gw, master_digest) == 401
    assert _ui_login(gw, changed) == 401


def test_a_digest_still_names_a_key_in_management_calls(gw: RunningGateway, admin_key: tuple[str, str]) -> None:
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}"}, timeout=10) as master:
        made = master.post("/key/generate", json={"key_alias": "named-by-digest"}).json()
        token = made["token"]
        info = master.get("/key/info", params={"key": token})
        assert info.status_code == 200 and info.json()["info"]["key_alias"] == "named-by-digest"
        assert master.post("/key/update", json={"key": token, "rpm_limit": 7}).json()["rpm_limit"] == 7
        assert master.post("/key/block", json={"key": token}).json()["blocked"] is True
        assert master.post("/key/unblock", json={"key": token}).json()["blocked"] is False
        assert master.post("/key/delete", json={"keys": [token]}).status_code == 200
        assert master.get("/key/info", params={"key": token}).status_code == 404


def test_a_digest_names_only_keys_its_caller_may_manage(gw: RunningGateway) -> None:
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}"}, timeout=10) as master:
        mine = master.post("/user/new", json={"user_id": "ivy-digest", "user_role": "internal_user"}).json()["key"]
        other = master.post("/key/generate", json={"user_id": "someone-else-digest"}).json()
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {mine}"}, timeout=10) as ivy:
        own = ivy.post("/key/generate", json={}).json()
        assert ivy.get("/key/info", params={"key": own["token"]}).status_code == 200
        assert ivy.get("/key/info", params={"key": other["token"]}).status_code == 403
        assert ivy.post("/key/delete", json={"keys": [other["token"]]}).status_code == 403
        assert ivy.post("/key/update", json={"key": other["token"], "rpm_limit": 1}).status_code == 403
        assert ivy.post("/key/delete", json={"keys": [own["token"]]}).status_code == 200
