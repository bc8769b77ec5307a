"""Who is calling: the master key, or a virtual key looked up by digest through a short cache.

The master key is compared in constant time with no I/O. A virtual key costs a database read
the first time it is seen; after that it is served from a cache that changes are announced to
(`auth.changes`), so a blocked, expired or deleted key stops working on every replica within a
second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from meterway.auth.keys import digest
from meterway.config.secret import Secret
from meterway.errors import AuthenticationFailed, PermissionDenied
from meterway.limits import LimitSpec


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity a request acts as. `key_id` is a digest or a name, never the key itself."""

    key_id: str
    role: str  # "proxy_admin" for the master key, "key" for a virtual key
    models: tuple[str, ...] = ()  # allowed model names; empty means all
    key_alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    blocked: bool = False
    expires: datetime | None = None  # timezone-aware
    limits: tuple[LimitSpec, ...] = ()  # limits and budgets of the key, its user and its team
    team_models: tuple[str, ...] = ()  # the team's allowed models; empty means all
    team_blocked: bool = False
    customer_id: str | None = None  # the customer it is bound to (its own binding, else its team's)

    def customer(self, user: str | None, require_binding: bool) -> str | None:
        """The customer a request is charged, limited and billed to. A bound key's is its binding,
        whatever the request's `user` says. An unbound key's is its `user`, as LiteLLM has it,
        unless bindings are required: then an unbound key charges no customer (the master key is
        exempt), and `LimitsHook` refuses a `user` that names one."""
        if self.customer_id is not None:
            return self.customer_id
        if require_binding and self.key_id != MASTER_ID:
            return None
        return user

    def check_usable(self) -> None:
        """Blocked and expired are checked on every request, not when cached: expiry passes by itself."""
        if self.blocked:
            raise AuthenticationFailed("This key is blocked.", code="key_blocked")
        if self.team_blocked:
            raise AuthenticationFailed(f"This key's team '{self.team_id}' is blocked.", code="team_blocked")
        if self.expires is not None and self.expires <= datetime.now(UTC):
            raise AuthenticationFailed(f"This key expired at {self.expires.isoformat()}.", code="key_expired")

    def visible(self, names: list[str]) -> list[str]:
        return [n for n in names if allows(self.models, n) and allows(self.team_models, n)]

    def may_use(self, model: str) -> bool:
        """What `check_model` checks, as a yes or no (for fallback groups, skipped when not)."""
        return allows(self.models, model) and allows(self.team_models, model)

    def check_model(self, model: str) -> None:
        """The model must be allowed by the key and by its team (each: empty list means all)."""
        check_allowed(self.models, model, "This key")
        check_allowed(self.team_models, model, "This team")


def allows(allowed: Sequence[str], model: str) -> bool:
    """A model list's rule, the same for keys, teams and customers: empty (or one naming
    `all-proxy-models`) allows every model, else exactly the model groups it names."""
    return not allowed or model in allowed or "all-proxy-models" in allowed


def check_allowed(allowed: Sequence[str], model: str, whose: str) -> None:
    """403 `model_not_allowed` when `allowed` does not allow `model`; `whose` opens the message."""
    if not allows(allowed, model):
        raise PermissionDenied(
            f"{whose} may not use model '{model}'. Allowed: {', '.join(allowed)}",
            param="model",
            code="model_not_allowed",
        )


MASTER_ID = "master"
MASTER = Principal(key_id=MASTER_ID, role="proxy_admin")


def bearer_token(authorization: bytes | None, x_api_key: bytes | None, api_key: bytes | None) -> bytes | None:
    """The key from `Authorization: Bearer`, `x-api-key` (Anthropic clients) or `api-key` (Azure clients).
    Header bytes are whatever the client sent: one that is not UTF-8 is no key (401), never a crash."""
    if authorization:
        scheme, _, token = authorization.partition(b" ")
        found: bytes | None = token.strip() if scheme.lower() == b"bearer" and token else authorization.strip()
    else:
        found = x_api_key or api_key or None
    if found is not None and not found.isascii():
        try:
            found.decode()
        except UnicodeDecodeError:
            raise AuthenticationFailed("The API key is not valid UTF-8.", code="invalid_api_key") from None
    return found


T = TypeVar("T")


class TTLCache(Generic[T]):
    """Id -> value (or None for an unknown id), each entry kept `ttl_s` seconds. Concurrent misses
    for one id share a single lookup; failed lookups are not cached."""

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[T | None]],
        ttl_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._clock = clock  # tests pass their own, to see entries expire without waiting
        self.ttl_s = ttl_s  # changed while change announcements are heard (auth.changes)
        self._entries: dict[str, tuple[float, T | None]] = {}
        self._pending: dict[str, asyncio.Future[T | None]] = {}

    async def get(self, ident: str) -> T | None:
        entry = self._entries.get(ident)
        now = self._clock()
        if entry is not None and entry[0] > now:
            return entry[1]
        pending = self._pending.get(ident)
        if pending is not None:
            return await pending
        future: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            value = await self._lookup(ident)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # consumed here; waiters re-raise it
            raise
        finally:
            del self._pending[ident]
        if len(self._entries) > 100_000:  # unknown ids must not grow the cache without bound
            self._entries.clear()
        self._entries[ident] = (self._clock() + self.ttl_s, value)
        future.set_result(value)
        return value

    def forget(self, ident: str) -> None:
        """Drops one entry: a change made on this replica is seen here at once (others within the TTL)."""
        self._entries.pop(ident, None)

    def clear(self) -> None:
        self._entries.clear()


KeyCache = TTLCache[Principal]  # key digest -> the principal it authenticates as


class Authenticator:
    """Built once the store is open, with the cache of its keys: before that only the gateway's
    lifecycle answers (see `services.Lifecycle`)."""

    def __init__(self, master_key: Secret | None, keys: KeyCache) -> None:
        self._master = master_key
        self.keys = keys

    async def authenticate(self, token: bytes | None) -> Principal:
        if token is None:
            raise AuthenticationFailed("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        if self._master is not None and self._master.matches(token):
            return MASTER
        principal = await self.keys.get(digest(token))
        if principal is None:
            raise AuthenticationFailed("Invalid API key.")
        principal.check_usable()
        return principal
