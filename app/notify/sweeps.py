"""The sweeps that queue notices from the state of the bookings, each at most once (a `dedupe` key
per appointment or order and kind, enforced by sql/0008's trigger): reminders before an exam,
cancellations, published reports. They run with the background sweep and take `now` so tests set
the clock; a sweep that was down catches up on its next run."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from app.db import notify_repo
from app.notify import render
from app.notify.render import ExamVisit, ReminderRules
from app.notify.settings import NotifySettings

logger = logging.getLogger(__name__)

# Changes older than this are not announced any more (a sweep down for longer has lost its moment).
LOOKBACK = timedelta(days=1)


class ScheduleReport(msgspec.Struct):
    reminders: int = 0
    cancellations: int = 0
    reports: int = 0


def rules_from(settings: NotifySettings) -> ReminderRules:
    return ReminderRules(evening_at=settings.evening_at, before=timedelta(hours=settings.before_h))


def _visit(row: asyncpg.Record) -> ExamVisit:
    return ExamVisit(
        appointment_id=int(row["id"]),
        patient_id=int(row["patient_id"]),
        exam_name=row["exam_name"],
        starts_at=row["starts_at"],
        resource_name=row["resource_name"],
        location=row["location"] or "",
        prep_text=row["prep_text"] or "",
    )


async def schedule_reminders(
    pool: asyncpg.Pool, hospital_id: str, now: datetime, tz: ZoneInfo, rules: ReminderRules | None = None
) -> int:
    """Queue the evening-before and shortly-before reminders due by `now` for live appointments;
    returns how many were queued now (each appointment gets each reminder once, however often and
    on however many workers this runs)."""
    rules = rules or ReminderRules()
    today = now.astimezone(tz).date()
    rows = await notify_repo.reminder_candidates(
        pool,
        hospital_id,
        now,
        (today - timedelta(days=1), today + timedelta(days=2)),
        tz.key,
        rules.evening_at,
        rules.before,
    )
    queued = 0
    for row in rows:
        visit = _visit(row)
        for kind in render.reminders_due(visit.starts_at, row["booked_at"], now, tz, rules):
            payload = {
                "kind": kind,
                "message": render.reminder_text(kind, visit, tz),
                "appointment_id": visit.appointment_id,
                "dedupe": f"{kind}:{visit.appointment_id}",
                "expires_at": visit.starts_at.isoformat(),  # a reminder after the start is no use
            }
            if await notify_repo.queue_notice(pool, visit.patient_id, payload) is not None:
                queued += 1
    if queued:
        logger.info("queued %d exam reminders", queued)
    return queued


async def schedule_cancellation_notices(pool: asyncpg.Pool, hospital_id: str, now: datetime, tz: ZoneInfo) -> int:
    """Tell patients of appointments cancelled (by anyone, on any path) in the last day that were
    still ahead. Lock-driven moves are told by app/booking/relocate.py itself."""
    rows = await notify_repo.recent_cancellations(pool, hospital_id, now, now - LOOKBACK)
    queued = 0
    for row in rows:
        visit = _visit(row)
        payload = {
            "kind": render.CANCELLED,
            "message": render.cancelled_text(visit, tz),
            "appointment_id": visit.appointment_id,
            "dedupe": f"{render.CANCELLED}:{visit.appointment_id}",
            "expires_at": visit.starts_at.isoformat(),
        }
        if await notify_repo.queue_notice(pool, visit.patient_id, payload) is not None:
            queued += 1
    return queued


async def schedule_report_notices(pool: asyncpg.Pool, hospital_id: str, now: datetime) -> int:
    """Tell patients whose exam report was published (the order reached 'published') in the last day."""
    rows = await notify_repo.recent_published_reports(pool, hospital_id, now - LOOKBACK)
    queued = 0
    for row in rows:
        payload = {
            "kind": render.REPORT_READY,
            "message": render.report_ready_text(row["exam_name"], row["exam_day"]),
            "order_id": int(row["order_id"]),
            "dedupe": f"{render.REPORT_READY}:{row['order_id']}",
        }
        if await notify_repo.queue_notice(pool, int(row["patient_id"]), payload) is not None:
            queued += 1
    return queued


async def schedule_notices(
    pool: asyncpg.Pool, hospital_id: str, now: datetime, tz: ZoneInfo, settings: NotifySettings | None = None
) -> ScheduleReport:
    """Every sweep above, for the background loop."""
    rules = rules_from(settings or NotifySettings())
    return ScheduleReport(
        reminders=await schedule_reminders(pool, hospital_id, now, tz, rules),
        cancellations=await schedule_cancellation_notices(pool, hospital_id, now, tz),
        reports=await schedule_report_notices(pool, hospital_id, now),
    )


async def queue_delay_notice(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    patient_id: int,
    appointment_id: int,
    exam_name: str,
    room: str,
    expected_at: datetime,
    tz: ZoneInfo,
    revision: int | str,
) -> int | None:
    """For the queue: the patient's expected time moved (an emergency went ahead). `revision`
    tells one move from the next (e.g. the queue event id), so a retried call queues it once."""
    payload = {
        "kind": render.QUEUE_DELAY,
        "message": render.queue_delay_text(exam_name, room, expected_at, tz),
        "appointment_id": appointment_id,
        "dedupe": f"{render.QUEUE_DELAY}:{appointment_id}:{revision}",
    }
    return await notify_repo.queue_notice(conn, patient_id, payload)
