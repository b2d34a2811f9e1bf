"""The notice sweeps on the demo hospital: the evening-before and shortly-before reminders queued
once each however often (and however concurrently) the sweep runs, with the exam, time, place and
preparation; a reminder of an appointment cancelled meanwhile is not sent, the cancellation is;
a published report is announced once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from app.booking.service import BookItem
from app.db import notify_repo
from app.notify.factory import build_sender
from app.notify.relay import deliver_due
from app.notify.render import EVENING, SOON, ReminderRules, evening_due
from app.notify.sweeps import (
    schedule_cancellation_notices,
    schedule_notices,
    schedule_reminders,
    schedule_report_notices,
)
from app.services import Services
from tests.helpers import actor_for, future_day, new_patients_with_orders, open_slots

EXAM = "US-ABD-UPPER"  # fasting upper-abdomen ultrasound: its preparation says so


class Booked(NamedTuple):
    patient_id: int
    appointment_id: int
    starts_at: datetime


async def _book_three(services: Services) -> list[Booked]:
    day = future_day(services, 2)
    slots = await open_slots(services, EXAM, day)
    assert len(slots) >= 3
    clerk = await actor_for(services, "clerk")
    people = await new_patients_with_orders(services.pool, 3, [EXAM])
    booked = []
    for (pid, (order,)), slot in zip(people, slots[:3], strict=True):
        (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(order, int(slot["id"]))])
        booked.append(Booked(pid, appt.appointment_id, appt.starts_at))
    starts = [b.starts_at for b in booked]
    assert max(starts) - min(starts) < timedelta(hours=2)
    return booked


async def _notices(services: Services, kind: str) -> list[dict[str, object]]:
    rows = await services.pool.fetch(
        "SELECT id, aggregate_id, payload FROM outbox WHERE topic = 'patient.notice' AND payload ->> 'kind' = $1"
        " ORDER BY id",
        kind,
    )
    return [{"id": r["id"], "patient_id": int(r["aggregate_id"]), **r["payload"]} for r in rows]


async def test_reminders_are_queued_once_each_at_their_time_with_exam_time_place_and_preparation(
    services: Services,
) -> None:
    booked = await _book_three(services)
    tz = services.reconciler.tz
    hospital = services.settings.booking.hospital_id
    rules = ReminderRules()
    first = min(b.starts_at for b in booked)
    last = max(b.starts_at for b in booked)
    evening = evening_due(first, tz, rules)

    assert await schedule_reminders(services.pool, hospital, evening - timedelta(minutes=1), tz) == 0
    assert await schedule_reminders(services.pool, hospital, evening, tz) == 3
    assert await schedule_reminders(services.pool, hospital, evening + timedelta(minutes=5), tz) == 0
    runs = await asyncio.gather(
        *(schedule_reminders(services.pool, hospital, evening + timedelta(hours=1), tz) for _ in range(5))
    )
    assert sum(runs) == 0
    evenings = await _notices(services, EVENING)
    assert sorted(n["appointment_id"] for n in evenings) == sorted(b.appointment_id for b in booked)

    prep = await services.pool.fetchval("SELECT prep_text FROM exam_type WHERE code = $1", EXAM)
    appt = await services.pool.fetchrow(
        """SELECT e.name AS exam_name, r.name AS resource_name, r.location, a.starts_at FROM appointment a
             JOIN exam_type e ON e.code = a.exam_code JOIN resource r ON r.id = a.resource_id WHERE a.id = $1""",
        evenings[0]["appointment_id"],
    )
    text = str(evenings[0]["message"])
    local = appt["starts_at"].astimezone(tz)
    assert appt["exam_name"] in text and appt["resource_name"] in text and appt["location"] in text
    assert f"{local.month}月{local.day}日" in text and f"{local:%H:%M}" in text
    assert prep and prep in text and "禁食" in text  # fasting, from the exam type's preparation
    assert evenings[0]["expires_at"] == appt["starts_at"].isoformat()

    # Shortly before: every one of them, once, even with five sweeps racing.
    soon_time = last - timedelta(hours=2) + timedelta(minutes=1)
    runs = await asyncio.gather(*(schedule_reminders(services.pool, hospital, soon_time, tz) for _ in range(5)))
    assert sum(runs) == 3
    assert await schedule_reminders(services.pool, hospital, soon_time + timedelta(minutes=10), tz) == 0
    assert len(await _notices(services, SOON)) == 3
    assert len(await _notices(services, EVENING)) == 3


async def test_a_cancelled_appointment_gets_no_reminder_but_a_cancellation_notice_once(services: Services) -> None:
    booked = await _book_three(services)
    tz = services.reconciler.tz
    hospital = services.settings.booking.hospital_id
    evening = evening_due(booked[0].starts_at, tz, ReminderRules())
    assert await schedule_reminders(services.pool, hospital, evening, tz) == 3

    clerk = await actor_for(services, "clerk")
    gone = booked[1]
    await services.booking.cancel(clerk, gone.appointment_id, "desk", "患者要求取消")
    now = datetime.now(UTC)
    assert await schedule_cancellation_notices(services.pool, hospital, now, tz) == 1
    assert await schedule_cancellation_notices(services.pool, hospital, now + timedelta(minutes=1), tz) == 0
    (notice,) = await _notices(services, "appointment_cancelled")
    assert notice["patient_id"] == gone.patient_id and "已取消" in str(notice["message"])

    # The relay runs in the evening: the cancelled appointment's reminder is set aside, the rest go.
    sender = build_sender({}, services.pool)
    report = await deliver_due(services.pool, sender, evening + timedelta(minutes=1))
    assert (report.delivered, report.skipped, report.failed) == (3, 1, 0)  # 2 reminders + the cancellation
    skipped = await services.pool.fetchrow(
        "SELECT dead_at, last_error FROM outbox WHERE payload ->> 'dedupe' = $1",
        f"{EVENING}:{gone.appointment_id}",
    )
    assert skipped["dead_at"] is not None and "no longer booked" in skipped["last_error"]
    kinds = {(r["patient_id"], r["kind"]) for r in await notify_repo.latest_dev_messages(services.pool, 20)}
    assert kinds == {
        (booked[0].patient_id, EVENING),
        (booked[2].patient_id, EVENING),
        (gone.patient_id, "appointment_cancelled"),
    }


async def test_a_reminder_not_delivered_before_the_exam_starts_is_dropped_not_sent_late(services: Services) -> None:
    booked = await _book_three(services)
    tz = services.reconciler.tz
    hospital = services.settings.booking.hospital_id
    start, last = min(b.starts_at for b in booked), max(b.starts_at for b in booked)
    queued = await schedule_reminders(services.pool, hospital, start - timedelta(hours=1, minutes=59), tz)
    assert queued == 3  # one each: shortly-before where that is due, else the evening one
    report = await deliver_due(services.pool, build_sender({}, services.pool), last + timedelta(minutes=1))
    assert (report.delivered, report.skipped) == (0, 3)
    assert await notify_repo.latest_dev_messages(services.pool) == []


async def test_a_published_report_is_announced_once(services: Services) -> None:
    booked = await _book_three(services)
    order_id = await services.pool.fetchval("SELECT order_id FROM appointment WHERE id = $1", booked[0].appointment_id)
    # The closed loop records the report's publication as an order event (what hy_transition writes).
    await services.pool.execute(
        """INSERT INTO order_event (order_id, appointment_id, event, from_status, to_status, actor_role, channel)
           VALUES ($1, $2, 'published', 'verified', 'published', 'technician', 'desk')""",
        order_id,
        booked[0].appointment_id,
    )
    hospital = services.settings.booking.hospital_id
    now = datetime.now(UTC)
    assert await schedule_report_notices(services.pool, hospital, now) == 1
    assert await schedule_report_notices(services.pool, hospital, now) == 0
    report = await schedule_notices(services.pool, hospital, now, services.reconciler.tz)
    assert (report.reminders, report.cancellations, report.reports) == (0, 0, 0)
    (notice,) = await _notices(services, "report_ready")
    assert notice["patient_id"] == booked[0].patient_id and "检查报告已发布" in str(notice["message"])
