"""MLLP (Minimal Lower Layer Protocol, HL7 v2's framing over TCP): <VT> message <FS><CR>.

`read_frames` turns a byte stream into messages (bytes: the character set is the message's own,
MSH-18, and is decoded by whoever parses it); `frame` wraps one; `exchange` is a client that sends
one message and waits for the one answer (the ACK); `serve` runs a listener that hands each message
to a handler and writes back what it returns. A peer sending garbage between frames, a frame larger
than `max_bytes`, or a connection that stalls is dropped without disturbing the other connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

logger = logging.getLogger(__name__)

START = b"\x0b"
END = b"\x1c\x0d"
MAX_BYTES = 1024 * 1024  # one HL7 message; orders and SIU are a few kilobytes

Handler = Callable[[bytes, str], Awaitable[bytes | None]]  # (message, peer) -> answer


class FrameError(Exception):
    """The stream is not MLLP: bytes outside a frame, or a frame too large."""


def frame(message: bytes) -> bytes:
    return START + message + END


async def read_frames(
    reader: asyncio.StreamReader, max_bytes: int = MAX_BYTES, idle_s: float | None = None
) -> AsyncIterator[bytes]:
    """The messages of a stream, until it ends (or stays silent `idle_s`)."""
    while True:
        try:
            head = await asyncio.wait_for(reader.readexactly(1), idle_s) if idle_s else await reader.readexactly(1)
        except (asyncio.IncompleteReadError, TimeoutError):
            return
        if head in (b"\r", b"\n"):
            continue  # some senders end a frame with an extra line break
        if head != START:
            raise FrameError(f"expected <VT>, got {head!r}")
        try:
            body = await asyncio.wait_for(reader.readuntil(END), idle_s) if idle_s else await reader.readuntil(END)
        except asyncio.LimitOverrunError as exc:
            raise FrameError("frame too large") from exc
        except (asyncio.IncompleteReadError, TimeoutError):
            return
        if len(body) - len(END) > max_bytes:
            raise FrameError("frame too large")
        yield body[: -len(END)]


async def exchange(host: str, port: int, message: bytes, timeout_s: float = 10.0) -> bytes:
    """Send one message and return the peer's answer. OSError / TimeoutError when the peer is
    down, slow or hangs up before answering."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_BYTES + 16)
        try:
            writer.write(frame(message))
            await writer.drain()
            async for answer in read_frames(reader):
                return answer
            raise ConnectionError("peer closed the connection without an answer")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class MllpServer:
    """A running listener; `close()` stops it and ends the connections it still serves."""

    def __init__(self, server: asyncio.Server, tasks: set[asyncio.Task[None]]) -> None:
        self.server = server
        self._tasks = tasks

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.server.wait_closed()


async def serve(
    handler: Handler, host: str, port: int, *, idle_s: float = 300.0, max_bytes: int = MAX_BYTES
) -> MllpServer:
    """Listen on host:port (0: any free port); each connection may carry any number of messages,
    answered in order."""
    tasks: set[asyncio.Task[None]] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        peer = ":".join(str(p) for p in (writer.get_extra_info("peername") or ("?",))[:2])
        try:
            async for message in read_frames(reader, max_bytes, idle_s):
                answer = await handler(message, peer)
                if answer is not None:
                    writer.write(frame(answer))
                    await writer.drain()
        except FrameError as exc:
            logger.warning("mllp %s: dropped (%s)", peer, exc)
        except (ConnectionError, OSError) as exc:
            logger.info("mllp %s: connection lost (%s)", peer, type(exc).__name__)
        except asyncio.CancelledError:
            pass  # the listener is closing
        except Exception:  # a bug in a handler must not take the listener down
            logger.exception("mllp %s: handler failed", peer)
        finally:
            if task is not None:
                tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(connection, host, port, limit=max_bytes + 16)
    return MllpServer(server, tasks)
