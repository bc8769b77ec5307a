"""Counting the tokens of a long stream whose upstream reported no usage: time and peak memory.

    python bench/token_count.py [--sizes 1,5,20] [--old-max 5] [--timeout 300]

For each size (MB of OpenAI chat chunks, as the relay hands them to the client in 64 KB reads) and
each text (prose, and one character repeated: the tokenizer's worst case), two ways are measured,
each in a fresh process so its peak memory is its own:

- old: every chunk kept, then all events split (with the event splitter as it was, which searched
  for both separators from every event), their text joined and counted in one tokenizer call (what
  the ledger did before; run up to --old-max MB);
- new: `ledger.tokens.DeliveredStream`, which keeps 256 KB and then counts the text in pieces as
  the stream passes (what the gateway does now).

Prints one line per run: seconds, tokens, and the growth of peak RSS over the process's RSS once
the stream's bytes were built (the bytes themselves, which a relay never holds whole, excluded).
A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TEXTS = {"prose": "lorem ipsum dolor sit amet, consectetur adipiscing elit ", "repeated": "a" * 64}
READ = 64 * 1024


def _stream(size_mb: int, text: str) -> list[bytes]:
    import orjson

    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    event = b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {"content": text}}]}) + b"\n\n"
    read = event * max(1, READ // len(event))
    return [read] * max(1, size_mb * 1024 * 1024 // len(read)) + [b"data: [DONE]\n\n"]


def _old(chunks: list[bytes]) -> int:
    """The count as the ledger made it before: the whole stream kept, its text counted at once."""
    import orjson

    from meterway.ledger.tokens import TokenCounter, _delta_text
    from meterway.providers import sse

    kept = list(chunks)  # the request context kept every chunk until the row was written
    parts: list[str] = []
    rest = b""
    for chunk in kept:
        events, rest = _old_split(rest + chunk)
        for raw in events:
            data = sse.parse_event(raw).data
            if data and data != b"[DONE]":
                event = orjson.loads(data)
                parts.append(_delta_text(event))
    counter = TokenCounter()
    counter._encode("x")  # the encoding loaded before the clock, as in a warm gateway
    return counter._encode("".join(parts))  # one call, as `TokenCounter.count` was


def _old_split(buf: bytes) -> tuple[list[bytes], bytes]:
    """`sse.EventSplitter.feed` as it was: both separators searched for from every event."""
    events: list[bytes] = []
    start = 0
    while True:
        cut, width = -1, 0
        for sep in (b"\n\n", b"\r\n\r\n"):
            i = buf.find(sep, start)
            if i >= 0 and (cut < 0 or i < cut):
                cut, width = i, len(sep)
        if cut < 0:
            return events, buf[start:]
        if cut > start:
            events.append(buf[start:cut])
        start = cut + width


def _new(chunks: list[bytes]) -> int:
    from meterway.ledger.tokens import DeliveredStream, TokenCounter

    counter = TokenCounter()
    counter._encode("x")
    stream = DeliveredStream(counter)
    for chunk in chunks:
        stream.add(chunk)
    return stream.tokens()


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(way: str, size_mb: int, text: str) -> None:
    import meterway.app  # noqa: F401  (imports settle before the baseline)

    chunks = _stream(size_mb, TEXTS[text])
    from meterway.ledger.tokens import TokenCounter

    TokenCounter()._encode("warm")
    base = _rss_mb()
    started = time.perf_counter()
    tokens = (_old if way == "old" else _new)(chunks)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "tokens": tokens, "peak_growth_mb": max(peak - base, 0.0)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,5,20")
    parser.add_argument("--old-max", type=int, default=5, help="largest size (MB) the old way is run at")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, size, text = args.child
        return child(way, int(size), text)
    print(f"{'text':<9} {'MB':>3} {'way':<4} {'seconds':>8} {'tokens':>10} {'peak RSS growth':>16}")
    for size in (int(s) for s in args.sizes.split(",")):
        for text in TEXTS:
            for way in ("old", "new"):
                if way == "old" and size > args.old_max:
                    print(f"{text:<9} {size:>3} {way:<4} {'(not run: over --old-max)':>36}")
                    continue
                command = [sys.executable, __file__, "--child", way, str(size), text]
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=True)
                except subprocess.TimeoutExpired:
                    print(f"{text:<9} {size:>3} {way:<4} {'> ' + str(int(args.timeout)):>8}")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{text:<9} {size:>3} {way:<4} {result['seconds']:>8.2f} {result['tokens']:>10} "
                    f"{result['peak_growth_mb']:>13.0f} MB"
                )


if __name__ == "__main__":
    main()
