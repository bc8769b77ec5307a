"""What the CLI writes: money as plain decimals, tables, progress, and a quiet end when the reader goes.

Spend, cost and budget are floats by the time a handler answers, and Python (and orjson) print a
small float as `1.215e-05`: correct, but no one reads a bill that way and spreadsheets pasting it
may not either. Every float the CLI prints, in a table or in JSON, goes through `plain` instead.

Tables are rich's: boxed, bold headers and numbers to the right on a terminal; to a pipe or a file,
the same rows as plain columns two spaces apart with no colour, no box and nothing cut or wrapped,
since scripts (and `grep`, `awk`) read them. `--json` never goes through rich. Progress bars go to
stderr, and only when stderr is a terminal: stdout stays the command's answer.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
from collections.abc import Iterator, Sequence
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


_PLAIN_WIDTH = 1_000_000  # wide enough that rich never wraps or cuts a plain table's cell


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[str] = ()) -> None:
    """Prints `rows` under `columns`: a rich table on a terminal, plain columns otherwise."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    terminal = console.is_terminal
    grid = Table(
        box=box.SIMPLE_HEAD if terminal else None,
        header_style="bold" if terminal else "",
        show_edge=terminal,
        pad_edge=terminal,
        padding=(0, 1),
    )
    for name in columns:
        if not terminal:
            grid.add_column(name, no_wrap=True)
        else:  # headers wrap between words, and long ids fold, rather than anything being cut
            words = name.replace("_", " ")
            grid.add_column(words, justify="right" if name in numeric else "left", overflow="fold")
    for row in rows:  # cells are data (a name may hold "[/]"), never rich markup
        grid.add_row(*(Text(cell) for cell in row))
    if terminal:
        console.print(grid)
        return
    plain_console = Console(file=io.StringIO(), width=_PLAIN_WIDTH, color_system=None, highlight=False)
    with plain_console.capture() as captured:
        plain_console.print(grid)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


class Ticker:
    """What `progress` yields: called with the work done since the last call; `start(total)` when
    the total is known only once the work has begun. Does nothing when there is no bar."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar = bar
        self._task = task

    def __call__(self, done: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, done)

    def start(self, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=total)


@contextlib.contextmanager
def progress(description: str, total: int | None, *, quiet: bool = False) -> Iterator[Ticker]:
    """`with progress("rows", n) as advance: … advance(k)`: a bar with count, rate and ETA on stderr
    while the work runs; a no-op with `quiet` or when stderr is not a terminal (a log, CI, a pipe),
    where a redrawn bar would only be noise."""
    from rich.console import Console

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield Ticker()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    with bar:
        yield Ticker(bar, bar.add_task(description, total=total))
