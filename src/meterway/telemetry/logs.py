"""Logs: readable text by default, one JSON object per line with `--log-format json`; both carry
the request id and trace id of the request being served, so a log line leads to its ledger row
and its trace. Levels come from `--log-level`, else `METERWAY_LOG_LEVEL`, else `LITELLM_LOG`.

Nothing here logs secrets or prompt text: the gateway's own log calls never pass them. Lines
written by others (uvicorn's access log quotes the path with its query, and LiteLLM's documented
`GET /key/info?key=sk-...` puts a key there) are redacted as they are formatted: `key=` and
`api_key=` query values, anything shaped like a key (`sk-` and 10 or more key characters), and
the master key itself.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from meterway.config.secret import Secret
    from meterway.context import RequestContext

# The request being served by the current task (a context variable: each task sees its own).
CURRENT: ContextVar[RequestContext | None] = ContextVar("meterway_request", default=None)
LEVELS = ("debug", "info", "warning", "error")
_TEXT = "%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"
REDACTED = "[redacted]"
# `key=...` and `api_key=...` (any `*_key=`, `*-key=`) up to the next separator of a query or a log line
_KEY_PARAM = re.compile(r"(?i)(?<![a-z0-9])(key=)[^&\s\"'#]+")
# a virtual key, the master key or an upstream key: `sk-` then key characters (URL-safe base64)
_KEY_SHAPED = re.compile(r"sk-[A-Za-z0-9_\-]{10,}")
SECRET_MIN_CHARS = 8  # a shorter master key, replaced everywhere, would redact ordinary words


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without key-shaped values, key query values or any of `secrets`."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "=" in text and "key=" in text.lower():  # the regex only for lines that may need it
        text = _KEY_PARAM.sub(r"\1" + REDACTED, text)
    if "sk-" in text:
        text = _KEY_SHAPED.sub("sk-" + REDACTED, text)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats with `inner`, then redacts the whole line (message, arguments and traceback alike):
    the only place every log line passes, whoever wrote it."""

    def __init__(self, inner: logging.Formatter, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = tuple(s for s in secrets if len(s) >= SECRET_MIN_CHARS)

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record), self.secrets)


def level_from_env(env: Mapping[str, str] = os.environ, default: str = "info") -> str:
    for name in ("METERWAY_LOG_LEVEL", "LITELLM_LOG"):
        value = env.get(name, "").strip().lower()
        if value in LEVELS:
            return value
    return default


def _ids() -> tuple[str | None, str | None]:
    ctx = CURRENT.get()
    if ctx is None:
        return None, None
    trace_id = None
    if ctx.span is not None:
        trace_id = format(ctx.span.get_span_context().trace_id, "032x")
    return ctx.request_id, trace_id


class _RequestFilter(logging.Filter):
    """Adds the current request's ids to every record (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid, trace_id = _ids()
        record.request_id = rid
        record.trace_id = trace_id
        record.request = f" [{rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "trace_id"):
            value = getattr(record, name, None)
            if value:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def configure(level: str, fmt: str = "text", secrets: tuple[Secret | None, ...] = ()) -> None:
    """The root logger's one handler, on stderr (uvicorn's loggers propagate to it). Called again
    once the settings are read, to redact the master key too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestFilter())
    inner = JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT)
    handler.setFormatter(RedactingFormatter(inner, tuple(s.reveal() for s in secrets if s is not None)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
