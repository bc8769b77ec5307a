"""The sender's batches: never more events than Lago takes in one batch, and a row's events (one per
token type) never split across two batches, so a row is marked sent only when all its events are."""

from __future__ import annotations

from typing import Any

from meterway.billing.sender import BATCH, _pack


def _groups(sizes: list[int]) -> list[list[tuple[str, dict[str, Any]]]]:
    return [[(f"row{r}", {"n": i}) for i in range(size)] for r, size in enumerate(sizes)]


def test_batches_hold_at_most_lagos_limit_and_keep_a_rows_events_together() -> None:
    groups = _groups([5] * 100 + [3, 1, 4])  # 100 rows split in five types: 500 events
    batches = _pack(groups)
    assert all(len(b) <= BATCH for b in batches)
    assert sum(len(b) for b in batches) == 508
    for batch in batches:
        rows = {uid for uid, _ in batch}
        for uid in rows:  # all of a row's events are in the batch that has any of them
            assert sum(1 for u, _ in batch if u == uid) == len(groups[int(uid[3:])])
    assert len(batches) == 6


def test_nothing_to_send_makes_no_batch() -> None:
    assert _pack([]) == []
