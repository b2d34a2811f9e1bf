"""What a sender is given and what it answers, and the masking every log line and record uses."""

from __future__ import annotations

import enum
import re
from typing import Protocol

import msgspec

from app.security.idcard import mask_phone


class OutgoingMessage(msgspec.Struct, frozen=True):
    """One message to one patient. `message_id` is stable across retries (`hy-<outbox id>`): the
    gateways take it as their client message id and drop a second copy."""

    message_id: str
    outbox_id: int
    patient_id: int
    kind: str
    text: str
    phone: str | None = None
    wechat_openid: str | None = None
    appointment_id: int | None = None


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # the gateway could not take it now: try again later
    FAILED = "failed"  # it will never be accepted (bad number, unsubscribed, no destination)


class SendResult(msgspec.Struct, frozen=True):
    outcome: Outcome
    channel: str  # sms | wechat | none
    destination: str = ""  # masked
    error: str = ""  # English, scrubbed of numbers


class Sender(Protocol):
    async def send(self, message: OutgoingMessage) -> SendResult: ...

    async def aclose(self) -> None: ...


def mask_openid(openid: str) -> str:
    openid = openid.strip()
    if len(openid) <= 8:
        return "*" * len(openid)
    return f"{openid[:4]}****{openid[-4:]}"


_LONG_NUMBER = re.compile(r"\d{7,}")


def scrub(text: str, limit: int = 300) -> str:
    """Gateway answers may echo the phone number: mask long digit runs, and keep it short."""
    return _LONG_NUMBER.sub(lambda m: mask_phone(m.group(0)), text)[:limit]
