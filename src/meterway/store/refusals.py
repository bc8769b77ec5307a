"""What the database refuses of a ledger row, and the row cut to what it takes.

A failed write is translated once, here, into the ledger's two kinds of failure: the database is
away (the rows are fine; they stay queued and are retried) or it refused a value (retrying the row
as it is can never succeed). A refused row is cut to its columns' bounds, taken from the table
definitions in `store.tables`, and flagged `cut`; a row refused even so is kept whole, as JSON,
in `mw_ledger_quarantine` (see `store.ledger`). None of this runs on the happy path: only after a
group commit failed.

A cut string keeps its first characters and ends in `~` and 8 hex digits of the SHA-256 of the
value as given: a 300-character customer id, or one with a NUL character, never becomes (and is
never charged as) another customer whose id is its first 255 characters or its text without NUL.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import sys
from dataclasses import replace
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from meterway.ledger import DatabaseAway, Entry, RowRefused, WriteFailed
from meterway.ledger.row import FIELDS, as_dict, from_dict, values
from meterway.limits import SpendTarget
from meterway.store.tables import ledger

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
JSON_DEPTH = 64  # deeper JSON is replaced by a note: encoders (orjson: 255) refuse deep nesting
REASON_CHARS = 2000
CUT = "cut"
_ID_CHARS = 255  # ids of users, teams and customers: String(255) in `store.tables`
# PostgreSQL's classes 22 (data exception) and 23 (integrity), and their SQLite equivalents
# (and SQLAlchemy's names for them, over either driver)
_REFUSED = (sqlite3.DataError, sqlite3.IntegrityError, DataError, IntegrityError)


def _asyncpg(*names: str) -> tuple[type[BaseException], ...]:
    """asyncpg's exception classes of these names, when this process has loaded asyncpg (a store
    on PostgreSQL); none otherwise, as then no exception can be one of them. A gateway on SQLite
    never imports it: about 3 MB less per worker."""
    module = sys.modules.get("asyncpg")
    return tuple(getattr(module, name) for name in names) if module is not None else ()


def _bounds() -> dict[str, tuple[str, Any]]:
    """Each column's kind and bound: ("text", length or None), ("int", (low, high)), ("float",
    None), ("json", None), ("bool", None) or ("time", None)."""
    out: dict[str, tuple[str, Any]] = {}
    for column in ledger.c:
        t = column.type
        impl = getattr(t, "impl", t)  # Money is a BigInteger underneath
        if isinstance(t, sa.JSON):
            out[column.name] = ("json", None)
        elif isinstance(impl, sa.BigInteger):
            out[column.name] = ("int", INT64)
        elif isinstance(impl, sa.Integer):
            out[column.name] = ("int", INT32)
        elif isinstance(impl, sa.Float):
            out[column.name] = ("float", None)
        elif isinstance(impl, sa.Boolean):
            out[column.name] = ("bool", None)
        elif isinstance(impl, sa.String):
            out[column.name] = ("text", impl.length)
        else:
            out[column.name] = ("time", None)
    return out


_BOUNDS = _bounds()


def translate(e: BaseException) -> WriteFailed:
    """The driver's exception as the ledger's kind of failure."""
    if isinstance(e, WriteFailed):
        return e
    reason = _reason(e)
    if refused(e):
        return RowRefused(reason)
    if isinstance(e, OSError | ConnectionError | TimeoutError | SQLAlchemyError) or _lost(e):
        return DatabaseAway(reason)
    return WriteFailed(reason)


def refused(e: BaseException) -> bool:
    """Whether the database (or its driver, binding the values) refused a value of the row."""
    if isinstance(e, _REFUSED + _asyncpg("DataError", "IntegrityConstraintViolationError")):
        return True
    if isinstance(e, sqlite3.ProgrammingError):
        return str(e).startswith("Error binding parameter")
    if isinstance(e, (sqlite3.Error, SQLAlchemyError, *_asyncpg("PostgresError", "InterfaceError"))):
        return False  # a lost connection, a lock, a schema or server problem: not the row's
    # binding a value in Python: an int past 64 bits (OverflowError), a lone surrogate
    # (UnicodeError), JSON orjson cannot encode (JSONEncodeError, a TypeError)
    return isinstance(e, OverflowError | ValueError | TypeError | RecursionError)


def _lost(e: BaseException) -> bool:
    return isinstance(e, _asyncpg("PostgresConnectionError", "InterfaceError", "CannotConnectNowError"))


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return clean(f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__)[:REASON_CHARS]


def clean(text: str) -> str:
    """Without NUL characters and lone surrogates (neither database stores either)."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def cut_text(value: str, length: int | None) -> str:
    """`value` as a column of `length` characters takes it: unchanged when it fits and is clean,
    else its clean first characters, `~` and 8 hex digits of the SHA-256 of `value`."""
    cleaned = clean(value)
    if cleaned == value and (length is None or len(value) <= length):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    keep = len(cleaned) if length is None else max(length - 9, 0)
    return f"{cleaned[:keep]}~{digest}"


def cut_int(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def encodable(value: Any, depth: int = 0) -> Any:
    """JSON the encoder takes: clean strings and keys, ints within 64 bits (larger ones become
    their decimal string), finite floats, bounded depth; anything else as its string."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, int):
        return value if INT64[0] <= value <= INT64[1] else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= JSON_DEPTH:
        return "(cut: nested too deep)"
    if isinstance(value, dict):
        return {clean(str(k)): encodable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(v, depth + 1) for v in value]
    return clean(str(value))


def cut(entry: Entry) -> Entry:
    """The entry with each value cut to its column's bound and `cut` added to its flags; its cost
    (and so the spend it adds) is the row's cost as cut."""
    given = entry.row
    changed: dict[str, Any] = {}
    for name, value in zip(FIELDS, values(given), strict=True):
        kind, bound = _BOUNDS.get(name, ("other", None))
        if value is None:
            continue
        if kind == "text" and isinstance(value, str):
            changed[name] = cut_text(value, bound)
        elif kind == "text":
            changed[name] = cut_text(str(value), bound)
        elif kind == "int" and isinstance(value, bool):
            changed[name] = int(value)
        elif kind == "int" and isinstance(value, int):
            changed[name] = cut_int(value, *bound)
        elif kind == "int" and isinstance(value, float):
            changed[name] = cut_int(int(value), *bound) if math.isfinite(value) else 0
        elif kind == "float":
            number = float(value) if isinstance(value, int | float) else 0.0
            changed[name] = number if math.isfinite(number) and abs(number) < 1e300 else 0.0
        elif kind == "json":
            changed[name] = encodable(value)
    flags = [f for f in clean(str(given.flags or "")).split(",") if f and f != CUT]
    while flags and len(",".join([*flags, CUT])) > (_BOUNDS["flags"][1] or 128):
        flags.pop()  # too many to fit: `cut` is kept, the last others go
    changed["flags"] = ",".join([*flags, CUT])
    row = msgspec.structs.replace(given, **changed)
    units = row.cost if isinstance(row.cost, int) and entry.cost_units is not None else None
    spend = tuple(
        SpendTarget(t.scope, cut_text(t.ident, _ID_CHARS), t.period_end)
        for t in entry.spend
        if isinstance(t.ident, str)
    )
    return replace(entry, row=row, cost_units=units, spend=spend)


def to_json(entry: Entry) -> str:
    """The entry, whole, as ASCII JSON (NUL, surrogates and huge ints survive as written), for
    `mw_ledger_quarantine.row`."""
    doc = {
        "row": as_dict(entry.row),
        "cost_units": entry.cost_units,
        "spend": [[t.scope, t.ident, t.period_end] for t in entry.spend],
    }
    return json.dumps(doc, ensure_ascii=True, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$time": value.isoformat()}
    return str(value)


def from_json(text: str) -> Entry:
    """An entry kept by `to_json`, as it was given."""
    doc = json.loads(text, object_hook=_time)
    spend = tuple(SpendTarget(str(s), str(i), float(p) if p is not None else None) for s, i, p in doc["spend"])
    return Entry(from_dict(doc["row"]), doc["cost_units"], spend)


def _time(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$time" in obj:
        return datetime.fromisoformat(obj["$time"])
    return obj
