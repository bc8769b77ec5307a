"""The response cache: an exact-match cache of answers, keyed on the endpoint, the model group and
the request with what does not change the answer taken out (`user`, `metadata`, `tags`, `cache`),
its keys sorted.

Configured as LiteLLM users do (`litellm_settings.cache: true`, `cache_params: {type: redis|local,
ttl, namespace}`); a request controls it with LiteLLM's `cache: {"no-cache": true, "no-store": true,
"ttl": seconds}` in its body, or `Cache-Control: no-cache` / `no-store`. Plain answers are stored as
the client received them; streams as their events, replayed as a stream. An entry also keeps the
usage and the deployment that produced it, so a hit is metered (tokens recorded, priced at
`hit_cost_ratio` of the normal price: zero unless configured) and the ledger names its source.

Entries are `<header JSON>\\n<body bytes>`: one Redis string each, read with one GET. The header's
`v` is its format: 2 keeps the units beside tokens (queries, images, pixels, audio, characters), so a
hit is metered in them too; an entry without `v` (written before) is read as before, its units zero.
Images are never cached (large answers, and each call should make new pictures), nor is any answer
bigger than `MAX_ENTRY_BYTES`: a local store is bounded by its entries, not by bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import orjson

from meterway.providers.base import Api, Usage

IGNORED = ("user", "metadata", "tags", "cache")  # request fields that do not change the answer
LOCAL_MAX_ENTRIES = 10_000
MAX_ENTRY_BYTES = 1 << 20  # an answer bigger than this is not stored
ENTRY_VERSION = 2


@dataclass(frozen=True, slots=True)
class CacheSettings:
    type: str = "local"  # "redis" (shared by replicas) or "local" (this process)
    ttl_s: float = 600.0
    namespace: str | None = None  # key prefix; the gateway's Redis prefix + "cache" when unset
    hit_cost_ratio: Decimal = Decimal(0)  # a hit's cost as a fraction of the upstream call's


@dataclass(frozen=True, slots=True)
class Control:
    """What the request asked of the cache."""

    read: bool = True
    write: bool = True
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    body: bytes
    stream: bool
    content_type: str
    usage: Usage | None
    deployment_id: str | None


class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...


class LocalStore:
    """This process's entries, the least recently used dropped past `max_entries`."""

    def __init__(self, max_entries: int = LOCAL_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (self._clock() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class RedisStore:
    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(key)
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._redis.set(key, value, px=max(1, int(ttl_s * 1000)))


# audio: bytes and uploads; images: large answers (up to 64 MiB), and uploads (no JSON)
_UNCACHED = frozenset(
    {Api.TRANSCRIPTIONS, Api.TRANSLATIONS, Api.SPEECH, Api.IMAGES, Api.IMAGE_EDITS, Api.IMAGE_VARIATIONS}
)


class ResponseCache:
    def __init__(self, settings: CacheSettings, store: Store, namespace: str) -> None:
        self.settings = settings
        self._store = store
        self._namespace = settings.namespace or namespace

    def key(self, api: Api, model: str, body: bytes) -> str | None:
        """The entry's key, or None for a body that is not a JSON object, or an endpoint whose
        answer is no JSON or event stream (audio), neither cached."""
        if api in _UNCACHED:
            return None
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(request, dict):
            return None
        for name in IGNORED:
            request.pop(name, None)
        request["model"] = model
        digest = hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return f"{self._namespace}:{api.value}:{digest}"

    async def get(self, key: str) -> Entry | None:
        raw = await self._store.get(key)
        if raw is None:
            return None
        head, _, body = raw.partition(b"\n")
        try:
            meta = orjson.loads(head)
            figures = meta.get("u")
            version = meta.get("v", 1)
            if version not in (1, ENTRY_VERSION) or (figures is not None and len(figures) != _FIGURES[version]):
                return None  # written by another version: a miss
            usage = Usage(*figures) if figures is not None else None
            return Entry(body, bool(meta["s"]), str(meta["t"]), usage, meta.get("d"))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None  # written by another version: a miss

    async def put(self, key: str, entry: Entry, ttl_s: float | None) -> None:
        if len(entry.body) > MAX_ENTRY_BYTES:
            return
        u = entry.usage
        meta = {
            "v": ENTRY_VERSION,
            "s": entry.stream,
            "t": entry.content_type,
            "d": entry.deployment_id,
            "u": None
            if u is None
            else [
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.reasoning_tokens,
                u.queries,
                u.images,
                u.audio_ms,
                u.characters,
                u.pixels,
            ],
        }
        await self._store.set(key, orjson.dumps(meta) + b"\n" + entry.body, ttl_s or self.settings.ttl_s)


_FIGURES = {1: 6, ENTRY_VERSION: 11}  # usage figures an entry of each format keeps


def control(body: bytes, cache_control: bytes | None) -> Control:
    """The request's own wishes: LiteLLM's `cache` object in the body, and Cache-Control."""
    read = write = True
    ttl: float | None = None
    if cache_control is not None:
        value = cache_control.lower()
        read = b"no-cache" not in value
        write = b"no-store" not in value
    if b'"cache"' in body:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
        asked = request.get("cache") if isinstance(request, dict) else None
        if isinstance(asked, dict):
            read = read and not asked.get("no-cache")
            write = write and not asked.get("no-store")
            t = asked.get("ttl", asked.get("s-maxage"))
            if isinstance(t, int | float) and not isinstance(t, bool) and t > 0:
                ttl = float(t)
    return Control(read, write, ttl)


def events(body: bytes) -> list[bytes]:
    """A stored stream split back into its events, each sent as its own chunk."""
    parts = body.split(b"\n\n")
    out = [p + b"\n\n" for p in parts[:-1] if p]
    if parts[-1]:
        out.append(parts[-1])
    return out
