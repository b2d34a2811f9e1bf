"""Which slips a caller may print: live appointments of patients the caller may act for; every
print is an access to personal data and is audited."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import asyncpg

from app.booking.service import check_patient_access
from app.db import booking_repo, patient_repo
from app.errors import NotFound, ValidationFailed
from app.security.actor import Actor
from app.security.idcard import mask_name
from app.slips.render import Slip, appointment_number


def _masked_card(mrn: str) -> str:
    return "*" * max(0, len(mrn) - 4) + mrn[-4:]


class SlipService:
    def __init__(self, pool: asyncpg.Pool, tz: ZoneInfo) -> None:
        self.pool = pool
        self.tz = tz

    async def slips(self, actor: Actor, appointment_ids: list[int]) -> list[Slip]:
        wanted = list(dict.fromkeys(appointment_ids))
        rows = await booking_repo.slip_rows(self.pool, wanted)
        found = {int(r["id"]) for r in rows}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise NotFound("预约不存在", detail=f"appointments not found: {missing}")
        for r in rows:
            check_patient_access(actor, int(r["patient_id"]))
        gone = [int(r["id"]) for r in rows if r["status"] != "booked"]
        if gone:
            raise ValidationFailed("预约已取消或已改约，不能打印预约单", detail=f"appointments not live: {gone}")
        for patient_id in sorted({int(r["patient_id"]) for r in rows}):
            ids = [str(r["id"]) for r in rows if r["patient_id"] == patient_id]
            await patient_repo.audit(self.pool, actor, "print_slip", "appointment", ",".join(ids), patient_id)
        return [
            Slip(
                number=appointment_number(int(r["id"])),
                hospital=r["hospital_name"],
                patient=f"{mask_name(r['patient_name'])}  就诊卡 {_masked_card(r['mrn'])}",
                exam_name=r["exam_name"],
                starts_at=r["starts_at"].astimezone(self.tz),
                ends_at=r["ends_at"].astimezone(self.tz),
                place=f"{r['resource_name']}（{r['location']}）" if r["location"] else r["resource_name"],
                preparation=r["prep_text"],
            )
            for r in rows
        ]
