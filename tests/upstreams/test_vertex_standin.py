"""Self-tests of the Vertex AI stand-in: its token endpoint verifies what Google's does (the JWT's
signature, by the service account's key) and its models refuse what Vertex refuses (no token, a
token it did not issue, an expired one), so the gateway's tests prove something."""

from __future__ import annotations

import time
from collections.abc import Iterator

import google.auth.exceptions
import httpx
import pytest
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from .vertex import CLOUD_PLATFORM, VertexStandIn, unknown_private_key

CHAT = "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:generateContent"
BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.fixture(scope="module")
def vertex() -> Iterator[VertexStandIn]:
    with VertexStandIn() as s:
        yield s


def _token(info: dict[str, object]) -> str:
    credentials = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]
    credentials.refresh(Request())
    return str(credentials.token)


def test_google_auth_gets_a_token_for_a_known_key_and_is_refused_for_another(vertex: VertexStandIn) -> None:
    info = vertex.service_account("known@p.iam.gserviceaccount.com")
    token = _token(info)
    assert token in vertex.issued
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_grant"):
        _token({**info, "private_key": unknown_private_key()})


def test_models_refuse_a_missing_foreign_or_expired_token_in_googles_shape(vertex: VertexStandIn) -> None:
    for headers in ({}, {"Authorization": "Bearer ya29.made-up"}):
        r = httpx.post(vertex.url(CHAT), json=BODY, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    token = _token(vertex.service_account("brief@p.iam.gserviceaccount.com", lifetime=1))
    assert httpx.post(vertex.url(CHAT), json=BODY, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    time.sleep(1.2)
    assert httpx.post(vertex.url(CHAT), json=BODY, headers={"Authorization": f"Bearer {token}"}).status_code == 401
