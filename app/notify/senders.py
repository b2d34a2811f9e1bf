"""The gateway adapters: an SMS gateway over HTTP, WeChat template messages, and the choice between
them per patient. Both send the stable message id (`hy-<outbox id>`) as the gateway's client
message id, so a retry after a lost answer is dropped by the gateway instead of sent twice.

What an answer means (docs/notifications.md):
- SMS: 2xx delivered; 409 delivered (the gateway has this out_id already); 400, 413, 422 failed for
  good (the number or the text is refused: retrying cannot help); anything else -- 401/403/404
  (configuration), 408, 429, 5xx, timeouts, refused connections -- is tried again later.
- WeChat: HTTP 2xx with errcode 0 delivered; errcodes that concern the recipient or the message
  (invalid openid, not following, blocked, bad data) failed -- the patient then gets an SMS; any
  other errcode (system busy, rate limit, expired token) and any transport error tried again.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson

from app.notify.message import Outcome, OutgoingMessage, SendResult, mask_openid, scrub
from app.notify.render import CANCELLED, QUEUE_DELAY, REMINDER_KINDS, REPORT_READY
from app.security.idcard import mask_phone

logger = logging.getLogger(__name__)

SMS_FAILED_STATUSES = frozenset({400, 413, 422})
# 40003 invalid openid, 43004 not following the account, 43019 recipient blocked us, 47001 bad data.
WECHAT_FAILED_CODES = frozenset({40003, 43004, 43019, 47001})

_TITLES = {
    CANCELLED: "预约取消通知",
    REPORT_READY: "检查报告发布通知",
    QUEUE_DELAY: "候检时间调整通知",
}


def sms_outcome(status: int) -> Outcome:
    if 200 <= status < 300 or status == 409:
        return Outcome.DELIVERED
    if status in SMS_FAILED_STATUSES:
        return Outcome.FAILED
    return Outcome.RETRY


def wechat_outcome(status: int, body: bytes) -> tuple[Outcome, str]:
    """(outcome, error) for an answer of the template message API."""
    if not 200 <= status < 300:
        return Outcome.RETRY, f"http {status}"
    try:
        answer = orjson.loads(body)
        code = int(answer.get("errcode", 0))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return Outcome.RETRY, "unreadable answer"
    if code == 0:
        return Outcome.DELIVERED, ""
    error = f"errcode {code}: {answer.get('errmsg', '')}"
    return (Outcome.FAILED if code in WECHAT_FAILED_CODES else Outcome.RETRY), error


def wechat_title(kind: str) -> str:
    return "检查预约提醒" if kind in REMINDER_KINDS else _TITLES.get(kind, "检查预约通知")


class SmsHttpSender:
    """POST {"out_id", "phone", "content", "sign"} as JSON to the hospital's SMS gateway."""

    channel = "sms"

    def __init__(self, url: str, *, token: str = "", sign: str = "", timeout_s: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.sign = sign
        self.client = httpx.AsyncClient(timeout=timeout_s, headers=headers, follow_redirects=False)

    async def send(self, message: OutgoingMessage) -> SendResult:
        if not message.phone:
            return SendResult(Outcome.FAILED, self.channel, "", "no phone number")
        destination = mask_phone(message.phone)
        body: dict[str, Any] = {"out_id": message.message_id, "phone": message.phone, "content": message.text}
        if self.sign:
            body["sign"] = self.sign
        try:
            response = await self.client.post(self.url, content=orjson.dumps(body), headers=_JSON)
        except httpx.HTTPError as exc:
            return SendResult(Outcome.RETRY, self.channel, destination, f"{type(exc).__name__}")
        outcome = sms_outcome(response.status_code)
        error = "" if outcome is Outcome.DELIVERED else f"http {response.status_code}: {scrub(response.text, 200)}"
        return SendResult(outcome, self.channel, destination, error)

    async def aclose(self) -> None:
        await self.client.aclose()


class WeChatTemplateSender:
    """POST a template message (touser, template_id, client_msg_id, data) to the WeChat API or the
    hospital's WeChat gateway in the same shape; the access token goes in the query string."""

    channel = "wechat"

    def __init__(self, url: str, template_id: str, *, token: str = "", timeout_s: float = 5.0) -> None:
        self.url = url
        self.template_id = template_id
        self.params = {"access_token": token} if token else {}
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    def body(self, message: OutgoingMessage) -> dict[str, Any]:
        return {
            "touser": message.wechat_openid,
            "template_id": self.template_id,
            "client_msg_id": message.message_id,
            "data": {
                "first": {"value": wechat_title(message.kind)},
                "keyword1": {"value": message.text},
                "remark": {"value": "如有疑问请联系预约中心。"},
            },
        }

    async def send(self, message: OutgoingMessage) -> SendResult:
        if not message.wechat_openid:
            return SendResult(Outcome.FAILED, self.channel, "", "no openid")
        destination = mask_openid(message.wechat_openid)
        try:
            response = await self.client.post(
                self.url, params=self.params, content=orjson.dumps(self.body(message)), headers=_JSON
            )
        except httpx.HTTPError as exc:
            return SendResult(Outcome.RETRY, self.channel, destination, f"{type(exc).__name__}")
        outcome, error = wechat_outcome(response.status_code, response.content)
        return SendResult(outcome, self.channel, destination, scrub(error))

    async def aclose(self) -> None:
        await self.client.aclose()


class WeChatOrSmsSender:
    """WeChat for a patient with an openid, SMS otherwise -- and SMS when WeChat refuses the
    recipient for good. A WeChat failure that may pass (busy, down) is retried on WeChat, never
    sent by SMS as well: WeChat may have delivered it."""

    def __init__(self, wechat: WeChatTemplateSender, sms: SmsHttpSender) -> None:
        self.wechat = wechat
        self.sms = sms

    async def send(self, message: OutgoingMessage) -> SendResult:
        if message.wechat_openid:
            result = await self.wechat.send(message)
            if result.outcome is not Outcome.FAILED or not message.phone:
                return result
            logger.info("notice %s: wechat refused (%s), falling back to sms", message.outbox_id, result.error)
        return await self.sms.send(message)

    async def aclose(self) -> None:
        await self.wechat.aclose()
        await self.sms.aclose()


_JSON = {"Content-Type": "application/json"}
