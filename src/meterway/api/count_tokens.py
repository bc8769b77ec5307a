"""`POST /v1/messages/count_tokens`: Anthropic's token count for a Messages request, never charged.

Authenticated as the model routes are (virtual keys, the key's and its team's model lists), and
answered in Anthropic's shape, errors included (the route's boundary is the Messages API's). The
model's group gives its first deployment (no routing strategy is consulted: nothing is generated,
so nothing is balanced, and a usage-based strategy is not fed a request that uses nothing):

- an Anthropic deployment: the body goes to the upstream's own `/v1/messages/count_tokens`, with the
  headers its messages get, and its answer (`{"input_tokens": N}`) is relayed as it came;
- any other deployment: counted here with the ledger's tokenizer (`ledger.tokens.TokenCounter`,
  the count the ledger records when an upstream reports no usage), with the tools' JSON added, so
  the figure is an estimate for models with another tokenizer.

It is not a generation: no ledger row (a zero-cost row would only inflate request counts in usage
reports and Lago), no limits reservation (it uses no tokens of any budget), no cache.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from meterway import bounds
from meterway.api.asgi import Incoming, Receive, Responder, Scope, Send, read_body, request_id
from meterway.api.attempts import fetch
from meterway.api.heads import decode
from meterway.api.proxy import check_customer_model, customer_of, group_for
from meterway.auth import bearer_token
from meterway.errors import BadRequest
from meterway.providers.anthropic import AnthropicProvider
from meterway.providers.base import Api, Call, RequestHead
from meterway.providers.common import unreadable

if TYPE_CHECKING:
    from meterway.auth import Principal
    from meterway.config.settings import Deployment
    from meterway.ledger.tokens import TokenCounter
    from meterway.services import Services


class _CountTokens(msgspec.Struct):
    model: str
    messages: msgspec.Raw
    tools: list[Any] | None = None


class _Counted(msgspec.Struct):
    input_tokens: int


_request = msgspec.json.Decoder(_CountTokens)
_counted = msgspec.json.Decoder(_Counted)


def decode_request(body: bytes) -> _CountTokens:
    """The fields the gateway needs, checked as /v1/messages checks them (no `max_tokens`: Anthropic's
    count_tokens takes none)."""
    request = decode(_request, body)
    if not request.model:
        raise BadRequest("'model' must not be empty.", param="model")
    bounds.text(request.model, "model")
    if not bytes(request.messages).lstrip().startswith(b"["):
        raise BadRequest("Invalid type for 'messages': expected an array.", param="messages", code="invalid_type")
    return request


def count_locally(counter: TokenCounter, body: bytes, tools: object, api: Api = Api.MESSAGES) -> int:
    """The prompt as the ledger counts a request of `api` (a Messages request's system and
    messages, a Responses request's instructions and input), plus the tools' definitions as JSON
    text: they are part of the prompt a model is sent."""
    total = counter.prompt(api, body)
    if tools:
        total += counter.count(orjson.dumps(tools).decode())
    return total


async def handle(services: Services, scope: Scope, receive: Receive, send: Send) -> None:
    incoming = Incoming(scope["headers"])
    rid = request_id(scope, incoming)
    principal = await services.auth.authenticate(
        bearer_token(incoming.authorization, incoming.x_api_key, incoming.api_key)
    )
    body = await read_body(receive, incoming, services.settings.max_body_bytes)
    try:
        answer = await _count(services, principal, body, rid, scope["headers"])
    except Exception as exc:
        raise bounds.deep_error(exc, body) from None
    await Responder(send, rid).whole(200, answer)


async def _count(
    services: Services, principal: Principal, body: bytes, rid: str, headers: list[tuple[bytes, bytes]]
) -> bytes:
    request = decode_request(body)
    group = group_for(services, principal, request.model)
    # the customer's list too (a header or the key's binding names it: a count has no `metadata`)
    await check_customer_model(services, customer_of(services, principal, headers, None), request.model)
    deployment = group.deployments[0]
    provider = deployment.provider_for(Api.MESSAGES)
    if isinstance(provider, AnthropicProvider):
        answer = await _upstream(services, deployment, provider, body, request.model, rid)
    else:
        # a body may be megabytes: tokenized off the event loop, so other requests go on meanwhile
        counted = await asyncio.to_thread(count_locally, services.ledger.counter, body, request.tools)
        answer = orjson.dumps({"input_tokens": counted})
    return answer


async def _upstream(
    services: Services, deployment: Deployment, provider: AnthropicProvider, body: bytes, model: str, rid: str
) -> bytes:
    """The upstream's count, relayed as it came once it is known to hold one; its errors read as
    every upstream error is (`map_error`), so the client gets them in Anthropic's shape."""
    upstream_request = provider.count_tokens_request(body, model)
    call = Call(Api.MESSAGES, body, RequestHead(model), rid)
    data = await fetch(services, deployment, provider, upstream_request, call)  # Anthropic limits counts too
    try:
        _counted.decode(data)
    except msgspec.DecodeError:
        raise unreadable(provider.label, data, "holds no input_tokens count") from None
    return data
