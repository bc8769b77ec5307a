"""The command line both in-process micro-benchmarks share: time `measure` here and, with `--base`,
in a subprocess on another checkout's `src` (the same script, the other code), then print a row
per case. Only the case names and the columns differ between benchmarks."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence

Measure = Callable[[int], list[float]]  # µs per call, one per case, given the calls per timing


def main(doc: str | None, script: str, measure: Measure, rows: Sequence[tuple[str, str]], header: str) -> None:
    """`rows` is (name, prefix) per case: the prefix is printed before the timings (a size, or "")."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="the src folder of another checkout, timed the same way")
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the subprocess's output
    args = parser.parse_args()
    now = measure(args.number)
    if args.json:
        print(json.dumps(now))
        return
    before = None
    if args.base:
        cmd = [sys.executable, script, "--json", "--number", str(args.number)]
        found = subprocess.run(cmd, env={"PYTHONPATH": args.base}, capture_output=True, text=True, check=True)
        before = json.loads(found.stdout)
    print(header + f"{'now µs':>10}" + (f"{'before µs':>12}{'change µs':>11}" if before else ""))
    for i, (name, prefix) in enumerate(rows):
        line = f"{name:<26}{prefix}{now[i]:>10.2f}"
        if before:
            line += f"{before[i]:>12.2f}{now[i] - before[i]:>+11.2f}"
        print(line)
