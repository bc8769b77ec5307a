"""The admin UI over plain HTTP: who gets in, what a forged or stale request gets, what a viewer
may do, and that no key is ever shown after the page that created it."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest

from meterway.config.secret import Secret
from tests.lago.standin import LagoStandIn
from tests.support.gateway import RunningGateway, run_gateway, settings_for
from tests.support.models import priced
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

PAGES = (
    "overview",
    "keys",
    "teams",
    "users",
    "customers",
    "customers/view?customer_id=cust-v",
    "usage",
    "logs",
    "billing",
    "models",
    "usage.csv",
)
POSTS = (
    "keys/new",
    "keys/action",
    "teams/save",
    "users/save",
    "customers/save",
    "billing/reprocess",
    "billing/ledger-reprocess",
    "logout",
)
UI_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    with StandIn() as up, tempfile.TemporaryDirectory() as scratch:
        config = {
            "model_list": [priced(up.base_url)],
            "general_settings": {"database_url": f"sqlite:///{scratch}/ui.db"},
        }
        settings = dataclasses.replace(settings_for(config), ui_username="admin", ui_password=Secret(UI_PASSWORD))
        with run_gateway(settings) as running:
            yield running


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


@contextmanager
def login(gw: RunningGateway, **credentials: str) -> Iterator[httpx.Client]:
    """A client holding a UI session, logged in through the login form."""
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        form = client.get("/ui/login")
        reply = client.post("/ui/login", data={"csrf": _csrf(form.text), **credentials})
        assert reply.status_code == 303, reply.text
        yield client


def _admin(gw: RunningGateway) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}"}, timeout=10)


def test_every_ui_page_without_a_session_redirects_to_login_and_ui_calls_get_401(gw: RunningGateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as anonymous:
        for page in PAGES:
            reply = anonymous.get(f"/ui/{page}")
            assert reply.status_code == 303, page
            assert reply.headers["location"].startswith("/ui/login?next=%2Fui%2F"), page
        assert anonymous.get("/ui/api/usage").status_code == 401
        assert anonymous.get("/ui/keys", headers={"HX-Request": "true"}).status_code == 401
        for action in POSTS:
            assert anonymous.post(f"/ui/{action}", data={"csrf": "x"}).status_code == 401, action
        forged = anonymous.get("/ui/overview", headers={"Cookie": "meterway_ui=WyJhIiwiYWRtaW4iXQ.bm90LXNpZ25lZA"})
        assert forged.status_code == 303
        assert anonymous.get("/ui/login").status_code == 200


def test_login_sets_an_httponly_lax_cookie_secure_behind_tls_and_logout_ends_it(gw: RunningGateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        form = client.get("/ui/login")
        reply = client.post(
            "/ui/login",
            data={"csrf": _csrf(form.text), "key": gw.key},
            headers={"X-Forwarded-Proto": "https"},
        )
        cookie = next(v for v in reply.headers.get_list("set-cookie") if v.startswith("meterway_ui="))
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
        assert gw.key not in cookie
    with login(gw, key=gw.key) as client:
        plain = client.cookies.jar
        assert any(c.name == "meterway_ui" and not c.secure for c in plain)
        page = client.get("/ui/overview")
        assert page.status_code == 200 and "Overview" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        client.post("/ui/logout", data={"csrf": _csrf(page.text)})
        assert client.get("/ui/overview").status_code == 303


def test_ui_username_and_password_log_in_and_wrong_ones_do_not(gw: RunningGateway) -> None:
    with login(gw, username="admin", password=UI_PASSWORD) as client:
        assert client.get("/ui/keys").status_code == 200
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        form = client.get("/ui/login")
        wrong = client.post("/ui/login", data={"csrf": _csrf(form.text), "username": "admin", "password": "guess"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert client.get("/ui/overview").status_code == 303


def test_a_login_form_without_its_csrf_token_is_refused(gw: RunningGateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        client.get("/ui/login")
        assert client.post("/ui/login", data={"key": gw.key}).status_code == 403
        assert client.get("/ui/overview").status_code == 303


def test_a_forged_form_without_the_csrf_token_is_refused_and_changes_nothing(gw: RunningGateway) -> None:
    with login(gw, key=gw.key) as client, _admin(gw) as api:
        before = api.get("/key/list").json()["total_count"]
        assert client.post("/ui/keys/new", data={"key_alias": "forged"}).status_code == 403
        assert client.post("/ui/keys/new", data={"key_alias": "forged", "csrf": "not-the-token"}).status_code == 403
        assert client.post("/ui/teams/save", data={"team_id": "forged"}).status_code == 403
        assert api.get("/key/list").json()["total_count"] == before
        assert api.get("/team/info", params={"team_id": "forged"}).status_code == 404
        # the same form with the session's token goes through (sent as a header, as htmx does)
        token = _csrf(client.get("/ui/keys").text)
        made = client.post("/ui/keys/new", data={"key_alias": "real"}, headers={"X-CSRF-Token": token})
        assert made.status_code == 200 and "shown only once" in made.text


def test_a_viewer_sees_everything_and_can_change_nothing(gw: RunningGateway) -> None:
    with _admin(gw) as api:
        api.post("/user/new", json={"user_id": "vera", "user_role": "proxy_admin_viewer"}).raise_for_status()
        key = api.post("/key/generate", json={"user_id": "vera", "key_alias": "vera-key"}).json()["key"]
        victim = api.post("/key/generate", json={"key_alias": "victim"}).json()
        api.post("/customer/new", json={"user_id": "cust-v"}).raise_for_status()
        with login(gw, key=key) as viewer:
            for page in PAGES:
                reply = viewer.get(f"/ui/{page}")
                assert reply.status_code == 200, (page, reply.text[:300])
            keys_page = viewer.get("/ui/keys").text
            assert "victim" in keys_page
            assert "Create a key" not in keys_page and 'value="block"' not in keys_page
            token = _csrf(keys_page)
            tries = {
                "keys/new": {"key_alias": "viewer-made"},
                "keys/action": {"action": "block", "token": victim["token_id"]},
                "teams/save": {"team_id": "viewer-team"},
                "users/save": {"user_id": "viewer-user"},
                "customers/save": {"customer_id": "cust-v", "existing": "1", "blocked": "on"},
                "customers/delete": {"customer_id": "cust-v"},
                "billing/reprocess": {},
            }
            for action, form in tries.items():
                reply = viewer.post(f"/ui/{action}", data={**form, "csrf": token})
                assert reply.status_code == 403, (action, reply.status_code)
        info = api.get("/key/info", params={"key": victim["token_id"]}).json()["info"]
        assert info["blocked"] is False
        assert api.get("/team/info", params={"team_id": "viewer-team"}).status_code == 404
        assert api.get("/customer/info", params={"end_user_id": "cust-v"}).json()["blocked"] is False
        aliases = [k["key_alias"] for k in api.get("/key/list", params={"return_full_object": "true"}).json()["keys"]]
        assert "viewer-made" not in aliases


def test_an_internal_user_sees_only_its_own_keys_and_no_admin_pages(gw: RunningGateway) -> None:
    with _admin(gw) as api:
        api.post("/user/new", json={"user_id": "ivan", "user_role": "internal_user", "auto_create_key": False})
        key = api.post("/key/generate", json={"user_id": "ivan", "key_alias": "ivan-key"}).json()["key"]
        api.post("/key/generate", json={"key_alias": "someone-else"}).raise_for_status()
        with login(gw, key=key) as user:
            page = user.get("/ui/keys").text
            assert "ivan-key" in page and "someone-else" not in page
            assert user.get("/ui/teams").status_code == 403
            assert user.get("/ui/billing").status_code == 403
            assert user.get("/ui/customers/view", params={"customer_id": "ivan"}).status_code == 403
            assert ">Teams<" not in page


def test_a_blocked_key_ends_its_ui_session(gw: RunningGateway) -> None:
    with _admin(gw) as api:
        api.post("/user/new", json={"user_id": "bea", "user_role": "internal_user", "auto_create_key": False})
        made = api.post("/key/generate", json={"user_id": "bea"}).json()
        with login(gw, key=made["key"]) as user:
            assert user.get("/ui/keys").status_code == 200
            api.post("/key/block", json={"key": made["token_id"]}).raise_for_status()
            assert user.get("/ui/keys").status_code == 303


def test_no_key_or_secret_appears_in_any_page_after_creation(gw: RunningGateway) -> None:
    with login(gw, key=gw.key) as client:
        token = _csrf(client.get("/ui/keys").text)
        created = client.post(
            "/ui/keys/new", data={"csrf": token, "key_alias": "once", "max_budget": "2", "metadata": '{"a": 1}'}
        )
        key = re.search(r'value="(sk-[^"]+)"', created.text)
        assert key is not None
        regenerated = client.post(
            "/ui/keys/action", data={"csrf": token, "action": "regenerate", "token": _digest(key)}
        )
        new_key = re.search(r'value="(sk-[^"]+)"', regenerated.text)
        assert new_key is not None and new_key.group(1) != key.group(1)
        secrets = (key.group(1), new_key.group(1), gw.key, UI_PASSWORD, "sk-up")
        for page in (*PAGES, "api/usage", "keys?q=once", "logout"):
            body = client.get(f"/ui/{page}").text
            for secret in secrets:
                assert secret not in body, (page, secret[:6])


def _digest(match: re.Match[str]) -> str:
    from meterway.auth.keys import digest

    return digest(match.group(1))


def test_static_files_carry_their_type_and_cache_headers_and_stay_in_their_folder(gw: RunningGateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as anonymous:
        css = anonymous.get("/ui/static/app.css")
        assert css.headers["content-type"] == "text/css; charset=utf-8"
        assert css.headers["cache-control"] == "public, max-age=3600"
        for script in ("app.js", "vendor/htmx.min.js", "vendor/chart.umd.min.js"):
            reply = anonymous.get(f"/ui/static/{script}")
            assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/javascript"), script
        assert anonymous.get("/ui/static/vendor/htmx.min.js").headers["cache-control"] == "public, max-age=604800"
        for outside in (
            "%2e%2e/session.py",
            "%2e%2e/templates/base.html",
            "vendor/htmx.min.js.integrity",
            "nothing.js",
        ):
            assert anonymous.get(f"/ui/static/{outside}").status_code == 404, outside


def test_model_requests_never_build_the_ui(gateway: RunningGateway, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert gateway.app.ui is None  # the UI is built on the first /ui request, never on the request path


def test_a_refused_change_shows_the_apis_message_on_an_error_page(gw: RunningGateway) -> None:
    with login(gw, key=gw.key) as client:
        token = _csrf(client.get("/ui/teams").text)
        assert client.post("/ui/teams/save", data={"csrf": token, "team_id": "twice"}).status_code == 303
        again = client.post("/ui/teams/save", data={"csrf": token, "team_id": "twice"})
        assert again.status_code == 400 and "Team &#39;twice&#39; already exists." in again.text
        bad = client.post("/ui/keys/new", data={"csrf": token, "metadata": "[1, 2]"})
        assert bad.status_code == 400 and "must be a JSON object" in bad.text


def test_the_reprocess_notice_of_many_missing_subscriptions_stays_short(lago: LagoStandIn) -> None:
    """Forty customers without a Lago subscription park forty reasons; reprocessing them from the
    UI says how many would park again, names the three most frequent and sends the operator to
    the billing status, in a redirect short enough for any proxy (not one reason each)."""
    with StandIn() as up:
        config = {
            "model_list": [priced(up.base_url)],
            "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id"},
        }
        with run_gateway(config) as billed, openai.OpenAI(base_url=billed.v1, api_key=billed.key, max_retries=0) as sdk:
            for i in range(40):
                sdk.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}], user=f"c{i}")
            parked = "SELECT count(*) FROM mw_billing_outbox WHERE status = 'parked'"
            path = billed.settings.database_url.reveal().removeprefix("sqlite:///")

            def count() -> int:
                with sqlite3.connect(path) as db:
                    return int(db.execute(parked).fetchone()[0])

            eventually(lambda: count() == 40, 15, "every export parked")
            with login(billed, key=billed.key) as client:
                token = _csrf(client.get("/ui/billing").text)
                reply = client.post("/ui/billing/reprocess", data={"csrf": token})
                assert reply.status_code == 303
                location = reply.headers["location"]
                notice = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["notice"][0]
    assert len(location) < 1_200, len(location)
    assert notice.startswith("40 parked event(s) queued again. 40 will park again, for 40 reason(s).")
    assert notice.count("no active Lago subscription") == 3 and notice.endswith("(37 more reasons) See billing status.")
