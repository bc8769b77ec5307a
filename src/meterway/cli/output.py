"""What the CLI writes to stdout: money as plain decimals, and a quiet end when the reader goes.

Spend, cost and budget are floats by the time a handler answers, and Python (and orjson) print a
small float as `1.215e-05`: correct, but no one reads a bill that way and spreadsheets pasting it
may not either. Every float the CLI prints, in a table or in JSON, goes through `plain` instead.
"""

from __future__ import annotations

import math
import os
import sys
from decimal import Decimal
from typing import Any

import orjson

CLOSED_PIPE_STATUS = 141  # what a shell reports for a command ended by SIGPIPE (128 + 13)


def plain(value: Any) -> str:
    """`value` as text; a number in positional notation (`0.00001215`), as short as its repr."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return format(Decimal(repr(value)), "f")
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")
    return str(value)


def dumps(result: Any) -> str:
    """Indented JSON of `result` whose floats are written in positional notation (still JSON numbers)."""
    return orjson.dumps(_plain_floats(result), option=orjson.OPT_INDENT_2).decode()


def _plain_floats(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return orjson.Fragment(plain(value))
    if isinstance(value, dict):
        return {k: _plain_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_floats(v) for v in value]
    return value


def closed_pipe() -> int:
    """After stdout's reader went away (`meterway keys list --json | head`): what is still buffered
    goes nowhere, so the interpreter's last flush at exit cannot raise again, and the command ends
    with the status a shell expects of a writer whose pipe closed, with nothing on stderr."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return CLOSED_PIPE_STATUS
