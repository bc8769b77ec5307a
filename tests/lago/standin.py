"""A stand-in Lago API for meterway's billing tests, written from `shared/lago/CONTRACT.md`.

`LagoStandIn` runs an aiohttp server on a loopback port in a background thread. It answers the
endpoints meterway uses, under `/api/v1`, with Lago's bodies and error shapes (section numbers
refer to the contract):

* auth: `Authorization: <anything> <key>`, the second token compared (§1); 401 otherwise;
* bodies must be JSON and carry their root key (§1), else 400;
* events: single and batch, Postgres-store duplicate semantics (§4): the unique key is
  (external_subscription_id, transaction_id); a single duplicate is 422 `value_already_exist`; a
  batch is validated whole, then any index whose id is stored already or repeats in the batch is
  listed and nothing of the batch is stored; at most 100 events per batch;
* timestamps: Unix seconds as int, float or numeric string; anything else 422 `invalid_format`;
* customers (upsert), subscriptions (idempotent), billable metrics (sum_agg with filters; created
  and, as Lago's public API reference has it beyond the contract's subset, updated with
  `PUT /billable_metrics/{code}`, only the keys sent changing), plans
  (charges by metric lago_id, per-filter amounts as strings) and `current_usage` (§5): fees per
  filter, `units x amount` rounded half-up to cents per fee; events before a subscription's start
  or of an unknown code/subscription are stored (200) but never billed;
* unrouted paths: 404 `resource_not_found`;
* charge models (Lago's `app/services/charge_models/*`): `standard`, `package` (packages rounded up
  after the free units), `graduated` (tiers, a tier's flat amount once it is entered), `volume` (all
  units at the tier reached, plus its flat amount), `percentage` (rate, fixed amount per paid event,
  free events / free units; per-transaction min/max only when `premium` is set, as Lago's licence
  gate), per charge and per filter; charges keep `pay_in_advance`, and
  `POST /events/estimate_fees` prices one event on them (the model's amount with it, less without);
  an event of an invoiceable pay-in-advance charge is billed at once, paid from the customer's
  wallets (an outbound `invoiced` transaction), and left out of the ongoing usage;
* `GET /subscriptions/{external_id}`; subscriptions carry `current_billing_period_started_at` /
  `_ending_at` (monthly calendar periods, UTC, from the start when it is later). `current_usage`
  still counts every event since the start (the contract tests stamp events in past months);
* wallets (`shared/lago/wallets/`): create (with paid/granted credits), list (paginated, also
  `GET /customers/{id}/wallets`), find, update (name, priority, expiration_at...), terminate
  (`DELETE`); `POST /wallet_transactions` makes one transaction per kind given (paid, granted,
  voided); granted and voided settle at once, paid too unless `invoice_requires_successful_payment`
  (the transaction's, or the wallet's): pending until `settle_payment(id)`, or failed by
  `fail_payment(id)`. The balance moves when a transaction settles;
* ongoing balance as self-hosted Lago keeps it: unchanged until `refresh_ongoing_balances()` (Lago's
  periodic job; `auto_refresh(interval)` runs it in the stand-in's loop), which terminates expired
  wallets and sets each wallet's ongoing usage from the customer's current usage, spread over its
  active wallets by priority;
* webhooks: endpoints by `POST /webhook_endpoints` or `add_webhook(url, algo)`; each webhook is
  POSTed to every endpoint with `X-Lago-Signature` (`hmac`: Base64 of HMAC-SHA256 of the body keyed
  with the API key; `jwt`: RS256 over `{"data": <body>, "iss": <url>}`, key at
  `GET /webhooks/public_key` and `/webhooks/json_public_key`), `X-Lago-Signature-Algorithm` and
  `X-Lago-Unique-Key` (one per webhook and endpoint, the same on retries); a failed attempt is
  retried (`WEBHOOK_ATTEMPTS` in all, short doubling backoff). Sent: `wallet_transaction.created`,
  `.updated`, `.payment_failure`, `wallet.depleted_ongoing_balance` (ongoing balance from > 0 to
  <= 0 on a refresh). `webhooks` keeps every payload, `deliveries` every attempt
  (`wait_deliveries(n)`); `sign_hmac(body)` / `sign_jwt(body)` sign as the stand-in does, for
  tests that forge or replay webhooks.

Faults for tests (on event posts unless said otherwise):

* `fail_next(n, status)` answers the next n with an error, storing nothing;
* `fail_every(n, status)` answers every n-th with an error, storing nothing (`fail_every(0)` stops);
* `drop_next(n, after_commit=...)` cuts the connection before storing, or after storing and before
  the answer;
* `stall_next(n, seconds, after_commit=...)` holds the next n for up to `seconds`: before storing
  (a post whose client has left by then is not stored, as a request abandoned before Lago's
  commit), or after storing, before the answer (the client may never get it); `holding` counts
  the posts held right now, so a test can act while a send is in flight;
* `down()` / `up()` refuse every request, on every path, by cutting connections;
* `lose(transaction_id)` forgets a stored event (to make reconciliation see a difference).

Every event post that reaches the store is recorded in `posts` (its transaction ids, whether it
was stored, which ids were refused as already stored, whether its client got the answer), so a
test can tell a legitimate resend (the answer was lost) from a double delivery
(`double_deliveries()`: an id sent again after Lago had answered that it stored it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import pairwise
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.gateway import free_socket

BATCH_MAX = 100
ALL_VALUES = "__ALL_FILTER_VALUES__"
WEBHOOK_ATTEMPTS = 4  # the first delivery and 3 retries, as Lago's LAGO_WEBHOOK_ATTEMPTS default
WEBHOOK_BACKOFF_S = 0.05  # doubled on each retry (Lago waits executions**4 + 2 seconds)
WEBHOOK_TIMEOUT_S = 2.0
CHARGE_MODELS = ("standard", "package", "graduated", "volume", "percentage")
AGGREGATIONS = ("count_agg", "sum_agg", "max_agg", "unique_count_agg", "weighted_sum_agg", "latest_agg")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(ts: Decimal) -> str:
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, error: str, code: str | None = None, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"status": status, "error": error}
    if code is not None:
        body["code"] = code
    if details is not None:
        body["error_details"] = details
    return web.json_response(body, status=status)


def _found(root: str, value: dict[str, Any] | None) -> web.Response:
    """`{root: value}`, or Lago's 404 `<root>_not_found`."""
    return web.json_response({root: value}) if value else _not_found(root)


def _missing(root: str) -> web.Response:
    """A body without its root key (section 1)."""
    return _error(400, f"BadRequest: param is missing or the value is empty or invalid: {root}")


def _not_found(resource: str) -> web.Response:
    return _error(404, "Not Found", f"{resource}_not_found")


def _invalid(details: dict[str, Any]) -> web.Response:
    return _error(422, "Unprocessable Entity", "validation_errors", details)


@dataclass
class StoredEvent:
    lago_id: str
    transaction_id: str
    external_subscription_id: str | None
    code: str | None
    timestamp: Decimal
    properties: dict[str, Any]
    precise_total_amount_cents: str | None
    created_at: str

    def serialize(self) -> dict[str, Any]:
        return {
            "lago_id": self.lago_id,
            "transaction_id": self.transaction_id,
            "lago_customer_id": None,
            "code": self.code,
            "timestamp": _iso(self.timestamp),
            "precise_total_amount_cents": self.precise_total_amount_cents,
            "properties": self.properties,
            "lago_subscription_id": None,
            "external_subscription_id": self.external_subscription_id,
            "created_at": self.created_at,
        }


@dataclass
class Post:
    """An event post that reached the store, and what came of it."""

    transaction_ids: tuple[str, ...]
    stored: bool = False
    already_stored: tuple[str, ...] = ()  # ids answered `value_already_exist` (stored before, or repeated)
    answered: bool = True  # False when the client never got the answer (cut, or gone while held)


POST = web.RequestKey("post", Post)  # the record of an event post, for the middleware


@dataclass
class Wallet:
    lago_id: str
    external_customer_id: str
    currency: str
    name: str | None
    code: str
    priority: int
    rate_amount: Decimal
    created_at: str
    expiration_at: str | None
    invoice_requires_successful_payment: bool
    applies_to: dict[str, list[str]]
    status: str = "active"
    terminated_at: str | None = None
    credits_balance: Decimal = Decimal(0)
    balance_cents: int = 0
    consumed_credits: Decimal = Decimal(0)
    ongoing_usage_cents: int = 0  # set only by `refresh_ongoing_balances`
    ongoing_usage_credits: Decimal = Decimal(0)
    depleted: bool = False  # Lago's `depleted_ongoing_balance` flag: the webhook went, not sent again
    last_balance_sync_at: str | None = None
    last_consumed_credit_at: str | None = None


@dataclass
class WalletTransaction:
    lago_id: str
    wallet_id: str
    transaction_status: str  # purchased | granted | voided
    transaction_type: str  # inbound | outbound
    credit_amount: Decimal
    amount: Decimal  # credits x rate, in the currency
    invoice_id: str | None
    invoice_requires_successful_payment: bool
    created_at: str
    name: str | None
    metadata: list[Any]
    status: str = "pending"
    settled_at: str | None = None
    failed_at: str | None = None


@dataclass
class Delivery:
    """One attempt to deliver a webhook."""

    url: str
    webhook_type: str
    unique_key: str
    body: bytes
    headers: dict[str, str]
    attempt: int
    status: int | None  # None: no answer (connection refused, cut, timed out)
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Stall:
    seconds: float
    after_commit: bool


@dataclass
class Faults:
    fail: list[int] = field(default_factory=list)  # statuses for the next requests to /events*
    fail_every: int = 0  # every N-th event post: `fail_every_status`
    fail_every_status: int = 500
    drop_before: int = 0  # next N event posts: connection cut before storing
    drop_after: int = 0  # next N event posts: stored, then the connection cut before the answer
    stall: list[Stall] = field(default_factory=list)  # the next event posts, held
    down: bool = False


class LagoStandIn:
    def __init__(self, api_key: str = "lago-test-key") -> None:
        self.api_key = api_key
        self.events: list[StoredEvent] = []
        self._stored: set[tuple[str, str]] = set()  # (subscription, transaction id): the unique index
        self.on_store: Callable[[str], object] | None = None  # called with each stored transaction id
        self.customers: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.metrics: dict[str, dict[str, Any]] = {}
        self.plans: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.posts: list[Post] = []  # every event post that reached the store
        self.holding = 0  # event posts held by `stall_next` right now
        self.faults = Faults()
        self._event_posts = 0
        self.organization_id = str(uuid.uuid4())
        self.premium = False  # Lago's premium licence: percentage charges' per-transaction min/max
        self.wallets: dict[str, Wallet] = {}
        self.transactions: dict[str, WalletTransaction] = {}
        self.webhook_endpoints: list[dict[str, Any]] = []
        self.webhooks: list[dict[str, Any]] = []  # every webhook payload sent, in order
        self.deliveries: list[Delivery] = []  # every delivery attempt
        self._deliveries: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self._private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._lock = threading.Lock()
        self._sock = free_socket()
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> LagoStandIn:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_post("/api/v1/events", self._event)
        r.add_post("/api/v1/events/batch", self._batch)
        r.add_post("/api/v1/events/estimate_fees", self._estimate_fees)
        r.add_get("/api/v1/events", self._events)
        r.add_get("/api/v1/events/{transaction_id}", self._find_event)
        r.add_post("/api/v1/customers", self._customer)
        r.add_get("/api/v1/customers/{external_id}", self._get_customer)
        r.add_get("/api/v1/customers/{external_id}/current_usage", self._current_usage)
        r.add_post("/api/v1/subscriptions", self._subscription)
        r.add_get("/api/v1/subscriptions", self._subscriptions)
        r.add_post("/api/v1/billable_metrics", self._metric)
        r.add_get("/api/v1/billable_metrics/{code}", self._get_metric)
        r.add_put("/api/v1/billable_metrics/{code}", self._update_metric)
        r.add_post("/api/v1/plans", self._plan)
        r.add_get("/api/v1/plans/{code}", self._get_plan)
        r.add_get("/api/v1/subscriptions/{external_id}", self._get_subscription)
        r.add_post("/api/v1/wallets", self._create_wallet)
        r.add_get("/api/v1/wallets", self._wallets)
        r.add_get("/api/v1/customers/{external_id}/wallets", self._wallets)
        r.add_get("/api/v1/wallets/{lago_id}", self._get_wallet)
        r.add_put("/api/v1/wallets/{lago_id}", self._update_wallet)
        r.add_delete("/api/v1/wallets/{lago_id}", self._terminate_wallet)
        r.add_get("/api/v1/wallets/{lago_id}/wallet_transactions", self._wallet_transactions)
        r.add_post("/api/v1/wallet_transactions", self._create_wallet_transactions)
        r.add_get("/api/v1/wallet_transactions/{lago_id}", self._get_wallet_transaction)
        r.add_post("/api/v1/webhook_endpoints", self._create_webhook_endpoint)
        r.add_get("/api/v1/webhooks/public_key", self._public_key)
        r.add_get("/api/v1/webhooks/json_public_key", self._json_public_key)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.SockSite(runner, self._sock).start())
        self._ready.set()
        self._loop.run_forever()
        pending = [t for t in (self._refresher, *self._deliveries) if t is not None]
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    # ---------------------------------------------------------------- faults and inspection

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self.faults.fail.extend([status] * n)

    def fail_every(self, n: int, status: int = 500) -> None:
        with self._lock:
            self.faults.fail_every, self.faults.fail_every_status = n, status

    def stall_next(self, n: int = 1, seconds: float = 30.0, *, after_commit: bool) -> None:
        with self._lock:
            self.faults.stall.extend([Stall(seconds, after_commit)] * n)

    def stall_none(self) -> None:
        """Forgets the stalls `stall_next` set that no post has taken yet."""
        with self._lock:
            self.faults.stall.clear()

    def drop_next(self, n: int = 1, *, after_commit: bool) -> None:
        with self._lock:
            if after_commit:
                self.faults.drop_after += n
            else:
                self.faults.drop_before += n

    def down(self) -> None:
        self.faults.down = True

    def up(self) -> None:
        self.faults.down = False

    def lose(self, transaction_id: str) -> None:
        with self._lock:
            self.events = [e for e in self.events if e.transaction_id != transaction_id]
            self._stored = {k for k in self._stored if k[1] != transaction_id}

    def transaction_ids(self) -> list[str]:
        with self._lock:
            return [e.transaction_id for e in self.events]

    def double_deliveries(self) -> list[str]:
        """Ids sent again after a post carrying them was stored and its answer reached the client:
        a sender that resends only what it never heard back about has none."""
        confirmed: set[str] = set()
        again: list[str] = []
        with self._lock:
            posts = list(self.posts)
        for post in posts:
            again += [t for t in post.transaction_ids if t in confirmed]
            if post.stored and post.answered:
                confirmed.update(post.transaction_ids)
        return again

    # ---------------------------------------------------------------- plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.faults.down:
            _cut(request)
            return web.Response(status=503)
        if request.match_info.http_exception is not None:  # unrouted: answered before auth, as Lago does
            return _not_found("resource")
        token = (request.headers.get("Authorization") or "").split(" ")
        if len(token) < 2 or token[1] != self.api_key:
            return _error(401, "Unauthorized")
        posting = (
            request.path.startswith("/api/v1/events")
            and request.method == "POST"
            and not request.path.endswith("/estimate_fees")
        )
        stall: Stall | None = None
        if posting:
            with self._lock:
                self._event_posts += 1
                status = self.faults.fail.pop(0) if self.faults.fail else None
                every = self.faults.fail_every
                if status is None and every and self._event_posts % every == 0:
                    status = self.faults.fail_every_status
                drop = self.faults.drop_before > 0
                if drop:
                    self.faults.drop_before -= 1
                if status is None and not drop and self.faults.stall:
                    stall = self.faults.stall.pop(0)
            if status is not None:
                return _error(status, "Internal Server Error" if status >= 500 else "Error")
            if drop:
                _cut(request)
                return web.Response(status=503)
            if stall is not None and not stall.after_commit and not await self._hold(request, stall.seconds):
                return web.Response(status=503)  # the client left before the commit: nothing stored
        response: web.StreamResponse = await handler(request)
        if posting and response.status == 200:
            with self._lock:
                drop = self.faults.drop_after > 0
                if drop:
                    self.faults.drop_after -= 1
            if drop:  # stored already: the client never learns it
                _cut(request)
                answered = False
            elif stall is not None and stall.after_commit:
                answered = await self._hold(request, stall.seconds)
            else:
                answered = True
            post = request.get(POST)
            if post is not None:
                post.answered = answered
        return response

    async def _hold(self, request: web.Request, seconds: float) -> bool:
        """Waits `seconds`, or until the client leaves; True when the client is still there."""
        self.holding += 1
        try:
            deadline = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < deadline:
                if _gone(request):
                    return False
                await asyncio.sleep(0.02)
            return not _gone(request)
        finally:
            self.holding -= 1

    async def _body(self, request: web.Request, root: str) -> Any:
        if not (request.content_type or "").endswith("json"):
            return None
        try:
            data = await request.json()
        except ValueError:
            return None
        return data.get(root) if isinstance(data, dict) else None

    # ---------------------------------------------------------------- events

    def _validate(self, raw: Any) -> tuple[dict[str, list[str]], StoredEvent | None]:
        if not isinstance(raw, dict):
            return {"event": ["value_is_invalid"]}, None
        errors: dict[str, list[str]] = {}
        tid = raw.get("transaction_id")
        if not isinstance(tid, str) or not tid:
            errors["transaction_id"] = ["value_is_mandatory"]
        ts = raw.get("timestamp")
        stamp = Decimal(str(datetime.now(UTC).timestamp()))
        if ts is not None:
            try:
                if isinstance(ts, bool) or not isinstance(ts, int | float | str):
                    raise InvalidOperation
                stamp = Decimal(str(ts))
                if not stamp.is_finite():
                    raise InvalidOperation
            except InvalidOperation:
                errors["timestamp"] = ["invalid_format"]
        if errors:
            return errors, None
        properties = raw.get("properties") if isinstance(raw.get("properties"), dict) else {}
        return {}, StoredEvent(
            lago_id=str(uuid.uuid4()),
            transaction_id=str(tid),
            external_subscription_id=raw.get("external_subscription_id"),
            code=raw.get("code"),
            timestamp=stamp,
            properties=properties,
            precise_total_amount_cents=raw.get("precise_total_amount_cents"),
            created_at=_now(),
        )

    def _exists(self, event: StoredEvent) -> bool:
        if event.external_subscription_id is None:  # NULLs are distinct in the unique index
            return False
        return (event.external_subscription_id, event.transaction_id) in self._stored

    def _store(self, events: list[StoredEvent]) -> None:
        """Keeps events (under the lock) and their unique index."""
        self.events.extend(events)
        for e in events:
            if e.external_subscription_id is not None:
                self._stored.add((e.external_subscription_id, e.transaction_id))
            if self.on_store is not None:
                self.on_store(e.transaction_id)

    async def _event(self, request: web.Request) -> web.Response:
        raw = await self._body(request, "event")
        if raw is None:
            return _missing("event")
        errors, event = self._validate(raw)
        if errors or event is None:
            return _invalid(errors)
        post = Post((event.transaction_id,))
        request[POST] = post
        with self._lock:
            self.posts.append(post)
            if self._exists(event):
                post.already_stored = post.transaction_ids
                return _invalid({"transaction_id": ["value_already_exist"]})
            self._store([event])
            post.stored = True
        self._bill_in_advance([event])
        return web.json_response({"event": event.serialize()})

    async def _batch(self, request: web.Request) -> web.Response:
        raw = await self._body(request, "events")
        if not isinstance(raw, list) or not raw:
            return _invalid({"events": ["no_events"]})
        if len(raw) > BATCH_MAX:
            return _invalid({"events": ["too_many_events"]})
        checked = [self._validate(item) for item in raw]
        invalid = {str(i): errors for i, (errors, _) in enumerate(checked) if errors}
        if invalid:
            return _invalid(invalid)
        events = [e for _, e in checked if e is not None]
        post = Post(tuple(e.transaction_id for e in events))
        request[POST] = post
        with self._lock:
            self.posts.append(post)
            seen: set[tuple[str | None, str]] = set()
            taken: dict[str, Any] = {}
            for i, event in enumerate(events):
                key = (event.external_subscription_id, event.transaction_id)
                repeated = any(event.transaction_id == t for _, t in seen)  # even for another subscription
                if self._exists(event) or repeated:
                    taken[str(i)] = {"transaction_id": ["value_already_exist"]}
                seen.add(key)
            if taken:
                post.already_stored = tuple(events[int(i)].transaction_id for i in taken)
                return _invalid(taken)
            self._store(events)
            post.stored = True
        self._bill_in_advance(events)
        return web.json_response({"events": [e.serialize() for e in events]})

    async def _events(self, request: web.Request) -> web.Response:
        q = request.query
        page, per_page = int(q.get("page", 1)), int(q.get("per_page", 100))
        with self._lock:
            found = [
                e
                for e in self.events
                if (not q.get("code") or e.code == q["code"])
                and (
                    not q.get("external_subscription_id") or e.external_subscription_id == q["external_subscription_id"]
                )
            ]
        chunk = found[(page - 1) * per_page : page * per_page]
        pages = max(1, -(-len(found) // per_page))
        meta = {
            "current_page": page,
            "next_page": page + 1 if page < pages else None,
            "prev_page": page - 1 if page > 1 else None,
            "total_pages": pages,
            "total_count": len(found),
        }
        return web.json_response({"events": [e.serialize() for e in chunk], "meta": meta})

    async def _find_event(self, request: web.Request) -> web.Response:
        tid = request.match_info["transaction_id"]
        with self._lock:
            found = next((e for e in self.events if e.transaction_id == tid), None)
        if found is None:
            return _not_found("event")
        return web.json_response({"event": found.serialize()})

    async def _estimate_fees(self, request: web.Request) -> web.Response:
        """The fees an event would make on the subscription's pay-in-advance charges of its metric:
        per charge, what the charge model gives for the period's events with this one, less without."""
        raw = await self._body(request, "event")
        if not isinstance(raw, dict):
            return _missing("event")
        sub = self.subscriptions.get(str(raw.get("external_subscription_id")))
        if sub is None:
            return _not_found("subscription")
        metric = self.metrics.get(str(raw.get("code")))
        if metric is None:
            return _not_found("billable_metric")
        charges = [
            c for c in sub["plan"]["charges"] if c["billable_metric_code"] == metric["code"] and c.get("pay_in_advance")
        ]
        if not charges:
            return _invalid({"code": ["does_not_match_an_instant_charge"]})
        properties: dict[str, Any] = raw["properties"] if isinstance(raw.get("properties"), dict) else {}
        started = _epoch(_with_period(sub)["current_billing_period_started_at"]) or Decimal(0)
        with self._lock:
            events = [
                e for e in self.events if e.external_subscription_id == sub["external_id"] and e.timestamp >= started
            ]
        now = datetime.now(UTC)
        event = StoredEvent(
            lago_id=str(uuid.uuid4()),
            transaction_id=str(raw.get("transaction_id") or uuid.uuid4()),
            external_subscription_id=sub["external_id"],
            code=metric["code"],
            timestamp=Decimal(str(now.timestamp())),
            properties=properties,
            precise_total_amount_cents=None,
            created_at=_now(),
        )
        fees = []
        customer = self.customers.get(sub["external_customer_id"]) or {}
        currency = sub["plan"]["amount_currency"]
        for charge in charges:
            before = _charge_usage(charge, self.metrics, events, self.premium)
            after = _charge_usage(charge, self.metrics, [*events, event], self.premium)
            # the bucket (filter, or the charge's default) this event falls in
            bucket = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(before["filters"], after["filters"], strict=True))
                    if a["events_count"] != b["events_count"]
                ),
                len(after["filters"]) - 1,
            )
            cents = after["filters"][bucket]["amount_cents"] - before["filters"][bucket]["amount_cents"]
            units = Decimal(after["filters"][bucket]["units"]) - Decimal(before["filters"][bucket]["units"])
            matched = charge["filters"][bucket] if bucket < len(charge["filters"]) else None
            fees.append(
                {
                    "lago_id": None,
                    "lago_charge_id": charge["lago_id"],
                    "lago_charge_filter_id": matched["lago_id"] if matched else None,
                    "lago_invoice_id": None,
                    "lago_true_up_fee_id": None,
                    "lago_true_up_parent_fee_id": None,
                    "lago_subscription_id": sub["lago_id"],
                    "lago_customer_id": customer.get("lago_id"),
                    "external_customer_id": sub["external_customer_id"],
                    "external_subscription_id": sub["external_id"],
                    "amount_cents": cents,
                    "precise_amount": _units(Decimal(cents) / 100),
                    "precise_total_amount": _units(Decimal(cents) / 100),
                    "amount_currency": currency,
                    "taxes_amount_cents": 0,
                    "taxes_precise_amount": "0.0",
                    "taxes_rate": 0.0,
                    "units": _units(units),
                    "precise_unit_amount": _units(Decimal(cents) / 100 / units) if units else "0.0",
                    "total_aggregated_units": _units(units),
                    "total_amount_cents": cents,
                    "total_amount_currency": currency,
                    "events_count": 1,
                    "pay_in_advance": True,
                    "invoiceable": charge.get("invoiceable", True),
                    "from_date": None,
                    "to_date": None,
                    "payment_status": "pending",
                    "created_at": None,
                    "succeeded_at": None,
                    "failed_at": None,
                    "refunded_at": None,
                    "event_transaction_id": event.transaction_id,
                    "precise_coupons_amount_cents": "0.0",
                    "sub_total_excluding_taxes_amount_cents": cents,
                    "sub_total_excluding_taxes_precise_amount_cents": _units(Decimal(cents)),
                    "amount_details": {},
                    "self_billed": False,
                    "item": {
                        "type": "charge",
                        "code": metric["code"],
                        "name": metric["name"],
                        "description": metric.get("description"),
                        "invoice_display_name": charge.get("invoice_display_name") or metric["name"],
                        "filter_invoice_display_name": None,
                        "filters": matched["values"] if matched else None,
                        "lago_item_id": metric["lago_id"],
                        "item_type": "BillableMetric",
                        "grouped_by": {},
                    },
                }
            )
        return web.json_response({"fees": fees})

    # ---------------------------------------------------------------- customers and subscriptions

    async def _customer(self, request: web.Request) -> web.Response:
        raw = await self._body(request, "customer")
        if not isinstance(raw, dict):
            return _missing("customer")
        external_id = raw.get("external_id")
        if not external_id:
            return _invalid({"external_id": ["value_is_mandatory"]})
        existing = self.customers.get(external_id)
        now = _now()
        customer = existing or {
            "lago_id": str(uuid.uuid4()),
            "external_id": external_id,
            "sequential_id": len(self.customers) + 1,
            "slug": f"LAG-{len(self.customers) + 1:04d}",
            "created_at": now,
            "applicable_timezone": "UTC",
            "currency": None,
            "name": None,
        }
        customer.update({k: v for k, v in raw.items() if k != "external_id"})
        customer["updated_at"] = now
        self.customers[external_id] = customer
        return web.json_response({"customer": customer})

    async def _get_customer(self, request: web.Request) -> web.Response:
        return _found("customer", self.customers.get(request.match_info["external_id"]))

    async def _subscription(self, request: web.Request) -> web.Response:
        raw = await self._body(request, "subscription")
        if not isinstance(raw, dict):
            return _missing("subscription")
        customer_id, plan_code = raw.get("external_customer_id"), raw.get("plan_code")
        if not customer_id:
            return _invalid({"external_customer_id": ["value_is_mandatory"]})
        plan = self.plans.get(str(plan_code))
        if plan is None:
            return _not_found("plan")
        external_id = raw.get("external_id") or str(uuid.uuid4())
        existing = self.subscriptions.get(external_id)
        if existing is not None:
            if existing["external_customer_id"] != customer_id:
                return _invalid({"external_id": ["value_already_exist"]})
            if existing["plan_code"] == plan_code:
                return web.json_response({"subscription": _with_period(existing)})
        if customer_id not in self.customers:
            self.customers[customer_id] = {"lago_id": str(uuid.uuid4()), "external_id": customer_id, "currency": None}
        started = raw.get("subscription_at") or _now()
        sub = {
            "lago_id": str(uuid.uuid4()),
            "external_id": external_id,
            "external_customer_id": customer_id,
            "plan_code": plan_code,
            "status": "active",
            "started_at": started,
            "subscription_at": started,
            "billing_time": raw.get("billing_time", "calendar"),
            "created_at": _now(),
            "plan": plan,
        }
        self.subscriptions[external_id] = sub
        return web.json_response({"subscription": _with_period(sub)})

    async def _get_subscription(self, request: web.Request) -> web.Response:
        sub = self.subscriptions.get(request.match_info["external_id"])
        return _found("subscription", _with_period(sub) if sub else None)

    async def _subscriptions(self, request: web.Request) -> web.Response:
        q = request.query
        subs = [
            s
            for s in self.subscriptions.values()
            if (not q.get("external_customer_id") or s["external_customer_id"] == q["external_customer_id"])
            and (not q.get("plan_code") or s["plan_code"] == q["plan_code"])
        ]
        meta = {"current_page": 1, "next_page": None, "prev_page": None, "total_pages": 1, "total_count": len(subs)}
        return web.json_response({"subscriptions": [_with_period(s) for s in subs], "meta": meta})

    # ---------------------------------------------------------------- wallets

    def _wallet_view(self, w: Wallet) -> dict[str, Any]:
        """A wallet as Lago's `WalletObject` (under the lock)."""
        customer = self.customers.get(w.external_customer_id) or {}
        return {
            "lago_id": w.lago_id,
            "lago_customer_id": customer.get("lago_id"),
            "external_customer_id": w.external_customer_id,
            "billing_entity_code": "default",
            "status": w.status,
            "currency": w.currency,
            "name": w.name,
            "code": w.code,
            "priority": w.priority,
            "rate_amount": _units(w.rate_amount),
            "credits_balance": _units(w.credits_balance),
            # listed as required by WalletObject.yaml without a description (Lago's old, pre-cents
            # field): the balance in the currency, as a decimal string
            "balance": _units(Decimal(w.balance_cents) / 100),
            "balance_cents": w.balance_cents,
            "consumed_credits": _units(w.consumed_credits),
            "created_at": w.created_at,
            "expiration_at": w.expiration_at,
            "last_balance_sync_at": w.last_balance_sync_at,
            "last_consumed_credit_at": w.last_consumed_credit_at,
            "terminated_at": w.terminated_at,
            "invoice_requires_successful_payment": w.invoice_requires_successful_payment,
            "applies_to": w.applies_to,
            "recurring_transaction_rules": [],
            "ongoing_balance_cents": w.balance_cents - w.ongoing_usage_cents,
            "ongoing_usage_balance_cents": w.ongoing_usage_cents,
            "credits_ongoing_balance": _units(
                _credits(Decimal(w.balance_cents - w.ongoing_usage_cents) / 100 / w.rate_amount)
            ),
            "credits_ongoing_usage_balance": _units(w.ongoing_usage_credits),
            "paid_top_up_min_amount_cents": None,
            "paid_top_up_max_amount_cents": None,
            "applied_invoice_custom_sections": [],
            "payment_method": {"payment_method_type": "provider", "payment_method_id": None},
            "purchase_order_number": None,
            "metadata": {},
        }

    def _transaction_view(self, t: WalletTransaction, *, with_wallet: bool = False) -> dict[str, Any]:
        """A transaction as Lago's `WalletTransactionObject` (`...Extended`, with its wallet, in webhooks)."""
        body = {
            "lago_id": t.lago_id,
            "lago_wallet_id": t.wallet_id,
            "lago_invoice_id": t.invoice_id,
            "lago_credit_note_id": None,
            "lago_voided_invoice_id": None,
            "status": t.status,
            "source": "manual",
            "transaction_status": t.transaction_status,
            "transaction_type": t.transaction_type,
            "amount": _units(t.amount),
            "credit_amount": _units(t.credit_amount),
            "remaining_amount_cents": None,
            "remaining_credit_amount": None,
            "priority": 50,
            "invoice_requires_successful_payment": t.invoice_requires_successful_payment,
            "settled_at": t.settled_at,
            "failed_at": t.failed_at,
            "created_at": t.created_at,
            "metadata": t.metadata,
            "name": t.name,
            "applied_invoice_custom_sections": [],
            "payment_method": {"payment_method_type": "provider", "payment_method_id": None},
            "purchase_order_number": None,
        }
        if with_wallet:
            body["wallet"] = self._wallet_view(self.wallets[t.wallet_id])
        return body

    async def _create_wallet(self, request: web.Request) -> web.Response:
        raw = await self._body(request, "wallet")
        if not isinstance(raw, dict):
            return _missing("wallet")
        customer_id = raw.get("external_customer_id")
        customer = self.customers.get(str(customer_id))
        if customer is None:
            return _not_found("customer")
        errors: dict[str, list[str]] = {}
        rate = _decimal(raw.get("rate_amount"))
        if rate is None or rate <= 0:
            errors["rate_amount"] = ["invalid_amount"]
        currency = raw.get("currency")
        if not currency:
            errors["currency"] = ["value_is_mandatory"]
        elif customer.get("currency") and customer["currency"] != currency:
            errors["currency"] = ["currencies_does_not_match"]
        credits = {k: _decimal(raw.get(k) or "0") for k in ("paid_credits", "granted_credits")}
        for name, value in credits.items():
            if value is None or value < 0:
                errors[name] = ["invalid_amount"]
        priority = raw.get("priority", 50)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 50:
            errors["priority"] = ["value_is_invalid"]
        expiration = raw.get("expiration_at")
        if expiration is not None and _instant(expiration, future=True) is None:
            errors["expiration_at"] = ["invalid_date"]
        label = raw.get("name")
        code = str(raw.get("code") or (str(label).lower().replace(" ", "_") if label else "default"))
        with self._lock:
            if any(
                w.code == code and w.status == "active" and w.external_customer_id == customer_id
                for w in self.wallets.values()
            ):
                errors["code"] = ["value_already_exist"]
        if errors or rate is None:
            return _invalid(errors)
        customer["currency"] = customer.get("currency") or currency
        now = _second(datetime.now(UTC))
        wallet = Wallet(
            lago_id=str(uuid.uuid4()),
            external_customer_id=str(customer_id),
            currency=str(currency),
            name=label,
            code=code,
            priority=priority,
            rate_amount=rate,
            created_at=now,
            expiration_at=_second(_parse_time(expiration)) if expiration else None,
            invoice_requires_successful_payment=bool(raw.get("invoice_requires_successful_payment", False)),
            applies_to={
                "fee_types": list((raw.get("applies_to") or {}).get("fee_types") or []),
                "billable_metric_codes": list((raw.get("applies_to") or {}).get("billable_metric_codes") or []),
            },
        )
        with self._lock:
            self.wallets[wallet.lago_id] = wallet
        self._top_up(
            wallet,
            paid=credits["paid_credits"] or Decimal(0),
            granted=credits["granted_credits"] or Decimal(0),
            voided=Decimal(0),
            requires_payment=wallet.invoice_requires_successful_payment,
            name=raw.get("transaction_name"),
            metadata=list(raw.get("transaction_metadata") or []),
        )
        with self._lock:
            return web.json_response({"wallet": self._wallet_view(wallet)})

    async def _wallets(self, request: web.Request) -> web.Response:
        customer_id = request.match_info.get("external_id") or request.query.get("external_customer_id")
        if customer_id is not None and customer_id not in self.customers:
            return _not_found("customer")
        with self._lock:
            found = [
                self._wallet_view(w)
                for w in self.wallets.values()
                if (customer_id is None or w.external_customer_id == customer_id)
                and (not request.query.get("currency") or w.currency == request.query["currency"])
            ]
        return _page("wallets", found, request)

    async def _get_wallet(self, request: web.Request) -> web.Response:
        with self._lock:
            wallet = self.wallets.get(request.match_info["lago_id"])
            return _found("wallet", self._wallet_view(wallet) if wallet else None)

    async def _update_wallet(self, request: web.Request) -> web.Response:
        """PUT: name, expiration_at, priority, applies_to, invoice_requires_successful_payment."""
        wallet = self.wallets.get(request.match_info["lago_id"])
        if wallet is None:
            return _not_found("wallet")
        raw = await self._body(request, "wallet")
        if not isinstance(raw, dict):
            return _missing("wallet")
        errors: dict[str, list[str]] = {}
        if "priority" in raw:
            p = raw["priority"]
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 50:
                errors["priority"] = ["value_is_invalid"]
        expiration = raw.get("expiration_at")
        if expiration is not None and _instant(expiration, future=True) is None:
            errors["expiration_at"] = ["invalid_date"]
        if errors:
            return _invalid(errors)
        with self._lock:
            if "name" in raw:
                wallet.name = raw["name"]
            if "priority" in raw:
                wallet.priority = raw["priority"]
            if "expiration_at" in raw:
                wallet.expiration_at = _second(_parse_time(expiration)) if expiration else None
            if "invoice_requires_successful_payment" in raw:
                wallet.invoice_requires_successful_payment = bool(raw["invoice_requires_successful_payment"])
            if isinstance(raw.get("applies_to"), dict):
                wallet.applies_to = {
                    "fee_types": list(raw["applies_to"].get("fee_types") or []),
                    "billable_metric_codes": list(raw["applies_to"].get("billable_metric_codes") or []),
                }
            return web.json_response({"wallet": self._wallet_view(wallet)})

    async def _terminate_wallet(self, request: web.Request) -> web.Response:
        with self._lock:
            wallet = self.wallets.get(request.match_info["lago_id"])
            if wallet is None:
                return _not_found("wallet")
            _terminate(wallet)
            return web.json_response({"wallet": self._wallet_view(wallet)})

    async def _create_wallet_transactions(self, request: web.Request) -> web.Response:
        raw = await self._body(request, "wallet_transaction")
        if not isinstance(raw, dict):
            return _missing("wallet_transaction")
        wallet = self.wallets.get(str(raw.get("wallet_id")))
        if wallet is None:
            return _not_found("wallet")
        errors: dict[str, list[str]] = {}
        amounts = {k: _decimal(raw.get(k) or "0") for k in ("paid_credits", "granted_credits", "voided_credits")}
        for name, value in amounts.items():
            if value is None or value < 0:
                errors[name] = ["invalid_amount"]
        if wallet.status != "active":
            errors["wallet_id"] = ["wallet_is_terminated"]
        voided = amounts["voided_credits"] or Decimal(0)
        if voided > wallet.credits_balance:
            errors["voided_credits"] = ["insufficient_credits"]
        if errors:
            return _invalid(errors)
        made = self._top_up(
            wallet,
            paid=amounts["paid_credits"] or Decimal(0),
            granted=amounts["granted_credits"] or Decimal(0),
            voided=voided,
            # a null or false flag falls back to the wallet's (`||=` in Lago's CreateFromParamsService)
            requires_payment=bool(raw.get("invoice_requires_successful_payment"))
            or wallet.invoice_requires_successful_payment,
            name=raw.get("name"),
            metadata=list(raw.get("metadata") or []),
        )
        with self._lock:
            return web.json_response({"wallet_transactions": [self._transaction_view(t) for t in made]})

    async def _wallet_transactions(self, request: web.Request) -> web.Response:
        lago_id = request.match_info["lago_id"]
        if lago_id not in self.wallets:
            return _not_found("wallet")
        q = request.query
        with self._lock:
            found = [
                self._transaction_view(t)
                for t in self.transactions.values()
                if t.wallet_id == lago_id
                and all(
                    not q.get(k) or getattr(t, k) == q[k] for k in ("status", "transaction_status", "transaction_type")
                )
            ]
        return _page("wallet_transactions", found, request)

    async def _get_wallet_transaction(self, request: web.Request) -> web.Response:
        with self._lock:
            t = self.transactions.get(request.match_info["lago_id"])
            return _found("wallet_transaction", self._transaction_view(t) if t else None)

    def _top_up(
        self,
        wallet: Wallet,
        *,
        paid: Decimal,
        granted: Decimal,
        voided: Decimal,
        requires_payment: bool,
        name: str | None,
        metadata: list[Any],
    ) -> list[WalletTransaction]:
        """One transaction per kind given (paid, granted, voided, in Lago's order): granted and voided
        settle at once, paid too unless the payment must succeed first (then `settle_payment`)."""
        made: list[WalletTransaction] = []
        now = _second(datetime.now(UTC))
        kinds = (("purchased", "inbound", paid), ("granted", "inbound", granted), ("voided", "outbound", voided))
        with self._lock:
            for status, direction, credits in kinds:
                if credits <= 0:
                    continue
                t = WalletTransaction(
                    lago_id=str(uuid.uuid4()),
                    wallet_id=wallet.lago_id,
                    transaction_status=status,
                    transaction_type=direction,
                    credit_amount=credits.quantize(Decimal("0.00001"), rounding=ROUND_FLOOR),
                    amount=credits.quantize(Decimal("0.00001"), rounding=ROUND_FLOOR) * wallet.rate_amount,
                    invoice_id=str(uuid.uuid4()) if status == "purchased" else None,
                    invoice_requires_successful_payment=requires_payment,
                    created_at=now,
                    name=name,
                    metadata=metadata,
                )
                self.transactions[t.lago_id] = t
                made.append(t)
                if not (status == "purchased" and requires_payment):
                    _settle(wallet, t)
            created = [self._webhook_body("wallet_transaction.created", t) for t in made]
        for body in created:
            self._emit(body)
        return made

    def settle_payment(self, transaction_id: str) -> None:
        """The payment of a pending paid top-up succeeded: its credits land (`wallet_transaction.updated`)."""
        with self._lock:
            t = self.transactions[transaction_id]
            if t.status != "pending":
                return
            _settle(self.wallets[t.wallet_id], t)
            body = self._webhook_body("wallet_transaction.updated", t)
        self._emit(body)

    def fail_payment(self, transaction_id: str) -> None:
        """The payment of a pending paid top-up failed: `wallet_transaction.payment_failure`, then the
        transaction is marked failed (`wallet_transaction.updated`)."""
        with self._lock:
            t = self.transactions[transaction_id]
            if t.status != "pending":
                return
            customer = self.customers.get(self.wallets[t.wallet_id].external_customer_id) or {}
            failure = {
                "webhook_type": "wallet_transaction.payment_failure",
                "object_type": "payment_provider_wallet_transaction_payment_error",
                "organization_id": self.organization_id,
                "payment_provider_wallet_transaction_payment_error": {
                    "lago_wallet_transaction_id": t.lago_id,
                    "lago_customer_id": customer.get("lago_id"),
                    "external_customer_id": customer.get("external_id"),
                    "provider_customer_id": f"cus_{customer.get('external_id')}",
                    "payment_provider": "stripe",
                    "payment_provider_code": "stripe",
                    "provider_error": {"message": "Your card was declined.", "error_code": "card_declined"},
                },
            }
            t.status, t.failed_at = "failed", _second(datetime.now(UTC))
            updated = self._webhook_body("wallet_transaction.updated", t)
        self._emit(failure)
        self._emit(updated)

    def _bill_in_advance(self, events: list[StoredEvent]) -> None:
        """Lago bills an invoiceable pay-in-advance charge when its event arrives: the fee (what
        the charge model gives for the period's events with this one, less without) is invoiced
        and paid from the customer's wallets first, in priority order, each down to zero at most:
        an outbound `invoiced` transaction per wallet (`wallet_transaction.created`)."""
        for event in events:
            sub = self.subscriptions.get(event.external_subscription_id or "")
            if sub is None or sub["status"] != "active":
                continue
            charges = [
                c
                for c in sub["plan"]["charges"]
                if c.get("pay_in_advance") and c.get("invoiceable", True) and c["billable_metric_code"] == event.code
            ]
            start = _epoch(_with_period(sub)["current_billing_period_started_at"]) or Decimal(0)
            if not charges or event.timestamp < start:
                continue
            with self._lock:
                index = next((i for i, e in enumerate(self.events) if e is event), len(self.events))
                prior = [
                    e
                    for e in self.events[:index]
                    if e.external_subscription_id == sub["external_id"] and e.timestamp >= start
                ]
            fee = sum(
                _charge_usage(c, self.metrics, [*prior, event], self.premium)["amount_cents"]
                - _charge_usage(c, self.metrics, prior, self.premium)["amount_cents"]
                for c in charges
            )
            if fee > 0:
                self._pay_from_wallets(
                    sub["external_customer_id"], str(event.code), sub["plan"]["amount_currency"], fee
                )

    def _pay_from_wallets(self, customer_id: str, metric_code: str, currency: str, cents: int) -> None:
        made: list[dict[str, Any]] = []
        now = _second(datetime.now(UTC))
        with self._lock:
            wallets = sorted(
                (
                    w
                    for w in self.wallets.values()
                    if w.external_customer_id == customer_id
                    and w.status == "active"
                    and w.currency == currency
                    and _applies(w, metric_code)
                ),
                key=lambda w: (w.priority, w.created_at),
            )
            for w in wallets:
                take = min(cents, max(w.balance_cents, 0))
                if take <= 0:
                    continue
                cents -= take
                t = WalletTransaction(
                    lago_id=str(uuid.uuid4()),
                    wallet_id=w.lago_id,
                    transaction_status="invoiced",
                    transaction_type="outbound",
                    credit_amount=_credits(Decimal(take) / 100 / w.rate_amount),
                    amount=Decimal(take) / 100,
                    invoice_id=str(uuid.uuid4()),
                    invoice_requires_successful_payment=False,
                    created_at=now,
                    name=None,
                    metadata=[],
                )
                self.transactions[t.lago_id] = t
                _settle(w, t)
                w.consumed_credits += t.credit_amount
                w.last_consumed_credit_at = now
                made.append(self._webhook_body("wallet_transaction.created", t))
        for body in made:
            self._emit(body)

    # ---------------------------------------------------------------- ongoing balance

    def refresh_ongoing_balances(self, customer: str | None = None) -> None:
        """Lago's periodic refresh (self-hosted, without the real-time add-on): terminates expired
        wallets, then sets each active wallet's ongoing usage from the customer's current usage (all
        its active subscriptions, as `current_usage` prices them, less pay-in-advance charges: those
        were paid from the balance when their events came, `_bill_in_advance`), allocated as Lago's
        `AllocateOngoingUsageByWalletsService` does: per (metric, currency), largest first, over
        the wallets that apply to it (same currency; `applies_to` empty, or naming `charge` or the
        metric) in priority order, each up to its balance, the last one taking the rest. A wallet
        whose ongoing balance reaches <= 0 sends `wallet.depleted_ongoing_balance` once, until it is
        positive again."""
        now = datetime.now(UTC)
        with self._lock:
            for w in self.wallets.values():
                if w.status == "active" and w.expiration_at and _parse_time(w.expiration_at) <= now:
                    _terminate(w)
            customers = sorted(
                {w.external_customer_id for w in self.wallets.values() if w.status == "active"}
                if customer is None
                else {customer}
            )
        depleted: list[dict[str, Any]] = []
        for customer_id in customers:
            amounts: dict[tuple[str, str], int] = {}  # (metric code, currency) -> cents
            for sub in list(self.subscriptions.values()):
                if sub["external_customer_id"] != customer_id or sub["status"] != "active":
                    continue
                usage = self._usage(sub)
                in_advance = {c["lago_id"] for c in sub["plan"]["charges"] if c.get("pay_in_advance")}
                for charge in usage["charges_usage"]:
                    if charge["charge"]["lago_id"] in in_advance:  # billed when their events came
                        continue
                    key = (charge["billable_metric"]["code"], usage["currency"])
                    amounts[key] = amounts.get(key, 0) + charge["amount_cents"]
            with self._lock:
                wallets = sorted(
                    (
                        w
                        for w in self.wallets.values()
                        if w.external_customer_id == customer_id and w.status == "active"
                    ),
                    key=lambda w: (w.priority, w.created_at),
                )
                allocated = dict.fromkeys((w.lago_id for w in wallets), 0)
                for (code, currency), amount in sorted(amounts.items(), key=lambda kv: (-kv[1], kv[0])):
                    applicable = [w for w in wallets if w.currency == currency and _applies(w, code)]
                    remaining = amount
                    for i, w in enumerate(applicable):
                        if remaining <= 0:
                            break
                        if i == len(applicable) - 1:
                            take = remaining
                        else:
                            room = w.balance_cents - allocated[w.lago_id]
                            if room <= 0:
                                continue
                            take = min(remaining, room)
                        allocated[w.lago_id] += take
                        remaining -= take
                for w in wallets:
                    w.ongoing_usage_cents = allocated[w.lago_id]
                    w.ongoing_usage_credits = _credits(Decimal(w.ongoing_usage_cents) / 100 / w.rate_amount)
                    ongoing = w.balance_cents - w.ongoing_usage_cents
                    if ongoing <= 0 and not w.depleted:
                        w.depleted = True
                        depleted.append(self._webhook_body("wallet.depleted_ongoing_balance", w))
                    elif ongoing > 0:
                        w.depleted = False
        for body in depleted:
            self._emit(body)

    def auto_refresh(self, interval_s: float | None) -> None:
        """Runs `refresh_ongoing_balances` every `interval_s` in the stand-in's loop (None: stops)."""

        def switch() -> None:
            if self._refresher is not None:
                self._refresher.cancel()
                self._refresher = None
            if interval_s is not None:
                self._refresher = self._loop.create_task(self._refresh_every(interval_s))

        self._loop.call_soon_threadsafe(switch)

    async def _refresh_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.refresh_ongoing_balances)

    # ---------------------------------------------------------------- webhooks

    def add_webhook(self, url: str, algo: str = "hmac") -> dict[str, Any]:
        """A webhook endpoint, as `POST /webhook_endpoints` makes it."""
        endpoint = {
            "lago_id": str(uuid.uuid4()),
            "lago_organization_id": self.organization_id,
            "webhook_url": url,
            "signature_algo": algo,
            "name": None,
            "event_types": None,
            "created_at": _second(datetime.now(UTC)),
        }
        with self._lock:
            self.webhook_endpoints.append(endpoint)
        return endpoint

    async def _create_webhook_endpoint(self, request: web.Request) -> web.Response:
        raw = await self._body(request, "webhook_endpoint")
        if not isinstance(raw, dict):
            return _missing("webhook_endpoint")
        url, algo = raw.get("webhook_url"), raw.get("signature_algo", "jwt")
        errors: dict[str, list[str]] = {}
        if not url:
            errors["webhook_url"] = ["value_is_mandatory"]
        elif any(e["webhook_url"] == url for e in self.webhook_endpoints):
            errors["webhook_url"] = ["value_already_exist"]
        if algo not in ("jwt", "hmac"):
            errors["signature_algo"] = ["value_is_invalid"]
        if errors:
            return _invalid(errors)
        endpoint = self.add_webhook(str(url), str(algo))
        endpoint["name"], endpoint["event_types"] = raw.get("name"), raw.get("event_types")
        return web.json_response({"webhook_endpoint": endpoint})

    async def _public_key(self, request: web.Request) -> web.Response:
        """Deprecated text form: base64 of the PEM (line-wrapped, as Ruby's `Base64.encode64`)."""
        return web.Response(text=base64.encodebytes(self.public_pem).decode(), content_type="text/plain")

    async def _json_public_key(self, request: web.Request) -> web.Response:
        return web.json_response({"webhook": {"public_key": base64.b64encode(self.public_pem).decode()}})

    def sign_hmac(self, body: bytes) -> str:
        """Lago's `hmac` signature: Base64 (strict) of HMAC-SHA256 over the body, keyed with the API key."""
        return base64.b64encode(hmac.new(self.api_key.encode(), body, hashlib.sha256).digest()).decode()

    def sign_jwt(self, body: bytes) -> str:
        """Lago's `jwt` signature: RS256 over `{"data": <the body's JSON text>, "iss": LAGO_API_URL}`."""
        import jwt

        return jwt.encode({"data": body.decode(), "iss": self.url}, self._private_key, algorithm="RS256")

    def _webhook_body(self, webhook_type: str, obj: Wallet | WalletTransaction) -> dict[str, Any]:
        """A webhook's payload (under the lock): type, object type, organization, the object."""
        if isinstance(obj, Wallet):
            object_type, view = "wallet", self._wallet_view(obj)
        else:
            object_type, view = "wallet_transaction", self._transaction_view(obj, with_wallet=True)
        return {
            "webhook_type": webhook_type,
            "object_type": object_type,
            "organization_id": self.organization_id,
            object_type: view,
        }

    def _emit(self, payload: dict[str, Any]) -> None:
        """Sends a webhook to every endpoint, from the stand-in's loop (callable from any thread)."""
        with self._lock:
            endpoints = [
                e for e in self.webhook_endpoints if not e["event_types"] or payload["webhook_type"] in e["event_types"]
            ]
            self.webhooks.append(payload)
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        for endpoint in endpoints:
            key = str(uuid.uuid4())
            self._loop.call_soon_threadsafe(self._spawn, endpoint, body, key)

    def _spawn(self, endpoint: dict[str, Any], body: bytes, key: str) -> None:
        task = self._loop.create_task(self._deliver(endpoint, body, key))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, endpoint: dict[str, Any], body: bytes, key: str) -> None:
        """POSTs the body; a failed attempt (non-2xx or no answer) is retried after a short backoff,
        `WEBHOOK_ATTEMPTS` attempts in all, the same unique key on each."""
        algo = endpoint["signature_algo"]
        headers = {
            "Content-Type": "application/json",
            "X-Lago-Signature": self.sign_hmac(body) if algo == "hmac" else self.sign_jwt(body),
            "X-Lago-Signature-Algorithm": algo,
            "X-Lago-Unique-Key": key,
        }
        webhook_type = json.loads(body)["webhook_type"]
        timeout = ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        async with ClientSession(timeout=timeout) as session:
            for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
                status: int | None = None
                error: str | None = None
                try:
                    async with session.post(endpoint["webhook_url"], data=body, headers=headers) as response:
                        status = response.status
                except (ClientError, TimeoutError) as e:
                    error = type(e).__name__
                delivery = Delivery(endpoint["webhook_url"], webhook_type, key, body, headers, attempt, status, error)
                with self._lock:
                    self.deliveries.append(delivery)
                if delivery.ok:
                    return
                if attempt < WEBHOOK_ATTEMPTS:
                    await asyncio.sleep(WEBHOOK_BACKOFF_S * 2 ** (attempt - 1))

    def wait_deliveries(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """The delivery attempts once there are at least `count` (or when `timeout` has passed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.01)
        with self._lock:
            return list(self.deliveries)

    # ---------------------------------------------------------------- metrics, plans, usage

    async def _metric(self, request: web.Request) -> web.Response:
        raw = await self._body(request, "billable_metric")
        if not isinstance(raw, dict):
            return _missing("billable_metric")
        code = raw.get("code")
        errors: dict[str, list[str]] = {}
        if not code:
            errors["code"] = ["value_is_mandatory"]
        elif code in self.metrics:
            errors["code"] = ["value_already_exist"]
        aggregation = raw.get("aggregation_type")
        if aggregation not in AGGREGATIONS:
            errors["aggregation_type"] = ["value_is_invalid"]
        if aggregation != "count_agg" and not raw.get("field_name"):
            errors["field_name"] = ["value_is_mandatory"]
        if errors:
            return _invalid(errors)
        metric = {
            "lago_id": str(uuid.uuid4()),
            "name": raw.get("name") or code,
            "code": code,
            "description": raw.get("description"),
            "aggregation_type": aggregation,
            "field_name": raw.get("field_name"),
            "recurring": bool(raw.get("recurring")),
            "filters": [{"key": f["key"], "values": sorted(f["values"])} for f in raw.get("filters") or []],
            "created_at": _now(),
        }
        self.metrics[str(code)] = metric
        return web.json_response({"billable_metric": metric})

    async def _get_metric(self, request: web.Request) -> web.Response:
        return _found("billable_metric", self.metrics.get(request.match_info["code"]))

    async def _update_metric(self, request: web.Request) -> web.Response:
        """PUT: only the keys sent change; `filters`, when sent, replaces the metric's filters."""
        metric = self.metrics.get(request.match_info["code"])
        if metric is None:
            return _not_found("billable_metric")
        raw = await self._body(request, "billable_metric")
        if not isinstance(raw, dict):
            return _missing("billable_metric")
        if "aggregation_type" in raw and raw["aggregation_type"] not in AGGREGATIONS:
            return _invalid({"aggregation_type": ["value_is_invalid"]})
        for name in ("name", "description", "aggregation_type", "field_name", "recurring"):
            if name in raw:
                metric[name] = raw[name]
        if "filters" in raw:
            metric["filters"] = [{"key": f["key"], "values": sorted(f["values"])} for f in raw["filters"] or []]
        return web.json_response({"billable_metric": metric})

    async def _plan(self, request: web.Request) -> web.Response:
        raw = await self._body(request, "plan")
        if not isinstance(raw, dict):
            return _missing("plan")
        by_id = {m["lago_id"]: m for m in self.metrics.values()}
        charges = []
        for charge in raw.get("charges") or []:
            metric = by_id.get(charge.get("billable_metric_id"))
            if metric is None:
                return _not_found("billable_metrics")
            model = charge.get("charge_model", "standard")
            if model not in CHARGE_MODELS:
                return _invalid({"charge_model": ["value_is_invalid"]})
            properties, errors = _charge_properties(model, charge.get("properties") or {})
            if errors:
                return _invalid(errors)
            filters = []
            for f in charge.get("filters") or []:
                fproperties, errors = _charge_properties(model, f.get("properties") or {})
                if errors:
                    return _invalid(errors)
                filters.append({"lago_id": str(uuid.uuid4()), "values": f["values"], "properties": fproperties})
            charges.append(
                {
                    "lago_id": str(uuid.uuid4()),
                    "billable_metric_id": metric["lago_id"],
                    "billable_metric_code": metric["code"],
                    "charge_model": model,
                    "pay_in_advance": bool(charge.get("pay_in_advance", False)),
                    "invoiceable": bool(charge.get("invoiceable", True)),
                    "invoice_display_name": charge.get("invoice_display_name"),
                    "properties": properties,
                    "filters": filters,
                }
            )
        plan = {
            "lago_id": str(uuid.uuid4()),
            "name": raw.get("name"),
            "code": raw.get("code"),
            "interval": raw.get("interval", "monthly"),
            "amount_cents": raw.get("amount_cents", 0),
            "amount_currency": raw.get("amount_currency", "USD"),
            "pay_in_advance": raw.get("pay_in_advance", False),
            "charges": charges,
            "created_at": _now(),
        }
        self.plans[str(raw.get("code"))] = plan
        return web.json_response({"plan": plan})

    async def _get_plan(self, request: web.Request) -> web.Response:
        return _found("plan", self.plans.get(request.match_info["code"]))

    async def _current_usage(self, request: web.Request) -> web.Response:
        customer_id = request.match_info["external_id"]
        if customer_id not in self.customers:
            return _not_found("customer")
        sub = self.subscriptions.get(request.query.get("external_subscription_id", ""))
        if sub is None or sub["external_customer_id"] != customer_id or sub["status"] != "active":
            return _error(405, "Method Not Allowed", "no_active_subscription")
        return web.json_response({"customer_usage": self._usage(sub)})

    def _usage(self, sub: dict[str, Any]) -> dict[str, Any]:
        """A subscription's `customer_usage` (section 5): its events since it started, priced."""
        started = Decimal(str(datetime.fromisoformat(str(sub["started_at"]).replace("Z", "+00:00")).timestamp()))
        with self._lock:
            events = [
                e for e in self.events if e.external_subscription_id == sub["external_id"] and e.timestamp >= started
            ]
        usage = [_charge_usage(charge, self.metrics, events, self.premium) for charge in sub["plan"]["charges"]]
        total = sum(c["amount_cents"] for c in usage)
        return {
            "from_datetime": sub["started_at"],
            "to_datetime": _now(),
            "issuing_date": datetime.now(UTC).date().isoformat(),
            "currency": sub["plan"]["amount_currency"],
            "amount_cents": total,
            "taxes_amount_cents": 0,
            "total_amount_cents": total,
            "lago_invoice_id": None,
            "charges_usage": usage,
        }


def _charge_usage(
    charge: dict[str, Any], metrics: dict[str, Any], events: list[StoredEvent], premium: bool = False
) -> dict[str, Any]:
    metric = metrics[charge["billable_metric_code"]]
    declared = {f["key"]: set(f["values"]) for f in metric["filters"]}
    mine = [e for e in events if e.code == metric["code"]]

    def value(e: StoredEvent) -> Decimal:
        raw = e.properties.get(metric["field_name"])
        text = str(raw) if isinstance(raw, int | float | str) and not isinstance(raw, bool) else ""
        try:
            return Decimal(text) if text and text.lstrip("-").replace(".", "", 1).isdigit() else Decimal(0)
        except InvalidOperation:
            return Decimal(0)

    def matches(e: StoredEvent, values: dict[str, list[str]]) -> bool:
        for key, wanted in values.items():
            allowed = declared.get(key, set()) if ALL_VALUES in wanted else set(wanted)
            if e.properties.get(key) not in allowed or e.properties.get(key) not in declared.get(key, set()):
                return False
        return True

    filters_out = []
    claimed: set[str] = set()
    for f in charge["filters"]:
        hit = [e for e in mine if matches(e, f["values"])]
        claimed.update(e.lago_id for e in hit)
        units = sum((value(e) for e in hit), Decimal(0))
        cents = _fee_cents(charge["charge_model"], f["properties"], [value(e) for e in hit], premium)
        filters_out.append(
            {
                "values": f["values"],
                "units": _units(units),
                "total_aggregated_units": _units(units),
                "events_count": len(hit),
                "amount_cents": cents,
            }
        )
    rest = [e for e in mine if e.lago_id not in claimed]
    rest_units = sum((value(e) for e in rest), Decimal(0))
    rest_cents = _fee_cents(charge["charge_model"], charge["properties"], [value(e) for e in rest], premium)
    filters_out.append(
        {
            "values": {},
            "units": _units(rest_units),
            "total_aggregated_units": _units(rest_units),
            "events_count": len(rest),
            "amount_cents": rest_cents,
        }
    )
    units = sum((value(e) for e in mine), Decimal(0))
    return {
        "units": _units(units),
        "total_aggregated_units": _units(units),
        "events_count": len(mine),
        "amount_cents": sum(f["amount_cents"] for f in filters_out),
        "amount_currency": "USD",
        "charge": {"lago_id": charge["lago_id"], "charge_model": charge["charge_model"]},
        "billable_metric": {k: metric[k] for k in ("lago_id", "name", "code", "aggregation_type")},
        "filters": filters_out,
        "grouped_usage": [],
    }


def _epoch(value: str | None) -> Decimal | None:
    if not value:
        return None
    return Decimal(str(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()))


def _units(units: Decimal) -> str:
    """A decimal as Lago prints a BigDecimal: `3800.0`, `12.5`."""
    text = format(units.normalize(), "f")
    return text if "." in text else text + ".0"


def _fee_cents(model: str, properties: dict[str, Any], values: list[Decimal], premium: bool = False) -> int:
    """One fee: the charge model's amount, rounded half-up to whole cents."""
    amount = charge_amount(model, properties, values, premium=premium)
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _charge_properties(model: str, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The properties a charge model keeps, and Lago's 422 details when they are wrong (amounts are
    strings; a JSON number is `invalid_amount`, section 5)."""

    def money(name: str, *, required: bool = True) -> bool:
        value = raw.get(name)
        if value is None:
            return not required
        return isinstance(value, str) and _decimal(value) is not None and Decimal(value) >= 0

    def ranges(name: str) -> bool:
        tiers = raw.get(name)
        if not isinstance(tiers, list) or not tiers:
            return False
        return (
            all(
                isinstance(t, dict)
                and isinstance(t.get("from_value"), int)
                and (t.get("to_value") is None or isinstance(t.get("to_value"), int))
                and isinstance(t.get("per_unit_amount"), str)
                and isinstance(t.get("flat_amount"), str)
                and _decimal(t["per_unit_amount"]) is not None
                and _decimal(t["flat_amount"]) is not None
                for t in tiers
            )
            and tiers[-1].get("to_value") is None
        )

    errors: dict[str, list[str]] = {}
    if model == "standard":
        amount = raw.get("amount", "0")
        if not isinstance(amount, str):
            errors["amount"] = ["invalid_amount"]
        return {"amount": amount}, errors
    if model == "package":
        if not money("amount"):
            errors["amount"] = ["invalid_amount"]
        size, free = raw.get("package_size"), raw.get("free_units", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            errors["package_size"] = ["invalid_package_size"]
        if isinstance(free, bool) or not isinstance(free, int) or free < 0:
            errors["free_units"] = ["invalid_free_units"]
        return {"amount": raw.get("amount"), "package_size": size, "free_units": free}, errors
    if model in ("graduated", "volume"):
        name = f"{model}_ranges"
        if not ranges(name):
            errors[name] = [f"invalid_{name}"]
        return {name: raw.get(name)}, errors
    # percentage
    if not money("rate"):
        errors["rate"] = ["invalid_rate"]
    for name in ("fixed_amount", "free_units_per_total_aggregation", "per_transaction_min_amount"):
        if not money(name, required=False):
            errors[name] = [f"invalid_{name}"]
    if not money("per_transaction_max_amount", required=False):
        errors["per_transaction_max_amount"] = ["invalid_amount"]
    events = raw.get("free_units_per_events")
    if events is not None and (isinstance(events, bool) or not isinstance(events, int) or events < 0):
        errors["free_units_per_events"] = ["invalid_free_units_per_events"]
    kept = (
        "rate",
        "fixed_amount",
        "free_units_per_events",
        "free_units_per_total_aggregation",
        "per_transaction_min_amount",
        "per_transaction_max_amount",
    )
    return {k: raw.get(k) for k in kept}, errors


def charge_amount(model: str, properties: dict[str, Any], values: list[Decimal], *, premium: bool = False) -> Decimal:
    """What Lago's charge model (`app/services/charge_models/*_service.rb`) makes of a bucket of
    events, given their values in the order they were received, in currency units (not rounded)."""
    units = sum(values, Decimal(0))
    if model == "standard":
        return units * Decimal(properties["amount"])
    if model == "package":
        paid = units - Decimal(properties.get("free_units") or 0)
        if paid < 0:
            return Decimal(0)
        # a package counts from its first unit: rounded up
        packages = (paid / Decimal(properties["package_size"])).to_integral_value(rounding=ROUND_CEILING)
        return packages * Decimal(properties["amount"])
    if model == "graduated":
        return _graduated(properties["graduated_ranges"], units)
    if model == "volume":
        tiers = sorted(properties["volume_ranges"], key=lambda t: t["from_value"])
        ceiling = units.to_integral_value(rounding=ROUND_CEILING)
        tier = next(
            (t for t in tiers if t["from_value"] <= ceiling and (t["to_value"] is None or units <= t["to_value"])),
            None,
        )
        if tier is None:
            return Decimal(0)
        return units * Decimal(tier["per_unit_amount"]) + Decimal(tier["flat_amount"])
    return _percentage(properties, values, premium)


def _graduated(tiers: list[dict[str, Any]], units: Decimal) -> Decimal:
    """Each tier prices the units that fall in it, plus its flat amount once entered. Tiers are
    inclusive (0-10, 11-20: a tier from N > 0 counts N too), or half-open when adjacent (0-10, 10-20)."""
    adjacent = len(tiers) >= 2 and all(
        Decimal(b["from_value"]) == Decimal(a["to_value"] or 0) for a, b in pairwise(tiers)
    )
    total = Decimal(0)
    for tier in tiers:
        low, high = Decimal(tier["from_value"]), tier["to_value"]
        effective = Decimal(high) if high is not None and units >= high else units
        inside = effective if low == 0 else (effective - low if adjacent else effective - low + 1)
        if inside != 0:
            total += inside * Decimal(tier["per_unit_amount"])
            if units != 0:
                total += Decimal(tier["flat_amount"])
        if high is None or high >= units:
            break
    return total


def _percentage(properties: dict[str, Any], values: list[Decimal], premium: bool) -> Decimal:
    """`rate` % of the units beyond the free ones, plus `fixed_amount` per event beyond the free
    events; per-transaction min/max only with a premium licence (Lago ignores them otherwise)."""
    units = sum(values, Decimal(0))
    rate = Decimal(str(properties["rate"]))
    fixed = Decimal(str(properties.get("fixed_amount") or 0))
    free_events = int(properties.get("free_units_per_events") or 0)
    free_total = Decimal(str(properties.get("free_units_per_total_aggregation") or 0))
    low, high = properties.get("per_transaction_min_amount"), properties.get("per_transaction_max_amount")
    if premium and (low or high):
        total = Decimal(0)
        events_left, amount_left = free_events, free_total
        for value in values:
            if events_left > 0 or amount_left > 0:
                events_left -= 1
                if amount_left <= 0:
                    continue
                if amount_left > value:
                    amount_left -= value
                    continue
                value -= amount_left
                amount_left, events_left = Decimal(0), 0
            amount = value * rate / 100 + fixed
            if low and amount < Decimal(low):
                amount = Decimal(low)
            elif high and amount > Decimal(high):
                amount = Decimal(high)
            total += amount
        return total
    # the aggregation's running total (sum_service.rb): the first `free_units_per_events` events,
    # else events up to and including the one that passes `free_units_per_total_aggregation`
    running: list[Decimal] = []
    acc = Decimal(0)
    if free_events:
        for value in values[:free_events]:
            acc += value
            running.append(acc)
    elif free_total:
        for value in values:
            if free_total < acc:
                break
            acc += value
            running.append(acc)
    last = running[-1] if running else Decimal(0)
    if last == 0:
        free_units = Decimal(0)
    elif free_total == 0 or last <= free_total:
        free_units = last
    else:
        free_units = free_total
    free_count = min([n for n in (free_events, sum(1 for r in running if r < free_total)) if n] or [0])
    percentage = Decimal(0) if free_units > units else (units - free_units) * rate / 100
    if units == 0 or free_count >= len(values):
        return percentage
    return percentage + (len(values) - free_count) * fixed


def _decimal(value: Any) -> Decimal | None:
    """A credit amount or rate as Lago takes it: a numeric string (or number); None if not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _instant(value: Any, *, future: bool = False) -> datetime | None:
    """An ISO 8601 time (in the future when asked), else None."""
    try:
        moment = _parse_time(str(value))
    except ValueError:
        return None
    return None if future and moment <= datetime.now(UTC) else moment


def _page(root: str, items: list[dict[str, Any]], request: web.Request) -> web.Response:
    """`{root: [...], "meta": {...}}` as Lago paginates (`page`, `per_page` default 20)."""
    try:
        page = max(1, int(request.query.get("page", 1)))
        per_page = max(1, int(request.query.get("per_page", 20)))
    except ValueError:
        page, per_page = 1, 20
    pages = max(1, -(-len(items) // per_page))
    meta = {
        "current_page": page,
        "next_page": page + 1 if page < pages else None,
        "prev_page": page - 1 if page > 1 else None,
        "total_pages": pages,
        "total_count": len(items),
    }
    return web.json_response({root: items[(page - 1) * per_page : page * per_page], "meta": meta})


def _settle(wallet: Wallet, t: WalletTransaction) -> None:
    """A transaction lands: inbound credits add to the balance, outbound ones (voided, invoiced) take from it."""
    sign = 1 if t.transaction_type == "inbound" else -1
    t.status, t.settled_at = "settled", _second(datetime.now(UTC))
    wallet.credits_balance += sign * t.credit_amount
    wallet.balance_cents += sign * int((t.amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    wallet.last_balance_sync_at = t.settled_at


def _applies(wallet: Wallet, metric_code: str) -> bool:
    """Whether a wallet pays for a charge fee of this metric (`applies_to`, Lago's FindApplicableOnFees)."""
    types, codes = wallet.applies_to.get("fee_types") or [], wallet.applies_to.get("billable_metric_codes") or []
    return (not types and not codes) or "charge" in types or metric_code in codes


def _credits(value: Decimal) -> Decimal:
    """Credits as Lago's decimal(30, 5) columns keep them."""
    return value.quantize(Decimal("0.00001"), rounding=ROUND_HALF_UP)


def _terminate(wallet: Wallet) -> None:
    if wallet.status != "terminated":
        wallet.status, wallet.terminated_at = "terminated", _second(datetime.now(UTC))


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _second(moment: datetime) -> str:
    """A time as Lago's serializers print it: ISO 8601, whole seconds, `Z`."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def billing_period(started_at: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The current monthly calendar period of a subscription (UTC): from the first of the month,
    or the start if later, to the month's last second."""
    now = now or datetime.now(UTC)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return max(first, _parse_time(started_at)), following - timedelta(seconds=1)


def _with_period(sub: dict[str, Any]) -> dict[str, Any]:
    start, end = billing_period(str(sub["started_at"]))
    return {
        **sub,
        "current_billing_period_started_at": _second(start),
        "current_billing_period_ending_at": _second(end),
    }


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _cut(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def payg_plan(metric_lago_id: str, amount: str, filters: list[Any] | None = None) -> Any:
    """A monthly pay-as-you-go plan with one standard charge on the metric (for the real client)."""
    from lago_python_client.models import Charge, Plan

    return Plan(
        name="Pay as you go",
        code="payg",
        interval="monthly",
        amount_cents=0,
        amount_currency="USD",
        pay_in_advance=False,
        charges=[
            Charge(
                billable_metric_id=metric_lago_id,
                charge_model="standard",
                properties={"amount": amount},
                filters=filters or [],
            )
        ],
    )


def billing_ready(
    stand_in: LagoStandIn, customers: Iterable[str], since: str | None = None, metric: bool = True
) -> None:
    """Lago as `meterway billing setup` and an operator leave it, made with the real client: the
    metric `llm_tokens` (sum of `total_tokens`, unless `metric` is False because it exists), the
    `payg` plan on it, and per customer a Lago customer and an active subscription of the same id,
    started at `since` (default: yesterday, before any usage of the test)."""
    from lago_python_client.client import Client
    from lago_python_client.models import BillableMetric, Customer, Subscription

    client = Client(api_key=stand_in.api_key, api_url=stand_in.url)
    if metric:
        made = client.billable_metrics.create(
            BillableMetric(name="LLM tokens", code="llm_tokens", aggregation_type="sum_agg", field_name="total_tokens")
        )
        assert made is not None
    client.plans.create(payg_plan(stand_in.metrics["llm_tokens"]["lago_id"], "0.001"))
    started = since or (datetime.now(UTC) - timedelta(days=1)).isoformat()
    for customer in customers:
        client.customers.create(Customer(external_id=customer, currency="USD"))
        client.subscriptions.create(
            Subscription(external_customer_id=customer, plan_code="payg", external_id=customer, subscription_at=started)
        )


def prepaid_ready(
    stand_in: LagoStandIn,
    customer: str,
    credits: str,
    rate_amount: str = "1.0",
    plan: Any = None,
    **wallet: Any,
) -> Any:
    """`billing_ready` for one customer (or its subscription to `plan`, a lago-python-client `Plan`,
    when given), then a wallet of `credits` granted credits at `rate_amount`, made with the real
    client; `wallet` adds fields of the client's `Wallet` (name, code, priority, expiration_at...).
    Returns the client's `WalletResponse`."""
    from lago_python_client.client import Client
    from lago_python_client.models import Customer, Subscription, Wallet

    client = Client(api_key=stand_in.api_key, api_url=stand_in.url)
    if plan is None:
        billing_ready(stand_in, [customer], metric="llm_tokens" not in stand_in.metrics)
    else:
        if "llm_tokens" not in stand_in.metrics:
            billing_ready(stand_in, [], metric=True)
        client.plans.create(plan)
        client.customers.create(Customer(external_id=customer, currency="USD"))
        started = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        client.subscriptions.create(
            Subscription(
                external_customer_id=customer, plan_code=plan.code, external_id=customer, subscription_at=started
            )
        )
    wallet.setdefault("currency", "USD")
    made = client.wallets.create(
        Wallet(external_customer_id=customer, rate_amount=rate_amount, granted_credits=credits, **wallet)
    )
    assert made is not None
    return made
