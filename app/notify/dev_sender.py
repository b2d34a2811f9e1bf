"""The development sender: nothing leaves the machine; each message is recorded in notice_log
(destination masked) where the demo's staff page shows it. Like a real gateway it keeps one copy
per message id."""

from __future__ import annotations

import asyncpg

from app.db import notify_repo
from app.notify.message import Outcome, OutgoingMessage, SendResult, mask_openid
from app.security.idcard import mask_phone


class DevSender:
    def __init__(self, pool: asyncpg.Pool, *, prefer_wechat: bool = False) -> None:
        self.pool = pool
        self.prefer_wechat = prefer_wechat

    def destination(self, message: OutgoingMessage) -> tuple[str, str]:
        """Where a real sender would have sent it: (channel, masked destination)."""
        if self.prefer_wechat and message.wechat_openid:
            return "wechat", mask_openid(message.wechat_openid)
        if message.phone:
            return "sms", mask_phone(message.phone)
        if message.wechat_openid:
            return "wechat", mask_openid(message.wechat_openid)
        return "none", ""

    async def send(self, message: OutgoingMessage) -> SendResult:
        channel, destination = self.destination(message)
        await notify_repo.log_dev_message(
            self.pool,
            message_id=message.message_id,
            patient_id=message.patient_id,
            channel=channel,
            destination=destination,
            kind=message.kind,
            text=message.text,
        )
        return SendResult(Outcome.DELIVERED, channel, destination)

    async def aclose(self) -> None:
        return None
