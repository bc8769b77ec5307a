"""Guessing UI logins: a client that fails a few times gets 429 with Retry-After, however many
guesses it sends at once; other client addresses still log in; the client itself does again once
the window has passed. Over real HTTP, from two loopback addresses (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import e2e_config
from tests.support.gateway import RunningGateway, run_gateway, settings_for
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

WINDOW_S = 2.0  # short, so the test sees the window pass


@pytest.fixture
def gw(standin: StandIn) -> Iterator[RunningGateway]:
    settings = dataclasses.replace(settings_for(e2e_config(standin.base_url)), ui_login_window_s=WINDOW_S)
    with run_gateway(settings) as running:
        yield running


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def _logins(gw: RunningGateway, keys: list[str], local_address: str = "127.0.0.1") -> list[httpx.Response]:
    """All at once, from one browser (one login cookie and form token) at `local_address`."""
    transport = httpx.AsyncHTTPTransport(local_address=local_address)
    async with httpx.AsyncClient(base_url=gw.url, transport=transport, timeout=30) as browser:
        csrf = _csrf((await browser.get("/ui/login")).text)
        return list(await asyncio.gather(*(browser.post("/ui/login", data={"csrf": csrf, "key": k}) for k in keys)))


def test_sixty_concurrent_wrong_logins_are_mostly_429(gw: RunningGateway) -> None:
    replies = asyncio.run(_logins(gw, [f"sk-wrong-guess-{i:04d}" for i in range(60)]))
    statuses = [r.status_code for r in replies]
    assert statuses.count(401) <= 5 and statuses.count(429) >= 55, statuses
    limited = next(r for r in replies if r.status_code == 429)
    assert 1 <= int(limited.headers["retry-after"]) <= WINDOW_S + 1
    assert "Too many failed logins" in limited.text

    right = asyncio.run(_logins(gw, [gw.key]))[0]
    assert right.status_code == 429, "during the window even the right key is refused (a guess must not tell)"
    other = asyncio.run(_logins(gw, [gw.key], local_address="127.0.0.2"))[0]
    assert other.status_code == 303, "another address is not blocked by this one's failures"

    # once the oldest failure leaves the window the right key logs in (a refused try takes no slot,
    # so asking until then changes nothing; the window's arithmetic is tests/unit/test_login_throttle)
    logged_in = eventually(
        lambda: asyncio.run(_logins(gw, [gw.key]))[0].status_code == 303,
        WINDOW_S + 10,
        "a login after the window",
        interval=0.1,
    )
    assert logged_in


def test_right_logins_use_no_slots(gw: RunningGateway) -> None:
    assert {r.status_code for r in asyncio.run(_logins(gw, [gw.key] * 20))} == {303}
    statuses = [r.status_code for r in asyncio.run(_logins(gw, ["sk-wrong-guess-x"] * 6))]
    assert sorted(statuses) == [401] * 5 + [429]
