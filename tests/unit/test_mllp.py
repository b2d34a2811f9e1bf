"""MLLP framing with an independent client (the `hl7` package's MLLPClient) and our own."""

from __future__ import annotations

import asyncio

import hl7.client

from app.integrations import mllp

MESSAGE = "MSH|^~\\&|HIS|H1|HUIYUE|H1|20261130120000||ADT^A01|M1|P|2.5\rPID|1||P1||张三"


async def test_frames_round_trip_through_an_independent_client_and_ours() -> None:
    seen: list[bytes] = []

    async def echo(message: bytes, peer: str) -> bytes:
        seen.append(message)
        return b"MSA|AA|" + message[-8:]

    server = await mllp.serve(echo, "127.0.0.1", 0)
    try:
        client = hl7.client.MLLPClient("127.0.0.1", server.port)
        answer = await asyncio.to_thread(client.send_message, MESSAGE)
        client.close()
        assert answer == mllp.frame(b"MSA|AA|" + MESSAGE.encode()[-8:])
        gb = MESSAGE.encode("gb18030")
        assert await mllp.exchange("127.0.0.1", server.port, gb) == b"MSA|AA|" + gb[-8:]
        assert seen == [MESSAGE.encode(), gb]
    finally:
        await server.close()


async def test_garbage_outside_a_frame_drops_that_connection_only() -> None:
    async def ok(message: bytes, peer: str) -> bytes:
        return b"OK"

    server = await mllp.serve(ok, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"not mllp at all")
        await writer.drain()
        assert await reader.read() == b""  # closed by the server
        writer.close()
        assert await mllp.exchange("127.0.0.1", server.port, b"MSH|x") == b"OK"
    finally:
        await server.close()
