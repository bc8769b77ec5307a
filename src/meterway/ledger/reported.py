"""Usage another proxy reports, checked and turned into ledger rows.

Teams that keep a LiteLLM proxy for a while (or a home-made one) post each request's usage to
meterway, which bills it through the same ledger and Lago outbox as its own requests. Two payloads
are understood, told apart per event, so one batch may mix them:

- a usage event, the shape home-made usage webhooks send (`event_type: "usage"`, `request_id`,
  `customer_id`, `model`, `tokens_input`, `tokens_output`, `cost_usd`, `api_key_hash`, ...);
- LiteLLM's `StandardLoggingPayload`, which its generic API logger (`callbacks: ["generic_api"]`)
  posts, one object or a list (`id`, `call_type`, `prompt_tokens`, `completion_tokens`,
  `response_cost`, `startTime`, `endTime`, `end_user`, `metadata.user_api_key_hash`, ...).

Everything here is pure: no I/O, so the checks and the mapping are tested offline and the HTTP
handler (`api.webhooks`) only reads the body and writes the rows. Every refusal is an
`Unprocessable` naming the field (with its index within a batch), because the sender is a program
whose operator must be able to fix it from the message alone.

A reported request's ledger `uid` is derived from its request id, so the row, and the Lago
transaction id made from it, are the same however often the request is reported.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal, NoReturn

from meterway import bounds
from meterway.config.durations import parse_duration
from meterway.config.settings import Deployment, Prices
from meterway.errors import BadRequest, Unprocessable
from meterway.ledger import Entry, pricing
from meterway.ledger.prices import PriceTable, is_priced
from meterway.ledger.row import REPORTED, LedgerRow
from meterway.ledger.usage_checks import INVALID
from meterway.limits import Budget, SpendTarget
from meterway.providers.base import Usage

Format = Literal["usage_event", "litellm"]
Budgeted = tuple[str | None, datetime | None]  # an entity's budget_duration and budget_reset_at

MAX_BATCH = 1_000  # events in one request: a batch is one transaction, kept short
SOURCE = REPORTED  # the ledger's `source` of these rows
UID_PREFIX = "wh-"  # gateway uids are 32 hex digits, so the two never meet

# the ledger's column widths: a longer value is refused here, not cut or failed on by the database
_ID = 255
_KEY_ID = 64
_REQUEST_ID = 128
_MS_EPOCH = 100_000_000_000  # a time above this (year 5138 in seconds) was sent in milliseconds
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
_FUTURE_S = 86_400.0  # clocks drift; a day ahead is the most a sender's clock may be

# LiteLLM's call types -> the ledger's endpoint names (others are kept as LiteLLM names them)
_ENDPOINTS = {
    "completion": "chat",
    "acompletion": "chat",
    "text_completion": "completions",
    "atext_completion": "completions",
    "embedding": "embeddings",
    "aembedding": "embeddings",
    "anthropic_messages": "messages",
    "responses": "responses",
    "aresponses": "responses",
    "rerank": "rerank",
    "arerank": "rerank",
    "moderation": "moderations",
    "amoderation": "moderations",
    "image_generation": "images",
    "aimage_generation": "images",
    "image_edit": "image_edits",
    "aimage_edit": "image_edits",
    "transcription": "transcriptions",
    "atranscription": "transcriptions",
    "speech": "speech",
    "aspeech": "speech",
}
# LiteLLM's call types whose payload (or stored spend log) carries units (`read_units`)
UNIT_CALL_TYPES = tuple(
    sorted(c for c, e in _ENDPOINTS.items() if e in ("rerank", "images", "image_edits", "transcriptions", "speech"))
)
# The most of each unit one reported request is believed to have used: a figure beyond it (or one
# that is no whole, non-negative number) is no count of one request's use, so it is not recorded
# and the row is flagged `usage_invalid`, as the gateway does with an upstream's garbled usage.
MOST_QUERIES = 1_000_000  # rerank search units (Cohere bills one per 100 documents)
MOST_IMAGES = 1_000  # OpenAI allows 10 a request
MOST_AUDIO_MS = 24 * 3_600_000  # a day of audio (OpenAI takes 25 MB files: minutes to hours)
MOST_CHARACTERS = 1_000_000  # speech input (OpenAI takes 4,096)
MOST_PIXELS = 100_000_000  # one image's asked-for size (10,000 x 10,000)
# what LiteLLM logs instead of the input when `turn_off_message_logging` is set: no speech input
_REDACTED = "redacted by litellm"
_HTTP_STATUS = re.compile(r"[1-5]\d\d")


@dataclass(frozen=True, slots=True)
class Reported:
    """One reported request, checked, in the ledger's terms."""

    format: Format
    request_id: str
    started_at: float  # epoch seconds
    ended_at: float
    ttft_ms: float | None
    endpoint: str
    customer_id: str | None
    user_id: str | None
    team_id: str | None
    key_id: str | None  # the key's digest, as the reporting proxy knows it
    key_alias: str | None
    model_group: str
    upstream_model: str | None
    deployment_id: str | None
    stream: bool
    usage: Usage
    cost_usd: Decimal | None  # None: not reported, priced here
    status: str  # success or upstream_error
    http_status: int
    error_type: str | None
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    flags: str | None = None  # what was wrong with the report (`usage_invalid`: a unit not believed)

    @property
    def uid(self) -> str:
        return uid_for(self.request_id)


def uid_for(request_id: str) -> str:
    """The ledger uid (and so the Lago transaction id) of a reported request: the same for every
    report of it, which is what makes a resend a duplicate rather than a second charge. 116 bits
    of SHA-256, prefixed so that it can never equal a gateway row's random uid."""
    return UID_PREFIX + hashlib.sha256(request_id.encode()).hexdigest()[: 32 - len(UID_PREFIX)]


def endpoint_of(call_type: str) -> str:
    """The ledger's endpoint for one of LiteLLM's call types (others kept as LiteLLM names them)."""
    return _ENDPOINTS.get(call_type, call_type[:16] or "unknown")


def events_of(doc: Any) -> tuple[list[Any], bool]:
    """The events a decoded body carries, and whether it was one event alone: an object is one
    event, `{"events": [...]}` and a bare list (LiteLLM's `json_array`) are a batch."""
    if isinstance(doc, list):
        return doc, False
    if isinstance(doc, dict):
        if "events" in doc:
            events = doc["events"]
            if not isinstance(events, list):
                raise Unprocessable("'events' must be a list of events.", param="events")
            return events, False
        return [doc], True
    raise BadRequest('The body must be a JSON object (one event), a list of events, or {"events": [...]}.')


def parse_all(events: Sequence[Any], now: float) -> list[Reported]:
    """Every event checked, or `Unprocessable` naming the first bad one: a batch is stored whole
    or not at all, so the sender can fix and resend it as it is (accepted events of a resent
    batch come back as duplicates)."""
    if len(events) > MAX_BATCH:
        raise Unprocessable(
            f"A batch holds at most {MAX_BATCH} events; this one has {len(events)}. Send it in parts.",
            param="events",
        )
    out: list[Reported] = []
    failed: list[Unprocessable] = []
    single = len(events) == 1
    for i, raw in enumerate(events):
        where = "" if single else f"events[{i}]."
        try:
            if not isinstance(raw, dict):
                raise Unprocessable(
                    f"{where.rstrip('.') or 'The event'} must be a JSON object.", param=where[:-1] or None
                )
            out.append(parse_event(raw, now, where))
        except Unprocessable as e:
            failed.append(e)
    if failed:
        first = failed[0]
        more = f" ({len(failed)} of {len(events)} events are invalid; nothing was stored)" if not single else ""
        raise Unprocessable(first.message + more, param=first.param)
    return out


def detect(raw: Mapping[str, Any], where: str = "") -> Format:
    """Which payload an event is, from fields only that payload has."""
    if "tokens_input" in raw or "tokens_output" in raw or "event_type" in raw or "request_id" in raw:
        return "usage_event"
    if "call_type" in raw or "startTime" in raw or "response_cost" in raw or ("id" in raw and "prompt_tokens" in raw):
        return "litellm"
    raise Unprocessable(
        f"{where[:-1] or 'The event'} is neither a usage event (event_type, request_id, tokens_input, tokens_output, ...) nor LiteLLM's "
        "StandardLoggingPayload (id, call_type, prompt_tokens, completion_tokens, ...).",
        param=where[:-1] or None,
    )


def parse_event(raw: Mapping[str, Any], now: float, where: str = "") -> Reported:
    fields = _Fields(raw, where, now)
    if detect(raw, where) == "usage_event":
        return _usage_event(fields)
    return _litellm(fields)


def _usage_event(f: _Fields) -> Reported:
    event_type = f.text("event_type", limit=32)
    if event_type is not None and event_type != "usage":
        f.fail("event_type", f"must be 'usage'; got {event_type!r}")
    request_id = f.need("request_id", limit=_REQUEST_ID)
    model = f.need("model")
    prompt = f.count("tokens_input", required=True)
    completion = f.count("tokens_output", required=True)
    total = f.total(prompt, completion, "tokens_input + tokens_output")
    ended = f.time("timestamp") or f.now
    latency = f.number("latency_ms")
    meta = dict(f.mapping("metadata") or {})
    status = f.text("status", limit=32) or "success"
    if status not in ("success", "error", "failure"):
        f.fail("status", f"must be 'success', 'error' or 'failure'; got {status!r}")
    provider = f.text("provider")
    inner = _Fields(meta, f.where + "metadata.", f.now)
    return Reported(
        format="usage_event",
        request_id=request_id,
        started_at=ended - float(latency or 0) / 1000,
        ended_at=ended,
        ttft_ms=None,
        endpoint="unknown",
        customer_id=f.text("customer_id"),
        user_id=f.text("user_id") or inner.text("user_id"),
        team_id=f.text("team_id") or inner.text("team_id"),
        key_id=f.text("api_key_hash", limit=_KEY_ID),
        key_alias=f.text("api_key_alias"),
        model_group=model,
        upstream_model=model,
        deployment_id=None,
        stream=False,
        usage=Usage(prompt, completion, total),
        cost_usd=f.money("cost_usd"),
        status="success" if status == "success" else "upstream_error",
        http_status=200 if status == "success" else 502,
        error_type=None,
        tags=f.tags("tags"),
        metadata={**meta, "webhook": _present(format="usage_event", provider=provider)},
    )


def _litellm(f: _Fields) -> Reported:
    request_id = f.need("id", limit=_REQUEST_ID)
    model = f.need("model")
    prompt = f.count("prompt_tokens", required=True)
    completion = f.count("completion_tokens", required=True)
    total = f.total(prompt, completion, "prompt_tokens + completion_tokens")
    ended = f.time("endTime") or f.now
    started = f.time("startTime") or ended
    if started > ended:
        f.fail("startTime", "must not be after endTime")
    first = f.time("completionStartTime")
    meta = _Fields(f.mapping("metadata") or {}, f.where + "metadata.", f.now)
    status = f.text("status", limit=32) or "success"
    if status not in ("success", "failure"):
        f.fail("status", f"must be 'success' or 'failure'; got {status!r}")
    call_type = f.text("call_type") or ""
    error = f.mapping("error_information") or {}
    code = str(error.get("error_code") or "")
    # LiteLLM reports 0 with debug information when it could not price a call: price it here instead
    unpriced = bool(f.mapping("response_cost_failure_debug_info"))
    cost = None if unpriced else f.money("response_cost")
    hidden = f.mapping("hidden_params") or {}
    requester = meta.mapping("requester_metadata") or {}
    usage = _usage_details(Usage(prompt, completion, total), meta.raw.get("usage_object") or hidden.get("usage_object"))
    endpoint = endpoint_of(call_type)
    unbelieved = read_units(usage, endpoint, f.raw)
    cache_hit = f.raw.get("cache_hit")
    return Reported(
        format="litellm",
        request_id=request_id,
        started_at=started,
        ended_at=ended,
        ttft_ms=(first - started) * 1000 if first is not None and started <= first <= ended else None,
        endpoint=endpoint,
        customer_id=f.text("end_user") or meta.text("user_api_key_end_user_id"),
        user_id=meta.text("user_api_key_user_id"),
        team_id=meta.text("user_api_key_team_id") or meta.text("team_id"),
        key_id=meta.text("user_api_key_hash", limit=_KEY_ID),
        key_alias=meta.text("user_api_key_alias"),
        model_group=f.text("model_group") or model,
        upstream_model=_text_or_none(hidden.get("litellm_model_name")) or model,
        deployment_id=f.text("model_id"),
        stream=f.raw.get("stream") is True,
        usage=usage,
        cost_usd=cost,
        status="success" if status == "success" else "upstream_error",
        http_status=200 if status == "success" else int(code) if _HTTP_STATUS.fullmatch(code) else 502,
        error_type=_text_or_none(error.get("error_class"), 64) if status != "success" else None,
        tags=f.tags("request_tags"),
        metadata={
            **requester,
            "webhook": _present(
                format="litellm",
                call_type=call_type or None,
                trace_id=_text_or_none(f.raw.get("trace_id")),
                provider=_text_or_none(f.raw.get("custom_llm_provider")),
                api_base=_text_or_none(f.raw.get("api_base")),
                cache_hit=cache_hit if isinstance(cache_hit, bool) else None,
                org_id=meta.text("user_api_key_org_id"),
            ),
        },
        flags=INVALID if unbelieved else None,
    )


def read_units(usage: Usage, endpoint: str, raw: Mapping[str, Any]) -> bool:
    """The units a StandardLoggingPayload carries for its endpoint, set on `usage`, read where
    LiteLLM puts them: a rerank's `response.meta.billed_units.search_units` (Cohere's), an image
    answer's `response.data` (else the request's `model_parameters.n`) and its size
    (`response.size`, for a price per pixel), a transcription's `response.duration` in seconds
    (or gpt-4o-transcribe's `response.usage.seconds`), a speech request's input, which LiteLLM
    logs as the one user message of `messages`. Absent figures are 0 (the cost LiteLLM reported
    stands; without one such a row costs its tokens only). Returns whether a figure was there but
    not believed (see `MOST_QUERIES`). The importer reads a spend log's `response` and `messages`
    with it, which LiteLLM fills the same way when it stores them."""
    response = raw.get("response")
    response = response if isinstance(response, Mapping) else {}
    params = raw.get("model_parameters")
    params = params if isinstance(params, Mapping) else {}
    bad = False

    def count(value: Any, most: int, scale: int = 1) -> int:
        nonlocal bad
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            bad = True
            return 0
        figure = round(value * scale) if scale != 1 else value
        if value < 0 or figure > most or (scale == 1 and not float(value).is_integer()):
            bad = True
            return 0
        return int(figure)

    if endpoint == "rerank":
        meta = response.get("meta")
        billed = meta.get("billed_units") if isinstance(meta, Mapping) else None
        usage.queries = count(billed.get("search_units") if isinstance(billed, Mapping) else None, MOST_QUERIES)
    elif endpoint.startswith("image"):
        data = response.get("data")
        usage.images = count(len(data), MOST_IMAGES) if isinstance(data, list) else count(params.get("n"), MOST_IMAGES)
        size = response.get("size") or params.get("size")
        usage.pixels = _pixels(size) if isinstance(size, str) else 0
        quality = response.get("quality") or params.get("quality")
        usage.quality = quality[:16] if isinstance(quality, str) else ""
    elif endpoint in ("transcriptions", "translations"):
        seconds = response.get("duration")
        reported = response.get("usage")
        if seconds is None and isinstance(reported, Mapping) and reported.get("type") == "duration":
            seconds = reported.get("seconds")
        usage.audio_ms = count(seconds, MOST_AUDIO_MS, scale=1000)
    elif endpoint == "speech":
        messages = raw.get("messages")
        if isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], Mapping):
            text = messages[0].get("content")
            if isinstance(text, str) and not text.startswith(_REDACTED):
                usage.characters = count(len(text), MOST_CHARACTERS)
    return bad


def _pixels(size: str) -> int:
    """One image's pixels from its size as OpenAI writes it (`1024x1536`); 0 for `auto` or any other."""
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit() and len(width) <= 5 and len(height) <= 5):
        return 0
    pixels = int(width) * int(height)
    return pixels if pixels <= MOST_PIXELS else 0


def _usage_details(usage: Usage, reported: Any) -> Usage:
    """Cached, cache-written and reasoning tokens from the provider's usage object, where LiteLLM
    passed it on (OpenAI's `*_tokens_details`, Anthropic's `cache_*_input_tokens`). Optional
    detail: a value of the wrong type is ignored, never refused."""
    if not isinstance(reported, Mapping):
        return usage

    def count(value: Any, most: int) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most else 0

    prompt_details = reported.get("prompt_tokens_details")
    completion_details = reported.get("completion_tokens_details")
    cached = count(
        prompt_details.get("cached_tokens") if isinstance(prompt_details, Mapping) else None, usage.prompt_tokens
    )
    cached = cached or count(reported.get("cache_read_input_tokens"), usage.prompt_tokens)
    written = count(reported.get("cache_creation_input_tokens"), usage.prompt_tokens - cached)
    reasoning = count(
        completion_details.get("reasoning_tokens") if isinstance(completion_details, Mapping) else None,
        usage.completion_tokens,
    )
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, cached, written, reasoning)


class _Fields:
    """Reads one event's fields, refusing a bad value with the field's name and what it must be."""

    __slots__ = ("now", "raw", "where")

    def __init__(self, raw: Mapping[str, Any], where: str, now: float) -> None:
        self.raw = raw
        self.where = where
        self.now = now

    def fail(self, name: str, must: str) -> NoReturn:
        raise Unprocessable(f"{self.where}{name} {must}.", param=self.where + name)

    def text(self, name: str, *, limit: int = _ID) -> str | None:
        """A string (an integer id is taken as its digits); empty counts as absent."""
        value = self.raw.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is None or value == "":
            return None
        if not isinstance(value, str) or len(value) > limit:
            self.fail(name, f"must be a string of at most {limit} characters")
        if "\x00" in value:  # PostgreSQL refuses NUL in text: the batch would never commit
            self.fail(name, "must not contain NUL (\\u0000)")
        return value

    def need(self, name: str, *, limit: int = _ID) -> str:
        value = self.text(name, limit=limit)
        if value is None:
            self.fail(name, "is required")
        return value

    def count(self, name: str, *, required: bool = False) -> int:
        value = self.raw.get(name)
        if value is None and not required:
            return 0
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= bounds.INT64_MAX:
            self.fail(name, "must be a non-negative integer")
        return value

    def total(self, prompt: int, completion: int, parts: str) -> int:
        if self.raw.get("total_tokens") is None:
            return prompt + completion
        total = self.count("total_tokens")
        if total < prompt + completion:
            self.fail("total_tokens", f"must be at least {parts} ({prompt + completion})")
        return total

    def number(self, name: str) -> Decimal | None:
        """A non-negative finite number (a decimal string too, as money is often sent)."""
        value = self.raw.get(name)
        if value is None:
            return None
        try:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise InvalidOperation
            number = Decimal(repr(value) if isinstance(value, float) else str(value))
        except InvalidOperation:
            self.fail(name, "must be a non-negative number")
        if not number.is_finite() or number < 0:
            self.fail(name, "must be a non-negative number")
        return number

    def money(self, name: str) -> Decimal | None:
        """USD; more than a million for one request is a unit mix-up (cents? micro-dollars?)."""
        value = self.number(name)
        if value is not None and value > 1_000_000:
            self.fail(name, "must be in US dollars (at most 1000000 for one request)")
        return value

    def time(self, name: str) -> float | None:
        """Epoch seconds (milliseconds are recognised by their size) or an ISO 8601 time."""
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            seconds = value / 1000 if value > _MS_EPOCH else float(value)
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                self.fail(name, "must be epoch seconds or an ISO 8601 time")
            seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        else:
            self.fail(name, "must be epoch seconds or an ISO 8601 time")
        if seconds < _EARLIEST or seconds > self.now + _FUTURE_S:
            self.fail(name, "must be a time between 2000 and now")
        return seconds

    def mapping(self, name: str) -> Mapping[str, Any] | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(name, "must be a JSON object")
        return value

    def tags(self, name: str) -> tuple[str, ...]:
        value = self.raw.get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            self.fail(name, "must be a list of strings")
        if len(value) > bounds.TAGS_MAX or any(len(t) > bounds.TAG_MAX or "\x00" in t for t in value):
            self.fail(name, f"must be at most {bounds.TAGS_MAX} strings of at most {bounds.TAG_MAX} characters, no NUL")
        return tuple(value)


def _text_or_none(value: Any, limit: int = _ID) -> str | None:
    """An optional descriptive string: kept when usable, dropped (never refused) otherwise."""
    return value[:limit] if isinstance(value, str) and value and "\x00" not in value else None


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class Pricer:
    """What a reported model costs per token, for events that report no cost: the prices of the
    deployment serving the same model group here, where there is one (so a team moving over is
    charged the same either way), else the bundled price table's. None: no known price (the row's
    cost is then NULL, as for an unpriced gateway row)."""

    def __init__(self, deployments: Sequence[Deployment], table: PriceTable) -> None:
        self._groups: dict[str, Prices] = {}
        for dep in deployments:
            if is_priced(dep.prices):
                self._groups.setdefault(dep.model_name, dep.prices)
        self._table = table
        self._known: dict[tuple[str, str | None], tuple[pricing.UnitPrices, pricing.Rates] | None] = {}

    def unit_prices(self, model_group: str, upstream_model: str | None) -> pricing.UnitPrices | None:
        found = self.prices(model_group, upstream_model)
        return found[0] if found is not None else None

    def prices(self, model_group: str, upstream_model: str | None) -> tuple[pricing.UnitPrices, pricing.Rates] | None:
        """Per-token prices and the units' rates (an image, a second of audio...), or None."""
        key = (model_group, upstream_model)
        if key not in self._known:
            if len(self._known) > 10_000:  # names come from outside: keep the memo bounded
                self._known.clear()
            prices = self._groups.get(model_group) or self._table.find(
                *(name for name in (upstream_model, model_group) if name)
            )
            priced = prices is not None and is_priced(prices)
            self._known[key] = (
                (pricing.unit_prices(prices), pricing.rates(prices)) if prices is not None and priced else None
            )
        return self._known[key]


def spend_targets(
    reported: Reported, budgets: Mapping[tuple[str, str], Budgeted], now: float
) -> tuple[SpendTarget, ...]:
    """The key, user, team and customer rows the cost is added to: those named that exist, each in
    its current budget period (computed as the gateway computes it)."""
    named = (
        ("key", reported.key_id),
        ("user", reported.user_id),
        ("team", reported.team_id),
        ("customer", reported.customer_id),
    )
    out: list[SpendTarget] = []
    for scope, ident in named:
        if ident is None or (scope, ident) not in budgets:
            continue
        duration, reset_at = budgets[(scope, ident)]
        period_end = None
        if duration:
            try:
                seconds = int(parse_duration(duration, "budget_duration").total_seconds())
            except BadRequest:
                seconds = 0  # a stored duration no longer readable: spend that never resets
            if seconds:
                budget = Budget(None, 0, seconds, reset_at.timestamp() if reset_at is not None else None)
                period_end = budget.period(now)[0]
        out.append(SpendTarget(scope, ident, period_end))
    return tuple(out)


def reported_units(usd: Decimal) -> int:
    """A reported amount in money units, to the nearest unit. Not rounded up as prices are: a
    float such as LiteLLM's 0.000225 arrives as 0.00022500000000000002, and its binary noise,
    far below a unit, must not become one more unit on the bill."""
    return int((usd / pricing.MONEY_UNIT).to_integral_value(ROUND_HALF_EVEN))


def entry_for(reported: Reported, pricer: Pricer, spend: tuple[SpendTarget, ...]) -> Entry:
    """The ledger row of a reported request. A reported cost is taken as it is, with no per-token
    prices since none were reported; without one, the tokens and units are priced as a gateway
    row's would be. The units are recorded either way (usage reports and Lago's unit metrics)."""
    usage = reported.usage
    unit: pricing.UnitPrices = (None, None, None, None)
    cost: int | None
    if reported.cost_usd is not None:
        cost = reported_units(reported.cost_usd)
    else:
        found = pricer.prices(reported.model_group, reported.upstream_model)
        cost = pricing.cost_units(usage, *found) if found is not None else None
        unit = found[0] if found is not None else unit
    row = LedgerRow(
        uid=reported.uid,
        source=REPORTED,
        request_id=reported.request_id,
        started_at=datetime.fromtimestamp(reported.started_at, UTC),
        ended_at=datetime.fromtimestamp(reported.ended_at, UTC),
        endpoint=reported.endpoint,
        key_id=reported.key_id,
        key_alias=reported.key_alias,
        user_id=reported.user_id,
        team_id=reported.team_id,
        customer_id=reported.customer_id,
        model_group=reported.model_group,
        deployment_id=reported.deployment_id,
        upstream_model=reported.upstream_model,
        stream=reported.stream,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        total_tokens=usage.total_tokens,
        price_input=unit[0],
        price_output=unit[1],
        price_cache_read=unit[2],
        price_cache_write=unit[3],
        cost=cost,
        status=reported.status,
        http_status=reported.http_status,
        error_type=reported.error_type,
        latency_ms=(reported.ended_at - reported.started_at) * 1000,
        ttft_ms=reported.ttft_ms,
        tags=reported.tags,
        metadata=dict(reported.metadata),
        flags=reported.flags,
        queries=usage.queries,
        images=usage.images,
        audio_ms=usage.audio_ms,
        characters=usage.characters,
    )  # one attempt: the reporting proxy's retries are its own
    return Entry(row, cost, spend if cost else ())
