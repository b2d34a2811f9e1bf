"""Display devices: an admin issues a token to each screen, scoped to what it may show, and
revokes it (its open sockets close at once)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from app.api.routing import Call, api_route
from app.security.devices import Device, IssuedDevice, check_scopes

DEVICE_ADMINS = frozenset({"sys_admin"})


class IssueBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    scopes: Annotated[list[Annotated[str, msgspec.Meta(min_length=3, max_length=80)]], msgspec.Meta(max_length=50)]


async def issue(call: Call) -> IssuedDevice:
    b: IssueBody = call.body
    s = call.services
    return await s.devices.issue(call.staff, b.name, check_scopes(b.scopes, s.catalogue))


async def list_devices(call: Call) -> list[Device]:
    return await call.services.devices.list()


async def revoke(call: Call) -> Device:
    s = call.services
    device = await s.devices.revoke(call.staff, call.path_int("device_id"))
    await s.publisher.publish("devices", {"event": "revoked", "device_id": device.id})
    return device


routes = [
    api_route(
        "/api/v1/admin/devices",
        issue,
        methods=("POST",),
        roles=DEVICE_ADMINS,
        summary="Issue a display device token (shown once) scoped to grid:<department> / queue:<room>",
        tag="admin",
        body=IssueBody,
        response=IssuedDevice,
        status=201,
    ),
    api_route(
        "/api/v1/admin/devices",
        list_devices,
        roles=DEVICE_ADMINS,
        summary="Display devices (without their tokens)",
        tag="admin",
        response=list[Device],
    ),
    api_route(
        "/api/v1/admin/devices/{device_id:int}/revoke",
        revoke,
        methods=("POST",),
        roles=DEVICE_ADMINS,
        summary="Revoke a display device: its token stops working and its open screens close",
        tag="admin",
        response=Device,
    ),
]
