"""The `billing` section, and LiteLLM's `LAGO_*` environment variables as its users set them.

    billing:
      api_base: https://api.getlago.com      # or LAGO_API_BASE
      api_key: os.environ/LAGO_API_KEY         # or LAGO_API_KEY
      event_code: llm_tokens                   # or LAGO_API_EVENT_CODE
      charge_by: end_user_id                   # or LAGO_API_CHARGE_BY: end_user_id | user_id | team_id | key
      split_by_token_type: false
      default_external_subscription_id: null  # catches requests that name nobody to charge
      tags: [project]                          # request metadata keys copied into event properties
      properties:                              # event property name -> where its value comes from
        cost_usd: cost                         #   adds `cost_usd`, the row's cost in USD
        project: metadata.project              #   adds the request metadata's `project`
        response_cost: null                    #   drops a default property
      run_sender: true                         # send from `meterway serve` (else `meterway billing worker`)
      claim_timeout_seconds: 60                # how long a sender holds the rows it took (1 to 86400)
      prepaid: enforce                         # off | observe | enforce (or LAGO_PREPAID_MODE), or a mapping:
      prepaid:
        mode: enforce                          #   held to the Lago wallets' balance (docs/billing.md)
        refresh_interval: 60s                  #   scheduled re-read of entities with wallets
        stale_after: 10m                       #   a reading older than this (Lago failing) is stale
        when_stale: open                       #   open (serve) | closed (503 credits_unknown)
        low_balance: 5.0                       #   alert below this (plan currency); unset: none
        tax_rate: 0                            #   Lago's taxes on usage, a fraction (0.2 = 20 %)

Every event carries `model`, `prompt_tokens`, `completion_tokens`, `total_tokens`, `cost` and
`response_cost` (LiteLLM's Lago callback's name for the cost, so its users' metrics keep counting),
and `tags` when the request had any. `properties` renames (add the new name, null the old one) and
adds to them; a source is one of SOURCES, the row's figures, or `metadata.<key>`.

With no section, `LAGO_API_BASE` and `LAGO_API_KEY` alone turn export on, as they do for LiteLLM.

`claim_timeout_seconds` is how long a batch a sender claimed stays its own: if that sender dies
mid-send, another one (a restarted process, another replica) takes the rows over only after it.
A round's calls to Lago are given half of it in all, so a live sender's claim never lapses while
Lago's answer may still come. Shorter means a faster take-over after a crash and less time for
Lago to answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Final

from meterway.config.durations import parse_duration
from meterway.config.secret import Secret
from meterway.errors import BadRequest, ConfigError

# LiteLLM's names for who is charged, and meterway's
CHARGE_BY: Final = MappingProxyType(
    {
        "end_user_id": "customer",
        "customer": "customer",
        "user_id": "user",
        "user": "user",
        "team_id": "team",
        "team": "team",
        "key": "key",
    }
)
FIELDS: Final = frozenset(
    {
        "api_base",
        "api_key",
        "event_code",
        "charge_by",
        "split_by_token_type",
        "default_external_subscription_id",
        "tags",
        "run_sender",
        "claim_timeout_seconds",
        "properties",
        "prepaid",
    }
)
PREPAID_FIELDS: Final = frozenset({"mode", "refresh_interval", "stale_after", "when_stale", "low_balance", "tax_rate"})
PREPAID_MODES: Final = ("off", "observe", "enforce")
# what an event property may be taken from: the ledger row's figures (billing.events reads them)
SOURCES = (
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost",
    "response_cost",
    "customer",
    "end_user",
    "user",
    "team",
    "key_alias",
    "tags",
    "deployment",
    "upstream_model",
    "endpoint",
    "request_id",
    # units beside tokens (a rerank's search units, images, audio seconds as a decimal string, speech characters)
    "queries",
    "images",
    "audio_seconds",
    "characters",
)
UNIT_SOURCES = SOURCES[-4:]
# sources a sum metric can add up
NUMERIC = frozenset((*SOURCES[1:9], *UNIT_SOURCES))
# the properties every (unsplit) event carries, and their sources
DEFAULT_PROPERTIES = (
    ("model", "model"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("total_tokens", "total_tokens"),
    ("cost", "cost"),
    ("response_cost", "response_cost"),
    ("tags", "tags"),
    # each unit its own property, carried only when the request used it (a Lago metric per unit)
    *((unit, unit) for unit in UNIT_SOURCES),
)
METADATA = "metadata."
CLAIM_TIMEOUT_S = (1.0, 86_400.0)  # the bounds of claim_timeout_seconds


@dataclass(frozen=True, slots=True)
class Prepaid:
    """`billing.prepaid`: whether requests are held to the charged entity's Lago wallets."""

    mode: str = "off"  # off (not installed), observe (count would-be refusals), enforce (402)
    refresh_interval_s: float = 60.0
    stale_after_s: float = 600.0
    when_stale: str = "open"  # open: serve as in observe; closed: 503 credits_unknown
    low_balance: Decimal | None = None  # plan currency; None: no credits_low alert
    tax_rate: Decimal = Decimal(0)

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def status(self) -> str:
        """One line for `check-config` and the start-up log."""
        if not self.on:
            return "off"
        low = f", low balance alert below {self.low_balance}" if self.low_balance is not None else ""
        tax = f", tax rate {self.tax_rate}" if self.tax_rate else ""
        return (
            f"{self.mode} (refresh every {self.refresh_interval_s:g}s, stale after {self.stale_after_s:g}s, "
            f"when stale: {self.when_stale}{low}{tax})"
        )


@dataclass(frozen=True, slots=True)
class Billing:
    api_base: str  # without /api/v1
    api_key: Secret
    event_code: str = "llm_tokens"
    charge_by: str = "customer"  # customer, user, team or key
    split_by_token_type: bool = False
    default_external_subscription_id: str | None = None
    tags: tuple[str, ...] = ()
    run_sender: bool = True
    claim_timeout_s: float = 60.0
    # `billing.properties` as given: property name -> source (None drops a default property)
    properties: tuple[tuple[str, str | None], ...] = ()
    prepaid: Prepaid = Prepaid()

    def event_properties(self) -> dict[str, str]:
        """Every property an unsplit event carries, and its source: the defaults with the
        configured ones over them (a null removes one)."""
        out = dict(DEFAULT_PROPERTIES)
        for name, source in self.properties:
            if source is None:
                out.pop(name, None)
            else:
                out[name] = source
        return out


def export_status(billing: Billing | None, env: Mapping[str, str]) -> str:
    """One line for `check-config` and the start-up log: whether usage goes to Lago, to where, and
    why not. Export is off silently otherwise, and a LiteLLM user who set one `LAGO_*` variable of
    the two would bill nothing without knowing it. Never shows the key."""
    if billing is not None:
        return f"on, to {billing.api_base} (event code {billing.event_code}, charged by {billing.charge_by})"
    has_base, has_key = bool(env.get("LAGO_API_BASE")), bool(env.get("LAGO_API_KEY"))
    if has_key and not has_base:
        return "off: LAGO_API_KEY is set but LAGO_API_BASE is not (set it to your Lago URL)"
    if has_base and not has_key:
        return "off: LAGO_API_BASE is set but LAGO_API_KEY is not"
    return "off: no billing section and no LAGO_API_BASE and LAGO_API_KEY"


def parse_billing(section: Mapping[str, Any], env: Mapping[str, str]) -> Billing | None:
    unknown = sorted(set(section) - FIELDS)
    if unknown:
        raise ConfigError(f"billing.{unknown[0]}: not a billing setting; expected one of {', '.join(sorted(FIELDS))}")
    api_base = section.get("api_base") or env.get("LAGO_API_BASE")
    api_key = section.get("api_key") or env.get("LAGO_API_KEY")
    if not section and not (api_base and api_key):
        return None  # export is off
    if not api_base:
        raise ConfigError("billing.api_base (or LAGO_API_BASE) is required to export usage to Lago")
    if not isinstance(api_base, str) or not api_base.startswith(("http://", "https://")):
        raise ConfigError(f"billing.api_base must be an http(s) URL, got {api_base!r}")
    if not api_key or not isinstance(api_key, str):
        raise ConfigError("billing.api_key (or LAGO_API_KEY) is required to export usage to Lago")
    charge_by = section.get("charge_by") or env.get("LAGO_API_CHARGE_BY") or "end_user_id"
    if charge_by not in CHARGE_BY:
        raise ConfigError(f"billing.charge_by must be end_user_id, user_id, team_id or key, got {charge_by!r}")
    code = section.get("event_code") or env.get("LAGO_API_EVENT_CODE") or "llm_tokens"
    if not isinstance(code, str):
        raise ConfigError("billing.event_code must be a string")
    tags = section.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ConfigError("billing.tags must be a list of metadata keys")
    for name in ("split_by_token_type", "run_sender"):
        if name in section and not isinstance(section[name], bool):
            raise ConfigError(f"billing.{name} must be true or false")
    default_sub = section.get("default_external_subscription_id")
    if default_sub is not None and not isinstance(default_sub, str):
        raise ConfigError("billing.default_external_subscription_id must be a string")
    split = bool(section.get("split_by_token_type", False))
    properties = _properties(section.get("properties"), split=split)
    claim = section.get("claim_timeout_seconds", 60)
    low, high = CLAIM_TIMEOUT_S
    if isinstance(claim, bool) or not isinstance(claim, int | float) or not low <= claim <= high:
        raise ConfigError(f"billing.claim_timeout_seconds must be seconds from 1 to 86400; got {claim!r}")
    base = api_base.rstrip("/")
    base = base.removesuffix("/api/v1")
    prepaid = parse_prepaid(section.get("prepaid"), env)
    return Billing(
        api_base=base,
        api_key=Secret(api_key),
        event_code=code,
        charge_by=CHARGE_BY[charge_by],
        split_by_token_type=split,
        default_external_subscription_id=default_sub,
        tags=tuple(tags),
        run_sender=bool(section.get("run_sender", True)),
        claim_timeout_s=float(claim),
        properties=properties,
        prepaid=prepaid,
    )


def _seconds(value: Any, key: str) -> float:
    """A duration as `60s`, `10m`, or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"billing.prepaid.{key} must be a duration such as 60s or 10m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        try:
            seconds = parse_duration(value, f"billing.prepaid.{key}").total_seconds()
        except BadRequest:
            raise ConfigError(f"billing.prepaid.{key} must be a duration such as 60s or 10m, got {value!r}") from None
    if not 1 <= seconds <= 86_400 * 7:
        raise ConfigError(f"billing.prepaid.{key} must be from 1s to 7d, got {value!r}")
    return seconds


def _decimal(value: Any, key: str, high: Decimal) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"billing.prepaid.{key} must be a number, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"billing.prepaid.{key} must be a number, got {value!r}") from None
    if not number.is_finite() or not 0 <= number <= high:
        raise ConfigError(f"billing.prepaid.{key} must be from 0 to {high}, got {value!r}")
    return number


def parse_prepaid(given: Any, env: Mapping[str, str]) -> Prepaid:
    """`billing.prepaid`: a mode (`enforce`), or a mapping; `LAGO_PREPAID_MODE` gives the mode
    when the section does not."""
    section: Mapping[str, Any]
    if given is None:
        section = {}
    elif isinstance(given, str):
        section = {"mode": given}
    elif isinstance(given, Mapping):
        section = given
    else:
        raise ConfigError(f"billing.prepaid must be off, observe, enforce or a mapping, got {given!r}")
    unknown = sorted(set(section) - PREPAID_FIELDS)
    if unknown:
        raise ConfigError(
            f"billing.prepaid.{unknown[0]}: not a prepaid setting; expected one of {', '.join(sorted(PREPAID_FIELDS))}"
        )
    mode = section.get("mode") or env.get("LAGO_PREPAID_MODE") or "off"
    if mode is False:
        mode = "off"
    if mode not in PREPAID_MODES:
        raise ConfigError(f"billing.prepaid.mode (or LAGO_PREPAID_MODE) must be off, observe or enforce, got {mode!r}")
    when_stale = section.get("when_stale", "open")
    if when_stale not in ("open", "closed"):
        raise ConfigError(f"billing.prepaid.when_stale must be open or closed, got {when_stale!r}")
    low = section.get("low_balance")
    return Prepaid(
        mode=str(mode),
        refresh_interval_s=_seconds(section.get("refresh_interval", 60), "refresh_interval"),
        stale_after_s=_seconds(section.get("stale_after", 600), "stale_after"),
        when_stale=str(when_stale),
        low_balance=_decimal(low, "low_balance", Decimal(10) ** 9) if low is not None else None,
        tax_rate=_decimal(section.get("tax_rate", 0), "tax_rate", Decimal(10)),
    )


def additive(source: str) -> bool:
    """Whether a source is a figure of the whole row that a sum adds up (tokens, cost, or request
    metadata, which may be a number): repeated on each of a row's split events, a sum over them
    counts it once per token type."""
    return source in NUMERIC or source.startswith(METADATA)


def _properties(given: Any, *, split: bool = False) -> tuple[tuple[str, str | None], ...]:
    """`billing.properties`: a mapping of event property name to source, checked here so a typo
    stops the start (an event that silently lacks the figure a metric sums bills nothing). When
    events are split by token type, a row's figures are refused: every one of the row's events
    would carry the whole figure, and a Lago metric summing it would bill it up to five times."""
    if given is None:
        return ()
    if not isinstance(given, Mapping):
        raise ConfigError(
            "billing.properties must be a mapping of event property name to source, e.g. {cost_usd: cost}"
        )
    out: list[tuple[str, str | None]] = []
    for name, source in given.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise ConfigError(f"billing.properties: {name!r} is not a property name (a string of 1 to 255 characters)")
        if source is not None and (
            not isinstance(source, str)
            or (source not in SOURCES and not (source.startswith(METADATA) and len(source) > len(METADATA)))
        ):
            raise ConfigError(
                f"billing.properties.{name}: {source!r} is not a source; use one of {', '.join(SOURCES)}, "
                "`metadata.<key>` (the request's metadata) or null (drop the property)"
            )
        if split and source is not None and additive(source):
            raise ConfigError(
                f"billing.properties.{name}: {source!r} is a figure of the whole request, and with "
                "split_by_token_type each request is sent as one event per token type: every one would carry it "
                "and a Lago metric summing it would bill it up to five times. Split events carry `tokens` only; "
                "remove the property or turn split_by_token_type off"
            )
        out.append((name, source))
    return tuple(out)
