"""A morning's bookings for the demo hospital, made through the real planner and booking path by
the demo staff of each channel, so that `make run` opens on a slot grid and a wall with data.

The first patients of the demo (萧子轩 and the next few) keep their orders pending for the
planner's demo path."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.booking.service import BookItem
from app.demo.data import DEMO_PASSWORD, PATIENTS
from app.errors import AppError

if TYPE_CHECKING:
    from app.services import Services

logger = logging.getLogger(__name__)

KEEP_PENDING = 10  # the first demo patients are left for the planner's demo
CHANNEL_OF_CLASS = {
    "inpatient": ("ward", "nurse"),
    "checkup": ("checkup", "clerk"),
    "emergency": ("emergency", "doctor"),
}


async def book_demo_patients(services: Services, share: float = 0.5) -> int:
    """Plan and book the pending orders of about `share` of the demo patients; returns how many
    appointments were made."""
    keep = {p.mrn for p in PATIENTS[:KEEP_PENDING]}
    rows = await services.pool.fetch(
        """SELECT p.id, p.mrn, min(o.patient_class) AS patient_class
             FROM patient p JOIN exam_order o ON o.patient_id = p.id AND o.status = 'ordered'
            GROUP BY p.id, p.mrn ORDER BY p.id"""
    )
    candidates = [r for r in rows if r["mrn"] not in keep]
    chosen = candidates[:: max(1, round(1 / share))] if share > 0 else []
    actors = {}
    for username in ("doctor", "clerk", "nurse"):
        actors[username] = (await services.sessions.login(username, DEMO_PASSWORD, terminal="demo")).actor
    booked = 0
    for n, r in enumerate(chosen):
        outpatient = ("clinic", "doctor") if n % 2 else ("desk", "clerk")
        channel, username = CHANNEL_OF_CLASS.get(r["patient_class"], outpatient)
        actor = actors[username]
        try:
            proposal = await services.plans.propose(actor, r["id"], channel, max_plans=1)
            if not proposal.result.plans or not proposal.result.plans[0].items:
                continue
            items = [BookItem(int(i.key), i.slot_id) for i in proposal.result.plans[0].items]
            booked += len(await services.plans.book_plan(actor, r["id"], channel, items))
        except AppError as exc:  # a rule warning or a race: the demo just skips that patient
            logger.info("demo booking for patient %s skipped: %s", r["id"], exc.code)
    return booked
