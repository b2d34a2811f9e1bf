"""The closed loop over HTTP: order steps and timelines, check-in, the room queues (and their call
screens' socket), no-show credit."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import msgspec
from starlette.websockets import WebSocket

from app.api.live import _check_day, _serve
from app.api.routing import STAFF, Call, api_route, decode_query, ws_route
from app.db import patient_repo
from app.errors import NotFound, ValidationFailed
from app.orders import lifecycle
from app.orders.credit import CreditRule
from app.queue.service import NEW_STATE, PRIORITY_ROLES, parse_barcode
from app.queue.store import queue_topic
from app.security.actor import Actor
from app.services import Services

Id = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
Reason = Annotated[str, msgspec.Meta(max_length=500)]
RoomId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

READERS = frozenset({"doctor", "nurse", "clerk", "technician", "dept_admin", "dept_head", "sys_admin", "patient"})
CHECKIN_ROLES = frozenset({"clerk", "technician", "nurse", "sys_admin", "patient"})
QUEUE_STAFF = frozenset({"technician", "dept_admin", "sys_admin"})
QUEUE_VIEWERS = STAFF | {"display"}
CREDIT_READERS = frozenset({"clerk", "dept_head", "sys_admin"})
CREDIT_LIFTERS = frozenset({"dept_head", "sys_admin"})
ENTRY_ACTIONS = tuple(a for a in NEW_STATE if a != "call")


def _channel(actor: Actor) -> str:
    if "patient" in actor.roles:
        return "self"
    if "nurse" in actor.roles and not actor.roles & {"clerk", "sys_admin"}:
        return "ward"
    return "desk"


# -- orders --------------------------------------------------------------------------------------


class EventBody(msgspec.Struct, forbid_unknown_fields=True):
    event: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    reason: Reason = ""


async def order_event(call: Call) -> dict[str, Any]:
    b: EventBody = call.body
    return await call.services.orders.apply(
        call.staff, call.path_int("order_id"), b.event, b.reason, _channel(call.staff)
    )


async def order_timeline(call: Call) -> dict[str, Any]:
    order_id = call.path_int("order_id")
    out = await call.services.orders.timeline(call.staff, order_id)
    await patient_repo.audit(call.services.pool, call.staff, "read", "order.timeline", str(order_id), None)
    return out


async def order_states(call: Call) -> dict[str, Any]:
    return {
        "states": [{"code": s, "name": lifecycle.STATE_NAMES[s]} for s in lifecycle.STATES],
        "transitions": [
            {"event": t.event, "name": t.name, "moves": dict(t.moves), "roles": sorted(t.roles)}
            for t in lifecycle.TRANSITIONS.values()
        ],
    }


# -- check-in ------------------------------------------------------------------------------------


class CheckInBody(msgspec.Struct, forbid_unknown_fields=True):
    barcode: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    appointment_id: Id | None = None
    priority: Annotated[str, msgspec.Meta(max_length=16)] | None = None  # emergency / green: authorised roles
    reason: Reason = ""


async def check_in(call: Call) -> dict[str, Any]:
    b: CheckInBody = call.body
    if (b.barcode is None) == (b.appointment_id is None):
        raise ValidationFailed("请扫描预约单条码或输入预约号", detail="give exactly one of barcode, appointment_id")
    appointment_id = b.appointment_id if b.appointment_id is not None else parse_barcode(b.barcode or "")
    if b.priority is not None and b.priority not in ("emergency", "green", "normal"):
        raise ValidationFailed(f"优先级无效：{b.priority}", detail="priority must be emergency, green or normal")
    out = await call.services.queues.check_in(call.staff, appointment_id, _channel(call.staff), b.priority, b.reason)
    await patient_repo.audit(call.services.pool, call.staff, "check_in", "appointment", str(appointment_id), None)
    return out


# -- queues --------------------------------------------------------------------------------------


class QueueQuery(msgspec.Struct, forbid_unknown_fields=True):
    day: date | None = None


class CallBody(msgspec.Struct, forbid_unknown_fields=True):
    appointment_id: Id | None = None  # a particular waiting patient; default: the head of the line


class ActionBody(msgspec.Struct, forbid_unknown_fields=True):
    places: Annotated[int, msgspec.Meta(ge=1, le=50)] = 3  # 过号: how far back
    reason: Reason = ""


class PriorityBody(msgspec.Struct, forbid_unknown_fields=True):
    priority: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


def _day(call: Call) -> date:
    q: QueueQuery = call.query
    return _check_day(call.services, q.day) if q.day else call.services.queues.today()


async def queue_view(call: Call) -> dict[str, Any]:
    queues = call.services.queues
    room = queues.room(call.request.path_params["room"])
    queues.check_room_access(call.staff, room)
    return await queues.view(room.id, _day(call))


async def queue_call(call: Call) -> dict[str, Any]:
    b: CallBody = call.body
    return await call.services.queues.act(
        call.staff, call.request.path_params["room"], "call", b.appointment_id, day=_day(call)
    )


async def queue_action(call: Call) -> dict[str, Any]:
    b: ActionBody = call.body
    action = call.request.path_params["action"]
    if action not in ENTRY_ACTIONS:
        raise NotFound(f"未知的队列操作：{action}", detail=f"action must be one of {list(ENTRY_ACTIONS)}")
    return await call.services.queues.act(
        call.staff,
        call.request.path_params["room"],
        action,
        call.path_int("appointment_id"),
        places=b.places,
        reason=b.reason,
        day=_day(call),
    )


async def queue_priority(call: Call) -> dict[str, Any]:
    b: PriorityBody = call.body
    return await call.services.queues.set_priority(
        call.staff, call.request.path_params["room"], call.path_int("appointment_id"), b.priority, b.reason, _day(call)
    )


class QueueSocketQuery(msgspec.Struct, forbid_unknown_fields=True):
    room: RoomId
    day: date | None = None


async def queue_socket(ws: WebSocket, actor: Actor, services: Services) -> None:
    q: QueueSocketQuery = decode_query(ws, QueueSocketQuery)
    queues = services.queues
    room = queues.room(q.room)
    queues.check_room_access(actor, room)
    day = _check_day(services, q.day) if q.day else queues.today()
    await _serve(ws, actor, services, queue_topic(room.id, day), lambda: queues.snapshot_frame(room.id, day))


# -- credit --------------------------------------------------------------------------------------


class LiftBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=2, max_length=500)]


class CreditRuleBody(msgspec.Struct, forbid_unknown_fields=True):
    no_shows: Annotated[int, msgspec.Meta(ge=1, le=100)]
    window_days: Annotated[int, msgspec.Meta(ge=1, le=3650)]
    suspend_days: Annotated[int, msgspec.Meta(ge=1, le=3650)]
    channels: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=16)]], msgspec.Meta(max_length=8)]


async def _patient_exists(call: Call, patient_id: int) -> None:
    if await patient_repo.patient_by_id(call.services.pool, patient_id) is None:
        raise NotFound("患者不存在", detail=f"patient {patient_id} not found")


async def suspension(call: Call) -> dict[str, Any]:
    patient_id = call.path_int("patient_id")
    await _patient_exists(call, patient_id)
    row = await call.services.credit.suspension(patient_id)
    await patient_repo.audit(call.services.pool, call.staff, "read", "patient.suspension", str(patient_id), patient_id)
    if row is None:
        return {"suspended": False}
    return {
        "suspended": True,
        "channels": list(row["channels"]),
        "until": row["ends_at"],
        "reason": row["reason"],
        "message": call.services.credit.message(row["ends_at"]),
    }


async def lift(call: Call) -> dict[str, Any]:
    b: LiftBody = call.body
    patient_id = call.path_int("patient_id")
    await _patient_exists(call, patient_id)
    lifted = await call.services.orders.lift_suspension(call.staff, patient_id, b.reason)
    await patient_repo.audit(
        call.services.pool, call.staff, "lift", "patient.suspension", str(patient_id), patient_id, {"reason": b.reason}
    )
    return {"lifted": lifted}


async def get_credit_rule(call: Call) -> CreditRule:
    return await call.services.credit.rule()


async def put_credit_rule(call: Call) -> CreditRule:
    b: CreditRuleBody = call.body
    known = {"clinic", "desk", "self", "ward", "emergency", "checkup"}
    if not set(b.channels) <= known - {"ward", "emergency"}:
        raise ValidationFailed(
            "暂停渠道无效（住院和急诊不能被暂停）",
            detail=f"channels must be among {sorted(known - {'ward', 'emergency'})}",
        )
    rule = CreditRule(b.no_shows, b.window_days, b.suspend_days, tuple(sorted(set(b.channels))))
    await call.services.credit.put_rule(rule)
    return rule


async def no_show_sweep(call: Call) -> dict[str, Any]:
    report = await call.services.orders.sweep_no_shows()
    return {"marked": report.marked, "suspended": report.suspended}


routes = [
    api_route(
        "/api/v1/orders/states",
        order_states,
        roles=READERS,
        summary="The closed loop's states and transitions (who may trigger which by the order-events API)",
        tag="orders",
    ),
    api_route(
        "/api/v1/orders/{order_id:int}/events",
        order_event,
        methods=("POST",),
        roles=lifecycle.API_ROLES,
        summary="A step of the closed loop without a path of its own: pay, report_written, verified, published, "
        "viewed, order_cancelled (each with its roles); refused from a state it does not start from",
        tag="orders",
        body=EventBody,
    ),
    api_route(
        "/api/v1/orders/{order_id:int}/timeline",
        order_timeline,
        roles=READERS,
        summary="The whole loop of one order: transitions (who, when, terminal, channel, why), appointments, "
        "queue entries and actions, rule overrides",
        tag="orders",
    ),
    api_route(
        "/api/v1/checkin",
        check_in,
        methods=("POST",),
        roles=CHECKIN_ROLES,
        summary="Check in by the slip's barcode (or appointment id): day, window, payment checked; a ticket in "
        "the room's queue",
        tag="queues",
        body=CheckInBody,
    ),
    api_route(
        "/api/v1/queues/{room}",
        queue_view,
        roles=STAFF,
        summary="A room's queue for a day (default today): calling, in exam, waiting with expected times, deferred",
        tag="queues",
        query=QueueQuery,
    ),
    api_route(
        "/api/v1/queues/{room}/call",
        queue_call,
        methods=("POST",),
        roles=QUEUE_STAFF,
        summary="Call the next patient (or a given waiting one); published to the call screens",
        tag="queues",
        body=CallBody,
        query=QueueQuery,
    ),
    api_route(
        "/api/v1/queues/{room}/entries/{appointment_id:int}/priority",
        queue_priority,
        methods=("POST",),
        roles=PRIORITY_ROLES,
        summary="Emergency insertion / green channel: re-place a waiting patient; patients delayed beyond the "
        "threshold are notified",
        tag="queues",
        body=PriorityBody,
        query=QueueQuery,
    ),
    api_route(
        "/api/v1/queues/{room}/entries/{appointment_id:int}/{action}",
        queue_action,
        methods=("POST",),
        roles=QUEUE_STAFF,
        summary="recall (二次叫号), pass (过号, back `places`), defer (暂缓), resume, start, finish, "
        "abort (with reason)",
        tag="queues",
        body=ActionBody,
        query=QueueQuery,
    ),
    api_route(
        "/api/v1/patients/{patient_id:int}/suspension",
        suspension,
        roles=CREDIT_READERS,
        summary="Whether the patient's self-service booking is suspended for no-shows, until when",
        tag="patients",
    ),
    api_route(
        "/api/v1/patients/{patient_id:int}/suspension/lift",
        lift,
        methods=("POST",),
        roles=CREDIT_LIFTERS,
        summary="Lift a no-show suspension, with the reason (audited)",
        tag="patients",
        body=LiftBody,
    ),
    api_route(
        "/api/v1/admin/credit-rule",
        get_credit_rule,
        roles=frozenset({"sys_admin"}),
        summary="The no-show credit rule",
        tag="admin",
    ),
    api_route(
        "/api/v1/admin/credit-rule",
        put_credit_rule,
        methods=("PUT",),
        roles=frozenset({"sys_admin"}),
        summary="Change the no-show credit rule",
        tag="admin",
        body=CreditRuleBody,
        response=CreditRule,
    ),
    api_route(
        "/api/v1/admin/no-show-sweep",
        no_show_sweep,
        methods=("POST",),
        roles=frozenset({"sys_admin"}),
        summary="Run the no-show sweep now (it also runs in the background every few seconds)",
        tag="admin",
    ),
    ws_route(
        "/ws/queue",
        queue_socket,
        roles=QUEUE_VIEWERS,
        summary="A room's call screen: ?room=&day=; a snapshot, then a whole-queue delta per change",
    ),
]
