"""The notification settings, read from a mapping of environment variables (the settings module
hands them over: nothing here reads os.environ)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time

import msgspec

from app.envvars import env_float, env_int

SENDERS = ("dev", "sms", "wechat")


# WeChat's template-message endpoint (the access token goes in its query string).
WECHAT_TEMPLATE_URL = "https://api.weixin.qq.com/cgi-bin/message/template/send"


class NotifySettings(msgspec.Struct, frozen=True):
    sender: str = "dev"  # dev | sms | wechat (WeChat when the patient has an openid, else SMS)
    sms_url: str = ""
    sms_token: str = ""  # sent as a bearer token
    sms_sign: str = ""  # the SMS signature (签名) the gateway prefixes, e.g. 某某医院
    wechat_url: str = WECHAT_TEMPLATE_URL
    wechat_token: str = ""  # access_token (or the hospital token server's key), sent as a query parameter
    wechat_template_id: str = ""
    timeout_s: float = 5.0
    message_id_prefix: str = "hy"
    batch_size: int = 50  # messages claimed per round (one per patient)
    concurrency: int = 8  # sends in flight per round
    max_rounds: int = 20  # rounds per deliver_due call
    retry_base_s: float = 5.0
    retry_cap_s: float = 900.0
    retry_jitter: float = 0.2
    evening_at: time = time(18, 0)  # the evening-before reminder, hospital local time
    before_h: float = 2.0  # the reminder shortly before the exam


def _clock(env: Mapping[str, str], name: str, default: time) -> time:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return time.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{name} must be a time like 18:00, got {raw!r}") from None


def notify_settings(env: Mapping[str, str]) -> NotifySettings:
    """Build and check the notification settings; a sender that cannot work is refused at start-up."""
    sender = env.get("HY_NOTIFY_SENDER", "dev") or "dev"
    if sender not in SENDERS:
        raise ValueError(f"HY_NOTIFY_SENDER must be one of {', '.join(SENDERS)}, got {sender!r}")
    settings = NotifySettings(
        sender=sender,
        sms_url=env.get("HY_SMS_URL", ""),
        sms_token=env.get("HY_SMS_TOKEN", ""),
        sms_sign=env.get("HY_SMS_SIGN", ""),
        wechat_url=env.get("HY_WECHAT_URL", "") or WECHAT_TEMPLATE_URL,
        wechat_token=env.get("HY_WECHAT_TOKEN", ""),
        wechat_template_id=env.get("HY_WECHAT_TEMPLATE_ID", ""),
        timeout_s=env_float(env, "HY_NOTIFY_TIMEOUT_S", 5.0),
        message_id_prefix=env.get("HY_NOTIFY_ID_PREFIX", "hy") or "hy",
        batch_size=env_int(env, "HY_NOTIFY_BATCH", 50),
        concurrency=env_int(env, "HY_NOTIFY_CONCURRENCY", 8),
        max_rounds=env_int(env, "HY_NOTIFY_MAX_ROUNDS", 20),
        retry_base_s=env_float(env, "HY_NOTIFY_RETRY_BASE_S", 5.0),
        retry_cap_s=env_float(env, "HY_NOTIFY_RETRY_CAP_S", 900.0),
        evening_at=_clock(env, "HY_REMINDER_EVENING_AT", time(18, 0)),
        before_h=env_float(env, "HY_REMINDER_BEFORE_H", 2.0),
    )
    # Without a gateway URL every message would wait forever: say so now, not at the first send.
    if sender in ("sms", "wechat") and not settings.sms_url:
        raise ValueError(f"HY_NOTIFY_SENDER={sender} needs HY_SMS_URL (SMS is also the fallback without an openid)")
    if sender == "wechat" and not settings.wechat_template_id:
        raise ValueError("HY_NOTIFY_SENDER=wechat needs HY_WECHAT_TEMPLATE_ID")
    if settings.timeout_s <= 0 or settings.batch_size < 1 or settings.concurrency < 1 or settings.max_rounds < 1:
        raise ValueError(
            "HY_NOTIFY_TIMEOUT_S, HY_NOTIFY_BATCH, HY_NOTIFY_CONCURRENCY, HY_NOTIFY_MAX_ROUNDS must be > 0"
        )
    if not 0 < settings.retry_base_s <= settings.retry_cap_s:
        raise ValueError("HY_NOTIFY_RETRY_BASE_S must be > 0 and at most HY_NOTIFY_RETRY_CAP_S")
    if not 0 < settings.before_h <= 24:
        raise ValueError(f"HY_REMINDER_BEFORE_H must be between 0 and 24 hours, got {settings.before_h}")
    return settings
