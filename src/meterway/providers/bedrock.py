"""AWS Bedrock as an upstream: chat through the Converse API, embeddings through InvokeModel.

`bedrock/<model id>` (also `bedrock/converse/<id>`, `bedrock/invoke/<id>`, a cross-region
inference profile such as `us.anthropic.claude-…`, or an ARN) goes to
`/model/{id}/converse` (`/converse-stream` when streamed: AWS's binary event stream, read with
botocore's own parser) or, for Titan and Cohere embedding models, `/model/{id}/invoke`. The
translation is `bedrock_format`'s; each request is signed with SigV4 by botocore, a pure function
of the request's bytes and the credentials of the moment.

Credentials are read as LiteLLM users write them (`aws_access_key_id`, `aws_secret_access_key`,
`aws_session_token`, `aws_profile_name`, `aws_role_name` + `aws_session_name`, `aws_region_name`,
`aws_bedrock_runtime_endpoint`, `aws_sts_endpoint`), else from AWS's standard chain (environment,
shared profile, web identity as on Kubernetes, container and instance roles). `AwsCredentials`
holds them: keys given in the config are ready at once; anything that needs I/O (a profile, STS,
the chain) is resolved by a thread the worker starts with its services (`Refreshers`), and
temporary credentials are refreshed by a thread before they expire, so the request path only
ever reads the credentials it holds, and fails at once when there are none.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from yarl import URL

from meterway.errors import (
    BadRequest,
    ConfigError,
    ContextWindowExceeded,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from meterway.providers import anthropic_format as fmt
from meterway.providers import bedrock_format as bf
from meterway.providers import billed as billed_out
from meterway.providers import sse
from meterway.providers.anthropic import usage_from_openai_dict
from meterway.providers.base import Api, Call, Parsed, StreamRelay, UpstreamRequest, Usage, decode_object, tokens
from meterway.providers.common import embedding_items, error_from_body, unreadable, wants_base64
from meterway.providers.token_input import embedding_texts

if TYPE_CHECKING:  # botocore is imported where it is used: a gateway without Bedrock never loads it
    from botocore.credentials import Credentials, ReadOnlyCredentials
    from botocore.eventstream import EventStreamMessage

    from meterway.config.secret import Secret

log = logging.getLogger("meterway")

SERVICE = "bedrock"  # the SigV4 signing name of bedrock-runtime
DEFAULT_REGION = "us-west-2"  # LiteLLM's, when nothing names one
EVENT_STREAM = "application/vnd.amazon.eventstream"
ROUTE_PREFIXES = ("converse/", "invoke/")  # LiteLLM's route markers in `bedrock/<route>/<model id>`
PARAMS = (
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region_name",
    "aws_role_name",
    "aws_session_name",
    "aws_profile_name",
    "aws_bedrock_runtime_endpoint",
    "aws_sts_endpoint",
)
FIRST_CREDENTIALS_WAIT_S = 10.0  # the longest a start (or a reload) waits for credentials being resolved
ADVISORY_REFRESH_S = 15 * 60  # temporary credentials are refreshed (by a thread) this long before they expire
EXPIRY_MARGIN_S = 5  # credentials closer than this to their expiry are not signed with (the request would fail)


# ---------------------------------------------------------------- credentials


class AwsOptions:
    """The `aws_*` settings of one deployment, checked when the config is loaded."""

    __slots__ = (
        "access_key_id",
        "endpoint",
        "profile",
        "region",
        "role_arn",
        "secret_access_key",
        "session_name",
        "session_token",
        "sts_endpoint",
    )

    def __init__(self, params: Mapping[str, Any], env: Mapping[str, str]) -> None:
        # imported here: `meterway.config` loads the registry, which imports this module
        from meterway.config.secret import Secret

        def text(name: str) -> str | None:
            value = params.get(name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string", param=name)
            return value or None

        self.access_key_id = text("aws_access_key_id")
        secret = text("aws_secret_access_key")
        token = text("aws_session_token")
        self.secret_access_key: Secret | None = Secret(secret) if secret else None
        self.session_token: Secret | None = Secret(token) if token else None
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError("aws_access_key_id and aws_secret_access_key go together", param="aws_access_key_id")
        self.region = (
            text("aws_region_name")
            or env.get("AWS_REGION_NAME")
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )
        self.role_arn = text("aws_role_name")
        self.session_name = text("aws_session_name") or "meterway"
        self.profile = text("aws_profile_name")
        self.sts_endpoint = text("aws_sts_endpoint")
        endpoint = text("aws_bedrock_runtime_endpoint") or env.get("AWS_BEDROCK_RUNTIME_ENDPOINT")
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                "aws_bedrock_runtime_endpoint must be an http(s) URL", param="aws_bedrock_runtime_endpoint"
            )
        self.endpoint = endpoint


def _static(options: AwsOptions) -> Credentials | None:
    """The keys the config gives, if it gives them."""
    if not (options.access_key_id and options.secret_access_key):
        return None
    from botocore.credentials import Credentials

    token = options.session_token.reveal() if options.session_token else None
    return Credentials(options.access_key_id, options.secret_access_key.reveal(), token)


def _resolve(options: AwsOptions, env: Mapping[str, str]) -> Credentials | None:
    """The credentials a deployment signs with: keys given, a named profile, keys in the
    environment config loading was given, else AWS's standard chain; with a role, those are the
    source of an STS AssumeRole. May do I/O (files, STS, instance metadata): run off the request path."""
    from botocore.credentials import AssumeRoleCredentialFetcher, Credentials, DeferredRefreshableCredentials
    from botocore.session import Session

    session = Session(profile=options.profile) if options.profile else Session()
    source = _static(options)
    if source is None and not options.profile and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        source = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN"))
    if source is None:
        source = session.get_credentials()
    if source is None or not options.role_arn:
        return source
    creator = functools.partial(session.create_client, region_name=options.region, endpoint_url=options.sts_endpoint)
    fetcher = AssumeRoleCredentialFetcher(
        creator, source, options.role_arn, extra_args={"RoleSessionName": options.session_name}
    )
    return DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")


class AwsCredentials:
    """The credentials one deployment signs with. Reading them (`frozen`) never waits and does no
    I/O: it runs on the event loop, inside the synchronous `build_request`. Static keys are ready at
    once; anything else (a profile, STS, web identity, a container role) is resolved by a thread
    (`start`), and temporary credentials are renewed by a thread from `ADVISORY_REFRESH_S` before
    they expire. Until they are resolved, or once they have expired unrenewed, a request to the
    deployment fails at once with a 502 routing can fall back from; the reason, which may name
    accounts and roles, goes to the gateway's log alone."""

    __slots__ = (
        "_credentials",
        "_env",
        "_error",
        "_frozen",
        "_label",
        "_lock",
        "_logged",
        "_options",
        "_ready",
        "_refreshing",
        "_started",
    )

    def __init__(self, options: AwsOptions, env: Mapping[str, str], label: str) -> None:
        self._label = label
        self._options = options
        self._env = dict(env)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._refreshing = False
        self._started = False
        self._error: str | None = None
        self._logged: str | None = None  # the failure last logged: each change is logged once
        self._credentials: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        static = None if options.role_arn else _static(options)
        if static is not None:  # no I/O to do
            self._credentials, self._frozen = static, static.get_frozen_credentials()
            self._started = True
            self._ready.set()

    def identity(self) -> tuple[object, ...]:
        """What makes two holders interchangeable: the deployment and its `aws_*` options (kept in
        memory only, to carry a holder over a reload of the stored models)."""
        o = self._options
        secret = o.secret_access_key.reveal() if o.secret_access_key else None
        token = o.session_token.reveal() if o.session_token else None
        return (self._label, o.access_key_id, secret, token, o.region, o.role_arn, o.session_name, o.profile,
                o.sts_endpoint)  # fmt: skip

    def start(self) -> None:
        """Starts resolving the credentials in a thread (once; the worker calls it at start)."""
        with self._lock:
            start, self._started = not self._started, True
        if start:
            threading.Thread(target=self._start, name=f"aws-credentials-{self._label}", daemon=True).start()

    async def attempted(self) -> None:
        """Returns once the first resolution has succeeded or failed (the worker waits, bounded)."""
        self.start()
        # in a thread of the loop's pool, bounded: the caller's own bound may give up sooner
        await asyncio.to_thread(self._ready.wait, FIRST_CREDENTIALS_WAIT_S)

    def _start(self) -> None:
        try:
            credentials = _resolve(self._options, self._env)
            if credentials is None:
                self._fail("no AWS credentials found (give aws_access_key_id and aws_secret_access_key, "
                           "aws_profile_name, or set up the standard AWS environment)")  # fmt: skip
            else:
                self._credentials = credentials
                self._frozen = credentials.get_frozen_credentials()
                self._error = None
        except Exception as e:  # a thread of its own: logged, and requests are told the credentials are unavailable
            self._fail(f"could not be obtained: {e.__class__.__name__}: {e}")
        finally:
            self._ready.set()

    def _fail(self, why: str) -> None:
        """Logs a failure once per change (the detail may name accounts and roles, never a key)."""
        self._error = why
        if why != self._logged:
            self._logged = why
            log.warning("deployment %s: AWS credentials %s", self._label, why)

    def _refresh(self) -> None:
        try:
            credentials = self._credentials
            if credentials is not None:
                self._frozen = credentials.get_frozen_credentials()  # botocore refreshes them when due
                self._error = self._logged = None
        except Exception as e:  # kept: the next request starts another try
            self._fail(f"could not be renewed: {e.__class__.__name__}: {e}")
        finally:
            with self._lock:
                self._refreshing = False

    def _unavailable(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"Deployment '{self._label}': its AWS credentials are unavailable (see the gateway's log).",
            deployment=self._label,
        )

    def frozen(self) -> ReadOnlyCredentials:
        if not self._ready.is_set():
            self.start()
            raise self._unavailable()
        from botocore.credentials import RefreshableCredentials

        credentials, frozen = self._credentials, self._frozen
        if credentials is None or frozen is None:
            raise self._unavailable()
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed(ADVISORY_REFRESH_S):
            with self._lock:
                start, self._refreshing = not self._refreshing, True
            if start:
                threading.Thread(target=self._refresh, name=f"aws-refresh-{self._label}", daemon=True).start()
            if credentials.refresh_needed(EXPIRY_MARGIN_S):  # expired (or about to): cannot sign now
                raise self._unavailable()
        return frozen


def sign(
    method: str, url: str, headers: Mapping[str, str], body: bytes, credentials: ReadOnlyCredentials, region: str
) -> dict[str, str]:
    """The request's headers with SigV4's added (Authorization, X-Amz-Date, and the session token
    of temporary credentials), by botocore: every header given is signed, and the host from `url`."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    SigV4Auth(credentials, SERVICE, region).add_auth(request)
    return dict(request.headers.items())


# ---------------------------------------------------------------- the stream


def _frame(message: EventStreamMessage) -> tuple[int, Mapping[str, Any], bytes]:
    """A parsed frame's length, headers and payload (botocore-stubs types the first two as ints)."""
    frame: Any = message
    return int(frame.prelude.total_length), frame.headers, bytes(frame.payload)


_EXCEPTIONS: Mapping[str, type[UpstreamError]] = {
    "throttlingException": UpstreamRateLimited,
    "serviceUnavailableException": UpstreamUnavailable,
    "internalServerException": UpstreamUnavailable,
    "modelStreamErrorException": UpstreamUnavailable,
    "modelTimeoutException": UpstreamUnavailable,
    "validationException": UpstreamRejected,
}


class FrameBound:
    """`sse.EventBound` for AWS's event stream: watches each frame's declared length (the first
    four bytes of its prelude) and says when one is longer than `limit`, before it has arrived.
    Binary frames have no blank lines to cut at, so the SSE watcher would see one endless event."""

    __slots__ = ("_head", "_left", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._left = 0  # bytes of the current frame still to come
        self._head = b""  # the start of a prelude split across reads

    def over(self, data: bytes) -> bool:
        at, size = 0, len(data)
        while at < size:
            if self._left:
                step = min(self._left, size - at)
                self._left -= step
                at += step
                continue
            take = 4 - len(self._head)
            self._head += data[at : at + take]
            at += take
            if len(self._head) < 4:
                return False
            total = int.from_bytes(self._head, "big")
            self._head = b""
            if total > self._limit:
                return True
            self._left = max(total - 4, 0)
        return False


class ConverseRelay:
    """Converse's event stream in (binary frames, each checked by botocore's parser: prelude and
    message CRCs, bounded lengths), OpenAI chat chunks out, through `anthropic_format`'s stream
    translation. A frame that fails its checks, an exception frame, or a stream that ends before
    its message did is the upstream's failure: the chunks before it have gone out, the error ends
    the client's stream, and the row is recorded with what was delivered."""

    __slots__ = ("_broken", "_buffer", "_events", "_label", "_pending", "_stream", "usage")
    done = False  # `[DONE]` is written by `finish` alone

    def __init__(self, label: str, model: str, include_usage: bool) -> None:
        from botocore.eventstream import EventStreamBuffer

        self._label = label
        self._buffer = EventStreamBuffer()
        self._events = bf.ConverseEvents()
        self._stream = fmt.MessagesToChatStream(model, include_usage, int(time.time()))
        self._stream.id = f"chatcmpl-{uuid.uuid4().hex}"
        self._broken: UpstreamError | None = None
        self._pending = 0  # bytes fed that no whole frame has taken yet
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        if self._broken is not None:
            raise self._broken
        self._buffer.add_data(data)
        self._pending += len(data)
        from botocore.eventstream import ParserError

        out: list[bytes] = []
        try:
            for message in self._buffer:
                length, headers, payload = _frame(message)
                self._pending -= length
                self._translate(headers, payload, out)
        except ParserError as e:
            self._broken = UpstreamUnavailable(
                f"Upstream deployment '{self._label}' sent a broken event stream: {e}", deployment=self._label
            )
        except UpstreamError as e:
            self._broken = e
        if self._broken is not None and not out:
            raise self._broken
        return b"".join(out)

    def _translate(self, headers: Mapping[str, Any], raw: bytes, out: list[bytes]) -> None:
        kind = headers.get(":message-type")
        try:
            payload = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            raise UpstreamUnavailable(
                f"Upstream deployment '{self._label}' sent an event that is not a JSON object.", deployment=self._label
            )
        if kind == "exception" or kind == "error":
            name = str(headers.get(":exception-type") or headers.get(":error-code") or "error")
            text = payload.get("message") or headers.get(":error-message") or name
            error = _EXCEPTIONS.get(name, UpstreamUnavailable)
            raise error(f"Upstream deployment '{self._label}' ended its stream: {name}: {text}", deployment=self._label)
        self._emit(self._events.translate(str(headers.get(":event-type", "")), payload), out)

    def _emit(self, events: list[tuple[str, fmt.JSON]], out: list[bytes]) -> None:
        for name, event in events:
            try:
                chunks = self._stream.feed(name, event)
            except fmt.UpstreamStreamError as e:
                raise UpstreamUnavailable(e.message, deployment=self._label) from None
            out.extend(sse.format_data(orjson.dumps(chunk)) for chunk in chunks)
        if self._stream.usage is not None:
            self.usage = usage_from_openai_dict(self._stream.usage)

    def finish(self) -> bytes:
        if self._broken is not None:
            raise self._broken
        events = self._events
        if self._pending or not events.started or not (events.ended or events.stopped):
            raise UpstreamUnavailable(
                f"Upstream deployment '{self._label}' broke off its stream before the message ended.",
                deployment=self._label,
            )
        out: list[bytes] = []
        self._emit(self._events.end(), out)  # a stop without the usage that follows it
        return b"".join(out) + sse.DONE

    def settle(self, billed: Usage, closing: bytes) -> bytes:
        stream = self._stream
        if not stream.include_usage or stream.usage is not None:
            return closing
        template = {"id": stream.id, "created": stream.created, "model": stream.model}
        return billed_out.usage_chunk(template, billed) + closing


# ---------------------------------------------------------------- the provider


def model_id(upstream_model: str) -> str:
    """The Bedrock model id of `bedrock/[converse/|invoke/]<id>`."""
    for prefix in ROUTE_PREFIXES:
        if upstream_model.startswith(prefix):
            return upstream_model[len(prefix) :]
    return upstream_model


class BedrockProvider:
    """One Bedrock deployment: its model, region, endpoint, headers and credentials, resolved when
    the config is loaded. Chat models serve chat (and, through the adapters, /v1/messages and
    /v1/responses); Titan and Cohere embedding models serve embeddings."""

    family = "bedrock"

    def __init__(
        self,
        *,
        label: str,
        upstream_model: str,
        api_base: str | None,
        options: AwsOptions,
        credentials: AwsCredentials,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.label = label
        self.upstream_model = model_id(upstream_model)
        self.region = options.region
        self.credentials = credentials
        self.embed = bf.embed_kind(self.upstream_model)
        base = (api_base or options.endpoint or f"https://bedrock-runtime.{options.region}.amazonaws.com").rstrip("/")
        root = f"{base}/model/{quote(self.upstream_model, safe='')}"
        self.urls = {
            "converse": URL(root + "/converse", encoded=True),
            "converse-stream": URL(root + "/converse-stream", encoded=True),
            "invoke": URL(root + "/invoke", encoded=True),
        }
        self.headers = {"Content-Type": "application/json", **(extra_headers or {})}

    def supports(self, api: Api) -> bool:
        return api is (Api.EMBEDDINGS if self.embed else Api.CHAT)

    def build_request(self, call: Call) -> UpstreamRequest:
        request = decode_object(call.body)
        try:
            if call.api is Api.EMBEDDINGS:
                texts = embedding_texts(request.get("input"), call.head.model, "Bedrock")
                body = bf.titan_request(texts, request) if self.embed == "titan" else bf.cohere_request(texts, request)
                route, accept = "invoke", "application/json"
            else:
                body = bf.converse_request(request)
                route, accept = (
                    ("converse-stream", EVENT_STREAM) if call.head.stream else ("converse", "application/json")
                )
        except fmt.TranslationError as e:
            raise BadRequest(str(e), param=e.param) from None
        raw = orjson.dumps(body)
        url = self.urls[route]
        headers = sign(
            "POST", str(url), {**self.headers, "Accept": accept}, raw, self.credentials.frozen(), self.region
        )
        return UpstreamRequest("POST", url, headers, raw, call.head.stream)

    def parse_response(self, call: Call, body: bytes) -> Parsed:
        answer = orjson.loads(body)
        if not isinstance(answer, dict):
            raise unreadable(self.label, body)
        if call.api is Api.EMBEDDINGS:
            vectors, count = bf.embed_vectors(self.embed or "", answer)
            usage = None if count is None else Usage(tokens(count), 0, tokens(count))
            counted = max(usage.prompt_tokens, 0) if usage else 0
            out = {
                "object": "list",
                "data": embedding_items(vectors, wants_base64(call)),
                "model": self.upstream_model,
                "usage": {"prompt_tokens": counted, "total_tokens": counted},
            }
            return Parsed(orjson.dumps(out), usage)
        message = bf.anthropic_message(answer, self.upstream_model)
        message["id"] = f"chatcmpl-{uuid.uuid4().hex}"
        chat = fmt.messages_response_to_chat(message, self.upstream_model)
        reported = isinstance(answer.get("usage"), dict)  # else the ledger counts
        return Parsed(orjson.dumps(chat), usage_from_openai_dict(chat.get("usage")) if reported else None)

    def open_stream(self, call: Call) -> StreamRelay:
        return ConverseRelay(self.label, self.upstream_model, call.head.include_usage)

    def map_error(self, call: Call, status: int, body: bytes) -> UpstreamError:
        """Bedrock's errors are `{"message": ...}` (the kind is in a header: its status says enough);
        a 403 is about the gateway's own credentials (signature, permissions), and a prompt too long
        for the model is a 400 ValidationException that says so."""
        error = error_from_body(status, body, self.label)
        if status in (401, 403):  # the gateway's AWS credentials, not the client's key: say so
            message = f"Upstream deployment '{self.label}' refused the gateway's AWS credentials: {error.message}"
            return UpstreamRejected(message, deployment=self.label, upstream_status=status)
        if status == 400 and "too long" in error.message.lower() and not isinstance(error, ContextWindowExceeded):
            return ContextWindowExceeded(error.message, deployment=self.label, upstream_status=status)
        return error


def build(
    *,
    label: str,
    upstream_model: str,
    api_base: str | None,
    params: Mapping[str, Any],
    env: Mapping[str, str],
    extra_headers: Mapping[str, str] | None = None,
) -> BedrockProvider:
    options = AwsOptions(params, env)
    return BedrockProvider(
        label=label,
        upstream_model=upstream_model,
        api_base=api_base,
        options=options,
        credentials=AwsCredentials(options, env, label),
        extra_headers=extra_headers,
    )
