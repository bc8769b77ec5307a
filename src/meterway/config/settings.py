"""The resolved configuration: frozen, checked before the gateway serves, read on every request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp

from meterway.cache import CacheSettings
from meterway.config.alerting import Alerting
from meterway.config.billing import Billing
from meterway.config.routing import RoutingPolicy
from meterway.config.secret import Secret
from meterway.config.telemetry import Telemetry
from meterway.providers.base import Api, Provider
from meterway.providers.transport import InProcess

if TYPE_CHECKING:
    from meterway.providers.transport import Upstream

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
# One SSE event from an upstream: room for the largest ordinary events (a streamed image, a long
# tool call's arguments); an event that goes on past it is cut, not buffered.
DEFAULT_MAX_UPSTREAM_EVENT_BYTES = 4 * 1024 * 1024
# One non-streamed upstream answer: room for a large embeddings batch in base64.
DEFAULT_MAX_UPSTREAM_BODY_BYTES = 64 * 1024 * 1024
# One audio upload (POST /v1/audio/transcriptions, /translations): OpenAI's own bound on the file.
DEFAULT_MAX_AUDIO_BYTES = 25 * 1024 * 1024
# One image upload (POST /v1/images/edits, /variations: its images, mask and fields): OpenAI's own
# bound on gpt-image-1's edits, 50 MB; DALL·E 2's 4 MB images fit well within it.
DEFAULT_MAX_IMAGE_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_DATABASE_URL = "sqlite:///./meterway.db"


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per token, as exact decimals; None where the config gives no price."""

    input_per_token: Decimal | None = None
    output_per_token: Decimal | None = None
    cache_read_per_token: Decimal | None = None
    cache_write_per_token: Decimal | None = None
    # units beside tokens, as LiteLLM names their prices (`input_cost_per_query`, ...)
    input_per_query: Decimal | None = None  # a rerank search unit
    output_per_image: Decimal | None = None
    input_per_pixel: Decimal | None = None  # an image costs its pixels at these where it has no price per image
    output_per_pixel: Decimal | None = None
    input_per_second: Decimal | None = None  # audio in (transcription)
    output_per_second: Decimal | None = None  # audio out (speech), where no input price is given
    input_per_character: Decimal | None = None  # speech input
    # an image's price per pixel by its quality and pixels (`standard`, 1024*1792, price), where the
    # price table keys it so (LiteLLM's `hd/1024-x-1792/dall-e-3`); the plain per-pixel price elsewhere
    pixel_by_size: tuple[tuple[str, int, Decimal], ...] = ()


@dataclass(frozen=True, slots=True)
class Deployment:
    """One entry of `model_list`: everything the request path needs, parsed at load."""

    id: str
    model_name: str
    family: str
    upstream_model: str
    api_base: str | None
    api_key: Secret | None
    provider: Provider  # serves the OpenAI routes
    messages_provider: Provider  # serves /v1/messages: the same, or an adapter over its chat
    responses_provider: Provider  # serves /v1/responses: the native one, or an adapter over its chat
    timeout: aiohttp.ClientTimeout  # non-streaming: the whole call
    stream_timeout: aiohttp.ClientTimeout  # streaming: the connect, then the wait for each chunk
    prices: Prices = Prices()
    rpm: int | None = None
    tpm: int | None = None
    weight: float = 1.0
    model_info: Mapping[str, Any] = field(default_factory=dict)
    completions_provider: Provider | None = None  # serves /v1/completions when not `provider`: an adapter over chat
    # Resolved from the above when built, so a request reads them instead of working them out:
    # the endpoints it serves, and the in-process upstream that answers it (None: HTTP).
    apis: frozenset[Api] = field(init=False, repr=False, compare=False)
    upstream: Upstream | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        apis = frozenset(api for api in Api if self.provider_for(api).supports(api))
        object.__setattr__(self, "apis", apis)
        in_process = self.provider.upstream if isinstance(self.provider, InProcess) else None
        object.__setattr__(self, "upstream", in_process)

    def provider_for(self, api: Api) -> Provider:
        if api is Api.MESSAGES:
            return self.messages_provider
        if api is Api.RESPONSES:
            return self.responses_provider
        if api is Api.COMPLETIONS and self.completions_provider is not None:
            return self.completions_provider
        return self.provider

    def timeout_for(self, stream: bool) -> aiohttp.ClientTimeout:
        return self.stream_timeout if stream else self.timeout


@dataclass(frozen=True, slots=True)
class Settings:
    deployments: tuple[Deployment, ...]
    master_key: Secret | None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_upstream_event_bytes: int = DEFAULT_MAX_UPSTREAM_EVENT_BYTES  # past it a stream ends as an upstream error
    max_upstream_body_bytes: int = DEFAULT_MAX_UPSTREAM_BODY_BYTES  # past it an answer is a 502
    max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES  # an audio upload past it is a 413
    max_image_upload_bytes: int = DEFAULT_MAX_IMAGE_UPLOAD_BYTES  # an image edit's or variation's upload past it: 413
    demo: bool = False
    source: str | None = None  # the config file, for messages
    warnings: tuple[str, ...] = ()
    upstream_pool_size: int = 1024
    database_url: Secret = field(default_factory=lambda: Secret(DEFAULT_DATABASE_URL))  # may hold a password
    database_wait_s: float = 30.0  # how long a starting gateway waits for its database
    migrate_at_start: bool = True
    salt_key: Secret | None = None  # METERWAY_SALT_KEY / LITELLM_SALT_KEY: derives regenerated keys
    redis_url: Secret | None = None  # limits counted in Redis (across replicas) when set
    redis_prefix: str = "meterway:"  # every Redis key meterway writes starts with it
    budget_clamp_max_tokens: bool = False  # lower max_tokens to what a budget can pay, instead of refusing
    # an unbound key's `user` never charges a customer, and naming an existing one is refused (403)
    require_customer_binding: bool = False
    # headers naming the request's customer, lower-case, in the order they are read (LiteLLM's
    # x-litellm-customer-id and x-litellm-end-user-id, then general_settings.user_header_mappings'
    # customer headers, else general_settings.user_header_name): a header wins over the body's `user`
    customer_headers: tuple[str, ...] = ("x-litellm-customer-id", "x-litellm-end-user-id")
    default_tags: tuple[str, ...] = ()  # litellm_settings.default_tags: on every request's ledger row
    budget_default_output_tokens: int = 4096  # output reserved for a request that sets no max_tokens
    lease_ttl_s: float = 660.0  # how long a reservation outlives a replica that died holding it
    ledger_queue_size: int = 10_000  # ledger rows that may wait for the database before requests get 503
    shutdown_flush_s: float = 30.0  # at shutdown, how long queued ledger rows may take to be written
    # Responses API: how long a stored response is kept (OpenAI keeps them 30 days), and how many
    # background responses one worker runs at once (beyond: 429)
    responses_ttl_s: float = 30 * 86400.0
    responses_background_max: int = 64
    unpriced_models: tuple[str, ...] = ()  # deployments with no known price: their cost is NULL
    billing: Billing | None = None  # usage export to Lago, when configured
    alerting: Alerting | None = None  # general_settings.alerting: budget and credit alerts, when on
    billing_export: str = "off"  # whether usage goes to Lago, where, or why not (for people to read)
    telemetry: Telemetry = field(default_factory=Telemetry)  # traces and metrics settings
    routing: RoutingPolicy = field(default_factory=RoutingPolicy)  # router_settings: strategy, retries, fallbacks
    cache: CacheSettings | None = None  # litellm_settings.cache: the response cache, when on
    store_models: bool = False  # STORE_MODEL_IN_DB: /model/new and friends store deployments in the database
    default_timeout_s: float = DEFAULT_TIMEOUT_S  # for deployments (also those added at runtime) that set none
    webhook_secret: Secret | None = None  # general_settings.webhook_secret / METERWAY_WEBHOOK_SECRET: usage webhooks
    ui_username: str | None = None  # UI_USERNAME: an admin login for the web UI, as LiteLLM deployments set it
    ui_password: Secret | None = None  # UI_PASSWORD: its password (the UI refuses the username without one)
    ui_session_s: int = 12 * 3600  # UI_SESSION_HOURS: how long a UI login lasts
    # failed UI logins: per client address, and overall, in each window (then 429 with Retry-After)
    ui_login_failures: int = 5  # UI_LOGIN_MAX_FAILURES
    ui_login_failures_total: int = 100  # UI_LOGIN_MAX_FAILURES_TOTAL
    ui_login_window_s: float = 60.0  # UI_LOGIN_WINDOW_SECONDS

    @property
    def customer_header_names(self) -> tuple[bytes, ...]:
        """`customer_headers` as ASGI spells header names."""
        return tuple(h.encode() for h in self.customer_headers)

    def model_names(self) -> list[str]:
        return list(dict.fromkeys(d.model_name for d in self.deployments))

    @property
    def seal_key(self) -> Secret | None:
        """The key stored models' credentials are sealed under: the salt key, else the master key
        (from the config or the environment). `serve` and `import litellm` both take it from here,
        so a model the import seals is one the gateway opens."""
        return self.salt_key or self.master_key
