"""What the keyed path's limits cost: reserve + settle pairs through `LimitsHook` on a real Redis.

    python bench/limits_path.py [--base PATH_TO_OTHER_SRC] [--number 4000]

Each request carries a key with a budget and rpm, tpm and parallel limits (large enough never to
refuse), reserves before and settles after, as the request path does. It runs at concurrency 1
(one request after another) and 64 (64 at a time), on a private `redis-server` started on a free
loopback port (so other users of the shared Redis do not disturb INFO commandstats), and prints per
request: wall µs, CPU µs of this process (what the gateway's worker pays: redis-py and our code),
script calls (round trips) and Redis commands (the scripts' own commands included). With --base
pointing at the `src` folder of an earlier checkout, the same is measured with that version, in a
subprocess, against its own private Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

CONCURRENCY = (1, 64)
COLUMNS = ("wall µs", "CPU µs", "calls/req", "cmds/req")

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
BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _commandstats(info: dict[str, Any]) -> tuple[int, int]:
    """(script calls, all commands) so far, INFO's own calls left out."""
    calls = total = 0
    for name, stats in info.items():
        if not name.startswith("cmdstat_") or name in ("cmdstat_info", "cmdstat_script|load", "cmdstat_flushall"):
            continue
        total += int(stats["calls"])
        if name in ("cmdstat_evalsha", "cmdstat_eval"):
            calls += int(stats["calls"])
    return calls, total


async def _run(url: str, number: int) -> list[list[float]]:
    import redis.asyncio

    from meterway.auth import Principal
    from meterway.config.load import parse_config
    from meterway.context import RequestContext
    from meterway.limits import Budget, LimitSpec
    from meterway.limits.hook import LimitsHook
    from meterway.limits.redis import RedisLimiter
    from meterway.providers.base import Api

    deployment = parse_config(CONFIG, source=None, env={}).deployments[0]
    spec = LimitSpec(
        "key",
        "bench-digest",
        rpm_limit=100_000_000,
        max_parallel_requests=100_000,
        tpm_limit=1_000_000_000_000,
        budget=Budget(max_budget=10**18),
    )
    principal = Principal("bench-digest", "key", limits=(spec,))
    client = redis.asyncio.Redis.from_url(url)
    limiter = RedisLimiter(client, "bench:limits:", 660.0)
    hook = LimitsHook(limiter, default_output_tokens=256)

    async def one(i: int) -> None:
        ctx = RequestContext.start(f"req-{i}", Api.CHAT)
        ctx.principal, ctx.deployment, ctx.body, ctx.model_group = principal, deployment, BODY, "bench-model"
        await hook.before(ctx)
        ctx.tokens_used, ctx.cost_units = 46, 57_000
        await hook.after(ctx)

    out = []
    for concurrency in CONCURRENCY:
        await asyncio.gather(*(one(i) for i in range(concurrency * 4)))  # warm: scripts loaded, leases held
        calls0, cmds0 = _commandstats(await client.info("commandstats"))
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(_worker(one, queue) for queue in [iter(range(number))] for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        calls1, cmds1 = _commandstats(await client.info("commandstats"))
        out.append([wall / number * 1e6, cpu / number * 1e6, (calls1 - calls0) / number, (cmds1 - cmds0) / number])
    close = getattr(limiter, "aclose", None)
    if close is not None:
        await close()
    await client.aclose()
    return out


async def _worker(one: Any, queue: Any) -> None:
    for i in queue:
        await one(i)


def measure(number: int) -> list[list[float]]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server not found: this benchmark starts its own, to count only its commands")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            import redis

            probe = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            probe.close()
            try:
                import uvloop

                return uvloop.run(_run(f"redis://127.0.0.1:{port}/0", number))
            except ImportError:
                return asyncio.run(_run(f"redis://127.0.0.1:{port}/0", number))
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="the src folder of another checkout, measured the same way")
    parser.add_argument("--number", type=int, default=4000, help="requests per concurrency level")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
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
    print(f"{'':<8}" + "".join(f"{c:>12}" for c in COLUMNS) + (f"{'   before:':<12}" if before else ""))
    for i, concurrency in enumerate(CONCURRENCY):
        line = f"{'c=' + str(concurrency):<8}" + "".join(f"{v:>12.2f}" for v in now[i])
        if before:
            line += "   before:" + "".join(f"{v:>12.2f}" for v in before[i])
        print(line)


if __name__ == "__main__":
    main()
