"""What recording one finished request's metrics costs: `Metrics.observe`, timed in-process.

    python bench/metrics_observe.py [--base PATH_TO_OTHER_SRC] [--number 20000]

Prints microseconds per call (the best of 5 runs, as the machine is shared) for finished requests
as the gateway sees them: a chat with usage charged to a team and a customer, the same streamed
(its time to first token too), and one with neither team nor customer. With --base pointing at the
`src` folder of an earlier checkout, the same requests are timed with that version too, in a
subprocess.
"""

from __future__ import annotations

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
    from against_base import main as run

    run(__doc__, __file__, measure, [(name, "") for name in CASES], f"{'request':<26}")


if __name__ == "__main__":
    main()
