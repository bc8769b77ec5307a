"""One ledger row, typed: what `mw_ledger` stores of one model request.

A row comes from one of three sources, each building it in one place: the gateway's own requests
(`ledger.recorder`), usage other proxies report (`ledger.reported`), and LiteLLM's spend logs
brought over by `meterway import litellm` (`importer.mapping`). The store (`store.ledger`) writes
it as it is: its fields are the table's columns, by the same names (checked when the store is
imported), and `values` gives them in the order `FIELDS` names them, the order the store's SQL
lists its columns in.

A msgspec `Struct` rather than a frozen slots dataclass, measured (`bench/ledger_write.py
--shapes`, bench/RESULTS.md "Ledger writer per row"): building one by keyword takes about 1.4 µs,
as long as the dict it replaces, against 5 µs for the dataclass (whose frozen `__init__` sets each
field through `object.__setattr__`); and its values come out as a tuple in C
(`msgspec.structs.astuple`, 0.1 µs) where the dataclass needs an attribute getter and the dict a
lookup per column (0.9 µs each). Frozen, so a row handed to the writer is the row written;
`gc=False` because a row refers to no row (its only containers are its tags and metadata), so the
collector need not track the thousands a busy writer holds.

Nothing is checked when a row is built: a value the database refuses (a string too long, a NUL, a
number past 64 bits) is cut or quarantined by the store (`store.refusals`), which is why the
fields are typed for what the sources give and the tests may still build hostile rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

GATEWAY = "gateway"  # a row's `source`: served here
REPORTED = "webhook"  # reported by another proxy (`ledger.reported`); the name the column has held since 0006
IMPORTED = "imported"  # brought over from LiteLLM's spend logs (`importer.mapping`)


class LedgerRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A request, what it used and what it cost. Prices and cost are in money units (1e-10 USD,
    `ledger.pricing`); `cost` None means the model has no known price (never a silent 0)."""

    uid: str  # unique per row, the base of its Lago transaction ids
    source: str  # GATEWAY, REPORTED or IMPORTED
    request_id: str
    started_at: datetime  # UTC
    ended_at: datetime
    endpoint: str  # chat, completions, embeddings, messages, responses, rerank, moderations, unknown...
    key_id: str | None = None  # key digest, "master", or None when unauthenticated
    key_alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    customer_id: str | None = None  # the request's `user`, or the customer the key is bound to
    model_group: str | None  # None: refused before a model was known
    deployment_id: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int
    tokens_estimated: bool = False  # counted here: the provider reported none (or none believable)
    price_input: int | None = None  # per token, as charged; None when no per-token price applied
    price_output: int | None = None
    price_cache_read: int | None = None
    price_cache_write: int | None = None
    cost: int | None
    status: str  # success, rejected, upstream_error, client_aborted
    http_status: int
    error_type: str | None = None
    latency_ms: float
    ttft_ms: float | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = {}  # msgspec gives each row an empty dict of its own
    attempts: int = 1  # upstream attempts: retries and fallbacks add to 1; 0 for a cache hit
    cache_hit: bool = False
    flags: str | None = None  # what was wrong with the input, comma-separated (usage_absurd, cut...)
    end_user: str | None = None  # the request's `user` when the key is bound to a customer
    # units beside tokens (migration 0013): each priced on its own (`ledger.pricing.Rates`)
    queries: int = 0  # rerank search units
    images: int = 0
    audio_ms: int = 0  # audio duration in milliseconds
    characters: int = 0  # speech input

    @property
    def billable(self) -> bool:
        """Worth a billing event: tokens or units were used (served, or delivered before the client left)."""
        used = self.total_tokens > 0 or self.queries > 0 or self.images > 0 or self.audio_ms > 0 or self.characters > 0
        return used and self.status in ("success", "client_aborted")


FIELDS: tuple[str, ...] = LedgerRow.__struct_fields__
UNITS = ("queries", "images", "audio_ms", "characters")
"""What a request used that is not billed by the token (migration 0013): rerank search units,
generated images, audio in milliseconds (integers, so sums are exact), speech input characters."""


def values(row: LedgerRow) -> tuple[Any, ...]:
    """The row's values in `FIELDS` order."""
    return msgspec.structs.astuple(row)


def as_dict(row: LedgerRow) -> dict[str, Any]:
    """The row as a dict of its columns: for the quarantine's JSON, and for reading a field by name."""
    return msgspec.structs.asdict(row)


def from_dict(columns: dict[str, Any]) -> LedgerRow:
    """A row kept as `as_dict` gave it (tags come back as a list from JSON); a column this version
    does not know is dropped rather than refused, so an old quarantined row can still be read."""
    known = {k: v for k, v in columns.items() if k in _KNOWN}
    if isinstance(known.get("tags"), list):
        known["tags"] = tuple(known["tags"])
    return LedgerRow(**known)


_KNOWN = frozenset(FIELDS)
