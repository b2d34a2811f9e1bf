"""Live screens: the slot grid and the utilisation wall — their WebSockets, and the same data over
plain HTTP for systems that poll. (The pages are in app/api/pages.py.)"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import msgspec
import orjson
from starlette.responses import Response
from starlette.websockets import WebSocket

from app.api.routing import STAFF, Call, api_route, decode_query, ws_route
from app.errors import Forbidden, NotFound, ValidationFailed
from app.security.actor import Actor
from app.services import Services
from realtime.grid import grid_topic
from realtime.hub import Hub
from realtime.live import metrics_topic
from realtime.stream import Snapshot, stream

# Clinicians, booking centre, modality staff, admins — and display devices issued a grid scope
# (slot-availability screens in the halls): there is no personal data on it.
GRID_VIEWERS = STAFF | {"display"}
WALL_VIEWERS = frozenset({"dept_head", "dept_admin", "sys_admin"})
MAX_DAYS_AWAY = 366

Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class GridQuery(msgspec.Struct, forbid_unknown_fields=True):
    department: Code
    day: date


class WallQuery(msgspec.Struct, forbid_unknown_fields=True):
    day: date


def _check_day(services: Services, day: date) -> date:
    today = services.reconciler.today()
    if abs((day - today).days) > MAX_DAYS_AWAY:
        raise ValidationFailed("日期超出可查看范围（前后一年内）", detail=f"day {day} is more than a year away")
    return day


def _check_department(services: Services, department_id: str) -> str:
    if department_id not in services.catalogue.departments:
        raise NotFound(f"科室不存在：{department_id}", detail=f"department {department_id} not found")
    return department_id


def _check_scope(actor: Actor, department_id: str) -> None:
    """A display (a device, or the display account) shows only the grids it was issued for."""
    if not actor.roles & STAFF and f"grid:{department_id}" not in actor.scopes:
        raise Forbidden("该显示设备无权显示此科室号源", detail=f"no scope grid:{department_id}")


# -- WebSockets ---------------------------------------------------------------------------------


async def _serve(ws: WebSocket, actor: Actor, services: Services, topic: str, snapshot: Snapshot) -> None:
    live = services.live
    await live.start()
    hub: Hub = live.hub
    # Subscribe first, read the snapshot second: nothing is lost in between. A revoked device's
    # screens close at once.
    with hub.subscription(topic) as sub, live.devices.watching(actor.device_id, sub):
        await stream(ws, sub, snapshot, max_unacked=services.settings.server.live_queue)


async def grid_socket(ws: WebSocket, actor: Actor, services: Services) -> None:
    q: GridQuery = decode_query(ws, GridQuery)
    dept = _check_department(services, q.department)
    day = _check_day(services, q.day)
    _check_scope(actor, dept)
    await _serve(ws, actor, services, grid_topic(dept, day), lambda: services.live.grid_snapshot(dept, day))


async def wall_socket(ws: WebSocket, actor: Actor, services: Services) -> None:
    q: WallQuery = decode_query(ws, WallQuery)
    day = _check_day(services, q.day)
    await _serve(ws, actor, services, metrics_topic(day), lambda: services.live.metrics.snapshot(day))


# -- HTTP ---------------------------------------------------------------------------------------


async def grid(call: Call) -> Response:
    q: GridQuery = call.query
    s = call.services
    dept = _check_department(s, q.department)
    _check_scope(call.staff, dept)
    _, frame = await s.live.grid_snapshot(dept, _check_day(s, q.day))
    return Response(frame, media_type="application/json")


async def wall(call: Call) -> dict[str, Any]:
    q: WallQuery = call.query
    s = call.services
    _, frame = await s.live.metrics.snapshot(_check_day(s, q.day))
    data: dict[str, Any] = orjson.loads(frame)["data"]
    return data


async def live_stats(call: Call) -> dict[str, Any]:
    """This worker's hub: whether its Redis subscription is live, its screens per topic, and
    how many events it heard, delivered and dropped (slow screens)."""
    live = call.services.live
    hub = live.hub
    return {
        "started": hub.ready.is_set(),
        "topics": {topic: hub.count(topic) for topic in hub.topics()},
        "subscribers": hub.count(),
        "events": hub.events,
        "delivered": hub.delivered,
        "dropped": hub.dropped,
        "metrics_computations": live.metrics.computations,
    }


routes = [
    api_route(
        "/api/v1/live/grid",
        grid,
        roles=GRID_VIEWERS,
        summary="Snapshot of a department-day's slot grid (places left per channel, locks), with its sequence number",
        tag="live",
        query=GridQuery,
    ),
    api_route(
        "/api/v1/live/wall",
        wall,
        roles=WALL_VIEWERS,
        summary="The utilisation wall's figures for one day",
        tag="live",
        query=WallQuery,
    ),
    api_route(
        "/api/v1/admin/live",
        live_stats,
        roles=frozenset({"sys_admin"}),
        summary="This worker's live hub: screens per topic, events heard, delivered and dropped",
        tag="admin",
    ),
    ws_route(
        "/ws/grid",
        grid_socket,
        roles=GRID_VIEWERS,
        summary="Live slot grid: ?department=&day=; a snapshot, then numbered deltas",
    ),
    ws_route("/ws/wall", wall_socket, roles=WALL_VIEWERS, summary="Live utilisation wall: ?day=; a frame per change"),
]
