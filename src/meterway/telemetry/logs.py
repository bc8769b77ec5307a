"""Logs: readable text by default, one JSON object per line with `--log-format json`; both carry
the request id and trace id of the request being served, so a log line leads to its ledger row
and its trace. Levels come from `--log-level`, else `METERWAY_LOG_LEVEL`, else `LITELLM_LOG`.

Nothing here logs secrets or prompt text: the gateway's own log calls never pass them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from meterway.context import RequestContext

# The request being served by the current task (a context variable: each task sees its own).
CURRENT: ContextVar[RequestContext | None] = ContextVar("meterway_request", default=None)
LEVELS = ("debug", "info", "warning", "error")
_TEXT = "%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"


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


def configure(level: str, fmt: str = "text") -> None:
    """The root logger's one handler, on stderr (uvicorn's loggers propagate to it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
