"""The booking service: book a bundle, cancel, reschedule.

The path of a booking (see docs/architecture.md):
  1. one PostgreSQL read checks the orders and slots of the request;
  2. one Lua grab per day takes every requested place as a hold, all or nothing;
  3. one PostgreSQL call (hy_book) writes appointments, order events and outbox rows, and guards
     capacity itself, so Redis can never oversell what PostgreSQL accepts;
  4. confirm turns the holds into bookings; a failed step 3 releases them.
If the process dies between the steps, the hold expires and the reaper asks PostgreSQL whether to
confirm or release it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import asyncpg
import msgspec
from redis.exceptions import RedisError

from app.booking.availability import refusal
from app.booking.in_doubt import InDoubt
from app.booking.index import pool_field, pool_name
from app.booking.reconcile import Reconciler
from app.booking.slot_store import GrabItem, SlotStore
from app.db import booking_repo
from app.db.group_commit import ContextReads, GroupCommit
from app.errors import (
    AppError,
    DatabaseUnavailable,
    DatabaseUnreachable,
    Forbidden,
    HoldExpired,
    NotFound,
    OrderNotBookable,
    PatientChanged,
    SlotUnavailable,
    ValidationFailed,
)
from app.orders.credit import CreditService
from app.orders.lifecycle import BOOKABLE
from app.planning.rule_service import Override, ProposedExam, RuleContext, RuleService
from app.security.actor import Actor
from realtime.publisher import EventPublisher

logger = logging.getLogger(__name__)

T = TypeVar("T")

CHANNELS = ("clinic", "desk", "self", "ward", "emergency", "checkup")

# Which booking channels each role may book through.
ROLE_CHANNELS: dict[str, frozenset[str]] = {
    "doctor": frozenset({"clinic", "emergency"}),
    "clerk": frozenset({"desk", "checkup", "emergency"}),
    "nurse": frozenset({"ward"}),
    "patient": frozenset({"self"}),
    "sys_admin": frozenset(CHANNELS),
    # The platform itself (moving bookings out of a locked window): never a session's role.
    "system": frozenset(CHANNELS),
}

MAX_BUNDLE = 10
PATIENT_RETRIES = 3
SLOT_DAY_CACHE_SIZE = 200_000

# Chinese explanations of the grab script's reason codes, most telling first.
REASON_MESSAGES: dict[str, str] = {
    "OVERLAP": "与该患者已有的预约时间重叠，请选择其他时段",
    "DUPLICATE_EXAM": "该患者当天已预约同一检查项目",
    "LOCKED": "该时段已被科室锁定（如设备维护或专家限号），请选择其他时段",
    "PAST": "所选时段已经结束，请选择其他时段",
    "CLOSED": "所选时段已停诊，请选择其他时段",
    "NO_SLOT": "所选号源不存在或尚未开放",
    "QUOTA": "该时段剩余号源为其他预约渠道预留，请选择其他时段",
    "FULL": "所选时段已约满，请选择其他时段",
}


class BookItem(msgspec.Struct, frozen=True):
    order_id: int
    slot_id: int


class BookedAppointment(msgspec.Struct, frozen=True):
    appointment_id: int
    order_id: int
    slot_id: int
    exam_code: str
    resource_id: str
    starts_at: datetime
    ends_at: datetime
    pool: str


class HeldPlace(msgspec.Struct, frozen=True):
    """A place taken as a hold by `BookingService.hold`, waiting for `book_hold` (or its expiry)."""

    hold_id: str
    day: date
    patient_id: int
    order_id: int
    slot_id: int
    exam_code: str
    channel: str
    pool: str  # "open" or the channel whose reserved quota it took
    starts_at: int  # epoch s
    ends_at: int
    expires_ms: int


class _Checked(msgspec.Struct, frozen=True):
    item: BookItem
    exam_code: str
    day: date
    proposed: ProposedExam


def _reason_error(reasons: Sequence[str], slot_ids: Sequence[int]) -> SlotUnavailable:
    failing = [r for r in reasons if r != "OK"]
    top = next(code for code in REASON_MESSAGES if code in failing)
    return SlotUnavailable(
        REASON_MESSAGES[top],
        detail=f"grab refused: {top}",
        reason=top,
        slots=[{"slot_id": s, "reason": r} for s, r in zip(slot_ids, reasons, strict=True)],
    )


async def _until_patient_settles(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run a booking step; when another booking of the same patient committed after its rule
    check (PatientChanged), check and try again, a few times."""
    for n in range(PATIENT_RETRIES):
        try:
            return await attempt()
        except PatientChanged:
            if n == PATIENT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _check_shape(items: Sequence[BookItem]) -> None:
    if not items:
        raise ValidationFailed("请至少选择一项检查", detail="items must not be empty")
    if len(items) > MAX_BUNDLE:
        raise ValidationFailed(f"一次最多预约 {MAX_BUNDLE} 项检查", detail=f"at most {MAX_BUNDLE} items")
    if len({i.order_id for i in items}) != len(items) or len({i.slot_id for i in items}) != len(items):
        raise ValidationFailed("同一检查申请或同一号源不能重复出现", detail="order ids and slot ids must be distinct")


def check_channel(actor: Actor, channel: str) -> None:
    if channel not in CHANNELS:
        raise ValidationFailed(f"预约渠道无效：{channel}", detail=f"channel must be one of {CHANNELS}")
    if not any(channel in ROLE_CHANNELS.get(role, ()) for role in actor.roles):
        raise Forbidden(
            f"当前账号不能通过“{channel}”渠道预约", detail=f"roles {sorted(actor.roles)} may not book via {channel}"
        )


def check_patient_access(actor: Actor, patient_id: int) -> None:
    """A patient acts only for himself; staff roles are checked by the route table."""
    if "patient" in actor.roles and actor.patient_id != patient_id:
        raise Forbidden("只能查看或预约本人的检查", detail="patient account acting for another patient")


class BookingService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: SlotStore,
        reconciler: Reconciler,
        publisher: EventPublisher,
        *,
        hospital_id: str,
        hold_ttl_s: int,
        commit_margin_s: int,
        self_change_cutoff_s: float = 7200.0,
        settle_in_doubt: bool = True,
        rules: RuleService,
        credit: CreditService | None = None,
        group_commit: GroupCommit | None = None,
        context_reads: ContextReads | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.group_commit = group_commit or GroupCommit(pool)
        self.context_reads = context_reads or ContextReads(pool)
        self.credit = credit
        self.rules = rules
        self.store = store
        self.reconciler = reconciler
        self.publisher = publisher
        self.hospital_id = hospital_id
        self.hold_ttl_s = hold_ttl_s
        self.commit_margin_s = commit_margin_s
        self.self_change_cutoff_s = self_change_cutoff_s
        self.clock = clock
        self._slot_day: dict[int, date] = {}
        self.in_doubt = InDoubt(pool, store, reconciler, publisher, enabled=settle_in_doubt)

    async def book(
        self,
        actor: Actor,
        patient_id: int,
        channel: str,
        items: Sequence[BookItem],
        reason: str = "",
        overrides: Sequence[Override] = (),
    ) -> list[BookedAppointment]:
        """Book every item (an order into a slot) for the patient, all or nothing, if the medical
        rules allow it (or every broken rule is a warning overridden with a reason)."""
        check_channel(actor, channel)
        check_patient_access(actor, patient_id)
        _check_shape(items)
        if self.credit is not None:
            await self.credit.check(patient_id, channel)
        return await _until_patient_settles(
            lambda: self._book_once(actor, patient_id, channel, items, reason, overrides)
        )

    async def _book_once(
        self,
        actor: Actor,
        patient_id: int,
        channel: str,
        items: Sequence[BookItem],
        reason: str,
        overrides: Sequence[Override],
    ) -> list[BookedAppointment]:
        now = self.clock()
        await self._gate(channel, [i.slot_id for i in items], now)
        checked, context = await self._check_items(patient_id, items)
        outcome = await self.rules.check(actor, patient_id, [c.proposed for c in checked], overrides, context=context)
        expires_ms, deadline = self._hold_window(now)
        base = uuid.uuid4().hex
        by_day: dict[date, list[_Checked]] = defaultdict(list)
        for c in checked:
            by_day[c.day].append(c)

        holds: list[tuple[date, str, list[_Checked]]] = []
        pools: dict[int, str] = {}
        try:
            for n, (day, group) in enumerate(sorted(by_day.items())):
                hold_id = f"{base}-{n}"
                grab_items = [GrabItem(c.item.slot_id, c.exam_code, c.item.order_id) for c in group]
                result = await self.store.grab(
                    day, hold_id, patient_id, channel, grab_items, int(now * 1000), expires_ms
                )
                if not result.ok:
                    raise _reason_error(result.reasons, [c.item.slot_id for c in group])
                holds.append((day, hold_id, group))
                for c, field in zip(group, result.pools, strict=True):
                    pools[c.item.slot_id] = field
        except AppError:
            await self._release_all(patient_id, holds)
            raise

        hold_of = {c.item.slot_id: hold_id for _, hold_id, group in holds for c in group}
        payload = [
            {
                "order_id": c.item.order_id,
                "slot_id": c.item.slot_id,
                "pool": pool_name(pools[c.item.slot_id]),
                "hold_id": hold_of[c.item.slot_id],
            }
            for c in checked
        ]
        try:
            rows = await self.group_commit.book(
                hold_id=base,
                patient_id=patient_id,
                channel=channel,
                items=payload,
                deadline=deadline,
                actor=actor,
                reason=reason,
                version=outcome.version,
                overrides=outcome.overrides,
            )
        except DatabaseUnreachable:
            # No connection could be had: nothing reached PostgreSQL, so the places go back now
            # rather than in a minute, by the reaper.
            await self._release_all(patient_id, holds)
            raise
        except DatabaseUnavailable as exc:
            # The commit may or may not have happened: settled as soon as the backend that ran it
            # is gone (app/booking/in_doubt.py), else by the reaper once the holds expire.
            self.in_doubt.watch(exc.backend, [(day, hold_id) for day, hold_id, _ in holds], expires_ms)
            raise
        except AppError:
            await self._release_all(patient_id, holds)
            raise

        confirms = [(day, hold_id) for day, hold_id, _ in holds]
        await self._settle(confirms, patient_id, "booked", [(c.day, c.item.slot_id) for c in checked])
        return [
            BookedAppointment(
                appointment_id=r["appointment_id"],
                order_id=r["order_id"],
                slot_id=r["slot_id"],
                exam_code=r["exam_code"],
                resource_id=r["resource_id"],
                starts_at=r["starts_at"],
                ends_at=r["ends_at"],
                pool=pool_name(pools[r["slot_id"]]),
            )
            for r in rows
        ]

    def self_change_until(self, starts_at: datetime) -> datetime:
        """Until when a patient may cancel or move an exam starting at `starts_at` himself."""
        return starts_at - timedelta(seconds=self.self_change_cutoff_s)

    def _check_self_window(self, channel: str, appt: asyncpg.Record) -> None:
        """On the self-service channel, changes stop `self_change_cutoff_s` before the exam."""
        if channel != "self":
            return
        if self.self_change_until(appt["starts_at"]).timestamp() < time.time():
            hours = self.self_change_cutoff_s / 3600
            raise ValidationFailed(
                f"距检查开始已不足{hours:g}小时，不能自助取消或改约，请联系预约中心",
                detail="inside the self-service change window",
            )

    async def cancel(self, actor: Actor, appointment_id: int, channel: str, reason: str) -> int:
        """Cancel a live appointment; its place returns to the pool it came from. Returns the slot id."""
        check_channel(actor, channel)
        appt = await self._appointment_for(actor, appointment_id)
        self._check_self_window(channel, appt)
        row = await booking_repo.cancel(
            self.pool,
            appointment_id=appointment_id,
            patient_id=appt["patient_id"],
            channel=channel,
            actor=actor,
            reason=reason,
        )
        await self._return_place(row["day"], row["slot_id"], appt["patient_id"], row["pool"])
        await self._publish("cancelled", [(row["day"], row["slot_id"])])
        return int(row["slot_id"])

    async def reschedule(
        self,
        actor: Actor,
        appointment_id: int,
        new_slot_id: int,
        channel: str,
        reason: str,
        overrides: Sequence[Override] = (),
    ) -> BookedAppointment:
        """Move a live appointment to another slot: take the new place first, then give back the old."""
        check_channel(actor, channel)
        return await _until_patient_settles(
            lambda: self._reschedule_once(actor, appointment_id, new_slot_id, channel, reason, overrides)
        )

    async def _reschedule_once(
        self,
        actor: Actor,
        appointment_id: int,
        new_slot_id: int,
        channel: str,
        reason: str,
        overrides: Sequence[Override],
    ) -> BookedAppointment:
        appt = await self._appointment_for(actor, appointment_id)
        if appt["status"] != "booked":
            raise OrderNotBookable("该预约已取消或已改约，无法改约", detail=f"appointment status {appt['status']}")
        self._check_self_window(channel, appt)
        if self.credit is not None:
            await self.credit.check(int(appt["patient_id"]), channel)
        if appt["slot_id"] == new_slot_id:
            raise ValidationFailed("新时段与原时段相同", detail="new slot equals the current slot")
        patient_id = int(appt["patient_id"])
        slots = await booking_repo.slots_by_id(self.pool, [new_slot_id])
        if not slots:
            raise NotFound("所选号源不存在", detail=f"slot {new_slot_id} not found")
        slot = slots[0]
        new_day: date = slot["day"]
        if slot["resource_id"] not in self.rules.catalogue().capable.get(appt["exam_code"], frozenset()):
            raise ValidationFailed(
                "所选号源的设备/诊室不能做该检查", detail=f"slot {new_slot_id} cannot do {appt['exam_code']}"
            )
        proposed = ProposedExam(
            int(appt["order_id"]),
            appt["exam_code"],
            new_slot_id,
            int(slot["starts_at"].timestamp()),
            int(slot["ends_at"].timestamp()),
            slot["resource_id"],
        )
        outcome = await self.rules.check(actor, patient_id, [proposed], overrides, exclude_appointment=appointment_id)
        now = self.clock()
        expires_ms, deadline = self._hold_window(now)
        hold_id = uuid.uuid4().hex
        replacing = int(appt["slot_id"]) if appt["day"] == new_day else None
        result = await self.store.grab(
            new_day,
            hold_id,
            patient_id,
            channel,
            [GrabItem(new_slot_id, appt["exam_code"], appt["order_id"])],
            int(now * 1000),
            expires_ms,
            replacing_slot_id=replacing,
        )
        if not result.ok:
            raise _reason_error(result.reasons, [new_slot_id])
        try:
            row = await booking_repo.reschedule(
                self.pool,
                appointment_id=appointment_id,
                patient_id=patient_id,
                new_slot_id=new_slot_id,
                pool=pool_name(result.pools[0]),
                hold_id=hold_id,
                deadline=deadline,
                channel=channel,
                actor=actor,
                reason=reason,
                version=outcome.version,
                overrides=outcome.overrides,
            )
        except DatabaseUnreachable:  # nothing reached PostgreSQL: the new place goes back now
            await self._release_all(patient_id, [(new_day, hold_id, [])], slot_ids={hold_id: [new_slot_id]})
            raise
        except DatabaseUnavailable as exc:
            # It may have committed: settled once the backend that ran it is gone (in_doubt.py),
            # giving the old place back if it did; else by the reaper at expiry.
            old = (appt["day"], int(appt["slot_id"]), str(appt["pool"]))
            self.in_doubt.watch(
                exc.backend,
                [(new_day, hold_id)],
                expires_ms,
                then=lambda: self._return_place(old[0], old[1], patient_id, old[2]),
            )
            raise
        except AppError:
            await self._release_all(patient_id, [(new_day, hold_id, [])], slot_ids={hold_id: [new_slot_id]})
            raise
        await self._confirm(new_day, hold_id, patient_id)
        await self._return_place(row["old_day"], row["old_slot_id"], patient_id, row["old_pool"])
        await self._publish("rescheduled", [(new_day, new_slot_id), (row["old_day"], row["old_slot_id"])])
        return BookedAppointment(
            appointment_id=row["appointment_id"],
            order_id=appt["order_id"],
            slot_id=row["slot_id"],
            exam_code=appt["exam_code"],
            resource_id=row["resource_id"],
            starts_at=row["starts_at"],
            ends_at=row["ends_at"],
            pool=pool_name(result.pools[0]),
        )

    # -- hold, then book (the FHIR $hold / $book operations) -----------------------------------

    async def hold(
        self, actor: Actor, patient_id: int, channel: str, item: BookItem, ttl_s: int | None = None
    ) -> HeldPlace:
        """Take one place as a hold through the same grab as `book`, after the same checks (channel,
        patient, credit, the Redis gate, order and slot, the medical rules), and leave it held for
        `ttl_s` seconds (the service's hold TTL by default). `book_hold` commits it; otherwise it
        expires and the reaper, finding no booking behind it in PostgreSQL, releases it."""
        check_channel(actor, channel)
        check_patient_access(actor, patient_id)
        _check_shape([item])
        ttl = self.hold_ttl_s if ttl_s is None else ttl_s
        if ttl <= self.commit_margin_s:
            raise ValidationFailed("号源保留时间过短", detail=f"hold ttl {ttl}s not above the commit margin")
        if self.credit is not None:
            await self.credit.check(patient_id, channel)
        now = self.clock()
        await self._gate(channel, [item.slot_id], now)
        (checked,), context = await self._check_items(patient_id, [item])
        await self.rules.check(actor, patient_id, [checked.proposed], context=context)
        hold_id = uuid.uuid4().hex
        expires_ms = int((now + ttl) * 1000)
        result = await self.store.grab(
            checked.day,
            hold_id,
            patient_id,
            channel,
            [GrabItem(item.slot_id, checked.exam_code, item.order_id)],
            int(now * 1000),
            expires_ms,
        )
        if not result.ok:
            raise _reason_error(result.reasons, [item.slot_id])
        await self._publish("held", [(checked.day, item.slot_id)])
        return HeldPlace(
            hold_id=hold_id,
            day=checked.day,
            patient_id=patient_id,
            order_id=item.order_id,
            slot_id=item.slot_id,
            exam_code=checked.exam_code,
            channel=channel,
            pool=pool_name(result.pools[0]),
            starts_at=checked.proposed.starts_at,
            ends_at=checked.proposed.ends_at,
            expires_ms=expires_ms,
        )

    async def read_held(self, day: date, hold_id: str) -> HeldPlace | None:
        """A live single-place hold as Redis records it, or None (expired, released or confirmed)."""
        record = await self.store.read_hold(day, hold_id)
        if record is None or len(record.items) != 1:
            return None
        slot_id, field = record.items[0]
        entry = (await self.store.patient_entries(day, record.patient_id)).get(slot_id, "")
        parts = entry.split("|")
        # "start|end|exam|hold_id|state|order_id" (grab.lua)
        if len(parts) < 6 or parts[3] != hold_id or parts[4] != "h":
            return None
        return HeldPlace(
            hold_id=hold_id,
            day=day,
            patient_id=record.patient_id,
            order_id=int(parts[5]),
            slot_id=slot_id,
            exam_code=parts[2],
            channel=record.channel,
            pool=pool_name(field),
            starts_at=int(parts[0]),
            ends_at=int(parts[1]),
            expires_ms=record.expires_ms,
        )

    async def book_hold(self, actor: Actor, day: date, hold_id: str, reason: str = "") -> BookedAppointment:
        """Commit a hold taken by `hold`: the rules checked again, then `hy_book` under the hold's
        own id and deadline (its expiry less the commit margin), then confirm. A hold already
        committed is refused (never booked twice); a refused commit releases the hold unless
        PostgreSQL holds a booking under it (a concurrent `book_hold` of the same hold won)."""
        held = await self.read_held(day, hold_id)
        if held is None:
            if await booking_repo.hold_committed(self.pool, hold_id):
                raise OrderNotBookable("该号源保留已确认为预约，请勿重复提交", detail=f"hold {hold_id} already booked")
            raise HoldExpired(detail=f"hold {hold_id} not found")
        check_channel(actor, held.channel)
        check_patient_access(actor, held.patient_id)
        deadline_s = held.expires_ms / 1000 - self.commit_margin_s
        if self.clock() >= deadline_s:
            # Past its commit deadline PostgreSQL would refuse it anyway; the reaper frees it.
            raise HoldExpired(detail=f"hold {hold_id} past its commit deadline")
        item = BookItem(held.order_id, held.slot_id)
        payload = [{"order_id": held.order_id, "slot_id": held.slot_id, "pool": held.pool, "hold_id": hold_id}]
        deadline = datetime.fromtimestamp(deadline_s, UTC)

        async def attempt() -> list[asyncpg.Record]:
            (checked,), context = await self._check_items(held.patient_id, [item])
            outcome = await self.rules.check(actor, held.patient_id, [checked.proposed], context=context)
            return await self.group_commit.book(
                hold_id=hold_id,
                patient_id=held.patient_id,
                channel=held.channel,
                items=payload,
                deadline=deadline,
                actor=actor,
                reason=reason,
                version=outcome.version,
                overrides=outcome.overrides,
            )

        try:
            rows = await _until_patient_settles(attempt)
        except DatabaseUnavailable:
            raise  # the commit may have happened: the reaper decides once PostgreSQL answers
        except AppError:
            if not await booking_repo.hold_committed(self.pool, hold_id):
                await self._release_all(held.patient_id, [(day, hold_id, [])], slot_ids={hold_id: [held.slot_id]})
            raise
        await self._settle([(day, hold_id)], held.patient_id, "booked", [(day, held.slot_id)])
        r = rows[0]
        return BookedAppointment(
            appointment_id=r["appointment_id"],
            order_id=r["order_id"],
            slot_id=r["slot_id"],
            exam_code=r["exam_code"],
            resource_id=r["resource_id"],
            starts_at=r["starts_at"],
            ends_at=r["ends_at"],
            pool=held.pool,
        )

    # -- helpers -----------------------------------------------------------------------------

    def _hold_window(self, now: float) -> tuple[int, datetime]:
        """When a hold taken now expires (epoch ms), and the last moment PostgreSQL may commit its
        booking: `commit_margin_s` earlier, so the reaper never frees a hold whose commit is on its way."""
        expires = now + self.hold_ttl_s
        return int(expires * 1000), datetime.fromtimestamp(expires - self.commit_margin_s, UTC)

    async def _slot_days(self, slot_ids: Sequence[int]) -> dict[int, date]:
        """The day of each slot. A slot's day never changes, so it is remembered in memory and a
        storm on a few slots asks PostgreSQL once per slot, not once per attempt."""
        missing = [s for s in slot_ids if s not in self._slot_day]
        if missing:
            if len(self._slot_day) > SLOT_DAY_CACHE_SIZE:
                self._slot_day.clear()
            for row in await booking_repo.slots_by_id(self.pool, missing):
                self._slot_day[int(row["id"])] = row["day"]
        return {s: self._slot_day[s] for s in slot_ids if s in self._slot_day}

    async def _gate(self, channel: str, slot_ids: Sequence[int], now: float) -> None:
        """Refuse from Redis alone when a slot plainly cannot be had (full, locked, closed): in a
        release storm most attempts end here without touching PostgreSQL."""
        days = await self._slot_days(slot_ids)
        unknown = [s for s in slot_ids if s not in days]
        if unknown:
            raise NotFound("所选号源不存在", detail=f"slot {unknown[0]} not found")
        by_day: dict[date, list[int]] = defaultdict(list)
        for s in slot_ids:
            by_day[days[s]].append(s)
        for day, ids in by_day.items():
            views = await self.store.read_slots_by_id(day, ids)
            reasons = [refusal(v, channel, now) or "OK" for v in views]
            if any(r != "OK" for r in reasons):
                raise _reason_error(reasons, ids)

    async def _check_items(self, patient_id: int, items: Sequence[BookItem]) -> tuple[list[_Checked], RuleContext]:
        """The requested orders and slots checked, and the patient's rule context, read together."""
        rows, (version, facts, appointments) = await self.context_reads.read(
            patient_id,
            [i.order_id for i in items],
            [i.slot_id for i in items],
            await self.rules.window(),
        )
        checked = []
        for item, row in zip(items, rows, strict=True):
            if row["patient_id"] is None:
                raise NotFound("检查申请不存在", detail=f"order {item.order_id} not found")
            if row["patient_id"] != patient_id:
                raise ValidationFailed(
                    "检查申请不属于该患者", detail=f"order {item.order_id} belongs to another patient"
                )
            if row["status"] not in BOOKABLE:
                raise OrderNotBookable(detail=f"order {item.order_id} is {row['status']}")
            if row["day"] is None:
                raise NotFound("所选号源不存在", detail=f"slot {item.slot_id} not found")
            if not row["capable"]:
                raise ValidationFailed(
                    "所选号源的设备/诊室不能做该检查", detail=f"slot {item.slot_id} cannot do {row['exam_code']}"
                )
            proposed = ProposedExam(
                item.order_id, row["exam_code"], item.slot_id, int(row["s"]), int(row["e"]), row["resource_id"]
            )
            checked.append(_Checked(item, row["exam_code"], row["day"], proposed))
        return checked, self.rules.context_of(version, facts, appointments)

    async def _appointment_for(self, actor: Actor, appointment_id: int) -> asyncpg.Record:
        appt = await booking_repo.appointment_by_id(self.pool, appointment_id)
        if appt is None:
            raise NotFound("预约不存在", detail=f"appointment {appointment_id} not found")
        check_patient_access(actor, int(appt["patient_id"]))
        return appt

    async def _confirm(self, day: date, hold_id: str, patient_id: int) -> None:
        try:
            confirmed = await self.store.confirm(day, hold_id, patient_id)
        except AppError:
            # Committed in PostgreSQL; the reaper will confirm the hold once Redis answers again.
            logger.warning("confirm of hold %s deferred to the reaper", hold_id)
            return
        if not confirmed:
            # The hold was reaped or the day rebuilt while PostgreSQL committed: rebuild the day
            # from PostgreSQL, which now holds the booking.
            logger.warning("hold %s vanished before confirm; reconciling %s", hold_id, day)
            await self.reconciler.reconcile_day_safely(day)

    async def _settle(
        self, holds: Sequence[tuple[date, str]], patient_id: int, event: str, slots: Sequence[tuple[date, int]]
    ) -> None:
        """After PostgreSQL committed: confirm the holds and tell the live grids, in one Redis round
        trip. A confirm Redis could not take is left to the reaper; a hold already gone (reaped or
        rebuilt away while PostgreSQL committed) has its day rebuilt from PostgreSQL."""
        calls = [self.store.confirm_call(day, hold_id, patient_id) for day, hold_id in holds]
        calls += [c for day, ids in _by_day(slots) if (c := self.publisher.grid_call(day, ids, event)) is not None]
        try:
            results = await self.store.send(calls)
        except (RedisError, OSError) as exc:
            logger.warning("confirm of %d hold(s) deferred to the reaper: %s", len(holds), type(exc).__name__)
            return
        for (day, hold_id), result in zip(holds, results, strict=False):
            if isinstance(result, Exception):
                logger.warning("confirm of hold %s deferred to the reaper: %s", hold_id, type(result).__name__)
            elif int(result) != 1:
                logger.warning("hold %s vanished before confirm; reconciling %s", hold_id, day)
                await self.reconciler.reconcile_day_safely(day)
        for result in results[len(holds) :]:
            if isinstance(result, Exception):
                logger.warning("grid publish failed: %s", type(result).__name__)

    async def _release_all(
        self,
        patient_id: int,
        holds: Sequence[tuple[date, str, Sequence[_Checked]]],
        slot_ids: dict[str, list[int]] | None = None,
    ) -> None:
        released: list[tuple[date, int]] = []
        for day, hold_id, group in holds:
            ids = (slot_ids or {}).get(hold_id) or [c.item.slot_id for c in group]
            try:
                await self.store.release(day, hold_id, patient_id, ids)
            except AppError:
                logger.warning("release of hold %s deferred to the reaper", hold_id)
                continue
            released += [(day, s) for s in ids]
        await self._publish("released", released)

    async def release_place(self, day: date, slot_id: int, patient_id: int, pool: str, event: str) -> None:
        """A place PostgreSQL already gave back (a no-show): return it in Redis and tell the grids."""
        await self._return_place(day, slot_id, patient_id, pool)
        await self._publish(event, [(day, slot_id)])

    async def _return_place(self, day: date, slot_id: int, patient_id: int, pool: str) -> None:
        try:
            returned = await self.store.cancel(day, slot_id, patient_id, pool_field(pool))
        except AppError:
            self.reconciler.mark_dirty(day)
            return
        if not returned:
            await self.reconciler.reconcile_day_safely(day)

    async def _publish(self, event: str, slots: Sequence[tuple[date, int]]) -> None:
        """Tell the live grids the new state of the slots (day, slot id) a change touched."""
        for day, ids in _by_day(slots):
            await self.publisher.slots_changed(day, ids, event)


def _by_day(slots: Sequence[tuple[date, int]]) -> list[tuple[date, list[int]]]:
    """(day, slot id) pairs grouped by day, days in order."""
    by_day: dict[date, list[int]] = {}
    for day, slot_id in slots:
        by_day.setdefault(day, []).append(slot_id)
    return sorted(by_day.items())
