"""The demo hospital's HL7 peer: a stand-in RIS that takes the platform's SIU messages over MLLP
and acknowledges them, so a fresh `make run` shows the outbound interface working end to end
(its log lines name the message type and control id only — never a patient).

It runs only for the demo (`serve` with the demo data and no HY_HL7_PEERS of the hospital's own),
on its own thread and event loop: the platform talks to it exactly as to a real peer, over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime

from app.integrations import mllp
from app.integrations.hl7.ack import build_ack, encode_ack
from app.integrations.hl7.envelope import Rejection, sniff_header
from app.integrations.hl7.siu import Peer

logger = logging.getLogger(__name__)

DEMO_RIS = "demo-ris"


def demo_peer(port: int) -> Peer:
    return Peer(DEMO_RIS, "127.0.0.1", port, "DEMO_RIS", "RAD", "UTF-8", 10.0)


async def _answer(message: bytes, peer: str) -> bytes:
    try:
        header = sniff_header(message)
    except Rejection:
        logger.warning("demo RIS: a message it cannot read from %s", peer)
        return encode_ack(
            build_ack(
                None,
                "AR",
                message_id="DEMO",
                application="DEMO_RIS",
                facility="RAD",
                now=datetime.now(UTC),
                note="unreadable",
            ),
            "utf-8",
        )
    logger.info("demo RIS: %s %s acknowledged", header.message_type, header.control_id)
    ack = build_ack(
        header,
        "AA",
        message_id=f"RIS{header.control_id}"[:20],
        application="DEMO_RIS",
        facility="RAD",
        now=datetime.now(UTC),
        note="demo RIS received",
    )
    return encode_ack(ack, header.codec)


def start_demo_ris(port: int) -> threading.Thread:
    """Listen on 127.0.0.1:`port` in a daemon thread for the life of the process."""
    ready = threading.Event()

    async def main() -> None:
        server = await mllp.serve(_answer, "127.0.0.1", port)
        logger.info("demo RIS listening on 127.0.0.1:%d (the demo hospital's HL7 peer)", server.port)
        ready.set()
        await asyncio.Event().wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="demo-ris", daemon=True)
    thread.start()
    ready.wait(5)
    return thread
