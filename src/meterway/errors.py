"""The exception tree of meterway.

Every failure a request can meet is one of these types. Any module may raise them; only
`meterway.api.errors` turns them into HTTP (a status, a body in the client's API format, or an
error event inside a stream that has already started). Nothing here imports HTTP code, so the
CLI and background tasks share the same vocabulary.

    MeterwayError                       500 internal_error
    ├── ConfigError                     (startup only; never reaches a client)
    ├── LagoPlanInvalid                 a Lago plan meterway cannot price (also a ValueError)
    ├── BadRequest                      400 invalid_request_error
    │   ├── UnsupportedOperation        400 a deployment cannot serve this endpoint
    │   ├── BudgetExceeded              400 budget_exceeded (spend and limit in the message)
    │   ├── BodyTooLarge                413
    │   └── Unprocessable               422 well-formed JSON, but a field's value is unusable (named)
    ├── AuthenticationFailed            401 authentication_error
    ├── InsufficientCredits             402 insufficient_quota / insufficient_credits (prepaid wallets)
    ├── PermissionDenied                403 permission_error
    ├── ModelNotFound                   404 not_found_error (lists the models the caller may use)
    ├── RouteNotFound                   404 (503 while the gateway starts)
    ├── MethodNotAllowed                405 the path exists with other methods (listed in Allow)
    ├── RateLimited                     429 rate_limit_error (retry_after)
    ├── NoDeploymentAvailable           429 every deployment of the group cools down or is at its rpm/tpm
    ├── ServiceUnavailable              503 (e.g. the gateway is not ready)
    │   └── CreditsUnknown              503 credits_unknown: a stale prepaid balance, when_stale closed
    └── UpstreamError                   the upstream answered with an error: its 4xx, or 502
        ├── UpstreamTransient           another attempt may succeed: retried, then fallbacks
        │   ├── UpstreamUnavailable     the upstream's 5xx or 408, or an answer broken off (502)
        │   ├── UpstreamRateLimited     the upstream's 429 (its Retry-After passed on)
        │   ├── UpstreamTimeout         504
        │   └── UpstreamUnreachable     502 naming the deployment, never its key
        ├── ContextWindowExceeded       its 400: the prompt is too long (context_window_fallbacks)
        ├── ContentPolicyViolation      its 400: refused by a content filter (content_policy_fallbacks)
        ├── UpstreamRejected            the caller's own error (another 4xx): passed on as it is
        └── UpstreamUnreadable          502: a 2xx answer that is not in its API's format
"""

from __future__ import annotations

from typing import ClassVar


class MeterwayError(Exception):
    """Base of every error meterway raises on purpose. `status` and `error_type` are per class;
    `message`, `param` and `code` are per instance, as in OpenAI's error body."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    retry_after: float | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def http_status(self) -> int:
        """The status sent to the client; per instance because an upstream 4xx keeps its own."""
        return self.status


class ConfigError(MeterwayError):
    """The configuration cannot be used. The message names the entry and the field."""

    error_type = "config_error"


class LagoPlanInvalid(MeterwayError, ValueError):
    """A Lago plan (or one of its billable metrics) is not of the shape Lago's API documents, so
    meterway cannot price events by it. The message names the charge and the field. Never a
    client's fault: the prepaid reader treats it as a failed reading."""

    error_type = "lago_plan_invalid"


class BadRequest(MeterwayError):
    status = 400
    error_type = "invalid_request_error"


class UnsupportedOperation(BadRequest):
    """The chosen deployment's provider cannot serve this endpoint (e.g. embeddings on anthropic/)."""


class BudgetExceeded(BadRequest):
    """A budget of the key, its user, its team or the customer cannot pay for the request. 400,
    not 429, as LiteLLM answers it: waiting does not help before the budget resets."""

    error_type = "budget_exceeded"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="budget_exceeded")


class BodyTooLarge(BadRequest):
    status = 413


class Unprocessable(BadRequest):
    """The body is well-formed JSON, but a field cannot be used as it is (e.g. a reported usage
    event with negative tokens). `param` names the field, with its index within a batch."""

    status = 422


class AuthenticationFailed(MeterwayError):
    status = 401
    error_type = "authentication_error"

    def __init__(self, message: str = "Invalid or missing API key.", *, code: str = "invalid_api_key") -> None:
        super().__init__(message, code=code)


class InsufficientCredits(MeterwayError):
    """The charged entity's prepaid Lago wallets cannot pay for the request (`billing.prepaid:
    enforce`). 402, not 429: waiting does not help until a top-up, and SDKs retry a 429. OpenAI's
    own type for a spent balance, so clients that handle it already say the right thing."""

    status = 402
    error_type = "insufficient_quota"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="insufficient_credits")


class PermissionDenied(MeterwayError):
    status = 403
    error_type = "permission_error"


class ModelNotFound(MeterwayError):
    status = 404
    error_type = "not_found_error"

    def __init__(self, model: str, available: list[str]) -> None:
        shown = ", ".join(available) if available else "(none)"
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it. Available models: {shown}",
            param="model",
            code="model_not_found",
        )
        self.model = model
        self.available = available


class RouteNotFound(MeterwayError):
    status = 404
    error_type = "not_found_error"

    def __init__(self, message: str, *, status: int = 404) -> None:
        super().__init__(message)
        self._status = status

    def http_status(self) -> int:
        return self._status


class MethodNotAllowed(MeterwayError):
    """The path exists, but not with this method; `allowed` becomes the `Allow` header."""

    status = 405
    error_type = "invalid_request_error"

    def __init__(self, method: str, path: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"{method} is not allowed on {path}; use {' or '.join(allowed)}.")
        self.allowed = allowed


class RateLimited(MeterwayError):
    status = 429
    error_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        limit: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.headers = headers  # x-ratelimit-* for the client
        self.limit = limit  # which limit refused: rpm, tpm or parallel (a metric label)


class NoDeploymentAvailable(MeterwayError):
    """Every deployment of a model group (and of its fallbacks) is cooling down after failures or
    has used its rpm/tpm for the minute. 429 with Retry-After: waiting helps."""

    status = 429
    error_type = "rate_limit_error"

    def __init__(self, model: str, retry_after: float | None) -> None:
        super().__init__(
            f"No deployment of model '{model}' is available now: each is cooling down after failures or "
            "at its rate limit. Retry shortly.",
            code="no_deployment_available",
        )
        self.retry_after = retry_after


class ServiceUnavailable(MeterwayError):
    status = 503
    error_type = "service_unavailable"


class CreditsUnknown(ServiceUnavailable):
    """The charged entity's prepaid balance could not be read from Lago for longer than
    `billing.prepaid.stale_after`, and `when_stale` is closed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="credits_unknown")


class UpstreamError(MeterwayError):
    """The upstream answered with an error. A 4xx is the caller's fault and keeps its status and
    message; a 5xx is ours to hide behind a 502."""

    status = 502
    error_type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        deployment: str,
        upstream_status: int | None = None,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.deployment = deployment
        self.upstream_status = upstream_status
        self.upstream_type = error_type

    def http_status(self) -> int:
        s = self.upstream_status
        if s is not None and 400 <= s < 500:
            return s
        return self.status


# What an upstream failure means is decided once, where it is read (a provider's `map_error`, the
# transport's `map_client_error`), so routing's retry decision is a class, not phrase matching. The
# classes keep UpstreamError's status and `error_type`: the client sees the same status and body.


class UpstreamTransient(UpstreamError):
    """A failure another attempt (the same deployment later, or another) may not meet."""


class UpstreamUnavailable(UpstreamTransient):
    """The upstream answered 5xx or 408, or broke its answer off."""


class UpstreamRateLimited(UpstreamTransient):
    """The upstream answered 429; its Retry-After is passed on to the client."""


class UpstreamTimeout(UpstreamTransient):
    status = 504
    error_type = "timeout"


class UpstreamUnreachable(UpstreamTransient):
    status = 502
    error_type = "upstream_unreachable"


class ContextWindowExceeded(UpstreamError):
    """The upstream refused the prompt as too long for the model: another model group (the
    context-window fallbacks) may take it; another attempt on the same one would not."""


class ContentPolicyViolation(UpstreamError):
    """The upstream's content filter refused the request: only the content-policy fallbacks help."""


class UpstreamRejected(UpstreamError):
    """The upstream refused the request as the caller's own error (any other 4xx): passed on as
    it is, never retried."""


class UpstreamUnreadable(UpstreamError):
    """The upstream answered 2xx with a body that is not in its API's format: a 502. Not retried:
    the deployment did answer, and would most likely answer the same again."""
