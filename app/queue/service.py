"""The day of the exam: check-in by the slip's barcode, the room queues and their actions, emergency
insertion with notices to those it delays.

Order of writes. Check-in commits in PostgreSQL first (the order's transition and the queue entry
with its ticket), then places the entry in the Redis line. Every other action runs the queue
script first (it decides who is next, atomically), then records the result in PostgreSQL (the
entry's state, the action, the order's transition for start / finish / abort). When the second
step fails the room's queue is rebuilt from PostgreSQL, which still holds the state before the
action: the screens and the record never disagree for long, and nothing is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import orjson

from app.db import order_repo
from app.errors import (
    AppError,
    CheckInRefused,
    Forbidden,
    NotFound,
    OrderStateConflict,
    QueueActionRefused,
    ValidationFailed,
)
from app.notify.sweeps import queue_delay_notice
from app.orders import lifecycle
from app.planning.catalogue import Catalogue, Resource
from app.queue import model
from app.queue.store import QueueEntry, QueueResult, QueueStore, queue_topic
from app.security.actor import Actor
from app.security.idcard import mask_name
from app.settings import BookingSettings

logger = logging.getLogger(__name__)

BARCODE_PREFIX = "A"
REBUILD_ROUNDS = 4  # loads of a replacing rebuild before it leaves the room-day to the next sweep
# Actions on one entry: the entry states they start from are checked by the script; those that are
# a step of the closed loop name it.
ORDER_STEPS = {"start": "started", "finish": "done", "abort": "aborted"}
NEW_STATE = {
    "call": "called",
    "recall": "called",
    "pass": "waiting",  # 过号, a queue action  # nosec B105
    "defer": "deferred",
    "resume": "waiting",
    "start": "in_exam",
    "finish": "done",
    "abort": "left",
}
ACTION_NAMES = {
    "call": "叫号",
    "recall": "重呼",
    "pass": "过号",  # a queue action  # nosec B105
    "defer": "暂缓",
    "resume": "恢复排队",
    "start": "开始检查",
    "finish": "完成检查",
    "abort": "中止检查",
    "priority": "调整优先级",
}
ENTRY_STATE_NAMES = {
    "waiting": "候检中",
    "called": "已呼叫",
    "deferred": "暂缓",
    "in_exam": "检查中",
    "done": "已完成",
    "left": "已离开队列",
}
# Who may change the outcome of a check-in (emergency insertion, green channel).
PRIORITY_ROLES = frozenset({"technician", "doctor", "clerk", "dept_admin", "dept_head", "sys_admin"})


def parse_barcode(code: str) -> int:
    """The slip's Code128 (`A` + ten digits of the appointment id) or a bare appointment id."""
    text = code.strip().upper()
    digits = text[1:] if text.startswith(BARCODE_PREFIX) else text
    if not digits.isdigit() or not 0 < len(digits) <= 12 or int(digits) == 0:
        raise ValidationFailed("条码无法识别，请扫描预约单上的条码", detail=f"bad barcode {code!r}")
    return int(digits)


class QueueService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: QueueStore,
        catalogue: Callable[[], Catalogue],
        settings: BookingSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.store = store
        self.catalogue = catalogue
        self.settings = settings
        self.hospital_id = settings.hospital_id
        self.tz = ZoneInfo(settings.timezone)
        self.clock = clock
        self._dirty: set[tuple[str, date]] = set()

    # -- helpers --------------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def today(self) -> date:
        return self.now().astimezone(self.tz).date()

    def room(self, resource_id: str) -> Resource:
        room = self.catalogue().resources.get(resource_id)
        if room is None:
            raise NotFound(f"检查室不存在：{resource_id}", detail=f"resource {resource_id} not found")
        return room

    def check_room_access(self, actor: Actor, room: Resource) -> None:
        """Modality staff act on the rooms of their own department; displays on their scopes."""
        if "display" in actor.roles and not actor.roles - {"display"}:
            if f"queue:{room.id}" not in actor.scopes:
                raise Forbidden("该显示设备无权显示此诊室队列", detail=f"no scope queue:{room.id}")
            return
        if actor.roles & {"sys_admin", "clerk", "nurse", "doctor"}:
            return
        if actor.department_id is not None and actor.department_id != room.department_id:
            raise Forbidden("只能操作本科室检查室的队列", detail=f"{room.id} is not in {actor.department_id}")

    def call_name(self, room: Resource) -> str:
        return model.room_call_name(room.name, room.location)

    def _hm(self, epoch_ms: int) -> str:
        return datetime.fromtimestamp(epoch_ms / 1000, UTC).astimezone(self.tz).strftime("%H:%M")

    # -- reading and rebuilding -----------------------------------------------------------------

    async def _entries(self, resource_id: str, day: date) -> list[QueueEntry]:
        rows = await order_repo.queue_entries(self.pool, resource_id, day)
        return [
            QueueEntry(
                id=str(r["appointment_id"]),
                t=r["ticket"],
                pc=r["priority_class"],
                at=int(r["appt_at"].timestamp()),
                ci=int(r["checked_in_at"].timestamp() * 1000),
                dur=r["duration_min"],
                nm="" if r["sensitive"] else mask_name(r["patient_name"]),
                ex="" if r["sensitive"] else r["exam_name"],
                mk=r["mark"],
                st=r["state"],
                calls=r["calls"],
                passes=r["passes"],
            )
            for r in rows
        ]

    async def load_missing(self, resource_id: str, day: date) -> QueueResult:
        """Load the room-day's queue from PostgreSQL unless Redis has it already (the NOT_LOADED path).
        Two callers may race here with snapshots read at different moments; only the first one loads,
        so an older snapshot never replaces a queue that has since taken a check-in. Each caller then
        re-runs its own op on what is loaded."""
        entries = await self._entries(resource_id, day)
        result = await self.store.load(resource_id, day, self.now_ms(), entries, fill=True)
        logger.info("queue %s %s loaded from PostgreSQL: %d entries", resource_id, day, len(entries))
        return result

    async def rebuild(self, resource_id: str, day: date) -> QueueResult:
        """Replace the room-day's queue in Redis with PostgreSQL's (after a failover, or to undo an
        action PostgreSQL refused). A check-in committed after the read may have been placed in Redis
        before the replacement and wiped by it, so PostgreSQL is read again after each load, and the
        queue loaded again until the two reads agree."""
        entries = await self._entries(resource_id, day)
        for _ in range(REBUILD_ROUNDS):
            result = await self.store.load(resource_id, day, self.now_ms(), entries)
            again = await self._entries(resource_id, day)
            if again == entries:
                self._dirty.discard((resource_id, day))
                logger.info("queue %s %s rebuilt from PostgreSQL: %d entries", resource_id, day, len(entries))
                return result
            entries = again
        self._dirty.add((resource_id, day))  # still changing under us: the sweep tries again
        logger.warning("queue %s %s changed during %d rebuilds; will rebuild again", resource_id, day, REBUILD_ROUNDS)
        return await self.store.load(resource_id, day, self.now_ms(), entries)

    async def mark_loaded_dirty(self, day: date) -> int:
        """Mark for a rebuild every room queue of `day` that Redis has loaded: after a failover the
        server may hold a stale copy. Queues it does not have load themselves on first use."""
        loaded = await self.store.loaded(sorted(self.catalogue().resources), day)
        self._dirty.update((rid, day) for rid in loaded)
        return len(loaded)

    async def rebuild_dirty(self) -> None:
        for resource_id, day in sorted(self._dirty):
            try:
                await self.rebuild(resource_id, day)
            except AppError as exc:
                logger.warning("queue %s %s still not rebuilt: %s", resource_id, day, exc.code)

    async def _run(self, resource_id: str, day: date, op: str, *args: str | int) -> QueueResult:
        result = await self.store.run(resource_id, day, op, self.now_ms(), *args)
        if result.code == "NOT_LOADED":
            await self.load_missing(resource_id, day)
            result = await self.store.run(resource_id, day, op, self.now_ms(), *args)
        return result

    async def state(self, resource_id: str, day: date) -> QueueResult:
        return await self._run(resource_id, day, "state")

    async def view(self, resource_id: str, day: date) -> dict[str, Any]:
        """The queue as screens and consoles show it: masked names, tickets, the spoken line, and
        each waiting patient's expected time."""
        room = self.room(resource_id)
        result = await self.state(resource_id, day)
        return self._view(room, day, result.seq, result.state)

    def _view(self, room: Resource, day: date, seq: int, state: dict[str, Any]) -> dict[str, Any]:
        name = self.call_name(room)
        expected = model.expected_starts(state, self.now_ms())

        def show(e: dict[str, Any]) -> dict[str, Any]:
            out = model.public_entry(e, name)
            out["appointment_id"] = int(e["id"])
            out["state"] = e["st"]
            if str(e["id"]) in expected:
                out["expected_at"] = self._hm(expected[str(e["id"])])
            return out

        return {
            "room": {"id": room.id, "name": room.name, "call_name": name, "location": room.location},
            "day": day.isoformat(),
            "seq": seq,
            "calling": [show(e) for e in state.get("calling", [])],
            "in_exam": [show(e) for e in state.get("in_exam", [])],
            "waiting": [show(e) for e in state.get("waiting", [])],
            "deferred": [show(e) for e in state.get("deferred", [])],
            "done": state.get("done", 0),
        }

    async def snapshot_frame(self, resource_id: str, day: date) -> tuple[int, bytes]:
        """A call screen's snapshot: the room, and the queue in the shape every delta carries it
        (app/booking/lua/queue.lua: entries with ticket `t`, screen name `nm`, mark `mk`, ...)."""
        room = self.room(resource_id)
        result = await self.state(resource_id, day)
        frame = {
            "type": "snapshot",
            "seq": result.seq,
            "topic": queue_topic(resource_id, day),
            "room": {"id": room.id, "name": room.name, "call_name": self.call_name(room), "location": room.location},
            "day": day.isoformat(),
            "state": result.state,
        }
        return result.seq, orjson.dumps(frame)

    # -- check-in -------------------------------------------------------------------------------

    async def check_in(
        self, actor: Actor, appointment_id: int, channel: str, priority: str | None = None, reason: str = ""
    ) -> dict[str, Any]:
        ctx = await order_repo.checkin_context(self.pool, appointment_id)
        if ctx is None:
            raise NotFound("未找到该预约，请核对预约单", detail=f"appointment {appointment_id} not found")
        if "patient" in actor.roles and actor.patient_id != ctx["patient_id"]:
            raise Forbidden("只能为本人签到", detail="patient checking in another patient's appointment")
        if priority is not None and priority != "normal" and not actor.roles & PRIORITY_ROLES:
            raise Forbidden("无权设置急诊或绿色通道优先", detail="priority needs a clinical or booking-centre role")
        self._check_checkin(ctx)
        room = self.room(ctx["resource_id"])
        military = ctx["military"] is True or ctx["military"] == "true"
        pc, mark = model.priority_of(
            order_priority=ctx["priority"],
            patient_class=ctx["patient_class"],
            birth_date=ctx["birth_date"],
            day=ctx["day"],
            military=military,
            elderly_age=self.settings.queue_elderly_age,
            child_age=self.settings.queue_child_age,
            requested=priority,
        )
        row = await order_repo.check_in(
            self.pool,
            appointment_id=appointment_id,
            order_id=ctx["order_id"],
            moves=self._checkin_moves(ctx),
            actor=actor,
            channel=channel,
            resource_id=room.id,
            hospital_id=self.hospital_id,
            day=ctx["day"],
            appt_at=ctx["starts_at"],
            priority_class=pc,
            mark=mark,
            reason=reason,
        )
        entry = QueueEntry(
            id=str(appointment_id),
            t=row["ticket"],
            pc=pc,
            at=int(ctx["starts_at"].timestamp()),
            ci=int(row["checked_in_at"].timestamp() * 1000),
            dur=ctx["duration_min"],
            nm="" if ctx["sensitive"] else mask_name(ctx["patient_name"]),
            ex="" if ctx["sensitive"] else ctx["exam_name"],
            mk=mark,
        )
        view = await self._place(room, ctx["day"], entry, notify=pc <= model.GREEN)
        position = next((i for i, e in enumerate(view["waiting"]) if e["appointment_id"] == appointment_id), None)
        me = view["waiting"][position] if position is not None else None
        return {
            "appointment_id": appointment_id,
            "ticket": model.ticket_text(row["ticket"]),
            "room": view["room"],
            "priority_class": pc,
            "mark": mark,
            "mark_name": model.MARK_NAMES.get(mark, ""),
            "ahead": position,
            "expected_at": me.get("expected_at") if me else None,
            "exam": ctx["exam_name"],
            "message": (
                f"签到成功，您的排队号为 {model.ticket_text(row['ticket'])}，请到{room.location or room.name}候检"
            ),
        }

    def _checkin_moves(self, ctx: asyncpg.Record) -> dict[str, str]:
        moves = dict(lifecycle.TRANSITIONS["checked_in"].moves)
        if ctx["paid_at"] is None and ctx["patient_class"] not in ("inpatient", "emergency"):
            moves.pop("booked")  # must pay first: PostgreSQL refuses it too, under the row lock
        return moves

    def _check_checkin(self, ctx: asyncpg.Record) -> None:
        status = ctx["appointment_status"]
        if ctx["ticket"] is not None:
            raise CheckInRefused(
                f"已签到，排队号 {model.ticket_text(ctx['ticket'])}，请留意叫号",
                detail="already checked in",
                reason="already_checked_in",
            )
        if status != "booked":
            words = {"cancelled": "已取消", "rescheduled": "已改约，请使用新的预约单", "no_show": "已过期（爽约）"}
            raise CheckInRefused(
                f"该预约{words.get(status, '不可用')}，如需检查请到预约中心办理",
                detail=f"appointment is {status}",
                reason="not_live",
            )
        order_status = ctx["order_status"]
        if order_status not in lifecycle.BEFORE_CHECK_IN:
            raise CheckInRefused(
                lifecycle.refusal_message("checked_in", order_status), detail=f"order is {order_status}", reason="state"
            )
        now = self.now()
        today = now.astimezone(self.tz).date()
        starts, ends = ctx["starts_at"], ctx["ends_at"]
        local = starts.astimezone(self.tz)
        if ctx["day"] != today:
            when = f"{local:%m月%d日} {local:%H:%M}"
            raise CheckInRefused(
                f"您的检查预约在 {when}，今天不能签到，请在预约当天签到",
                detail=f"appointment day {ctx['day']} is not {today}",
                reason="wrong_day",
            )
        opens = starts.timestamp() - ctx["checkin_early_min"] * 60
        closes = ends.timestamp() + ctx["noshow_grace_min"] * 60
        if now.timestamp() < opens:
            at = datetime.fromtimestamp(opens, UTC).astimezone(self.tz)
            raise CheckInRefused(
                f"签到时间未到，请于 {at:%H:%M} 后签到（预约时间 {local:%H:%M}）",
                detail="before the check-in window",
                reason="too_early",
            )
        if now.timestamp() > closes:
            at = datetime.fromtimestamp(closes, UTC).astimezone(self.tz)
            raise CheckInRefused(
                f"已超过签到时间（{at:%H:%M}），请到预约中心改约",
                detail="after the check-in window",
                reason="too_late",
            )
        if ctx["paid_at"] is None and ctx["patient_class"] not in ("inpatient", "emergency"):
            raise CheckInRefused(
                "该检查尚未缴费，请先到收费窗口或自助机缴费后再签到",
                detail="order not paid",
                reason="unpaid",
            )

    async def _place(self, room: Resource, day: date, entry: QueueEntry, *, notify: bool) -> dict[str, Any]:
        """Put a checked-in entry into the Redis line (PostgreSQL already holds it)."""
        try:
            before = (await self.state(room.id, day)).state if notify else {}
            result = await self._run(room.id, day, "add", _entry_json(entry))
            if result.code == "EXISTS":  # the load read the entry PostgreSQL had just committed
                result = await self.state(room.id, day)
        except AppError as exc:
            # Checked in and recorded: the line catches up when Redis answers again.
            logger.warning("queue %s %s: placing entry deferred (%s)", room.id, day, exc.code)
            self._dirty.add((room.id, day))
            return self._view(room, day, 0, {})
        if notify and before:
            await self._tell_delayed(room, before, result.state, entry.id)
        return self._view(room, day, result.seq, result.state)

    # -- actions --------------------------------------------------------------------------------

    async def act(
        self,
        actor: Actor,
        resource_id: str,
        action: str,
        appointment_id: int | None = None,
        *,
        places: int = 3,
        reason: str = "",
        day: date | None = None,
    ) -> dict[str, Any]:
        room = self.room(resource_id)
        self.check_room_access(actor, room)
        day = day or self.today()
        if action not in NEW_STATE:
            raise ValidationFailed(f"未知的队列操作：{action}", detail=f"action {action}")
        if action != "call" and appointment_id is None:
            raise ValidationFailed("请指定患者", detail="appointment_id required")
        if action == "abort" and not reason.strip():
            raise ValidationFailed("中止检查须填写原因", detail="reason required")
        op = "leave" if action == "abort" else action
        args: list[str | int] = [str(appointment_id) if appointment_id is not None else ""]
        if action == "pass":
            args.append(places)
        result = await self._run(room.id, day, op, *args)
        self._refused(result, action)
        target = int(result.id)
        step = ORDER_STEPS.get(action)
        try:
            await order_repo.queue_record(
                self.pool,
                appointment_id=target,
                action=action,
                state=NEW_STATE[action],
                actor=actor,
                detail={"resource_id": room.id, "places": places} if action == "pass" else {"resource_id": room.id},
                transition=(step, lifecycle.TRANSITIONS[step].moves, reason) if step else None,
            )
        except AppError as exc:
            # PostgreSQL still holds the state before the action: put Redis back to it.
            await self._restore(room.id, day)
            if isinstance(exc, OrderStateConflict):
                state = str(exc.extra.get("state", ""))
                raise OrderStateConflict(
                    lifecycle.refusal_message(step or action, state), detail=exc.detail, state=state
                ) from exc
            raise
        view = self._view(room, day, result.seq, result.state)
        acted = next(
            (
                e
                for part in ("calling", "in_exam", "waiting", "deferred")
                for e in view[part]
                if e["appointment_id"] == target
            ),
            None,
        )
        return {"action": action, "appointment_id": target, "entry": acted, "queue": view}

    async def set_priority(
        self, actor: Actor, resource_id: str, appointment_id: int, priority: str, reason: str, day: date | None = None
    ) -> dict[str, Any]:
        """Emergency insertion / green channel for someone already in the line: re-placed at once,
        and those it delays by more than the threshold are told."""
        room = self.room(resource_id)
        self.check_room_access(actor, room)
        if priority not in model.REQUESTABLE:
            raise ValidationFailed(
                f"优先级无效：{priority}", detail=f"priority must be one of {list(model.REQUESTABLE)}"
            )
        if not reason.strip():
            raise ValidationFailed("调整优先级须填写原因", detail="reason required")
        day = day or self.today()
        pc = model.REQUESTABLE[priority]
        mark = "" if priority == "normal" else priority
        before = (await self.state(room.id, day)).state
        result = await self._run(room.id, day, "priority", str(appointment_id), pc, mark)
        self._refused(result, "priority")
        try:
            await order_repo.queue_record(
                self.pool,
                appointment_id=appointment_id,
                action="priority",
                state="waiting"
                if any(str(e["id"]) == str(appointment_id) for e in result.state["waiting"])
                else "deferred",
                actor=actor,
                detail={"resource_id": room.id, "priority": priority, "reason": reason},
                priority=(pc, mark),
            )
        except AppError:
            await self._restore(room.id, day)
            raise
        await self._tell_delayed(room, before, result.state, str(appointment_id))
        return {"appointment_id": appointment_id, "queue": self._view(room, day, result.seq, result.state)}

    def _refused(self, result: QueueResult, action: str) -> None:
        if result.code == "OK":
            return
        if result.code == "EMPTY":
            raise QueueActionRefused("当前没有候检患者", detail="queue empty", state="")
        if result.code == "NO_ENTRY":
            raise NotFound("该患者不在此检查室今天的队列中", detail=f"no entry {result.id}")
        state = result.id if result.code == "BAD_STATE" else ""
        raise QueueActionRefused(
            f"患者当前{ENTRY_STATE_NAMES.get(state, '状态')}，不能{ACTION_NAMES.get(action, action)}",
            detail=f"{action} refused: {result.code} {state}",
            state=state,
        )

    async def _restore(self, resource_id: str, day: date) -> None:
        try:
            await self.rebuild(resource_id, day)
        except AppError:
            self._dirty.add((resource_id, day))

    async def leave(self, resource_id: str, day: date, appointment_id: int) -> None:
        """Take an entry out of the line (its appointment went away): best effort, rebuilt later."""
        try:
            await self._run(resource_id, day, "leave", str(appointment_id))
        except AppError:
            self._dirty.add((resource_id, day))

    # -- notices --------------------------------------------------------------------------------

    async def _tell_delayed(
        self, room: Resource, before: dict[str, Any], after: dict[str, Any], inserted: str
    ) -> list[int]:
        now = self.now_ms()
        threshold = self.settings.queue_notify_threshold_min * 60_000
        moved = [
            m
            for m in model.delayed(model.expected_starts(before, now), model.expected_starts(after, now), threshold)
            if m[0] != inserted
        ]
        if not moved:
            return []
        patients = await order_repo.queue_patients(self.pool, [int(m[0]) for m in moved])
        exams = {str(e["id"]): str(e.get("ex") or "检查") for e in after.get("waiting", [])}
        for ident, _, new in moved:
            await queue_delay_notice(
                self.pool,
                patient_id=patients[int(ident)],
                appointment_id=int(ident),
                exam_name=exams.get(ident, "检查"),
                room=room.location or room.name,
                expected_at=datetime.fromtimestamp(new / 1000, UTC),
                tz=self.tz,
                revision=int(after.get("seq", 0)),
            )
        logger.info("queue %s: %d waiting patients told of a delay", room.id, len(moved))
        return [int(m[0]) for m in moved]


def _entry_json(entry: QueueEntry) -> str:
    return msgspec.json.encode(entry).decode()
