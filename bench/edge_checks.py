"""What the edge checks cost on the request path: the head decoder of /v1/chat/completions, timed
in-process on the bodies clients send.

    python bench/edge_checks.py [--base PATH_TO_OTHER_SRC] [--number 20000]

Prints microseconds per decode for each body (the best of 5 runs, as the machine is shared): a short chat, a 40 KB agent request (40 messages,
20 tools; ASCII, as the OpenAI SDK sends it), the same with non-ASCII text (checked for UTF-8 once
more), and one with tags and metadata (parsed and checked). With --base pointing at the `src`
folder of an earlier checkout, the same bodies are timed with that decoder too, in a subprocess.
"""

from __future__ import annotations

import timeit

import orjson

BODIES = ("short chat", "agent 40 KB ascii", "agent 40 KB non-ascii", "chat + tags + metadata")


def bodies() -> list[bytes]:
    short = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "user": "acme"})
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": "Looks something up. " * 5,
                "parameters": {
                    "type": "object",
                    "properties": {f"p{j}": {"type": "string", "description": "a parameter"} for j in range(8)},
                    "required": ["p0"],
                },
            },
        }
        for i in range(20)
    ]
    messages = [
        {"role": ("user", "assistant")[i % 2], "content": 'A "quoted" [bracketed] line of text. ' * 20}
        for i in range(40)
    ]
    agent = orjson.dumps({"model": "gpt-4o", "messages": messages, "tools": tools, "user": "acme"})
    other = agent.replace(b"line of text", "línea de texto ✓".encode())
    tagged = orjson.dumps(
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "tags": ["checkout", "prod", "eu"],
            "metadata": {"trace_id": "4bf92f3577b34da6", "session": "s-1", "tags": ["nightly"]},
        }
    )
    return [short, agent, other, tagged]


def measure(number: int) -> list[float]:
    from meterway.api import heads

    out = []
    for body in bodies():
        heads.chat(body)  # warm, and checks it is accepted
        best = min(timeit.repeat(lambda b=body: heads.chat(b), number=number, repeat=5))  # the least disturbed
        out.append(best / number * 1e6)
    return out


def main() -> None:
    from against_base import main as run

    run(
        __doc__,
        __file__,
        measure,
        [(name, f"{len(body):>8}") for name, body in zip(BODIES, bodies(), strict=True)],
        f"{'body':<26}{'bytes':>8}",
    )


if __name__ == "__main__":
    main()
