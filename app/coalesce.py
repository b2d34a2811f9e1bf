"""Coalescing: calls of one kind that a server process makes while earlier ones are still out are
sent together, as one call, when the earlier ones come back.

Nothing waits on a timer. A call that finds fewer than `in_flight` batches out is sent at once (so
under light load every call goes alone, as it would without this); the others queue, and when a
batch returns, everything queued meanwhile (up to `max_batch`) goes as the next one. Batches
therefore grow only when the server behind is busy, which is when sharing a round trip (and, for
PostgreSQL, a commit) is worth most. The booking path uses it for its commit and its read of the
rule context (app/db/group_commit.py), and for its Redis commands: the gate's read, the grab, the
confirm and grid publish (`SlotStore.send`).

`run(batch)` answers each item in order: a result, or the exception that item's caller raises. If
`run` itself raises, every item of the batch gets that exception. A caller that goes away (its
task cancelled) before its item is sent is dropped from the batch; after, the item's effect stands.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Sends the items submitted to it through `run`, alone or together (see above)."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int = 32,
        in_flight: int = 2,
        alone: Callable[[T], bool] | None = None,
    ) -> None:
        self._run = run
        self.max_batch = max(1, max_batch)
        self.in_flight = max(1, in_flight)
        self._alone = alone  # items that must go in a batch of their own
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # batches sent
        self.items = 0  # items sent in them

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running < self.in_flight:
            self._launch()
        return await future

    def _launch(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        while self._queue and len(batch) < self.max_batch:
            item, future = self._queue[0]
            if future.cancelled():  # its caller is gone and nothing was sent
                self._queue.popleft()
                continue
            lone = self._alone is not None and self._alone(item)
            if lone and batch:
                break  # it goes in the next batch, by itself
            batch.append(self._queue.popleft())
            if lone:
                break
        if not batch:
            return
        self._running += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.calls += 1
        self.items += len(batch)
        try:
            answers: Sequence[R | BaseException] = await self._run([item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"coalesced call answered {len(answers)} of {len(batch)} items")
        except BaseException as exc:  # the whole call failed: every item's answer
            for _, future in batch:
                _settle(future, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), answer in zip(batch, answers, strict=True):
                _settle(future, answer)
        finally:
            self._running -= 1
            while self._queue and self._running < self.in_flight:
                self._launch()


def _settle(future: asyncio.Future[R], answer: R | BaseException) -> None:
    if future.done():  # its caller went away; what was sent stands
        return
    if isinstance(answer, asyncio.CancelledError):
        future.cancel()  # the batch itself was cancelled (shutdown): so is its waiter
    elif isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)
