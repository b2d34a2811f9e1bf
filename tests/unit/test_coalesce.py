"""app/coalesce.py: when calls go alone, when together, and who gets which answer."""

from __future__ import annotations

import asyncio

import pytest

from app.coalesce import Coalescer


async def _spin() -> None:
    """Let every task that can run, run."""
    for _ in range(10):
        await asyncio.sleep(0)


class Backend:
    """Answers each batch when the test says so; records what it was sent."""

    def __init__(self) -> None:
        self.sent: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.fail: BaseException | None = None

    async def run(self, batch: list[int]) -> list[int | BaseException]:
        self.sent.append(batch)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail is not None:
            raise self.fail
        return [ValueError(f"odd {n}") if n % 2 else n * 10 for n in batch]

    async def open_next(self, count: int = 1) -> None:
        """Let the next `count` batches answer (waiting until they have been sent)."""
        for _ in range(count):
            await _spin()
            next(g for g in self.gates if not g.is_set()).set()
            await _spin()


async def test_light_load_sends_each_call_alone_and_a_busy_backend_gets_them_together() -> None:
    backend = Backend()
    c: Coalescer[int, int] = Coalescer(backend.run, max_batch=3, in_flight=1)
    first = asyncio.create_task(c.submit(0))
    await _spin()
    assert backend.sent == [[0]]  # sent at once, alone
    queued = [asyncio.create_task(c.submit(n)) for n in (2, 4, 6, 8)]
    await _spin()
    assert backend.sent == [[0]]  # waiting for the batch out
    await backend.open_next(3)
    assert await first == 0
    assert [await t for t in queued] == [20, 40, 60, 80]
    assert backend.sent == [[0], [2, 4, 6], [8]]  # at most max_batch per call, in arrival order
    assert (c.calls, c.items) == (3, 5)


async def test_each_caller_gets_its_own_answer_or_error() -> None:
    backend = Backend()
    c: Coalescer[int, int] = Coalescer(backend.run, in_flight=1)
    tasks = [asyncio.create_task(c.submit(n)) for n in range(5)]
    await backend.open_next(2)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [0, "odd 1", 20, "odd 3", 40]


async def test_a_failed_call_is_every_callers_answer_and_the_queue_goes_on() -> None:
    backend = Backend()
    c: Coalescer[int, int] = Coalescer(backend.run, in_flight=1)
    tasks = [asyncio.create_task(c.submit(n)) for n in (0, 2, 4)]
    backend.fail = ConnectionError("gone")
    await backend.open_next(2)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    backend.fail = None
    later = asyncio.create_task(c.submit(6))
    await backend.open_next()
    assert await later == 60


async def test_a_caller_gone_before_sending_is_dropped_and_one_gone_after_leaves_the_rest_alone() -> None:
    backend = Backend()
    c: Coalescer[int, int] = Coalescer(backend.run, in_flight=1)
    first = asyncio.create_task(c.submit(0))
    gone_early = asyncio.create_task(c.submit(2))
    kept = asyncio.create_task(c.submit(4))
    await _spin()
    gone_early.cancel()
    await _spin()
    first.cancel()  # already sent: its item stays in the call
    await backend.open_next(2)
    assert backend.sent == [[0], [4]]
    assert await kept == 40
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_lone_items_go_in_a_call_of_their_own_and_in_flight_calls_are_bounded() -> None:
    backend = Backend()
    c: Coalescer[int, int] = Coalescer(backend.run, in_flight=2, alone=lambda n: n >= 100)
    tasks = [asyncio.create_task(c.submit(n)) for n in (0, 2, 4, 100, 6, 8)]
    await _spin()
    assert backend.sent == [[0], [2]]  # two out at once, the rest queued
    await backend.open_next(5)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert backend.sent == [[0], [2], [4], [100], [6, 8]]
