"""The boundary's rules for an exception raised after the response started, which no end-to-end
test can provoke on purpose: a complete response stays as it was (the failure is logged), a
response cut short is raised on so the server drops the connection instead of ending it cleanly."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from meterway.api import errors
from meterway.api.asgi import Receive, Scope, Send
from meterway.errors import MethodNotAllowed
from meterway.providers.base import Api


def _scope(rid: bytes = b"unit-rid-1") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/x", "headers": [(b"x-request-id", rid)]}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _run(endpoint: errors.Endpoint, api: Api | None = None) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(errors.boundary(endpoint, api)(_scope(), _receive, send))
    return sent


def test_a_failure_after_a_complete_response_leaves_it_as_sent_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def done_then_fail(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        raise RuntimeError("after the end")

    sent = _run(done_then_fail)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert any("unit-rid-1" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_a_failure_mid_response_is_raised_so_the_server_cuts_the_connection() -> None:
    async def cut_short(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"par", "more_body": True})
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        _run(cut_short)


def test_method_not_allowed_names_the_allowed_methods_in_the_allow_header_and_the_apis_shape() -> None:
    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        raise MethodNotAllowed("GET", "/v1/messages", ("POST",))

    start, body = _run(refuse, Api.MESSAGES)
    assert start["status"] == 405
    headers = dict(start["headers"])
    assert headers[b"allow"] == b"POST" and headers[b"x-request-id"] == b"unit-rid-1"
    assert orjson.loads(body["body"])["error"]["type"] == "api_error"  # Anthropic's type for a 405
