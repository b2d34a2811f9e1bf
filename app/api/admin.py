"""Slot pool administration: generation, locks, reconcile."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

import msgspec

from app.api.routing import Call, api_route
from app.booking.pools import GenerationReport, LockReport
from app.booking.relocate import Move
from app.booking.service import CHANNELS
from app.db import notify_repo, patient_repo, slot_repo
from app.errors import Forbidden, NotFound, ValidationFailed
from app.security.actor import Actor

POOL_ADMINS = frozenset({"dept_admin", "sys_admin"})
SYS_ADMIN = frozenset({"sys_admin"})


class ReconcileBody(msgspec.Struct, forbid_unknown_fields=True):
    day: date | None = None  # None: the whole horizon


class GenerateBody(msgspec.Struct, forbid_unknown_fields=True):
    start: date | None = None
    days: Annotated[int, msgspec.Meta(ge=1, le=60)] | None = None


class LockBody(msgspec.Struct, forbid_unknown_fields=True):
    resource_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    starts_at: datetime
    ends_at: datetime
    kind: Annotated[str, msgspec.Meta(max_length=32)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    channels: list[Annotated[str, msgspec.Meta(max_length=16)]] | None = None


class OverbookBody(msgspec.Struct, forbid_unknown_fields=True):
    places: Annotated[int, msgspec.Meta(ge=1, le=5)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class TemplatesQuery(msgspec.Struct, forbid_unknown_fields=True):
    resource_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class TemplateBody(msgspec.Struct, forbid_unknown_fields=True):
    capacity: Annotated[int, msgspec.Meta(ge=1, le=100)]  # a window with no place: set active false
    quotas: dict[Annotated[str, msgspec.Meta(max_length=16)], Annotated[int, msgspec.Meta(ge=0, le=100)]]
    active: bool = True


class LockQuery(msgspec.Struct, forbid_unknown_fields=True):
    resource_id: str | None = None


def _check_department(call: Call, actor: Actor, resource_id: str) -> None:
    resource = call.services.catalogue.resources.get(resource_id)
    if resource is None:
        raise NotFound(f"设备/诊室不存在：{resource_id}", detail=f"resource {resource_id} not found")
    if "sys_admin" not in actor.roles and actor.department_id != resource.department_id:
        raise Forbidden("只能管理本科室的号源", detail=f"resource {resource_id} belongs to {resource.department_id}")


async def reconcile(call: Call) -> dict[str, Any]:
    b: ReconcileBody = call.body
    r = call.services.reconciler
    if b.day is not None:
        return {"days": {b.day.isoformat(): await r.reconcile_day(b.day)}}
    done = await r.reconcile_all()
    return {"days": {d.isoformat(): n for d, n in done.items()}}


async def generate(call: Call) -> GenerationReport:
    b: GenerateBody = call.body
    return await call.services.pool_admin.generate(b.start, b.days)


class LockReply(msgspec.Struct):
    lock_id: int
    slots: int
    live_bookings: int
    moves: list[Move]  # the bookings that were in the window: moved, or to be handled by hand


async def create_lock(call: Call) -> LockReply:
    b: LockBody = call.body
    if b.starts_at.tzinfo is None or b.ends_at.tzinfo is None:
        raise ValidationFailed("时间需带时区，例如 2026-12-01T08:00:00+08:00", detail="naive datetime")
    _check_department(call, call.staff, b.resource_id)
    s = call.services
    report = await s.pool_admin.lock(call.staff, b.resource_id, b.starts_at, b.ends_at, b.channels, b.kind, b.reason)
    moves = []
    if report.live_bookings:
        moves = await s.relocator.move_out(
            call.staff, s.catalogue, b.resource_id, b.starts_at, b.ends_at, b.channels, b.reason
        )
    return LockReply(report.lock_id, report.slots, report.live_bookings, moves)


async def overbook(call: Call) -> dict[str, Any]:
    """加号: places beyond the template, by a department admin of the slot's department (or a system
    admin), with a reason; they join the open pool at once."""
    b: OverbookBody = call.body
    s = call.services
    slot_id = call.path_int("slot_id")
    if not b.reason.strip():
        raise ValidationFailed("请填写加号原因", detail="reason must not be blank")
    resource_id = await slot_repo.slot_resource(s.pool, slot_id)
    if resource_id is None:
        raise NotFound("号源不存在", detail=f"slot {slot_id} not found")
    _check_department(call, call.staff, resource_id)
    row = await slot_repo.overbook(s.pool, slot_id, b.places, b.reason.strip(), call.staff.user_id, call.staff.role)
    if row is None:
        raise NotFound("号源不存在", detail=f"slot {slot_id} not found")
    await s.reconciler.reconcile_day_safely(row["day"])
    return {"slot_id": slot_id, "capacity": row["capacity"], "overbooked": row["overbooked"]}


async def list_templates(call: Call) -> list[dict[str, Any]]:
    q: TemplatesQuery = call.query
    _check_department(call, call.staff, q.resource_id)
    rows = await slot_repo.templates_of(call.services.pool, call.services.settings.booking.hospital_id, [q.resource_id])
    return [dict(r.items()) for r in rows]


async def edit_template(call: Call) -> dict[str, Any]:
    """Capacity and per-channel quotas of a weekly template; the slots nobody has booked yet follow
    at once (regeneration of the horizon), booked ones keep theirs."""
    b: TemplateBody = call.body
    s = call.services
    template_id = call.path_int("template_id")
    resource_id = await slot_repo.template_resource(s.pool, template_id)
    if resource_id is None:
        raise NotFound("号源模板不存在", detail=f"template {template_id} not found")
    _check_department(call, call.staff, resource_id)
    unknown = sorted(set(b.quotas) - set(CHANNELS))
    if unknown:
        raise ValidationFailed(f"渠道无效：{'、'.join(unknown)}", detail=f"channels must be among {CHANNELS}")
    if sum(b.quotas.values()) > b.capacity:
        raise ValidationFailed("各渠道预留数之和不能超过容量", detail="sum of quotas exceeds capacity")
    row = await slot_repo.update_template(s.pool, template_id, b.capacity, dict(b.quotas), b.active)
    if row is None:
        raise NotFound("号源模板不存在", detail=f"template {template_id} not found")
    report = await s.pool_admin.generate()
    return {"template": dict(row.items()), "slots_updated": report.updated, "slots_inserted": report.inserted}


async def list_locks(call: Call) -> list[dict[str, Any]]:
    q: LockQuery = call.query
    rows = await slot_repo.list_locks(call.services.pool, call.services.settings.booking.hospital_id, q.resource_id)
    return [dict(r.items()) for r in rows]


async def release_lock(call: Call) -> LockReport:
    lock_id = call.path_int("lock_id")
    row = await slot_repo.lock_by_id(call.services.pool, lock_id)
    if row is None:
        raise NotFound("锁定记录不存在", detail=f"lock {lock_id} not found")
    _check_department(call, call.staff, row["resource_id"])
    return await call.services.pool_admin.unlock(call.staff, lock_id)


async def reload_catalogue(call: Call) -> dict[str, Any]:
    await call.services.reload_catalogue()
    return {"exam_types": len(call.services.catalogue.exam_types), "resources": len(call.services.catalogue.resources)}


class DevNoticesQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    patient_id: Annotated[int, msgspec.Meta(ge=1, le=2**62)] | None = None


async def dev_notices(call: Call) -> list[dict[str, Any]]:
    """What the development sender 'sent' (destinations masked): the demo's stand-in for phones."""
    q: DevNoticesQuery = call.query
    rows = await notify_repo.latest_dev_messages(call.services.pool, q.limit, q.patient_id)
    await patient_repo.audit(
        call.services.pool, call.staff, "read", "notice.dev_log", str(q.patient_id or "*"), q.patient_id
    )
    return [dict(r.items()) for r in rows]


async def notice_backlog(call: Call) -> dict[str, Any]:
    return dict((await notify_repo.backlog(call.services.pool, datetime.now(UTC))).items())


routes = [
    api_route(
        "/api/v1/admin/templates",
        list_templates,
        roles=POOL_ADMINS,
        summary="Weekly slot templates of a resource (capacity, per-channel quotas)",
        tag="admin",
        query=TemplatesQuery,
    ),
    api_route(
        "/api/v1/admin/templates/{template_id:int}",
        edit_template,
        methods=("PUT",),
        roles=POOL_ADMINS,
        summary="Edit a template's capacity and quotas; unbooked slots of the horizon follow, booked ones keep theirs",
        tag="admin",
        body=TemplateBody,
    ),
    api_route(
        "/api/v1/admin/slots/{slot_id:int}/overbook",
        overbook,
        methods=("POST",),
        roles=POOL_ADMINS,
        summary="加号: add places to a slot beyond its template, with a reason (department admins, system admins)",
        tag="admin",
        body=OverbookBody,
    ),
    api_route(
        "/api/v1/admin/reconcile",
        reconcile,
        methods=("POST",),
        roles=SYS_ADMIN,
        summary="Rebuild the Redis index from PostgreSQL (one day or the horizon)",
        tag="admin",
        body=ReconcileBody,
    ),
    api_route(
        "/api/v1/admin/slots/generate",
        generate,
        methods=("POST",),
        roles=SYS_ADMIN,
        summary="Generate slots from templates for the horizon (idempotent)",
        tag="admin",
        body=GenerateBody,
        response=GenerationReport,
    ),
    api_route(
        "/api/v1/admin/locks",
        create_lock,
        methods=("POST",),
        roles=POOL_ADMINS,
        status=201,
        summary="Lock windows of a resource for all or some channels; its bookings move to the nearest slot the "
        "rules allow and the patients are told",
        tag="admin",
        body=LockBody,
        response=LockReply,
    ),
    api_route(
        "/api/v1/admin/locks",
        list_locks,
        roles=POOL_ADMINS | {"dept_head"},
        summary="Active locks",
        tag="admin",
        query=LockQuery,
    ),
    api_route(
        "/api/v1/admin/locks/{lock_id:int}/release",
        release_lock,
        methods=("POST",),
        roles=POOL_ADMINS,
        summary="Release a lock",
        tag="admin",
        response=LockReport,
    ),
    api_route(
        "/api/v1/admin/catalogue/reload",
        reload_catalogue,
        methods=("POST",),
        roles=SYS_ADMIN,
        summary="Reload the exam catalogue from PostgreSQL",
        tag="admin",
    ),
    api_route(
        "/api/v1/admin/notices/dev-log",
        dev_notices,
        roles=SYS_ADMIN,
        summary="Messages the development sender recorded (destinations masked), newest first; audited",
        tag="admin",
        query=DevNoticesQuery,
    ),
    api_route(
        "/api/v1/admin/notices/backlog",
        notice_backlog,
        roles=SYS_ADMIN,
        summary="Patient notices waiting, due, given up; the oldest waiting and the most attempts",
        tag="admin",
    ),
]
