"""The HL7 v2 inbound listener: orders (ORM^O01, OMG^O19) and patients (ADT^A01/A04/A08/A28/A31)
from the HIS, over MLLP. See docs/hl7-inbound.md for the field mapping.

Every message is answered with an ACK: AA (applied), AE (refused for its content, nothing applied)
or AR (not processed: unreadable, unsupported, or the database is away — the sender should resend).
A message's effects, its record and its ACK commit in one PostgreSQL transaction, so a second copy
(same sender and MSH-10) finds the record and gets the same ACK without a second effect; a crash
before the commit leaves nothing behind and the resent copy is applied once. A cancelled
appointment's place goes back to the Redis index after the commit (the booking service's
`release_place`, which also tells the live grids), exactly as a cancel at the desk does.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from app.booking.service import BookingService
from app.db import booking_repo, hl7_repo, order_repo
from app.db.patient_repo import audit
from app.db.pool import Connection, Pool
from app.errors import AppError, ServiceUnavailable
from app.integrations import mllp
from app.integrations.hl7.ack import build_ack, encode_ack
from app.integrations.hl7.parse import CHARSETS, Header, Inbound, OrderIn, PatientIn, Rejection, parse
from app.orders import lifecycle
from app.security.actor import Actor
from app.security.crypto import KeyRing, pii_keys
from app.security.idcard import gender_of

logger = logging.getLogger(__name__)

CHANNEL = "hl7"  # recorded on order events: where the change came from


class Released(msgspec.Struct, frozen=True):
    """An appointment's place PostgreSQL gave back; Redis follows after the commit."""

    day: date
    slot_id: int
    patient_id: int
    pool: str


class Outcome(msgspec.Struct):
    note: str = ""
    patient_id: int | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)
    released: list[Released] = msgspec.field(default_factory=list)


class _Duplicate(Exception):
    """Another copy of the message committed while this one waited for its record."""


def _refused(error_code: int, zh: str, en: str, segment: str = "", field: int = 0) -> Rejection:
    return Rejection("AE", error_code, zh, en, segment=segment, field=field)


class Hl7Inbound:
    """Turns one inbound message into its effects and its ACK (`handle`, an MLLP handler)."""

    def __init__(
        self,
        pool: Pool,
        booking: BookingService,
        *,
        hospital_id: str,
        timezone: str = "Asia/Shanghai",
        application: str = "HUIYUE",
        default_codec: str = "utf-8",
        default_department: str | None = None,
        clock: Callable[[], datetime] | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        self.pool = pool
        # ID numbers and phones are stored encrypted (default: the process environment's key ring).
        self.keys = keys if keys is not None else pii_keys()
        self.booking = booking
        self.hospital_id = hospital_id
        self.tz = ZoneInfo(timezone)
        self.application = application
        self.default_codec = default_codec
        self.default_department = default_department or None
        self.clock = clock or (lambda: datetime.now(self.tz))

    # -- the handler -----------------------------------------------------------------------------

    async def handle(self, message: bytes, peer: str) -> bytes:
        """The ACK for one message. Never raises: a bug answers AR and is logged."""
        try:
            return await self._handle(message, peer)
        except Exception:
            logger.exception("hl7 %s: failed on a message of %d bytes", peer, len(message))
            rejection = Rejection("AR", 207, "系统内部错误，请稍后重发", "internal error, resend later")
            return self._ack_bytes(None, "AR", rejection)

    async def _handle(self, message: bytes, peer: str) -> bytes:
        try:
            inbound = parse(message, self.default_codec)
        except Rejection as rejection:
            return await self._reject(rejection, peer, len(message))
        h = inbound.header
        try:
            stored = await hl7_repo.stored_ack(self.pool, h.sending_facility, h.sending_application, h.control_id)
            applied = None
            if stored is None:
                try:
                    applied = await self._apply(inbound, peer)
                except _Duplicate:
                    stored = await hl7_repo.stored_ack(
                        self.pool, h.sending_facility, h.sending_application, h.control_id
                    )
        except ServiceUnavailable as exc:
            logger.warning("hl7 %s: %s control=%s not processed (%s)", peer, h.message_type, h.control_id, exc.code)
            return self._ack_bytes(
                h, "AR", Rejection("AR", 207, "系统暂时不可用，请稍后重发", f"{exc.code}, resend later")
            )
        if applied is None:
            if stored is None:  # cannot happen: a duplicate's record is committed before we look again
                raise RuntimeError(f"control id {h.control_id!r}: neither applied nor recorded")
            logger.info(
                "hl7 %s: duplicate %s control=%s, ACK %s repeated", peer, h.message_type, h.control_id, stored["status"]
            )
            return encode_ack(stored["ack"], stored["charset"] or h.codec)
        ack, status, outcome = applied
        logger.info("hl7 %s: %s control=%s -> %s %s", peer, h.message_type, h.control_id, status, outcome.detail or "")
        for place in outcome.released:
            try:
                await self.booking.release_place(place.day, place.slot_id, place.patient_id, place.pool, "cancelled")
            except AppError as exc:  # PostgreSQL has it; the reconciler brings Redis back in line
                logger.warning("hl7: place of slot %s not returned to the index (%s)", place.slot_id, exc.code)
        return encode_ack(ack, h.codec)

    async def _reject(self, rejection: Rejection, peer: str, size: int) -> bytes:
        h = rejection.header
        if h is not None and h.charset_label and h.charset_label.upper() not in CHARSETS:
            h = msgspec.structs.replace(h, charset_label="")  # answer in the default, not a name we can't write
        ack = self._ack_text(h, rejection.ack_code, rejection)
        logger.warning(
            "hl7 %s: %s control=%s (%d bytes) rejected %s %s: %s",
            peer,
            h.message_type if h else "?",
            h.control_id if h else "?",
            size,
            rejection.ack_code,
            rejection.error_code,
            rejection.en,
        )
        try:
            await hl7_repo.log_rejected(
                self.pool,
                hospital_id=self.hospital_id,
                facility=h.sending_facility if h else "",
                application=h.sending_application if h else "",
                control_id=h.control_id if h else "",
                message_type=h.message_type if h else "",
                charset=h.codec if h else self.default_codec,
                error_code=str(rejection.error_code),
                error=rejection.text,
                ack=ack,
                peer=peer,
            )
        except AppError as exc:
            logger.warning("hl7 %s: rejection not recorded (%s)", peer, exc.code)
        return encode_ack(ack, h.codec if h else self.default_codec)

    def _ack_text(self, header: Header | None, code: str, rejection: Rejection | None = None, note: str = "") -> str:
        return build_ack(
            header,
            code,
            message_id=f"HY{uuid.uuid4().hex[:18]}",
            application=self.application,
            facility=self.hospital_id,
            now=self.clock(),
            rejection=rejection,
            note=note,
        )

    def _ack_bytes(self, header: Header | None, code: str, rejection: Rejection) -> bytes:
        return encode_ack(self._ack_text(header, code, rejection), header.codec if header else self.default_codec)

    # -- one transaction: record, effects, ACK ---------------------------------------------------

    async def _apply(self, inbound: Inbound, peer: str) -> tuple[str, str, Outcome]:
        h = inbound.header
        actor = Actor(
            user_id=None,
            username="hl7",
            roles=frozenset({"system"}),
            terminal=f"hl7:{h.sending_application}@{h.sending_facility}"[:64],
            ip=peer.rsplit(":", 1)[0],
        )
        async with hl7_repo.transaction(self.pool) as conn:
            record = await hl7_repo.claim(
                conn,
                hospital_id=self.hospital_id,
                facility=h.sending_facility,
                application=h.sending_application,
                control_id=h.control_id,
                message_type=h.message_type,
                charset=h.codec,
                peer=peer,
            )
            if record is None:
                raise _Duplicate
            rejection: Rejection | None = None
            outcome = Outcome()
            try:
                async with hl7_repo.savepoint(conn):
                    outcome = await self._effects(conn, inbound, actor)
            except Rejection as exc:
                rejection = exc
            except ServiceUnavailable:
                raise
            except AppError as exc:  # a state the database refused (e.g. checked in meanwhile)
                rejection = _refused(207, exc.message, exc.detail or exc.code)
            status = "AA" if rejection is None else rejection.ack_code
            ack = self._ack_text(h, status, rejection, outcome.note)
            await hl7_repo.finish(
                conn,
                record,
                status=status,
                ack=ack,
                error_code=str(rejection.error_code) if rejection else None,
                error=rejection.text if rejection else None,
                patient_id=outcome.patient_id,
                detail=outcome.detail,
            )
        if rejection is not None:
            outcome.released = []
        return ack, status, outcome

    async def _effects(self, conn: Connection, inbound: Inbound, actor: Actor) -> Outcome:
        h = inbound.header
        if not inbound.is_order:
            assert inbound.patient is not None  # parse() refuses an ADT message without PID
            patient_id, note = await self._register(conn, inbound.patient, actor, h, update=True)
            return Outcome(note=note, patient_id=patient_id, detail={"event": h.trigger})
        outcome = Outcome(detail={"orders": []})
        for order in inbound.orders:
            if order.control == "NW":
                await self._new_order(conn, inbound, order, actor, outcome)
            elif order.control in ("CA", "DC"):
                await self._cancel_order(conn, inbound, order, actor, outcome)
            else:
                await self._change_order(conn, inbound, order, actor, outcome)
        return outcome

    # -- patients --------------------------------------------------------------------------------

    async def _register(
        self, conn: Connection, p: PatientIn, actor: Actor, h: Header, *, update: bool
    ) -> tuple[int, str]:
        """The patient of the MRN: created when new; with `update`, its personal data set to the
        message's (the fields it carries). Every creation and change is audited."""
        detail: dict[str, Any] = {"event": h.trigger, "control_id": h.control_id}
        if p.id_number_invalid:
            detail["id_number_invalid"] = True
            logger.warning("hl7: control=%s carries an invalid resident ID number (ignored)", h.control_id)
        row = await hl7_repo.patient_by_mrn(conn, self.keys, p.mrn)
        if row is None:
            missing = [f for f, v in (("PID-5", p.name), ("PID-7", p.birth_date)) if not v]
            if missing:
                raise _refused(
                    101,
                    f"新患者缺少必填项：{'、'.join(missing)}",
                    f"a new patient needs {', '.join(missing)}",
                    "PID",
                    5 if "PID-5" in missing else 7,
                )
            assert p.name is not None and p.birth_date is not None
            gender = p.gender or (gender_of(p.id_number) if p.id_number else "U")
            new_id = await hl7_repo.insert_patient(
                conn,
                self.keys,
                hospital_id=self.hospital_id,
                mrn=p.mrn,
                name=p.name,
                gender=gender,
                birth_date=p.birth_date,
                id_number=p.id_number or None,
                phone=p.phone or None,
            )
            if new_id is not None:
                fields = ["name", "gender", "birth_date"] + [f for f in ("id_number", "phone") if getattr(p, f)]
                await audit(
                    conn, actor, "hl7", "patient", str(new_id), new_id, {**detail, "created": True, "fields": fields}
                )
                return new_id, "患者已登记 / patient registered"
            row = await hl7_repo.patient_by_mrn(conn, self.keys, p.mrn)  # registered by a concurrent message
            assert row is not None
        if row["hospital_id"] != self.hospital_id:
            raise _refused(204, "该病历号属于其他医院", "the MRN belongs to another hospital", "PID", 3)
        patient_id = int(row["id"])
        if not update:
            return patient_id, ""
        wanted: dict[str, Any] = {"name": p.name, "gender": p.gender, "birth_date": p.birth_date}
        for f in ("id_number", "phone"):
            value = getattr(p, f)
            if value is not None:
                wanted[f] = value or None  # "" : the sender cleared it
        changes = {f: v for f, v in wanted.items() if (v is not None or f in ("id_number", "phone")) and v != row[f]}
        if not changes:
            return patient_id, "患者信息无变化 / no change"
        await hl7_repo.update_patient(conn, self.keys, patient_id, changes)
        await audit(
            conn,
            actor,
            "hl7",
            "patient",
            str(patient_id),
            patient_id,
            {**detail, "created": False, "fields": sorted(changes)},
        )
        return patient_id, "患者信息已更新 / patient updated"

    # -- orders ----------------------------------------------------------------------------------

    async def _order_row(self, conn: Connection, inbound: Inbound, order: OrderIn) -> Any:
        row = await hl7_repo.order_by_no(conn, order.order_no)
        if row is None or row["hospital_id"] != self.hospital_id:
            raise _refused(
                204, f"检查申请不存在：{order.order_no}", f"unknown placer order number {order.order_no}", "ORC", 2
            )
        if inbound.patient is not None and inbound.patient.mrn != row["mrn"]:
            raise _refused(
                204,
                f"检查申请 {order.order_no} 不属于该患者",
                f"order {order.order_no} belongs to another patient",
                "PID",
                3,
            )
        return row

    async def _exam_code(self, conn: Connection, order: OrderIn) -> str:
        given = [c for c in (order.exam_code, order.exam_code_alt) if c]
        if not given:
            raise _refused(101, "OBR-4缺少检查项目代码", "OBR-4 universal service id missing", "OBR", 4)
        known = await hl7_repo.exam_codes(conn, given)
        for code in given:
            if code in known:
                return code
        raise _refused(
            103, f"检查项目代码不存在：{given[0][:40]}", f"unknown exam code in OBR-4: {given[0][:40]}", "OBR", 4
        )

    async def _new_order(
        self, conn: Connection, inbound: Inbound, order: OrderIn, actor: Actor, outcome: Outcome
    ) -> None:
        if inbound.patient is None:
            raise _refused(100, "新申请缺少PID段", "a new order needs a PID segment", "PID")
        patient_id, _ = await self._register(conn, inbound.patient, actor, inbound.header, update=False)
        exam_code = await self._exam_code(conn, order)
        visit = inbound.visit
        location = visit.location if visit else None
        wanted = [d for d in (order.department, location, self.default_department) if d]
        known = await hl7_repo.departments(conn, self.hospital_id, wanted)
        if order.department:
            if order.department not in known:
                raise _refused(
                    103,
                    f"开单科室不存在：{order.department[:40]}",
                    f"unknown ordering department in ORC-17: {order.department[:40]}",
                    "ORC",
                    17,
                )
            department = order.department
        elif location and location in known:
            department = location
        elif self.default_department and self.default_department in known:
            department = self.default_department
        else:
            raise _refused(101, "缺少开单科室（ORC-17）", "ORC-17 ordering department missing", "ORC", 17)
        ward = location if location and known.get(location) == "ward" else None
        patient_class = (visit.patient_class if visit else None) or "outpatient"
        order_id = await hl7_repo.insert_order(
            conn,
            order_no=order.order_no,
            hospital_id=self.hospital_id,
            patient_id=patient_id,
            exam_code=exam_code,
            department_id=department,
            doctor=order.doctor or "",
            patient_class=patient_class,
            priority=order.priority or "routine",
            ward_id=ward,
            bed_no=visit.bed if visit and ward else None,
            clinical_note=order.clinical_note or "",
        )
        if order_id is None:
            raise _refused(
                205, f"检查申请单号已存在：{order.order_no}", f"placer order number {order.order_no} exists", "ORC", 2
            )
        await hl7_repo.order_event(
            conn,
            order_id=order_id,
            event="ordered",
            from_status=None,
            to_status="ordered",
            actor=actor,
            channel=CHANNEL,
            reason="",
            detail={"control_id": inbound.header.control_id, "exam_code": exam_code},
        )
        outcome.patient_id = patient_id
        outcome.detail["orders"].append({"order_id": order_id, "control": "NW"})
        outcome.note = "检查申请已接收 / order created"

    async def _cancel_order(
        self, conn: Connection, inbound: Inbound, order: OrderIn, actor: Actor, outcome: Outcome
    ) -> None:
        row = await self._order_row(conn, inbound, order)
        order_id, status = int(row["id"]), str(row["status"])
        reason = order.reason or f"HIS撤销申请（HL7 {order.control}）"
        outcome.patient_id = int(row["patient_id"])
        if status == "cancelled":
            outcome.detail["orders"].append({"order_id": order_id, "control": order.control, "already": True})
            outcome.note = "检查申请此前已取消 / order was already cancelled"
            return
        if status in lifecycle.BEFORE_CHECK_IN:
            appointment_id = await hl7_repo.live_appointment(conn, order_id)
            if appointment_id is not None:
                place = await booking_repo.cancel(
                    conn, appointment_id=appointment_id, patient_id=None, channel=CHANNEL, actor=actor, reason=reason
                )
                outcome.released.append(
                    Released(place["day"], int(place["slot_id"]), int(row["patient_id"]), place["pool"])
                )
                status = "ordered"
        if status not in lifecycle.TRANSITIONS["order_cancelled"].moves:
            raise _refused(
                207,
                lifecycle.refusal_message("order_cancelled", status),
                f"order {order.order_no} is {status}: only an order not yet checked in can be cancelled",
                "ORC",
                1,
            )
        await order_repo.transition(
            conn,
            order_id=order_id,
            event="order_cancelled",
            moves=lifecycle.TRANSITIONS["order_cancelled"].moves,
            actor=actor,
            channel=CHANNEL,
            reason=reason,
            detail={"control_id": inbound.header.control_id, "control": order.control},
        )
        outcome.detail["orders"].append({"order_id": order_id, "control": order.control})
        outcome.note = "检查申请已取消 / order cancelled"

    async def _change_order(
        self, conn: Connection, inbound: Inbound, order: OrderIn, actor: Actor, outcome: Outcome
    ) -> None:
        row = await self._order_row(conn, inbound, order)
        order_id, status = int(row["id"]), str(row["status"])
        outcome.patient_id = int(row["patient_id"])
        if status not in lifecycle.BOOKABLE:
            raise _refused(
                207,
                f"检查申请当前为「{lifecycle.STATE_NAMES.get(status, status)}」，不能修改，请先取消预约",
                f"order {order.order_no} is {status}: only an order not yet booked can be changed",
                "ORC",
                1,
            )
        changes: dict[str, Any] = {}
        if order.exam_code or order.exam_code_alt:
            exam_code = await self._exam_code(conn, order)
            if exam_code != row["exam_code"]:
                changes["exam_code"] = exam_code
        if order.priority and order.priority != row["priority"]:
            changes["priority"] = order.priority
        if order.clinical_note is not None and order.clinical_note != row["clinical_note"]:
            changes["clinical_note"] = order.clinical_note
        outcome.detail["orders"].append({"order_id": order_id, "control": "XO", "fields": sorted(changes)})
        if not changes:
            outcome.note = "检查申请无变化 / no change"
            return
        await hl7_repo.update_order(conn, order_id, changes)
        await hl7_repo.order_event(
            conn,
            order_id=order_id,
            event="changed",
            from_status=status,
            to_status=status,
            actor=actor,
            channel=CHANNEL,
            reason=order.reason or "HIS修改申请（HL7 XO）",
            detail={
                "control_id": inbound.header.control_id,
                **{f: [row[f], v] for f, v in changes.items() if f != "clinical_note"},
                "fields": sorted(changes),
            },
        )
        outcome.note = "检查申请已修改 / order changed"


async def run_listener(
    inbound: Hl7Inbound, host: str, port: int, stop: asyncio.Event, *, idle_s: float = 300.0
) -> None:
    """Serve MLLP on host:port until `stop` is set (the `hl7` process role)."""
    server = await mllp.serve(inbound.handle, host, port, idle_s=idle_s)
    logger.info("hl7 inbound listening on %s:%s", host, server.port)
    try:
        await stop.wait()
    finally:
        await server.close()
