"""LiteLLM's rows in meterway's terms. Pure: no I/O, so every rule is tested offline.

Each function takes one source row (LiteLLM's column names) and returns either the meterway
row to insert or a `Skipped` saying why the row cannot be taken; a row taken with a change
(a limit out of range, an unknown role) carries `notes`. Conventions carried over as they are:
key digests (both store SHA-256 hex of the key), model lists (`all-proxy-models` and the empty
list mean every model in both), durations (`30d`, `1mo`), spend so far in USD. LiteLLM stores
times as UTC without a zone; they are read as UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from meterway import bounds
from meterway.config.durations import parse_duration
from meterway.errors import BadRequest
from meterway.ledger import Entry
from meterway.ledger.reported import endpoint_of, read_units, reported_units, uid_for
from meterway.ledger.row import IMPORTED, LedgerRow
from meterway.ledger.usage_checks import INVALID
from meterway.providers.base import Usage

ROLES = ("proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_INT32 = 2**31 - 1
_ID = 255
_REQUEST_ID = 128
_KEY_NAME = 32

SourceRow = Mapping[str, Any]
Values = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A source row not imported (or, as a note, imported with a change), and why."""

    table: str  # LiteLLM's table name
    ident: str
    reason: str


@dataclass(frozen=True, slots=True)
class Mapped:
    """One meterway row to insert (its table's column names) and the changes made to take it."""

    ident: str
    values: Values
    notes: tuple[str, ...] = ()
    label: str = ""  # how a report names the row, when not by its id (keys: alias and digest prefix)


@dataclass
class _Notes:
    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def usd(value: Any) -> Decimal | None:
    """A LiteLLM amount (a float column) as an exact decimal of what it prints as."""
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def _limit(src: SourceRow, name: str, notes: _Notes) -> int | None:
    value = src.get(name)
    if value is None:
        return None
    value = int(value)
    if value < 0:
        notes.add(f"{name} {value} is negative; imported without it")
        return None
    if value > _INT32:
        notes.add(f"{name} {value} is beyond {_INT32}; imported as {_INT32}")
        return _INT32
    return value


def _models(value: Any, notes: _Notes) -> list[str]:
    """A model list, name by name. A LiteLLM wildcard (`openai/*`) is kept as written, which
    matches no model here (lists are compared by exact name): noted, so that the list is redone."""
    models = [str(m) for m in value or () if m]
    wild = [m for m in models if "*" in m]
    if wild:
        notes.add(
            f"model list entries {', '.join(repr(m) for m in wild)} are wildcards; meterway compares model "
            "names exactly, so they allow no model: list the models instead"
        )
    return models


def _metadata(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _budget(src: SourceRow, budget: SourceRow | None, notes: _Notes) -> Values:
    """max_budget, budget_duration, budget_reset_at, rpm/tpm/parallel limits: the row's own, else
    those of the `LiteLLM_BudgetTable` row it links to (`budget_id`)."""

    def pick(name: str) -> Any:
        own = src.get(name)
        return own if own is not None or budget is None else budget.get(name)

    merged = {name: pick(name) for name in ("max_budget", "budget_duration", "budget_reset_at", *_LIMITS)}
    out: Values = {name: _limit(merged, name, notes) for name in _LIMITS}
    max_budget = usd(merged["max_budget"])
    if max_budget is not None and max_budget < 0:
        notes.add(f"max_budget {max_budget} is negative; imported without a budget")
        max_budget = None
    out["max_budget"] = max_budget
    duration = merged["budget_duration"] or None
    reset_at = utc(merged["budget_reset_at"])
    if duration is not None:
        try:
            length = parse_duration(str(duration), "budget_duration")
        except BadRequest:
            notes.add(f"budget_duration {duration!r} is not a duration meterway reads; the budget never resets")
            duration, reset_at = None, None
        else:
            if reset_at is None:
                reset_at = datetime.now(UTC) + length
    else:
        reset_at = None
    out["budget_duration"] = duration
    out["budget_reset_at"] = reset_at
    return out


_LIMITS = ("rpm_limit", "tpm_limit", "max_parallel_requests")


def _soft_budget(value: Any, notes: _Notes) -> Decimal | None:
    """LiteLLM's `soft_budget` (a spend to warn at, never to refuse at): kept as it is, carried
    and shown; meterway sends no alert on it yet."""
    amount = usd(value)
    if amount is not None and amount < 0:
        notes.add(f"soft_budget {amount} is negative; imported without it")
        return None
    return amount


def _spend(src: SourceRow, notes: _Notes) -> Decimal:
    spend = usd(src.get("spend")) or Decimal(0)
    if spend < 0:
        notes.add(f"spend {spend} is negative; imported as 0")
        return Decimal(0)
    return spend


def _too_long(ident: Any, limit: int = _ID) -> str | None:
    if not isinstance(ident, str) or not ident:
        return "has no id"
    if len(ident) > limit:
        return f"its id is longer than {limit} characters"
    return None


def key(src: SourceRow, budgets: Mapping[str, SourceRow], teams: Iterable[str]) -> Mapped | Skipped:
    """A `LiteLLM_VerificationToken` row as an `mw_keys` row. LiteLLM stores the SHA-256 hex of
    the key, as meterway does, so the key its holder has keeps working."""
    token = src.get("token")
    shown = str(token)[:12] + "…" if token else "(no token)"
    if not isinstance(token, str) or not _DIGEST.match(token):
        return Skipped(
            "LiteLLM_VerificationToken",
            shown,
            "the token column does not hold a SHA-256 hex digest, so the key cannot be recognised",
        )
    notes = _Notes()
    team_id = src.get("team_id") or None
    if team_id is not None and team_id not in teams:
        notes.add(f"its team {team_id!r} is not in LiteLLM_TeamTable; imported without a team")
        team_id = None
    user_id = src.get("user_id") or None
    if user_id is not None and len(user_id) > _ID:
        notes.add("its user id is too long; imported without a user")
        user_id = None
    models = _models(src.get("models"), notes)
    if "all-team-models" in models:
        # LiteLLM's "whatever the team may use": meterway checks the team's list on every request
        # anyway, so the key itself needs no list
        models = [m for m in models if m != "all-team-models"]
        if models:
            notes.add("all-team-models dropped from its model list; the team's list still applies")
    alias = src.get("key_alias") or None
    name = src.get("key_name") or "(imported)"
    metadata = _metadata(src.get("metadata"))
    if src.get("organization_id"):
        metadata.setdefault("organization_id", src["organization_id"])
    budget = budgets.get(src.get("budget_id") or "")
    values: Values = {
        "token": token,
        "key_name": str(name)[:_KEY_NAME],
        "key_alias": str(alias)[:_ID] if alias else None,
        "models": models,
        "expires": utc(src.get("expires")),
        "blocked": bool(src.get("blocked")),
        "user_id": user_id,
        "team_id": team_id,
        "metadata": metadata,
        "spend": _spend(src, notes),
        # LiteLLM keeps a key's soft budget on the budget row `/key/generate` made for it
        "soft_budget": _soft_budget(budget.get("soft_budget") if budget else None, notes),
        **_budget(src, budget, notes),
    }
    label = f"{alias or name} ({token[:12]}…)"
    return Mapped(token, values, tuple(notes.items), label)


def user(src: SourceRow) -> Mapped | Skipped:
    ident = src.get("user_id")
    bad = _too_long(ident)
    if bad:
        return Skipped("LiteLLM_UserTable", str(ident), f"the user {bad}")
    notes = _Notes()
    role = src.get("user_role") or "internal_user"
    if role not in ROLES:
        notes.add(f"role {role!r} has no meterway equivalent; imported as internal_user")
        role = "internal_user"
    metadata = _metadata(src.get("metadata"))
    if src.get("user_alias"):
        metadata.setdefault("user_alias", src["user_alias"])
    if src.get("organization_id"):
        metadata.setdefault("organization_id", src["organization_id"])
    email = src.get("user_email") or None
    values: Values = {
        "user_id": ident,
        "user_email": email if email is None or len(email) <= 320 else None,
        "user_role": role,
        "models": _models(src.get("models"), notes),
        "metadata": metadata,
        "spend": _spend(src, notes),
        **_budget(src, None, notes),
    }
    return Mapped(str(ident), values, tuple(notes.items))


def team(src: SourceRow, organizations: Mapping[str, SourceRow]) -> Mapped | Skipped:
    """A team; its organization, which meterway has no table for, goes into its metadata."""
    ident = src.get("team_id")
    bad = _too_long(ident)
    if bad:
        return Skipped("LiteLLM_TeamTable", str(ident), f"the team {bad}")
    notes = _Notes()
    metadata = _metadata(src.get("metadata"))
    org_id = src.get("organization_id")
    if org_id:
        org = organizations.get(org_id)
        metadata["organization"] = {
            "organization_id": org_id,
            "organization_alias": org.get("organization_alias") if org else None,
            **({"metadata": _metadata(org.get("metadata"))} if org and org.get("metadata") else {}),
        }
    alias = src.get("team_alias") or None
    values: Values = {
        "team_id": ident,
        "team_alias": str(alias)[:_ID] if alias else None,
        "models": _models(src.get("models"), notes),
        "blocked": bool(src.get("blocked")),
        "metadata": metadata,
        "spend": _spend(src, notes),
        "soft_budget": _soft_budget(src.get("soft_budget"), notes),
        **_budget(src, None, notes),
    }
    return Mapped(str(ident), values, tuple(notes.items))


def members(
    teams: Iterable[SourceRow], users: Iterable[SourceRow], memberships: Iterable[SourceRow], known_teams: Iterable[str]
) -> list[tuple[str, str, str]]:
    """(team_id, user_id, role) for every membership LiteLLM records in any of its places: the
    team's `members_with_roles`, `admins` and `members`, the user's `teams`, and
    `LiteLLM_TeamMembership`. An admin anywhere is an admin."""
    known = set(known_teams)
    roles: dict[tuple[str, str], str] = {}

    def add(team_id: Any, user_id: Any, role: str) -> None:
        if not isinstance(team_id, str) or not isinstance(user_id, str) or team_id not in known:
            return
        if not user_id or len(user_id) > _ID:
            return
        if roles.get((team_id, user_id)) != "admin":
            roles[(team_id, user_id)] = "admin" if role == "admin" else "user"

    for t in teams:
        team_id = t.get("team_id")
        listed = t.get("members_with_roles")
        for m in listed if isinstance(listed, list) else ():
            if isinstance(m, Mapping):
                add(team_id, m.get("user_id"), str(m.get("role") or "user"))
        for u in t.get("admins") or ():
            add(team_id, u, "admin")
        for u in t.get("members") or ():
            add(team_id, u, "user")
    for u in users:
        for team_id in u.get("teams") or ():
            add(team_id, u.get("user_id"), "user")
    for m in memberships:
        add(m.get("team_id"), m.get("user_id"), "user")
    return sorted((t, u, r) for (t, u), r in roles.items())


def customer(src: SourceRow, budgets: Mapping[str, SourceRow]) -> Mapped | Skipped:
    """An end user (the request's `user` field), with the budget, soft budget and limits of its
    budget row, and its model list (enforced by LiteLLM, and by meterway once imported)."""
    ident = src.get("user_id")
    bad = _too_long(ident)
    if bad:
        return Skipped("LiteLLM_EndUserTable", str(ident), f"the end user {bad}")
    notes = _Notes()
    metadata: Values = {}
    for name in ("allowed_model_region", "default_model"):
        if src.get(name):
            metadata[name] = src[name]
            notes.add(f"{name} is kept in metadata; meterway does not act on it")
    alias = src.get("alias") or None
    budget = budgets.get(src.get("budget_id") or "")
    values: Values = {
        "customer_id": ident,
        "alias": str(alias)[:_ID] if alias else None,
        "blocked": bool(src.get("blocked")),
        "models": _models(src.get("models"), notes),
        "metadata": metadata,
        "spend": _spend(src, notes),
        "soft_budget": _soft_budget(budget.get("soft_budget") if budget else None, notes),
        **_budget({}, budget, notes),
    }
    return Mapped(str(ident), values, tuple(notes.items))


def _text(value: Any, limit: int = _ID) -> str | None:
    return value if isinstance(value, str) and value and len(value) <= limit else None


def _count(src: SourceRow, name: str) -> int:
    value = src.get(name)
    return int(value) if isinstance(value, int) and value > 0 else 0


def _failure(metadata: Mapping[str, Any]) -> tuple[int, str | None]:
    info = metadata.get("error_information")
    code, kind = None, None
    if isinstance(info, Mapping):
        code = str(info.get("error_code") or "")
        kind = info.get("error_class")
    status = int(code) if code and code.isdigit() and 400 <= int(code) <= 599 else 500
    return status, str(kind)[:64] if kind else "upstream_error"


def _spend_logs_metadata(value: Any) -> dict[str, Any] | str | None:
    """The `spend_logs_metadata` a LiteLLM request carried (its own, its key's or its team's,
    merged by LiteLLM into the spend log's `metadata`): kept when it is within the bounds the
    gateway holds any metadata to (`bounds.metadata`), else the reason it was not (the row is
    imported either way). None when there is none."""
    if value is None or value == {}:
        return None
    try:
        bounds.metadata(value, "spend_logs_metadata")
    except BadRequest as e:
        return e.message
    return dict(value)


def spend_log(src: SourceRow, aliases: Mapping[str, str]) -> Entry | Skipped:
    """A `LiteLLM_SpendLogs` row as a ledger row with `source='imported'`. Its uid is the one a
    LiteLLM usage webhook gives the same request (`uid_for(request_id)`), so a request both
    reported and imported is one row. Its cost is LiteLLM's, taken as it was charged; it adds
    nothing to spend, which the keys, users, teams and customers bring over themselves."""
    request_id = src.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        return Skipped("LiteLLM_SpendLogs", "(no request_id)", "no request_id")
    if len(request_id) > _REQUEST_ID:
        return Skipped("LiteLLM_SpendLogs", request_id[:40] + "…", f"request_id longer than {_REQUEST_ID} characters")
    started, ended = utc(src.get("startTime")), utc(src.get("endTime"))
    if started is None or ended is None:
        return Skipped("LiteLLM_SpendLogs", request_id, "no startTime or endTime")
    ended = max(ended, started)
    model = _text(src.get("model_group")) or _text(src.get("model"))
    if model is None:
        return Skipped("LiteLLM_SpendLogs", request_id, "no model or model_group")
    cost_usd = usd(src.get("spend"))
    if cost_usd is None or cost_usd < 0:
        return Skipped("LiteLLM_SpendLogs", request_id, f"spend {src.get('spend')!r} is not an amount")
    api_key = src.get("api_key") or None
    key_id = api_key if isinstance(api_key, str) and _DIGEST.match(api_key) else None
    metadata = _metadata(src.get("metadata"))
    prompt, completion = _count(src, "prompt_tokens"), _count(src, "completion_tokens")
    total = max(_count(src, "total_tokens"), prompt + completion)
    failed = str(src.get("status") or "success").lower() not in ("success", "")
    http_status, error_type = _failure(metadata) if failed else (200, None)
    first = utc(src.get("completionStartTime"))
    tags = src.get("request_tags")
    extra: Values = {"litellm": {"call_type": src.get("call_type")}}
    if src.get("cache_hit") in ("True", "true", True):
        extra["litellm"]["cache_hit"] = True
    if src.get("custom_llm_provider"):
        extra["litellm"]["custom_llm_provider"] = src["custom_llm_provider"]
    kept = _spend_logs_metadata(metadata.get("spend_logs_metadata"))
    if isinstance(kept, dict):
        extra["spend_logs_metadata"] = kept
    elif kept is not None:
        extra["litellm"]["spend_logs_metadata_dropped"] = kept
    alias = metadata.get("user_api_key_alias")
    if not isinstance(alias, str) or not alias:
        alias = aliases.get(key_id or "")
    cost = reported_units(cost_usd)
    endpoint = endpoint_of(str(src.get("call_type") or ""))
    units = Usage()  # where LiteLLM stored the response and input (docs/migrating-from-litellm.md)
    unbelieved = read_units(units, endpoint, {"response": src.get("response"), "messages": src.get("messages")})
    row = LedgerRow(
        uid=uid_for(request_id),
        source=IMPORTED,
        request_id=request_id,
        started_at=started,
        ended_at=ended,
        endpoint=endpoint,
        key_id=key_id,
        key_alias=alias[:_ID] if alias else None,
        user_id=_text(src.get("user")),
        team_id=_text(src.get("team_id")),
        customer_id=_text(src.get("end_user")),
        model_group=model,
        deployment_id=_text(src.get("model_id")),
        upstream_model=_text(src.get("model")),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cost=cost,  # no per-token prices: LiteLLM's charge, taken as it was
        status="upstream_error" if failed else "success",
        http_status=http_status,
        error_type=error_type,
        latency_ms=(ended - started).total_seconds() * 1000,
        ttft_ms=(first - started).total_seconds() * 1000 if first is not None and first >= started else None,
        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
        metadata=extra,
        # LiteLLM's spend logs do not say how many upstream attempts a request took: one, by default
        cache_hit=str(src.get("cache_hit") or "").lower() == "true",  # LiteLLM stores "True"/"False"
        flags=INVALID if unbelieved else None,
        queries=units.queries,
        images=units.images,
        audio_ms=units.audio_ms,
        characters=units.characters,
    )
    return Entry(row, cost, ())
