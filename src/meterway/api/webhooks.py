"""Usage reported by another proxy: `POST /webhooks/usage` and `POST /webhooks/usage/batch`, and
for admins `GET /webhooks/stats`, `GET /webhooks/validate`, `POST /webhooks/reprocess`.

The two ingest routes take the webhook secret (or the master key) rather than a virtual key: the
caller is a proxy's logger, configured once with a header. Each accepted event becomes one ledger
row with source `webhook`, written with its rollup, spend and Lago export in one transaction, and
the answer is sent only after that commit, so whatever was acknowledged is stored. A batch is
checked whole before anything is written: one bad event refuses the batch (422 naming it) and
stores nothing, so the sender can fix and resend it as it is; events already stored come back as
duplicates, never as second charges (see ledger.reported for how a request id becomes a uid).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from meterway.api.asgi import Incoming, Receive, Responder, Scope, Send, read_body, request_id
from meterway.auth import bearer_token
from meterway.billing import setup
from meterway.errors import AuthenticationFailed, BadRequest, ServiceUnavailable, Unprocessable
from meterway.ledger import prices
from meterway.ledger import reported as usage
from meterway.ledger.reported import Pricer, Reported

if TYPE_CHECKING:
    from meterway.config.settings import Settings
    from meterway.store.runtime import Store

log = logging.getLogger("meterway.webhooks")

INGEST = frozenset({"/webhooks/usage", "/webhooks/usage/batch"})
_SECRET_HEADER = b"x-webhook-secret"
# `billing check` step names -> the names usage-webhook services answer `/webhooks/validate` with
_CHECK_NAMES = {"lago": "lago_reachable", "api_key": "api_key_accepted"}


@dataclass(slots=True)
class Counts:
    """What this process was sent since it started (the ledger holds what was stored)."""

    since: float = field(default_factory=time.time)
    requests: int = 0
    received: int = 0  # events in the requests that were read
    accepted: int = 0  # stored now
    duplicates: int = 0  # stored before (or twice in one batch)
    rejected: int = 0  # in a refused body: malformed, invalid or too many events
    unauthorized: int = 0  # requests without the secret


class Webhooks:
    """The ingest service, built once the store is open: it prices reported models with the same
    deployments and bundled table as gateway rows, and counts what it was sent."""

    def __init__(self, settings: Settings, store: Store, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.store = store
        self.http = http
        self.pricer = Pricer(settings.deployments, prices.load())
        self.counts = Counts()

    def check_secret(self, scope: Scope) -> None:
        """The webhook secret or the master key, from `Authorization` (Bearer or bare) or
        `X-Webhook-Secret`; compared in constant time, every candidate against both."""
        incoming = Incoming(scope["headers"])
        candidates = [bearer_token(incoming.authorization, None, None)]
        candidates += [value.strip() for name, value in scope["headers"] if name == _SECRET_HEADER]
        known = [s for s in (self.settings.webhook_secret, self.settings.master_key) if s is not None]
        matched = False
        for candidate in candidates:
            if candidate:
                for secret in known:
                    matched |= secret.matches(candidate)
        if not matched:
            self.counts.unauthorized += 1
            what = "the webhook secret" if self.settings.webhook_secret is not None else "the master key"
            raise AuthenticationFailed(
                f"Send {what} as 'Authorization: Bearer <secret>' or 'X-Webhook-Secret: <secret>'.",
                code="invalid_webhook_secret",
            )

    async def ingest(self, body: bytes, *, answer_single: bool) -> dict[str, Any]:
        """Checks every event, stores the new ones (one transaction, committed before this
        returns) and says, per event, whether it was accepted now or stored before."""
        now = time.time()
        self.counts.requests += 1
        try:
            events, alone = usage.events_of(_decode(body))
        except BadRequest:
            self.counts.rejected += 1
            raise
        self.counts.received += len(events)
        try:
            reported = usage.parse_all(events, now)
        except Unprocessable:
            self.counts.rejected += len(events)
            raise
        fresh: list[Reported] = []
        seen: set[str] = set()
        for r in reported:  # a request id twice in one batch: the first is the one stored
            if r.uid not in seen:
                seen.add(r.uid)
                fresh.append(r)
        inserted = await self._store(fresh, now)
        results: list[dict[str, Any]] = []
        accepted: set[str] = set()
        for r in reported:
            new = r.uid in inserted and r.uid not in accepted
            if new:
                accepted.add(r.uid)
            results.append({"request_id": r.request_id, "uid": r.uid, "status": "accepted" if new else "duplicate"})
        self.counts.accepted += len(inserted)
        self.counts.duplicates += len(reported) - len(inserted)
        if alone and answer_single:  # one event posted to /webhooks/usage: its own result
            return results[0]
        return {"accepted": len(inserted), "duplicates": len(reported) - len(inserted), "results": results}

    async def _store(self, reported: list[Reported], now: float) -> set[str]:
        named: dict[str, set[str]] = {"key": set(), "user": set(), "team": set(), "customer": set()}
        for r in reported:
            for scope, ident in (
                ("key", r.key_id),
                ("user", r.user_id),
                ("team", r.team_id),
                ("customer", r.customer_id),
            ):
                if ident is not None:
                    named[scope].add(ident)
        try:
            budgets = await self.store.ledger.budget_periods(named)
            entries = [usage.entry_for(r, self.pricer, usage.spend_targets(r, budgets, now)) for r in reported]
            return await self.store.ledger.write_once(entries)
        except Exception:
            log.exception("reported usage not stored; the sender was told to send it again")
            raise ServiceUnavailable("The usage could not be stored (nothing of it was); send it again.") from None

    async def validate(self) -> dict[str, Any]:
        """Whether reported usage can reach Lago: billing configured, Lago answering, the API key
        accepted and the billable metric there, checked as the sender will meet them."""
        checks: dict[str, dict[str, Any]] = {}
        billing = self.settings.billing
        checks["billing_configured"] = {"ok": billing is not None}
        if billing is None:
            checks["billing_configured"]["detail"] = (
                "no billing section or LAGO_API_BASE/LAGO_API_KEY (docs/billing.md)"
            )
        else:  # the same checks as `meterway billing check`, under the names such services use
            models = sorted({*self.settings.model_names(), *await self.store.outbox.models()})
            outcome = await setup.check(billing, self.http, models)
            for step in outcome.steps:
                checks[_CHECK_NAMES.get(step.name, step.name)] = {"ok": step.ok, "detail": step.detail}
        try:
            await self.store.outbox.source_counts(usage.SOURCE)
            checks["ledger"] = {"ok": True}
        except Exception as e:
            checks["ledger"] = {"ok": False, "detail": e.__class__.__name__}
        for name in ("lago_reachable", "api_key_accepted", "billable_metric"):
            checks.setdefault(name, {"ok": False, "detail": "not checked: an earlier check failed"})
        secret = "configured" if self.settings.webhook_secret is not None else "not set: the master key is taken"
        return {"ok": all(c["ok"] for c in checks.values()), "checks": checks, "webhook_secret": secret}


def _decode(body: bytes) -> Any:
    """JSON, or newline-delimited JSON (LiteLLM's `ndjson` log format) as a list."""
    if not body.strip():
        raise BadRequest("The body is empty; send one usage event or a list of them as JSON.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        lines = [line for line in body.splitlines() if line.strip()]
        if len(lines) < 2:
            raise BadRequest(f"The body is not valid JSON: {e}.") from None
    events = []
    for i, line in enumerate(lines, start=1):
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"The body is neither JSON nor newline-delimited JSON (line {i}: {e}).") from None
    return events


async def handle(hooks: Webhooks, scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /webhooks/usage` and `/webhooks/usage/batch`: both take one event, a list, or
    `{"events": [...]}`; a single event posted to `/webhooks/usage` is answered alone. Errors
    go to the boundary (`api.errors.boundary`)."""
    incoming = Incoming(scope["headers"])
    responder = Responder(send, request_id(scope))
    hooks.check_secret(scope)
    body = await read_body(receive, incoming, hooks.settings.max_body_bytes)
    path = scope["path"].removeprefix("/v1")
    answer = await hooks.ingest(body, answer_single=path == "/webhooks/usage")
    await responder.whole(200, orjson.dumps(answer))
