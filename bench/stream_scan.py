"""What a stream's relay costs per stream, timed in process: the provider's relay and the search
for the client's final event (`[DONE]`, `message_stop`), which issue 16 fused into one.

    python bench/stream_scan.py [--base PATH_TO_OTHER_SRC] [--number 2000]

Three relays (OpenAI pass-through, OpenAI with the gateway's usage stripped, Anthropic
pass-through), each on two shapes of the same 200-event answer: one event per read (a slow
upstream) and reads of about 16 KiB (a fast one, or a busy network). Prints µs per stream, the
best of 5 runs. With --base pointing at the `src` folder of an earlier checkout (one whose relays
are followed by `sse.Finale`), the same streams are timed with that version too.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

CASES = (
    "openai pass, 1 event/read",
    "openai pass, 16 KiB reads",
    "openai strip, 1 event/read",
    "openai strip, 16 KiB reads",
    "anthropic pass, 1 ev/read",
    "anthropic pass, 16 KiB",
)
EVENTS = 200


def _reads(events: list[bytes], size: int) -> list[bytes]:
    if size == 0:
        return events
    joined = b"".join(events)
    return [joined[i : i + size] for i in range(0, len(joined), size)]


def _openai_events() -> list[bytes]:
    import orjson

    out = []
    for i in range(EVENTS):
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "bench-model",
            "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}],
            "usage": None,
        }
        out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    usage = (
        b'{"id":"chatcmpl-bench","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":200,"total_tokens":205}}'
    )
    return [*out, b"data: " + usage + b"\n\n", b"data: [DONE]\n\n"]


def _anthropic_events() -> list[bytes]:
    start = b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":5}}}\n\n'
    delta = (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"word%d "}}\n\n'
    )
    end = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":200}}\n\n'
    return [start, *(delta % i for i in range(EVENTS)), end, b'event: message_stop\ndata: {"type":"message_stop"}\n\n']


def _runner(make: Callable[[], object], reads: list[bytes], anthropic: bool) -> Callable[[], None]:
    from meterway.providers import sse

    fused = hasattr(sse, "is_done")  # this checkout's relays hold the final event themselves

    def run() -> None:
        relay = make()
        if fused:
            for data in reads:
                relay.feed(data)  # type: ignore[attr-defined]
            relay.finish()  # type: ignore[attr-defined]
            return
        finale = sse.Finale(anthropic=anthropic)
        for data in reads:
            finale.feed(relay.feed(data))  # type: ignore[attr-defined]
        finale.finish(relay.finish())  # type: ignore[attr-defined]

    return run


def measure(number: int) -> list[float]:
    import meterway.config  # noqa: F401  # the provider modules import in this order in the gateway
    from meterway.providers.anthropic import MessagesPassthroughRelay
    from meterway.providers.openai import PassthroughRelay, UsageStrippingRelay

    openai, anthropic = _openai_events(), _anthropic_events()
    runs = []
    for make, events, is_anthropic in (
        (PassthroughRelay, openai, False),
        (UsageStrippingRelay, openai, False),
        (MessagesPassthroughRelay, anthropic, True),
    ):
        for size in (0, 16_384):
            runs.append(_runner(make, _reads(events, size), is_anthropic))
    return [min(timeit.repeat(run, number=number, repeat=5)) / number * 1e6 for run in runs]


def main() -> None:
    from against_base import main as run

    run(__doc__, __file__, measure, [(name, "") for name in CASES], f"{'stream of 200 events':<26}")


if __name__ == "__main__":
    main()
