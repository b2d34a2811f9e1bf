"""The sender the settings ask for."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from app.notify.dev_sender import DevSender
from app.notify.message import Sender
from app.notify.settings import NotifySettings, notify_settings


def build_sender(config: NotifySettings | Mapping[str, str], pool: asyncpg.Pool) -> Sender:
    """dev: the notice_log table; sms: the SMS gateway; wechat: WeChat template messages for
    patients with an openid, SMS for the others. Close it with `await sender.aclose()`."""
    settings = config if isinstance(config, NotifySettings) else notify_settings(config)
    if settings.sender == "dev":
        return DevSender(pool)
    # httpx is imported only when a gateway is configured: the development set-up needs none.
    from app.notify.senders import SmsHttpSender, WeChatOrSmsSender, WeChatTemplateSender

    sms = SmsHttpSender(
        settings.sms_url, token=settings.sms_token, sign=settings.sms_sign, timeout_s=settings.timeout_s
    )
    if settings.sender == "sms":
        return sms
    wechat = WeChatTemplateSender(
        settings.wechat_url, settings.wechat_template_id, token=settings.wechat_token, timeout_s=settings.timeout_s
    )
    return WeChatOrSmsSender(wechat, sms)
