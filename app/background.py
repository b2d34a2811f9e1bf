"""Background roles run inside the app process in the default set-up: the hold reaper, the
rebuild of the whole index when another Redis server answers (a failover, a restart), of days
whose index vanished from Redis (back empty) and of days and room queues whose Redis update
failed, the release of reserved quotas at their set time, the no-show sweep with the credit rule,
and (a task of its own) patient notices: the reminder and notice sweeps and the delivery of the
outbox to the SMS / WeChat gateway.
Production can run them as `python -m app worker`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from app.booking.quota_release import release_due
from app.booking.reaper import reap_expired
from app.errors import AppError
from app.integrations.outbound.relay import run_outbound
from app.notify.worker import run_notifications
from app.services import Services

logger = logging.getLogger(__name__)


async def sweep_once(services: Services) -> None:
    # A different Redis server answering (a Sentinel failover, a restart): its copy may lack the
    # last writes, so the horizon and today's loaded room queues are rebuilt from PostgreSQL.
    # Then days whose index vanished (back empty, a FLUSHDB), so the reaper and the repairs below
    # work on a whole index.
    if await services.reconciler.reconcile_new_server():
        await services.queues.mark_loaded_dirty(services.reconciler.today())
    await services.reconciler.reconcile_missing()
    await services.reconciler.reconcile_dirty()
    report = await reap_expired(
        services.pool, services.store, services.reconciler, int(time.time() * 1000), publisher=services.publisher
    )
    if report.released or report.confirmed:
        logger.info("reaper: released %d, confirmed %d", report.released, report.confirmed)
    # Slots whose Redis counters drifted from PostgreSQL for a reason no code path sees (a split
    # brain's discarded writes, a hand edit): their days are rebuilt (Reconciler.repair_drift).
    await services.reconciler.repair_drift()
    await release_due(services.pool, services.reconciler, services.settings.booking.hospital_id, datetime.now(UTC))
    await services.queues.rebuild_dirty()
    await services.orders.sweep_no_shows()


async def run_background(services: Services, stop: asyncio.Event) -> None:
    # Patient notices run as their own task: a slow gateway must never hold up the hold reaper.
    notices = asyncio.create_task(
        run_notifications(
            services.pool,
            services.notifier,
            services.settings.booking.hospital_id,
            services.reconciler.tz,
            services.settings.notify,
            stop,
        )
    )
    # HL7 SIU to the configured peers and signed webhooks, from the outbox: a task of its own too.
    outbound = asyncio.create_task(run_outbound(services.pool, services.settings.outbound, stop))
    interval = services.settings.booking.reaper_interval_s
    try:
        while not stop.is_set():
            try:
                await sweep_once(services)
            except AppError as exc:
                logger.warning("background sweep skipped: %s", exc.code)
            except Exception:
                logger.exception("background sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
    finally:
        for task in (notices, outbound):
            task.cancel()  # a round cut short rolls back; its messages go again with the same ids
            with contextlib.suppress(asyncio.CancelledError):
                await task
