"""Runs a `meterway` command in a child process forked from the test process.

A `python -m meterway ...` subprocess spends most of its time importing (about a second here, more
on a loaded machine), and the admin and migrate tests run dozens of them. A forked child already
has meterway imported: it runs the console script's `main(argv)` with the environment it is given,
its own stdout and stderr and its own exit status, as a separate process (nothing it does reaches
the test process), and returns what `subprocess.run` would. Tests of the entry point itself, of
`serve` and of anything a fresh interpreter must show keep spawning `python -m meterway`. Call it
from a test without a running event loop (the child runs `asyncio.run`, as the console script does).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import meterway
from meterway.cli.main import main

# Python's default warning filters (the last one added takes precedence when several match)
_DEFAULT_WARNINGS: tuple[tuple[Literal["default", "ignore"], type[Warning]], ...] = (
    ("ignore", ResourceWarning),
    ("ignore", ImportWarning),
    ("ignore", PendingDeprecationWarning),
    ("ignore", DeprecationWarning),
)


def _drain(fd: int, into: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as stream:
        into.append(stream.read())


def run_meterway(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`meterway ARGS` in a forked child with `env` (default: this process's) as its environment,
    in `cwd` (default: this process's working directory)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    environment = dict(os.environ if env is None else env)
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads may deadlock the child. The child
        # uses fresh stdout/stderr and its own event loop, logging and the import lock are reset at
        # fork by CPython, and a child that still hung would be killed at `timeout` (a failure)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        code = 1
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (flushed below, then _exit)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.environ.clear()
            os.environ.update(environment)
            if cwd is not None:
                os.chdir(cwd)
            sys.argv = [str(Path(meterway.__file__).with_name("__main__.py")), *args]
            warnings.resetwarnings()  # a fresh interpreter's filters, not the test run's "error"
            for action, category in _DEFAULT_WARNINGS:
                warnings.simplefilter(action, category)
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(BaseException):
                    stream.flush()
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=_drain, args=(fd, into)) for fd, into in ((out_r, out), (err_r, err))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout)
    if any(reader.is_alive() for reader in readers):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise subprocess.TimeoutExpired(["meterway", *args], timeout)
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(
        ["meterway", *args], os.waitstatus_to_exitcode(status), out[0].decode(), err[0].decode()
    )
