"""Google access tokens for `vertex_ai/` deployments: minted with google-auth, kept fresh off the
request path.

A `GoogleToken` is built when the config is loaded, from what LiteLLM users write in
`vertex_credentials` (a service-account file's path, or its JSON as a string) or, without it,
Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's login, the metadata
server). Nothing is fetched then: `keep_fresh`, a task the worker starts with its services, mints
the first token and each next one ahead of the current one's expiry. google-auth's refresh is
blocking I/O (its requests transport), so it runs in a thread, never on the event loop, and never
per request: a provider only reads the current token (`authorization`), as others read their key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from meterway.errors import ConfigError, UpstreamUnavailable

if TYPE_CHECKING:
    from meterway.providers.bedrock import AwsCredentials

log = logging.getLogger("meterway")

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
LEAD_S = 300.0  # a token is replaced this long before it expires (at most half its lifetime)
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after a failed refresh, the waits before the next attempts
FIRST_TOKEN_WAIT_S = 10.0  # the longest a start (or a stored model's addition) waits for the first token
CREDENTIALS_ERROR = "upstream_credentials"  # the error code of a request whose deployment has no token


@runtime_checkable
class Refreshing(Protocol):
    """The small optional interface of a provider whose credentials expire: the worker runs each
    one's `keep_fresh` beside its services and waits (bounded) for its first attempt at start."""

    credentials: GoogleToken


@dataclass(frozen=True, slots=True)
class CredentialSource:
    """Where the credentials come from: a service account's key (`info`, from the file or the
    JSON string), else Application Default Credentials (`info` None)."""

    info: Mapping[str, Any] | None
    where: str  # what the config named: a path, "JSON", or "Application Default Credentials"

    @property
    def project(self) -> str | None:
        project = self.info.get("project_id") if self.info is not None else None
        return project if isinstance(project, str) and project else None


def credential_source(value: object, env: Mapping[str, str]) -> CredentialSource:
    """`vertex_credentials` as LiteLLM reads it: a JSON object (a dict in YAML, or its text), else
    a path to a service-account file; without it `GOOGLE_APPLICATION_CREDENTIALS`, else ADC.
    A file that cannot be read or is no JSON object is a config error, named."""
    if value is None or value == "":
        path = env.get("GOOGLE_APPLICATION_CREDENTIALS")
        if not path:
            return CredentialSource(None, "Application Default Credentials")
        value = path
    if isinstance(value, Mapping):
        return _checked(dict(value), "the vertex_credentials mapping")
    if not isinstance(value, str):
        raise ConfigError("vertex_credentials must be a service-account file's path or its JSON")
    text = value.strip()
    if text.startswith("{"):
        where = "the vertex_credentials JSON"
    else:
        where = text
        try:
            text = Path(text).expanduser().read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"vertex_credentials: cannot read {value!r}: {e.strerror or e}") from None
    try:
        info = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ConfigError(f"vertex_credentials: {where} is not JSON") from None
    if not isinstance(info, dict):
        raise ConfigError(f"vertex_credentials: {where} is not a JSON object")
    return _checked(info, where)


def _checked(info: dict[str, Any], where: str) -> CredentialSource:
    kind = info.get("type")
    if kind == "service_account":
        missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
        if missing:
            raise ConfigError(f"vertex_credentials: {where} lacks {', '.join(missing)}")
    elif kind != "authorized_user":
        # other types (external_account, impersonated_service_account) make google-auth read files and
        # call URLs the config names: a config must not turn the gateway into a reader of its host's files
        raise ConfigError(
            f"vertex_credentials: {where} has type {kind!r}; only 'service_account' and 'authorized_user' "
            "credentials are accepted (use Application Default Credentials for the others)"
        )
    return CredentialSource(info, where)


class GoogleToken:
    """The current access token of one deployment's credentials. `authorization` is what the
    provider reads per request (no I/O); `keep_fresh` replaces the token ahead of its expiry."""

    def __init__(self, source: CredentialSource, label: str) -> None:
        self.source = source
        self.label = label
        self._credentials: Any = None  # google.auth.credentials.Credentials, built in the thread
        self._token: str | None = None
        self._expires = 0.0  # time.monotonic() at which the token expires
        self._failure: str | None = None  # why the last refresh failed, for the requests it fails
        self._attempted = asyncio.Event()

    def authorization(self) -> str:
        """`Bearer <token>` while the token is valid; else the deployment's failure, named (routing
        retries it elsewhere and cools the deployment down, as for an upstream that is down)."""
        token = self._token
        if token is not None and time.monotonic() < self._expires:
            return "Bearer " + token
        why = self._failure or "no access token has been obtained yet"
        raise UpstreamUnavailable(
            f"Upstream deployment '{self.label}' has no valid Google access token "
            f"(credentials: {self.source.where}): {why}",
            deployment=self.label,
            code=CREDENTIALS_ERROR,
        )

    async def attempted(self) -> None:
        """Returns once the first refresh has succeeded or failed."""
        await self._attempted.wait()

    def adopt(self, previous: GoogleToken) -> None:
        """Take over the token of the holder this one replaces (the same deployment and
        credentials, rebuilt when stored models are reloaded), so requests never wait for a new one."""
        self._credentials, self._token, self._expires = previous._credentials, previous._token, previous._expires

    async def keep_fresh(self) -> None:
        """Mint a token, then the next one `LEAD_S` (or half its lifetime) before it expires; after
        a failure, try again with backoff. Runs until cancelled. A token adopted from a previous
        holder is used until its own refresh time."""
        failures = 0
        remaining = self._expires - time.monotonic()
        if self._token is not None and remaining > 1.0:
            self._attempted.set()
            await asyncio.sleep(max(remaining - LEAD_S, remaining / 2))
        while True:
            try:
                lifetime = await asyncio.to_thread(self._refresh)
            except Exception as e:  # google-auth's RefreshError, TransportError, a bad key: all named
                self._failure = _reason(e)
                log.warning("deployment %s: Google token refresh failed: %s", self.label, self._failure)
                wait = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
            else:
                self._failure, failures = None, 0
                wait = max(lifetime - min(LEAD_S, lifetime / 2), 0.5)
            self._attempted.set()
            await asyncio.sleep(wait)

    def _refresh(self) -> float:
        """In a thread: the credentials built (first time), refreshed; the new token's lifetime."""
        from google.auth.transport.requests import Request

        if self._credentials is None:
            self._credentials = self._build()
        started = time.monotonic()
        self._credentials.refresh(Request())
        expiry = self._credentials.expiry
        if expiry is None:
            lifetime = 3600.0
        else:
            expiry = expiry.replace(tzinfo=UTC) if expiry.tzinfo is None else expiry
            lifetime = (expiry - datetime.now(UTC)).total_seconds()
        self._token = str(self._credentials.token)
        self._expires = started + lifetime
        return lifetime

    def _build(self) -> Any:
        info = self.source.info
        if info is None:
            import google.auth

            credentials, _ = google.auth.default(scopes=SCOPES)
            return credentials
        if info.get("type") == "service_account":
            from google.oauth2 import service_account

            return service_account.Credentials.from_service_account_info(dict(info), scopes=SCOPES)  # type: ignore[no-untyped-call]
        import google.auth

        credentials, _ = google.auth.load_credentials_from_dict(dict(info), scopes=SCOPES)  # type: ignore[no-untyped-call]
        return credentials


def _reason(exc: BaseException) -> str:
    """A refresh failure in a line: google-auth's message (the token endpoint's error and its
    description), never the key."""
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text[:300]}" if text else exc.__class__.__name__


class Refreshers:
    """The `keep_fresh` tasks of the deployments served now, one per credentials holder: started
    for new deployments (the config file's at start, stored ones whenever they are reloaded),
    stopped for those no longer served. Built by the worker with its services."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[GoogleToken, asyncio.Task[None]]] = {}
        self._aws: dict[tuple[object, ...], AwsCredentials] = {}  # Bedrock's holders, by deployment and options

    def serve(self, providers: Iterable[object]) -> list[GoogleToken | AwsCredentials]:
        """Keeps exactly `providers`' holders fresh; returns those started now. A new holder for a
        deployment already served with the same credentials takes over the current token (Google)
        or is replaced by the current one (AWS), so a reload of the stored models resolves nothing again."""
        from meterway.providers.bedrock import BedrockProvider

        providers = list(providers)
        started: list[GoogleToken | AwsCredentials] = []
        aws: dict[tuple[object, ...], AwsCredentials] = {}
        for provider in providers:
            if not isinstance(provider, BedrockProvider):
                continue
            ident = provider.credentials.identity()
            current = aws.get(ident) or self._aws.get(ident)
            if current is not None:
                provider.credentials = current
            else:
                provider.credentials.start()
                started.append(provider.credentials)
            aws[ident] = provider.credentials
        self._aws = aws
        # the protocol checks only that `credentials` exists: other families' (Bedrock's) are not Google's
        holders = [p.credentials for p in providers if isinstance(p, Refreshing)]
        wanted = {id(h): h for h in holders if isinstance(h, GoogleToken)}
        previous = {(h.label, _identity(h.source)): h for h, _ in self._running.values()}
        for key in self._running.keys() - wanted.keys():
            self._running.pop(key)[1].cancel()
        for key, holder in wanted.items():
            if key in self._running:
                continue
            old = previous.get((holder.label, _identity(holder.source)))
            if old is not None and old is not holder:
                holder.adopt(old)
            self._running[key] = (holder, asyncio.create_task(holder.keep_fresh()))
            started.append(holder)
        return started

    async def close(self) -> None:
        tasks = [task for _, task in self._running.values()]
        self._running.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def first_tokens(holders: Iterable[GoogleToken | AwsCredentials], wait_s: float = FIRST_TOKEN_WAIT_S) -> None:
    """Waits (bounded) for each holder's first refresh (a Google token, AWS credentials), so the
    requests that follow find one."""
    waits = [h.attempted() for h in holders]
    if waits:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), wait_s)


def _identity(source: CredentialSource) -> bytes:
    return orjson.dumps(dict(source.info) if source.info is not None else None, option=orjson.OPT_SORT_KEYS)
