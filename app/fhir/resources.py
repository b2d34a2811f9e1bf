"""Read and search of the facade's resource types.

Personal data (Patient, ServiceRequest, Appointment) is searched only within one patient, one
order or one id — never a whole list of patients — and every answer that carries a patient's
data writes an audit row per patient (`patient_repo.audit`, action `fhir.read` / `fhir.search`).
Schedule and Slot carry no personal data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from app.booking.service import HeldPlace
from app.db import patient_repo
from app.errors import AppError, NotFound
from app.fhir import mapping, repo
from app.fhir.capability import SEARCH_TYPES
from app.fhir.outcome import FhirBadRequest
from app.fhir.search import Query, date_bounds, page, parse_int_id, parse_reference, parse_token
from app.planning.catalogue import Catalogue
from app.security.actor import Actor
from app.services import Services

# Without a start bound a Slot search covers this many days from today; at most MAX_SLOT_DAYS.
DEFAULT_SLOT_DAYS = 7
MAX_SLOT_DAYS = 31

SEARCH_PARAMS: dict[str, frozenset[str]] = {kind: frozenset(params) for kind, params in SEARCH_TYPES.items()}


class Facade:
    """The FHIR view of one hospital's records, for one request."""

    def __init__(self, services: Services, base: str) -> None:
        self.services = services
        self.base = base
        self.hospital_id = services.settings.booking.hospital_id
        self.tz = ZoneInfo(services.settings.booking.timezone)

    @property
    def catalogue(self) -> Catalogue:
        return self.services.catalogue

    async def audit(
        self, actor: Actor, action: str, kind: str, object_id: str, patient_ids: Iterable[int], **detail: Any
    ) -> None:
        for pid in sorted(set(patient_ids)):
            await patient_repo.audit(self.services.pool, actor, action, f"fhir.{kind}", object_id, pid, detail)

    # -- Patient -------------------------------------------------------------------------------

    async def read_patient(self, actor: Actor, ident: str) -> dict[str, Any]:
        rows = await repo.patients(self.services.pool, self.hospital_id, patient_id=_id_or_404(ident, "患者"))
        if not rows:
            raise NotFound("患者不存在", detail=f"Patient/{ident} not found")
        await self.audit(actor, "fhir.read", "Patient", ident, [rows[0]["id"]])
        return mapping.patient(rows[0], self.tz)

    async def search_patients(self, actor: Actor, q: Query) -> dict[str, Any]:
        ident = q.one("_id")
        token = q.one("identifier")
        if ident is None and token is None:
            raise FhirBadRequest(
                "查询患者须提供 identifier（就诊卡号）或 _id", detail="Patient search needs identifier or _id"
            )
        mrn = None
        if token is not None:
            system, mrn = parse_token(token)
            if system not in (None, mapping.MRN_SYSTEM):
                return self._bundle([], q, "Patient")
        pid = parse_int_id(ident, "_id") if ident is not None else None
        rows = await repo.patients(self.services.pool, self.hospital_id, patient_id=pid, mrn=mrn)
        found = [mapping.patient(r, self.tz) for r in rows]
        await self.audit(actor, "fhir.search", "Patient", _query_text(q), [r["id"] for r in rows])
        return self._bundle(found, q, "Patient")

    # -- ServiceRequest ------------------------------------------------------------------------

    async def read_service_request(self, actor: Actor, ident: str) -> dict[str, Any]:
        rows = await repo.orders(self.services.pool, self.hospital_id, order_id=_id_or_404(ident, "检查申请"))
        if not rows:
            raise NotFound("检查申请不存在", detail=f"ServiceRequest/{ident} not found")
        await self.audit(actor, "fhir.read", "ServiceRequest", ident, [rows[0]["patient_id"]])
        return mapping.service_request(rows[0], self.catalogue, self.tz)

    async def search_service_requests(self, actor: Actor, q: Query) -> dict[str, Any]:
        ident = q.one("_id")
        subject = q.one("patient") or q.one("subject")
        token = q.one("identifier")
        if ident is None and subject is None and token is None:
            raise FhirBadRequest(
                "查询检查申请须提供 patient、identifier 或 _id",
                detail="ServiceRequest search needs patient, identifier or _id",
            )
        number = None
        if token is not None:
            system, number = parse_token(token)
            if system not in (None, mapping.ORDER_NO_SYSTEM, mapping.ACCESSION_SYSTEM):
                return self._bundle([], q, "ServiceRequest")
        rows = await repo.orders(
            self.services.pool,
            self.hospital_id,
            order_id=parse_int_id(ident, "_id") if ident is not None else None,
            patient_id=parse_int_id(parse_reference(subject, "Patient", "patient"), "patient") if subject else None,
            number=number,
        )
        statuses = set(q.values("status"))
        codes = {parse_token(v)[1] for v in q.values("code")}
        rows = [
            r
            for r in rows
            if (not statuses or mapping.SERVICE_REQUEST_STATUS.get(r["status"]) in statuses)
            and (not codes or r["exam_code"] in codes)
        ]
        found = [mapping.service_request(r, self.catalogue, self.tz) for r in rows]
        window, bundle = self._page(found, q, "ServiceRequest")
        shown = {int(r["id"]) for r in window}
        await self.audit(
            actor, "fhir.search", "ServiceRequest", _query_text(q), [r["patient_id"] for r in rows if r["id"] in shown]
        )
        return bundle

    # -- Schedule ------------------------------------------------------------------------------

    def horizon(self) -> tuple[date, date]:
        today = self.services.reconciler.today()
        return today, today + timedelta(days=self.services.settings.booking.horizon_days - 1)

    def read_schedule(self, ident: str) -> dict[str, Any]:
        res = self.catalogue.resources.get(ident)
        if res is None:
            raise NotFound("设备/诊室不存在", detail=f"Schedule/{ident} not found")
        return mapping.schedule(res, self.catalogue, self.horizon())

    def search_schedules(self, q: Query) -> dict[str, Any]:
        cat = self.catalogue
        ids = set(cat.resources)
        if q.has("_id"):
            ids &= set(q.values("_id"))
        if q.has("actor"):
            ids &= {v.rstrip("/").split("/")[-1] for v in q.values("actor")}
        if q.has("service-type"):
            wanted: set[str] = set()
            for v in q.values("service-type"):
                wanted |= cat.capable.get(parse_token(v)[1], frozenset())
            ids &= wanted
        active = q.one("active")
        if active not in (None, "true", "false"):
            raise FhirBadRequest("参数 active 须为 true 或 false", detail="active must be true or false")
        if active == "false":
            ids = set()  # only active resources are bookable, and only those are published
        horizon = self.horizon()
        found = [mapping.schedule(cat.resources[i], cat, horizon) for i in sorted(ids)]
        return self._bundle(found, q, "Schedule")

    # -- Slot ----------------------------------------------------------------------------------

    async def _slot_resources(self, rows: Sequence[Any]) -> list[dict[str, Any]]:
        """The Slot of each row, its status from PostgreSQL and, for places someone holds right
        now, the live index (busy-tentative). Without Redis the status is PostgreSQL's alone."""
        by_day: dict[date, list[int]] = defaultdict(list)
        for r in rows:
            by_day[r["day"]].append(int(r["id"]))
        live: dict[int, int] = {}
        try:
            for day, ids in by_day.items():
                for view in await self.services.store.read_slots_by_id(day, ids):
                    if view is not None:
                        live[view.slot_id] = view.capacity - view.booked
        except AppError:
            live = {}
        return [mapping.slot(r, mapping.slot_status(r, live.get(int(r["id"]))), self.tz) for r in rows]

    async def read_slot(self, ident: str) -> dict[str, Any]:
        rows = await repo.slots(self.services.pool, self.hospital_id, slot_id=_id_or_404(ident, "号源"))
        if not rows:
            raise NotFound("号源不存在", detail=f"Slot/{ident} not found")
        return (await self._slot_resources(rows))[0]

    async def search_slots(self, q: Query) -> dict[str, Any]:
        ident = q.one("_id")
        resource_ids: set[str] | None = None
        if q.has("schedule"):
            resource_ids = {parse_reference(v, "Schedule", "schedule") for v in q.values("schedule")}
        if q.has("service-type"):
            capable: set[str] = set()
            for v in q.values("service-type"):
                capable |= self.catalogue.capable.get(parse_token(v)[1], frozenset())
            resource_ids = capable if resource_ids is None else resource_ids & capable
        if ident is None and resource_ids is None:
            raise FhirBadRequest(
                "查询号源须提供 schedule、service-type 或 _id", detail="Slot search needs schedule, service-type or _id"
            )
        low, high = date_bounds(q.params.get("start", []), self.tz, "start")
        if ident is None:
            low, high = self._window(low, high)
        rows = await repo.slots(
            self.services.pool,
            self.hospital_id,
            slot_id=parse_int_id(ident, "_id") if ident is not None else None,
            resource_ids=sorted(resource_ids) if resource_ids is not None else None,
            start=low,
            end=high,
        )
        found = await self._slot_resources(rows)
        statuses = set(q.values("status"))
        if statuses:
            found = [s for s in found if s["status"] in statuses]
        return self._bundle(found, q, "Slot")

    def _window(self, low: datetime | None, high: datetime | None) -> tuple[datetime, datetime]:
        span = timedelta(days=DEFAULT_SLOT_DAYS)
        if low is None:
            low = (
                high - span if high is not None else datetime.combine(self.services.reconciler.today(), time(), self.tz)
            )
        if high is None:
            high = low + span
        if high - low > timedelta(days=MAX_SLOT_DAYS):
            raise FhirBadRequest(
                f"一次最多查询 {MAX_SLOT_DAYS} 天的号源", detail=f"start range longer than {MAX_SLOT_DAYS} days"
            )
        return low, high

    # -- Appointment ---------------------------------------------------------------------------

    async def read_appointment(self, actor: Actor, ident: str) -> dict[str, Any]:
        held = mapping.parse_hold_appointment_id(ident)
        if held is not None:
            return await self._read_hold(actor, ident, *held)
        rows = await repo.appointments(self.services.pool, self.hospital_id, appointment_id=_id_or_404(ident, "预约"))
        if not rows:
            raise NotFound("预约不存在", detail=f"Appointment/{ident} not found")
        await self.audit(actor, "fhir.read", "Appointment", ident, [rows[0]["patient_id"]])
        return mapping.appointment(rows[0], self.catalogue, self.tz)

    async def _read_hold(self, actor: Actor, ident: str, day: date, hold_id: str) -> dict[str, Any]:
        held = await self.services.booking.read_held(day, hold_id)
        if held is None:
            # Booked since: the appointment it became; otherwise the hold is gone (expired or released).
            rows = await repo.appointments(self.services.pool, self.hospital_id, hold_id=hold_id)
            if not rows:
                raise NotFound("号源保留已失效（已超时或已释放）", detail=f"Appointment/{ident}: hold gone")
            await self.audit(actor, "fhir.read", "Appointment", str(rows[0]["id"]), [rows[0]["patient_id"]])
            return mapping.appointment(rows[0], self.catalogue, self.tz)
        await self.audit(actor, "fhir.read", "Appointment", ident, [held.patient_id])
        return await self.pending(held)

    async def pending(self, held: HeldPlace) -> dict[str, Any]:
        """The pending Appointment of a live hold."""
        rows = await repo.slots(self.services.pool, self.hospital_id, slot_id=held.slot_id)
        return mapping.pending_appointment(
            day=held.day,
            hold_id=held.hold_id,
            order_id=held.order_id,
            patient_id=held.patient_id,
            exam_code=held.exam_code,
            slot_id=held.slot_id,
            resource_id=rows[0]["resource_id"] if rows else "",
            starts_at=held.starts_at,
            ends_at=held.ends_at,
            channel=held.channel,
            expires_ms=held.expires_ms,
            catalogue=self.catalogue,
            tz=self.tz,
        )

    async def search_appointments(self, actor: Actor, q: Query) -> dict[str, Any]:
        ident = q.one("_id")
        subject = q.one("patient")
        based_on = q.one("based-on")
        if ident is None and subject is None and based_on is None:
            raise FhirBadRequest(
                "查询预约须提供 patient、based-on 或 _id", detail="Appointment search needs patient, based-on or _id"
            )
        low, high = date_bounds(q.params.get("date", []), self.tz, "date")
        rows = await repo.appointments(
            self.services.pool,
            self.hospital_id,
            appointment_id=parse_int_id(ident, "_id") if ident is not None else None,
            patient_id=parse_int_id(parse_reference(subject, "Patient", "patient"), "patient") if subject else None,
            order_id=(
                parse_int_id(parse_reference(based_on, "ServiceRequest", "based-on"), "based-on") if based_on else None
            ),
            start=low,
            end=high,
        )
        slots = {parse_int_id(parse_reference(v, "Slot", "slot"), "slot") for v in q.values("slot")}
        rows = [r for r in rows if not slots or r["slot_id"] in slots]
        found = [mapping.appointment(r, self.catalogue, self.tz) for r in rows]
        statuses = set(q.values("status"))
        if statuses:
            found = [a for a in found if a["status"] in statuses]
        window, bundle = self._page(found, q, "Appointment")
        shown = {a["id"] for a in window}
        await self.audit(
            actor,
            "fhir.search",
            "Appointment",
            _query_text(q),
            [r["patient_id"] for r in rows if str(r["id"]) in shown],
        )
        return bundle

    # -- Bundles -------------------------------------------------------------------------------

    def _page(
        self, found: Sequence[dict[str, Any]], q: Query, kind: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return page(found, q, base=self.base, path=kind)

    def _bundle(self, found: Sequence[dict[str, Any]], q: Query, kind: str) -> dict[str, Any]:
        return self._page(found, q, kind)[1]


def _id_or_404(ident: str, what: str) -> int:
    if not ident.isdigit() or len(ident) > 18:
        raise NotFound(f"{what}不存在", detail=f"no resource with id {ident!r}")
    return int(ident)


def _query_text(q: Query) -> str:
    return "&".join(f"{k}={v}" for k, vals in sorted(q.params.items()) for v in vals)[:500]
