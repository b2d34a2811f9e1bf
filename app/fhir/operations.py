"""The IHE ITI Scheduling operations on Appointment: $find, $hold, $book.

- `$find` (ITI-115) proposes, for a patient's pending orders (ServiceRequest), the open slots of the
  live index the caller's channel can take in the window, that the medical rules allow next to the
  patient's other appointments: Appointments with status `proposed`, id `proposed-<order>-<slot>`.
- `$hold` (ITI-116) takes a proposal's place as a hold through the same Lua grab as every booking
  (all the booking path's checks first), for `hold_ttl_s`; it answers a `pending` Appointment whose
  id `hold-<yyyymmdd>-<hold id>` names the hold (its day is the Redis hash tag it lives under).
- `$book` (ITI-117) commits a hold through `hy_book` under the hold's own id and deadline, then
  confirms it (`BookingService.book_hold`); a proposal may also be booked directly, without a hold.
Refusals answer OperationOutcome: slot taken, hold expired, order no longer bookable -> 409
`conflict`; a broken medical rule -> 409 `business-rule` with one issue per rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from app.booking.availability import places_for
from app.booking.service import ROLE_CHANNELS, BookItem, check_channel
from app.errors import NotFound, OrderNotBookable, ValidationFailed
from app.fhir import mapping, repo
from app.fhir.outcome import FhirBadRequest
from app.fhir.resources import Facade
from app.fhir.search import bundle, parse_datetime_range, parse_int_id, parse_reference
from app.orders.lifecycle import BOOKABLE
from app.planning.rule_service import ProposedExam
from app.security.actor import ROLE_ORDER, Actor

# A hold taken by $hold lasts this long (DOMAIN.md: a picked slot is held about 15 min while the
# patient pays; a desk or an EMR completes $book within minutes). Not the booking path's own grab
# TTL (HY_HOLD_TTL_S), which only spans one request.
FHIR_HOLD_TTL_S = 300
DEFAULT_FIND_DAYS = 7
MAX_FIND_DAYS = 31
DEFAULT_FIND_COUNT = 10  # proposals per ServiceRequest
MAX_FIND_COUNT = 100

# The channel a role books through when the request names none.
DEFAULT_CHANNEL = {"sys_admin": "desk", "clerk": "desk", "doctor": "clinic", "nurse": "ward"}

_VALUE_KEYS = (
    "valueReference",
    "valueString",
    "valueId",
    "valueUri",
    "valueCode",
    "valueDateTime",
    "valueDate",
    "valueInstant",
)


class Params:
    """The parts of a FHIR Parameters resource (or of a GET operation's query string)."""

    def __init__(self, parts: Sequence[dict[str, Any]]) -> None:
        self.parts = list(parts)

    @classmethod
    def from_body(cls, body: Any) -> Params:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FhirBadRequest("请求内容须为 FHIR Parameters 资源", detail="body must be a Parameters resource")
        parts = body.get("parameter", [])
        if not isinstance(parts, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) for p in parts
        ):
            raise FhirBadRequest("Parameters.parameter 格式不正确", detail="parameter must be a list of named parts")
        return cls(parts)

    @classmethod
    def from_query(cls, items: Sequence[tuple[str, str]]) -> Params:
        return cls([{"name": k, "valueString": v} for k, v in items])

    def all(self, *names: str) -> list[Any]:
        out = []
        for p in self.parts:
            if p["name"] in names:
                out.append(next((p[k] for k in (*_VALUE_KEYS, "valueInteger", "resource") if k in p), None))
        return out

    def text(self, *names: str) -> str | None:
        vals = self.all(*names)
        if len(vals) > 1:
            raise FhirBadRequest(f"参数 {names[0]} 只能给一个", detail=f"{names[0]} given more than once")
        if not vals:
            return None
        v = vals[0]
        if isinstance(v, dict) and isinstance(v.get("reference"), str):
            return str(v["reference"])
        if isinstance(v, str | int) and not isinstance(v, bool):
            return str(v)
        raise FhirBadRequest(f"参数 {names[0]} 的值不正确", detail=f"{names[0]}: unreadable value")

    def references(self, *names: str) -> list[str]:
        out = []
        for v in self.all(*names):
            if isinstance(v, dict) and isinstance(v.get("reference"), str):
                out.append(str(v["reference"]))
            elif isinstance(v, str):
                out += [x.strip() for x in v.split(",") if x.strip()]
            else:
                raise FhirBadRequest(f"参数 {names[0]} 须为引用", detail=f"{names[0]}: expected a reference")
        return out


def default_channel(actor: Actor) -> str:
    for role in ROLE_ORDER:
        if role in actor.roles and role in DEFAULT_CHANNEL:
            return DEFAULT_CHANNEL[role]
    for role in actor.roles:
        for channel in sorted(ROLE_CHANNELS.get(role, ())):
            return channel
    return "desk"


class Scheduling:
    """$find, $hold and $book over the booking service, for one request."""

    def __init__(self, facade: Facade, hold_ttl_s: int = FHIR_HOLD_TTL_S) -> None:
        self.facade = facade
        self.services = facade.services
        self.hold_ttl_s = hold_ttl_s

    def _channel(self, actor: Actor, params: Params) -> str:
        channel = params.text("channel") or default_channel(actor)
        check_channel(actor, channel)
        return channel

    # -- $find ---------------------------------------------------------------------------------

    async def find(self, actor: Actor, params: Params) -> dict[str, Any]:
        s = self.services
        patient_id, orders = await self._pending_orders(params)
        channel = self._channel(actor, params)
        start, end = self._window(params)
        count = self._count(params)
        schedules = {r.rstrip("/").split("/")[-1] for r in params.references("schedule", "actor", "location")}
        await s.credit.check(patient_id, channel)
        proposals = await self._proposals(patient_id, orders, channel, start, end, count, schedules) if orders else []
        await self.facade.audit(
            actor, "fhir.find", "Appointment", "$find", [patient_id], orders=[int(o["id"]) for o in orders]
        )
        base = self.facade.base
        return bundle(proposals, base=base, self_url=f"{base}/Appointment/$find")

    async def _pending_orders(self, params: Params) -> tuple[int, list[Any]]:
        """The patient and the orders to find places for: the ServiceRequests named (each must be
        bookable), or every bookable order of the patient named."""
        f = self.facade
        refs = params.references("service-request", "serviceRequest", "reason-reference", "based-on")
        patient_ref = params.text("patient")
        patient_id = (
            parse_int_id(parse_reference(patient_ref, "Patient", "patient"), "patient") if patient_ref else None
        )
        if not refs:
            if patient_id is None:
                raise FhirBadRequest(
                    "$find 须提供 patient 或 service-request", detail="$find needs patient or service-request"
                )
            if not await repo.patients(f.services.pool, f.hospital_id, patient_id=patient_id):
                raise NotFound("患者不存在", detail=f"Patient/{patient_id} not found")
            rows = await repo.orders(f.services.pool, f.hospital_id, patient_id=patient_id, states=BOOKABLE)
            return patient_id, list(rows)
        orders = []
        for ref in refs:
            order_id = parse_int_id(parse_reference(ref, "ServiceRequest", "service-request"), "service-request")
            rows = await repo.orders(f.services.pool, f.hospital_id, order_id=order_id)
            if not rows:
                raise NotFound("检查申请不存在", detail=f"ServiceRequest/{order_id} not found")
            order = rows[0]
            if patient_id is not None and order["patient_id"] != patient_id:
                raise ValidationFailed("检查申请不属于该患者", detail=f"ServiceRequest/{order_id} of another patient")
            if order["status"] not in BOOKABLE:
                raise OrderNotBookable(detail=f"ServiceRequest/{order_id} is {order['status']}")
            orders.append(order)
        if len({o["patient_id"] for o in orders}) > 1:
            raise ValidationFailed("一次只能为一位患者查找号源", detail="service requests of several patients")
        return int(orders[0]["patient_id"]), orders

    def _window(self, params: Params) -> tuple[datetime, datetime]:
        tz = self.facade.tz
        now = datetime.now(tz)
        start_text, end_text = params.text("start"), params.text("end")
        start = parse_datetime_range(start_text, tz, "start")[1] if start_text else now
        end = parse_datetime_range(end_text, tz, "end")[2] if end_text else start + timedelta(days=DEFAULT_FIND_DAYS)
        if end <= start:
            raise FhirBadRequest("结束时间须晚于开始时间", detail="end before start")
        if end - start > timedelta(days=MAX_FIND_DAYS):
            raise FhirBadRequest(f"一次最多查找 {MAX_FIND_DAYS} 天", detail=f"window longer than {MAX_FIND_DAYS} days")
        return max(start, now), end

    def _count(self, params: Params) -> int:
        text = params.text("_count", "count")
        if text is None:
            return DEFAULT_FIND_COUNT
        if not text.isdigit() or not 1 <= int(text) <= MAX_FIND_COUNT:
            raise FhirBadRequest(f"_count 须在 1 到 {MAX_FIND_COUNT} 之间", detail="_count out of range")
        return int(text)

    async def _proposals(
        self,
        patient_id: int,
        orders: Sequence[Any],
        channel: str,
        start: datetime,
        end: datetime,
        count: int,
        schedules: set[str],
    ) -> list[dict[str, Any]]:
        s = self.services
        cat = s.catalogue
        tz = self.facade.tz
        horizon_end = datetime.combine(self.facade.horizon()[1] + timedelta(days=1), datetime.min.time(), tz)
        end = min(end, horizon_end)
        if end <= start:
            return []
        wanted = {o["exam_code"]: set(cat.resources_for(o["exam_code"])) for o in orders}
        if schedules:
            wanted = {code: ids & schedules for code, ids in wanted.items()}
        resource_ids = sorted(set().union(*wanted.values())) if wanted else []
        now_s = datetime.now(UTC).timestamp()
        day = start.astimezone(tz).date()
        last = (end - timedelta(microseconds=1)).astimezone(tz).date()
        views = []
        while day <= last and resource_ids:
            views += [
                v
                for v in await s.store.read_slots(day, resource_ids)
                if start.timestamp() <= v.starts_at < end.timestamp()
            ]
            day += timedelta(days=1)
        checker = await s.rules.checker()
        reach = s.rules.reach(checker)
        ctx = await s.rules.context(patient_id, start - reach, end + reach)
        out: list[dict[str, Any]] = []
        for order in orders:
            code = order["exam_code"]
            if code not in cat.exam_types:
                continue
            found = 0
            for v in sorted(views, key=lambda v: (v.starts_at, v.resource_id)):
                if found >= count:
                    break
                if v.resource_id not in wanted[code]:
                    continue
                places, _ = places_for(v, channel, now_s)
                if places <= 0:
                    continue
                if any(e.starts_at < v.ends_at and v.starts_at < e.ends_at for e in ctx.existing):
                    continue  # the patient is elsewhere then
                placed = s.rules.placed(
                    ProposedExam(int(order["id"]), code, v.slot_id, v.starts_at, v.ends_at, v.resource_id)
                )
                if checker.check([*ctx.existing, placed], ctx.facts):
                    continue  # a rule (or a warning nobody overrides here) forbids it
                out.append(
                    mapping.proposed_appointment(
                        order_id=int(order["id"]),
                        patient_id=patient_id,
                        exam_code=code,
                        slot_id=v.slot_id,
                        resource_id=v.resource_id,
                        starts_at=v.starts_at,
                        ends_at=v.ends_at,
                        places=places,
                        catalogue=cat,
                        tz=tz,
                    )
                )
                found += 1
        out.sort(key=lambda a: (a["start"], a["id"]))
        return out

    # -- $hold ---------------------------------------------------------------------------------

    def _appointment_id(self, params: Params) -> str:
        """The Appointment the request names: by `appointment-reference`, or the id (or basedOn and
        slot, for a proposal) of an `appointment-resource`."""
        ref = params.text("appointment-reference")
        if ref is not None:
            return parse_reference(ref, "Appointment", "appointment-reference")
        resources = params.all("appointment-resource", "appointment")
        if len(resources) != 1 or not isinstance(resources[0], dict):
            raise FhirBadRequest(
                "须提供 appointment-reference 或 appointment-resource",
                detail="needs appointment-reference or one appointment-resource",
            )
        appt = resources[0]
        if appt.get("resourceType") != "Appointment":
            raise FhirBadRequest("appointment-resource 须为 Appointment", detail="resource is not an Appointment")
        ident = appt.get("id")
        if isinstance(ident, str) and (mapping.parse_proposed_id(ident) or mapping.parse_hold_appointment_id(ident)):
            return ident
        try:
            order_ref = appt["basedOn"][0]["reference"]
            slot_ref = appt["slot"][0]["reference"]
        except (KeyError, IndexError, TypeError):
            raise FhirBadRequest(
                "Appointment 须带 basedOn（ServiceRequest）和 slot", detail="appointment needs basedOn and slot"
            ) from None
        order_id = parse_int_id(parse_reference(str(order_ref), "ServiceRequest", "basedOn"), "basedOn")
        slot_id = parse_int_id(parse_reference(str(slot_ref), "Slot", "slot"), "slot")
        return mapping.proposed_id(order_id, slot_id)

    async def _order_patient(self, order_id: int) -> int:
        f = self.facade
        rows = await repo.orders(f.services.pool, f.hospital_id, order_id=order_id)
        if not rows:
            raise NotFound("检查申请不存在", detail=f"ServiceRequest/{order_id} not found")
        return int(rows[0]["patient_id"])

    async def hold(self, actor: Actor, params: Params) -> dict[str, Any]:
        ident = self._appointment_id(params)
        proposal = mapping.parse_proposed_id(ident)
        if proposal is None:
            raise FhirBadRequest("只能保留 $find 给出的候选预约", detail=f"Appointment/{ident} is no proposal")
        order_id, slot_id = proposal
        patient_id = await self._order_patient(order_id)
        channel = self._channel(actor, params)
        held = await self.services.booking.hold(
            actor, patient_id, channel, BookItem(order_id, slot_id), ttl_s=self.hold_ttl_s
        )
        await self.facade.audit(actor, "fhir.hold", "Appointment", held.hold_id, [patient_id], slot_id=slot_id)
        pending = await self.facade.pending(held)
        base = self.facade.base
        return bundle([pending], base=base, self_url=f"{base}/Appointment/$hold")

    # -- $book ---------------------------------------------------------------------------------

    async def book(self, actor: Actor, params: Params) -> dict[str, Any]:
        ident = self._appointment_id(params)
        s = self.services
        held = mapping.parse_hold_appointment_id(ident)
        if held is not None:
            booked = await s.booking.book_hold(actor, held[0], held[1])
        else:
            proposal = mapping.parse_proposed_id(ident)
            if proposal is None:
                raise FhirBadRequest(
                    "只能预约 $hold 保留的或 $find 给出的预约",
                    detail=f"Appointment/{ident} is neither hold nor proposal",
                )
            order_id, slot_id = proposal
            patient_id = await self._order_patient(order_id)
            channel = self._channel(actor, params)
            (booked,) = await s.booking.book(actor, patient_id, channel, [BookItem(order_id, slot_id)])
        f = self.facade
        rows = await repo.appointments(s.pool, f.hospital_id, appointment_id=booked.appointment_id)
        appt = mapping.appointment(rows[0], f.catalogue, f.tz)
        await f.audit(actor, "fhir.book", "Appointment", appt["id"], [rows[0]["patient_id"]])
        return bundle([appt], base=f.base, self_url=f"{f.base}/Appointment/$book")
