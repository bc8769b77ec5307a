"""What recording one finished request's metrics costs: `Metrics.observe`, timed in-process.

    python bench/metrics_observe.py [--base PATH_TO_OTHER_SRC] [--number 20000]

Prints microseconds per call (the best of 5 runs, as the machine is shared) for finished requests
as the gateway sees them: a chat with usage charged to a team and a customer, the same streamed
(its time to first token too), and one with neither team nor customer. With --base pointing at the
`src` folder of an earlier checkout, the same requests are timed with that version too, in a
subprocess.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import timeit
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meterway.context import RequestContext

CASES = ("chat, team + customer", "stream, team + customer", "chat, master key")

CONFIG = {
    "model_list": [
        {
            "model_name": "bench-model",
            "litellm_params": {
                "model": "openai/bench-model",
                "api_base": "http://127.0.0.1:9/v1",
                "api_key": "sk-mock-upstream",
                "input_cost_per_token": 0.0000005,
                "output_cost_per_token": 0.0000015,
            },
        }
    ]
}


def contexts() -> list[RequestContext]:
    from meterway.auth import Principal
    from meterway.config.load import parse_config
    from meterway.context import RequestContext
    from meterway.providers.base import Api, Usage

    deployment = parse_config(CONFIG, source=None, env={}).deployments[0]
    out = []
    for i, _ in enumerate(CASES):
        ctx = RequestContext.start(f"req-{i}", Api.CHAT)
        ctx.model_group, ctx.deployment, ctx.status_code = "bench-model", deployment, 200
        ctx.forwarded, ctx.ended_ns = True, ctx.started_ns + 4_000_000
        ctx.counted, ctx.cost_units = Usage(12, 34, 46), 57_000_000
        if i < 2:
            ctx.principal = Principal("digest-1", "key", team_id="team-a")
            ctx.user = "acme"
        if i == 1:
            ctx.stream, ctx.first_byte_ns = True, ctx.started_ns + 1_000_000
        out.append(ctx)
    return out


def measure(number: int) -> list[float]:
    from meterway.telemetry.metrics import Metrics

    metrics = Metrics()
    out = []
    for ctx in contexts():
        metrics.observe(ctx)  # warm: its label children exist, as they do after the first request
        best = min(timeit.repeat(lambda c=ctx: metrics.observe(c), number=number, repeat=5))  # the least disturbed
        out.append(best / number * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        cmd = [sys.executable, __file__, "--json", "--number", str(args.number)]
        found = subprocess.run(cmd, env={"PYTHONPATH": args.base}, capture_output=True, text=True, check=True)
        before = json.loads(found.stdout)
    print(f"{'request':<26}{'now µs':>10}" + (f"{'before µs':>12}{'saved µs':>10}" if before else ""))
    for i, name in enumerate(CASES):
        line = f"{name:<26}{now[i]:>10.2f}"
        if before:
            line += f"{before[i]:>12.2f}{before[i] - now[i]:>10.2f}"
        print(line)


if __name__ == "__main__":
    main()
