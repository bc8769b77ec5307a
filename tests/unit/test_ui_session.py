"""UI session cookies: what a signature, an expiry and a CSRF token refuse."""

from __future__ import annotations

import pytest

from meterway.config.secret import Secret
from meterway.ui.session import CsrfFailed, SessionInvalid, Sessions


def test_a_session_reads_back_until_it_expires() -> None:
    sessions = Sessions(Secret("sk-master-0123456789"), lifetime_s=60)
    session, cookie = sessions.issue("key", "ab" * 32, "ops")
    assert sessions.read(cookie) == session
    expired = Sessions(Secret("sk-master-0123456789"), lifetime_s=-1)
    _, old = expired.issue("admin", "", "master key")
    with pytest.raises(SessionInvalid, match="expired"):
        sessions.read(old)


def test_a_changed_payload_or_another_gateways_secret_is_refused() -> None:
    sessions = Sessions(Secret("sk-master-0123456789"), lifetime_s=60)
    _, cookie = sessions.issue("key", "ab" * 32, "ops")
    body, _, signature = cookie.partition(".")
    _, admin = sessions.issue("admin", "", "x")
    for forged in (admin.split(".")[0] + "." + signature, body + "." + signature[:-2] + "AA", body, "", "a.b.c"):
        with pytest.raises(SessionInvalid):
            sessions.read(forged)
    with pytest.raises(SessionInvalid):
        Sessions(Secret("another-master-key-42"), lifetime_s=60).read(cookie)


def test_the_csrf_token_is_bound_to_its_session() -> None:
    sessions = Sessions(None, lifetime_s=60)  # no master key: a random secret, per process
    one, _ = sessions.issue("admin", "", "a")
    two, _ = sessions.issue("admin", "", "a")
    sessions.check_csrf(one, sessions.csrf(one))
    for wrong in (sessions.csrf(two), "", None):
        with pytest.raises(CsrfFailed):
            sessions.check_csrf(one, wrong)
