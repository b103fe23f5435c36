"""GroupCommit on its own (the catalog's use of it runs in tests/test_catalog.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from origin.catalog.group_commit import GroupCommit


class Writes:
    """A write that records its batches and, while ``gate`` is clear, does not finish."""

    def __init__(self, fail_on: frozenset[int] = frozenset()) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on = fail_on

    async def __call__(self, rows: Sequence[int]) -> None:
        self.batches.append(list(rows))
        await self.gate.wait()
        if self.fail_on & set(rows):
            raise ValueError(f"cannot write {sorted(self.fail_on & set(rows))}")


async def test_a_lone_row_is_written_at_once_and_rows_that_wait_go_together() -> None:
    writes = Writes()
    group = GroupCommit(writes, max_rows=3)
    await group.add(0)
    assert writes.batches == [[0]]
    writes.gate.clear()
    first = asyncio.ensure_future(group.add(1))
    await asyncio.sleep(0)  # the write of [1] is under way
    rest = [asyncio.ensure_future(group.add(i)) for i in range(2, 7)]
    await asyncio.sleep(0)
    assert not first.done()
    writes.gate.set()
    await asyncio.gather(first, *rest)
    assert writes.batches == [[0], [1], [2, 3, 4], [5, 6]]


async def test_a_row_that_cannot_be_written_fails_only_its_caller() -> None:
    writes = Writes(fail_on=frozenset({3}))
    group = GroupCommit(writes, max_rows=10)
    writes.gate.clear()
    lead = asyncio.ensure_future(group.add(0))
    await asyncio.sleep(0)
    others = [asyncio.ensure_future(group.add(i)) for i in range(1, 5)]
    await asyncio.sleep(0)
    writes.gate.set()
    results = await asyncio.gather(lead, *others, return_exceptions=True)
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], ValueError)
    assert results[4] is None
    # The batch of four failed, then each row went alone.
    assert writes.batches == [[0], [1, 2, 3, 4], [1], [2], [3], [4]]


async def test_a_cancelled_caller_cancels_nobody_elses_write_and_its_row_is_written() -> None:
    writes = Writes()
    group = GroupCommit(writes, max_rows=10)
    writes.gate.clear()
    leaving = asyncio.ensure_future(group.add(1))
    staying = asyncio.ensure_future(group.add(2))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    writes.gate.set()
    await staying
    assert writes.batches == [[1, 2]]


@pytest.mark.parametrize("started", [False, True])
async def test_callers_are_not_left_waiting_when_the_writer_is_cancelled(started: bool) -> None:
    """As when the loop shuts down, before the writer's first step or during its write."""
    writes = Writes()
    group = GroupCommit(writes, max_rows=10)
    writes.gate.clear()
    waiting = [asyncio.ensure_future(group.add(i)) for i in range(3)]
    for _ in range(3 if started else 1):
        await asyncio.sleep(0)
    assert writes.batches == ([[0, 1, 2]] if started else [])
    writer = group._writer
    assert writer is not None
    writer.cancel()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    writes.gate.set()
    await group.add(9)  # a new writer starts for the next row
    assert writes.batches[-1] == [9]


def test_one_group_outlives_an_event_loop() -> None:
    """A catalog made once and used by two asyncio.run calls (as the CLI may)."""
    writes = Writes()
    group = GroupCommit(writes, max_rows=10)

    async def stranded() -> None:
        writes.gate.clear()
        left = asyncio.ensure_future(group.add(1))
        await asyncio.sleep(0)  # the loop ends with the write of [1] under way
        assert not left.done()

    asyncio.run(stranded())
    writes.gate = asyncio.Event()  # events bind to one loop
    writes.gate.set()
    asyncio.run(group.add(2))
    assert writes.batches[-1] == [2]
