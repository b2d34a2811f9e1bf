"""The patients' messages (Chinese) and when a reminder is due: pure functions over plain data.

No message carries the patient's name or numbers: an SMS can be read by whoever holds the phone."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import msgspec

EVENING = "reminder_evening"
SOON = "reminder_soon"
REMINDER_KINDS = frozenset({EVENING, SOON})
CANCELLED = "appointment_cancelled"
REPORT_READY = "report_ready"
QUEUE_DELAY = "queue_delay"

_WEEKDAYS = "一二三四五六日"


class ExamVisit(msgspec.Struct, frozen=True):
    """An appointment as a message describes it."""

    appointment_id: int
    patient_id: int
    exam_name: str
    starts_at: datetime
    resource_name: str
    location: str
    prep_text: str = ""


class ReminderRules(msgspec.Struct, frozen=True):
    evening_at: time = time(18, 0)
    before: timedelta = timedelta(hours=2)


def when(at: datetime, tz: ZoneInfo) -> str:
    """'6月3日（周二）08:30' in the hospital's time zone."""
    local = at.astimezone(tz)
    return f"{local.month}月{local.day}日（周{_WEEKDAYS[local.weekday()]}）{local:%H:%M}"


def _place(visit: ExamVisit) -> str:
    return f"{visit.resource_name}（{visit.location}）" if visit.location else visit.resource_name


def _prep(visit: ExamVisit) -> str:
    text = visit.prep_text.strip()
    return f"检查准备：{text}" if text else ""


def reminder_text(kind: str, visit: ExamVisit, tz: ZoneInfo) -> str:
    """The evening-before or shortly-before reminder: exam, time, place and the preparation
    (fasting, full bladder, escort...) from the exam type."""
    if kind == EVENING:
        head = f"检查提醒：您预约的{visit.exam_name}定于{when(visit.starts_at, tz)}在{_place(visit)}进行，"
    elif kind == SOON:
        head = f"检查提醒：您预约的{visit.exam_name}将于{when(visit.starts_at, tz)}开始，地点：{_place(visit)}，"
    else:
        raise ValueError(f"reminder kind must be {EVENING} or {SOON}, got {kind!r}")
    return head + "请提前15分钟到达并扫码签到。" + _prep(visit)


def cancelled_text(visit: ExamVisit, tz: ZoneInfo) -> str:
    return (
        f"您原定于{when(visit.starts_at, tz)}在{_place(visit)}进行的{visit.exam_name}已取消。"
        "如需重新预约，请通过预约中心、自助机或微信办理。"
    )


def report_ready_text(exam_name: str, exam_day: date) -> str:
    return (
        f"您于{exam_day.month}月{exam_day.day}日完成的{exam_name}检查报告已发布，"
        "可通过微信或自助机查看、打印，也可请开单医生查阅。"
    )


def queue_delay_text(exam_name: str, room: str, expected_at: datetime, tz: ZoneInfo) -> str:
    """For a patient whose expected time moved (an emergency was put ahead in the room's queue)."""
    return (
        f"因急诊患者优先检查，您在{room}的{exam_name}预计{expected_at.astimezone(tz):%H:%M}左右开始，"
        "请留意叫号，过号请到分诊台报到。感谢您的理解。"
    )


def evening_due(starts_at: datetime, tz: ZoneInfo, rules: ReminderRules) -> datetime:
    """The evening-before time of an exam: `evening_at` on the local day before."""
    day_before = starts_at.astimezone(tz).date() - timedelta(days=1)
    return datetime.combine(day_before, rules.evening_at, tz)


def reminders_due(
    starts_at: datetime, booked_at: datetime, now: datetime, tz: ZoneInfo, rules: ReminderRules
) -> list[str]:
    """The reminders an appointment should have by `now` (the sweep queues each once).

    - evening: from `evening_at` the day before, while the shortly-before reminder is not due yet
      (a sweep that was down overnight sends that one only, not both at once);
    - soon: from `before` ahead of the start until the start.
    Neither for a booking made after the reminder's time: the patient just got the slip."""
    soon = starts_at - rules.before
    out = []
    evening = evening_due(starts_at, tz, rules)
    if evening <= now < soon and booked_at < evening:
        out.append(EVENING)
    if soon <= now < starts_at and booked_at < soon:
        out.append(SOON)
    return out
