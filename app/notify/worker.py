"""The notification loop: queue what the sweeps find, then deliver what is due, every few seconds.
It runs as its own task, beside the booking sweep rather than inside it: a slow gateway (each
request may take up to HY_NOTIFY_TIMEOUT_S) must never hold up the hold reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg

from app.errors import AppError
from app.notify.message import Sender
from app.notify.relay import DeliveryReport, deliver_due
from app.notify.settings import NotifySettings
from app.notify.sweeps import ScheduleReport, schedule_notices

logger = logging.getLogger(__name__)


async def notify_once(
    pool: asyncpg.Pool, sender: Sender, hospital_id: str, tz: ZoneInfo, settings: NotifySettings, now: datetime
) -> tuple[ScheduleReport, DeliveryReport]:
    queued = await schedule_notices(pool, hospital_id, now, tz, settings)
    report = await deliver_due(pool, sender, now, settings)
    if report.delivered or report.retried or report.failed or report.skipped:
        logger.info(
            "notices: delivered %d, to retry %d, failed %d, skipped %d",
            report.delivered,
            report.retried,
            report.failed,
            report.skipped,
        )
    return queued, report


async def run_notifications(
    pool: asyncpg.Pool,
    sender: Sender,
    hospital_id: str,
    tz: ZoneInfo,
    settings: NotifySettings,
    stop: asyncio.Event,
    interval_s: float = 5.0,
) -> None:
    """Until `stop` is set. Cancelling it mid-send is safe: the round's transaction rolls back and
    its messages go again, with the same ids, next time."""
    while not stop.is_set():
        try:
            await notify_once(pool, sender, hospital_id, tz, settings, datetime.now(UTC))
        except AppError as exc:
            logger.warning("notification sweep skipped: %s", exc.code)
        except Exception:
            logger.exception("notification sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
