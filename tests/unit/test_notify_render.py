"""Reminder and notice texts, when reminders are due, the gateways' answers, settings, masking."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.notify.message import Outcome, mask_openid, scrub
from app.notify.render import (
    EVENING,
    SOON,
    ExamVisit,
    ReminderRules,
    cancelled_text,
    evening_due,
    queue_delay_text,
    reminder_text,
    reminders_due,
    report_ready_text,
)
from app.notify.senders import sms_outcome, wechat_outcome, wechat_title
from app.notify.settings import notify_settings

TZ = ZoneInfo("Asia/Shanghai")
RULES = ReminderRules(evening_at=time(18, 0), before=timedelta(hours=2))
# Tuesday 2026-06-02 08:30 in Shanghai.
START = datetime(2026, 6, 2, 8, 30, tzinfo=TZ)
BOOKED = datetime(2026, 5, 25, 10, 0, tzinfo=TZ)

VISIT = ExamVisit(
    appointment_id=7,
    patient_id=3,
    exam_name="无痛胃镜",
    starts_at=START.astimezone(UTC),
    resource_name="内镜3室",
    location="门诊楼4楼内镜中心",
    prep_text="检查前禁食8小时，须有成年家属陪同。",
)


def test_evening_reminder_names_exam_local_time_place_and_preparation() -> None:
    text = reminder_text(EVENING, VISIT, TZ)
    assert "无痛胃镜" in text
    assert "6月2日（周二）08:30" in text  # the hospital's local time, not UTC 00:30
    assert "内镜3室（门诊楼4楼内镜中心）" in text
    assert "检查准备：检查前禁食8小时，须有成年家属陪同。" in text


def test_soon_reminder_has_the_same_facts_and_no_preparation_line_when_there_is_none() -> None:
    visit = ExamVisit(7, 3, "心电图", START, "心电图室", "", "")
    text = reminder_text(SOON, visit, TZ)
    assert "心电图" in text and "08:30" in text and "地点：心电图室，" in text
    assert "检查准备" not in text


def test_reminder_text_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="reminder kind"):
        reminder_text("reminder_week", VISIT, TZ)


def test_notice_texts_carry_no_personal_data_and_say_what_happened() -> None:
    cancelled = cancelled_text(VISIT, TZ)
    assert "已取消" in cancelled and "无痛胃镜" in cancelled and "6月2日" in cancelled
    assert "检查报告已发布" in report_ready_text("胸部CT平扫", date(2026, 6, 2))
    delay = queue_delay_text("胸部CT平扫", "CT2室", datetime(2026, 6, 2, 2, 45, tzinfo=UTC), TZ)
    assert "10:45" in delay and "CT2室" in delay


def test_evening_due_is_six_pm_local_on_the_day_before_even_for_an_exam_just_after_midnight() -> None:
    assert evening_due(START, TZ, RULES) == datetime(2026, 6, 1, 18, 0, tzinfo=TZ)
    just_after_midnight = datetime(2026, 6, 2, 0, 30, tzinfo=TZ).astimezone(UTC)  # 2026-06-01 16:30 UTC
    assert evening_due(just_after_midnight, TZ, RULES) == datetime(2026, 6, 1, 18, 0, tzinfo=TZ)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 6, 1, 17, 59, tzinfo=TZ), []),
        (datetime(2026, 6, 1, 18, 0, tzinfo=TZ), [EVENING]),
        (datetime(2026, 6, 2, 6, 29, tzinfo=TZ), [EVENING]),  # a sweep down all evening catches up
        (datetime(2026, 6, 2, 6, 30, tzinfo=TZ), [SOON]),  # ... but not once the 2 h reminder is due
        (datetime(2026, 6, 2, 8, 29, tzinfo=TZ), [SOON]),
        (datetime(2026, 6, 2, 8, 30, tzinfo=TZ), []),  # started: nothing
    ],
)
def test_reminders_due_over_the_evening_and_morning(now: datetime, expected: list[str]) -> None:
    assert reminders_due(START, BOOKED, now, TZ, RULES) == expected


def test_a_booking_made_after_a_reminders_time_does_not_get_that_reminder() -> None:
    booked_late_evening = datetime(2026, 6, 1, 20, 0, tzinfo=TZ)
    assert reminders_due(START, booked_late_evening, datetime(2026, 6, 1, 20, 1, tzinfo=TZ), TZ, RULES) == []
    assert reminders_due(START, booked_late_evening, datetime(2026, 6, 2, 7, 0, tzinfo=TZ), TZ, RULES) == [SOON]
    booked_an_hour_before = datetime(2026, 6, 2, 7, 30, tzinfo=TZ)
    assert reminders_due(START, booked_an_hour_before, datetime(2026, 6, 2, 7, 45, tzinfo=TZ), TZ, RULES) == []


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (202, Outcome.DELIVERED),
        (409, Outcome.DELIVERED),  # the gateway has this out_id already
        (400, Outcome.FAILED),
        (422, Outcome.FAILED),
        (401, Outcome.RETRY),  # configuration: wait for it to be fixed, lose nothing
        (404, Outcome.RETRY),
        (408, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
def test_sms_gateway_answers(status: int, outcome: Outcome) -> None:
    assert sms_outcome(status) is outcome


def test_wechat_answers_use_errcode_inside_a_200() -> None:
    assert wechat_outcome(200, b'{"errcode":0,"errmsg":"ok","msgid":1}') == (Outcome.DELIVERED, "")
    assert wechat_outcome(200, b'{"errcode":43004,"errmsg":"require subscribe"}')[0] is Outcome.FAILED
    assert wechat_outcome(200, b'{"errcode":-1,"errmsg":"system error"}')[0] is Outcome.RETRY
    assert wechat_outcome(200, b'{"errcode":45009,"errmsg":"api freq out of limit"}')[0] is Outcome.RETRY
    assert wechat_outcome(200, b"<html>proxy</html>")[0] is Outcome.RETRY
    assert wechat_outcome(502, b"")[0] is Outcome.RETRY
    assert wechat_title(EVENING) == "检查预约提醒"


def test_masking_keeps_numbers_out_of_records() -> None:
    assert mask_openid("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o") == "oUpF****eS6o"
    assert "13812345678" not in scrub("invalid phone 13812345678")
    assert scrub("invalid phone 13812345678") == "invalid phone 138****5678"


def test_settings_default_to_the_dev_sender_and_refuse_a_gateway_without_url() -> None:
    assert notify_settings({}).sender == "dev"
    with pytest.raises(ValueError, match="HY_SMS_URL"):
        notify_settings({"HY_NOTIFY_SENDER": "sms"})
    with pytest.raises(ValueError, match="HY_WECHAT_TEMPLATE_ID"):
        notify_settings({"HY_NOTIFY_SENDER": "wechat", "HY_SMS_URL": "http://127.0.0.1:9/sms"})
    with pytest.raises(ValueError, match="one of"):
        notify_settings({"HY_NOTIFY_SENDER": "pigeon"})
    s = notify_settings({"HY_REMINDER_EVENING_AT": "19:30", "HY_REMINDER_BEFORE_H": "3"})
    assert s.evening_at == time(19, 30) and s.before_h == 3.0
