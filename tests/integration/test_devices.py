"""Display devices: an admin issues a scoped token, a screen uses it on the live grid, and a
revoke closes its open screens at once and refuses it afterwards."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from app.services import Services
from tests.helpers import future_day, token_for
from tests.live_server import next_frame, open_socket, serve_app


async def _close_code(ws: websockets.ClientConnection) -> int | None:
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    return ws.close_code


async def test_a_device_shows_its_grid_only_until_it_is_revoked(services: Services) -> None:
    day = future_day(services)
    async with serve_app(services) as base, httpx.AsyncClient(base_url=base) as c:
        admin = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
        r = await c.post("/api/v1/admin/devices", json={"name": "超声候诊大厅屏", "scopes": ["grid:US"]}, headers=admin)
        assert r.status_code == 201, r.text
        issued = r.json()
        token = issued["token"]
        assert token.startswith("hyd_") and issued["scopes"] == ["grid:US"]
        listed = (await c.get("/api/v1/admin/devices", headers=admin)).json()
        assert [d["id"] for d in listed] == [issued["id"]] and "token" not in listed[0]

        # Only what it was issued for; never the wall.
        ws = await open_socket(base, f"/ws/grid?department=US&day={day}", token)
        assert (await next_frame(ws))["type"] == "snapshot"
        other = await open_socket(base, f"/ws/grid?department=RAD&day={day}", token)
        assert await _close_code(other) == 4403
        wall = await open_socket(base, f"/ws/wall?day={day}", token)
        assert await _close_code(wall) == 4403
        # Nor any HTTP route: a device token is no session.
        assert (await c.get("/api/v1/departments", headers={"authorization": f"Bearer {token}"})).status_code == 401

        r = await c.post(f"/api/v1/admin/devices/{issued['id']}/revoke", headers=admin)
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        assert await _close_code(ws) == 4401  # the open screen closes at once
        again = await open_socket(base, f"/ws/grid?department=US&day={day}", token)
        assert await _close_code(again) == 4401
        r = await c.post(f"/api/v1/admin/devices/{issued['id']}/revoke", headers=admin)
        assert r.status_code == 404 and r.json()["code"] == "not_found"


async def test_bad_device_requests_change_nothing(services: Services) -> None:
    async with serve_app(services) as base, httpx.AsyncClient(base_url=base) as c:
        admin = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
        for body in (
            {"name": "屏", "scopes": ["grid:NOPE"]},
            {"name": "屏", "scopes": ["bogus"]},
            {"name": "屏", "scopes": []},
            {"name": "", "scopes": ["grid:US"]},
        ):
            r = await c.post("/api/v1/admin/devices", json=body, headers=admin)
            assert r.status_code == 422, (body, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        assert (await c.get("/api/v1/admin/devices", headers=admin)).json() == []
        clerk = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
        r = await c.post("/api/v1/admin/devices", json={"name": "屏", "scopes": ["grid:US"]}, headers=clerk)
        assert r.status_code == 403
