"""The quota release job: at the time a rule sets (e.g. 16:00 the day before), a channel's unused
reserved places of a day go to the open pool. PostgreSQL records each (day, channel) once, then
the day's Redis index is rebuilt from it (and the live grids hear of it). Late runs catch up: a
release that was due while the platform was down happens at the next sweep."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import asyncpg
import msgspec

from app.booking.reconcile import Reconciler
from app.db import quota_repo

logger = logging.getLogger(__name__)


class Released(msgspec.Struct):
    day: str
    channel: str
    places: int


async def release_due(pool: asyncpg.Pool, reconciler: Reconciler, hospital_id: str, now: datetime) -> list[Released]:
    rules = await quota_repo.active_rules(pool, hospital_id)
    if not rules:
        return []
    days = reconciler.horizon()
    done = await quota_repo.done_days(pool, hospital_id, days[0], days[-1])
    out: list[Released] = []
    for day in days:
        for rule in rules:
            channel = rule["channel"]
            due = datetime.combine(day - timedelta(days=rule["days_before"]), rule["at_time"], reconciler.tz)
            if now < due or (day, channel) in done:
                continue
            places = await quota_repo.release(pool, hospital_id, day, channel)
            if places is None:
                continue  # another worker did it
            await reconciler.reconcile_day_safely(day)
            logger.info("released %d reserved %s places of %s", places, channel, day)
            out.append(Released(day.isoformat(), channel, places))
    return out
