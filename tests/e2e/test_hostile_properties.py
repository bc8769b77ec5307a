"""Property tests of the edge checks over real HTTP, on SQLite and PostgreSQL: whatever extreme
strings (NUL, lone surrogates, control characters, emoji, huge) and numbers (negative, huge,
NaN and infinities, 1e308, 30-digit integers) a client sends to the chat endpoint or to
/key/generate, the answer is never a 5xx. It is either accepted, and then stored and listable as
sent, or a 4xx in OpenAI's format that names the field (or says what is wrong with the body)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.e2e.test_edge_validation import demo_config
from tests.e2e.test_errors import error_of
from tests.support.gateway import RunningGateway, run_gateway

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

STRINGS = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec=None, categories=["Cc", "Cs", "So", "Zl", "Mn"]), max_size=12),
    st.text(alphabet="x\u00e9\U0001f600", min_size=250, max_size=260),  # around the 255-character bound
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "x\udfffy", "\U0001f600" * 300, "\u202e\r\n", "x" * 100_000]),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=10**29, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e308, -1e308, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 0.5]),
)
WORDS = st.text(alphabet="abcxyz-_ 0189\u00e9\U0001f600", max_size=20)
COUNTS = st.integers(min_value=1, max_value=100)


def mostly(usual: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The usual value three times in four: so that, over many fields, some requests pass."""
    return st.one_of(usual, usual, usual, hostile)


# Where a body is wrong as a whole (not one field): not JSON, not UTF-8, a lone surrogate, too deep.
BODY_CODES = {"invalid_json", "invalid_encoding", "nested_too_deep", None}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hostile(request: pytest.FixtureRequest) -> Iterator[RunningGateway]:
    config = demo_config()
    config["general_settings"]["max_request_size_mb"] = 1
    if request.param == "postgresql":
        config["general_settings"]["database_url"] = request.getfixturevalue("module_pg_url")
    with run_gateway(config) as gw:
        yield gw


def encode(body: dict[str, Any], raw_surrogates: bool) -> bytes:
    """As Python's json writes it (NaN and Infinity included, which JSON has not), with surrogates
    as `\\ud800` escapes or, when `raw_surrogates`, as the bytes no UTF-8 decoder accepts."""
    if raw_surrogates:
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(body).encode()


def refused(r: httpx.Response, fields: set[str]) -> None:
    """A 4xx in OpenAI's format that names one of `fields`, or says what is wrong with the body."""
    assert 400 <= r.status_code < 500, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error", err
    assert err["param"] in fields or (err["param"] is None and err["code"] in BODY_CODES), err
    event(f"refused: {err['param'] or err['code'] or 'not JSON'}")


def is_text(value: object) -> bool:
    """Whether a string can travel as UTF-8 (no lone surrogates)."""
    try:
        str(value).encode()
    except UnicodeEncodeError:
        return False
    return True


@SETTINGS
@given(
    user=mostly(WORDS, STRINGS),
    content=mostly(WORDS, STRINGS),
    tag=mostly(WORDS, STRINGS),
    key=mostly(WORDS, STRINGS),
    number=mostly(COUNTS, NUMBERS),
    max_tokens=mostly(COUNTS, NUMBERS),
    raw_surrogates=st.booleans(),
)
def test_chat_with_extreme_values_is_served_and_metered_or_refused_naming_the_field(
    hostile: RunningGateway,
    user: str,
    content: str,
    tag: str,
    key: str,
    number: float,
    max_tokens: float,
    raw_surrogates: bool,
) -> None:
    rid = "prop-" + uuid.uuid4().hex
    body = {
        "model": "demo",
        "messages": [{"role": "user", "content": content}],
        "user": user,
        "tags": [tag],
        "metadata": {key: number},
        "max_tokens": max_tokens,
    }
    headers = {"Authorization": f"Bearer {hostile.key}", "x-request-id": rid, "content-type": "application/json"}
    with httpx.Client(base_url=hostile.url, headers=headers, timeout=30) as http:
        r = http.post("/v1/chat/completions", content=encode(body, raw_surrogates))
        if r.status_code != 200:
            refused(r, {"model", "messages", "user", "tags", "metadata", "max_tokens"})
            return
        event("accepted")
        logs = http.get("/spend/logs", params={"request_id": rid})
        assert logs.status_code == 200, logs.text
        (row,) = logs.json()["data"]
        # an empty `user` names nobody (the customer is then looked for where LiteLLM looks next)
        assert row["end_user"] == (user or None) and row["request_tags"] == [tag] and row["http_status"] == 200
        assert list(row["metadata"]) == [key]


@SETTINGS
@given(
    alias=mostly(WORDS, STRINGS),
    meta_key=mostly(WORDS, STRINGS),
    meta_value=mostly(COUNTS, NUMBERS),
    budget=mostly(COUNTS, NUMBERS),
    rpm=mostly(COUNTS, NUMBERS),
    days=mostly(COUNTS, NUMBERS),
    raw_surrogates=st.booleans(),
)
def test_key_generate_with_extreme_values_stores_a_listable_key_or_refuses_naming_the_field(
    hostile: RunningGateway,
    alias: str,
    meta_key: str,
    meta_value: float,
    budget: float,
    rpm: float,
    days: float,
    raw_surrogates: bool,
) -> None:
    duration = f"{int(days)}d" if isinstance(days, int) or (days == days and abs(days) < 1e30) else str(days)
    body = {
        "key_alias": alias,
        "metadata": {meta_key: meta_value},
        "max_budget": budget,
        "rpm_limit": rpm,
        "duration": duration,
    }
    headers = {"Authorization": f"Bearer {hostile.key}", "content-type": "application/json"}
    with httpx.Client(base_url=hostile.url, headers=headers, timeout=30) as http:
        r = http.post("/key/generate", content=encode(body, raw_surrogates))
        if r.status_code != 200:
            refused(r, set(body))
            return
        event("accepted")
        made = r.json()
        assert made["key_alias"] == alias and made["metadata"] == {meta_key: meta_value}
        info = http.get("/key/info", params={"key": made["token"]})
        assert info.status_code == 200 and info.json()["info"]["key_alias"] == alias
        listed = http.get("/key/list", params={"return_full_object": "true", "size": 100})
        assert listed.status_code == 200, listed.text
        assert http.post("/key/delete", json={"keys": [made["token"]]}).status_code == 200  # keeps the list short
