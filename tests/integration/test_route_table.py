"""Every route declares the roles that may call it, and the declaration is what the server enforces."""

from __future__ import annotations

import asyncio
import re

import httpx
import websockets

from app.api.routing import ANY_ROLE, PUBLIC, route_spec
from app.main import build_routes, create_app
from app.services import Services
from tests.helpers import token_for
from tests.live_server import next_frame, open_socket, serve_app

DEMO_USER_OF_ROLE = {
    "doctor": "doctor",
    "nurse": "nurse",
    "clerk": "clerk",
    "technician": "tech",
    "dept_admin": "deptadmin",
    "dept_head": "depthead",
    "sys_admin": "admin",
    "auditor": "auditor",
    "patient": "patient",
    "display": "display",
}


def test_every_route_declares_its_roles() -> None:
    routes = build_routes()
    assert len(routes) > 15
    for route in routes:
        spec = route_spec(route)
        assert spec is not None, f"route {getattr(route, 'path', route)} declares no roles"
        assert spec.roles, spec.path
        assert spec.roles <= ANY_ROLE | {PUBLIC}, spec.path
        assert PUBLIC not in spec.roles or len(spec.roles) == 1, f"{spec.path} mixes public with roles"


def test_public_routes_are_only_the_expected_ones() -> None:
    public = {route_spec(r).path for r in build_routes() if PUBLIC in route_spec(r).roles}  # type: ignore[union-attr]
    assert public == {
        "/",
        "/health",
        "/ready",
        "/ping",
        "/openapi.json",
        "/api/v1/auth/login",
        "/api/v1/self/identify",
        "/api/v1/self/sms-code",
        "/api/v1/self/sms-login",
        "/api/v1/auth/totp",  # step two of a login: it takes the first step's pending token
        # Pages and their local scripts: no data in them; their data calls need a login.
        "/grid",
        "/wall",
        "/clinic",
        "/slips",
        "/ward",
        "/self",
        "/desk",
        "/pool",
        "/console",
        "/callscreen",
        "/static/vendor/plotly.min.js",
        "/static/{name}",
    }


async def test_server_enforces_the_declared_roles_on_every_route(services: Services) -> None:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    tokens = {role: await token_for(services, user) for role, user in DEMO_USER_OF_ROLE.items()}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    checked = 0
    async with httpx.AsyncClient(transport=transport, base_url="http://hy.test") as client:
        # Logout ends the session it is called with: walk it last.
        for route in sorted(build_routes(), key=lambda r: getattr(r, "path", "").endswith("/logout")):
            spec = route_spec(route)
            assert spec is not None
            if PUBLIC in spec.roles or spec.kind == "ws":
                continue  # sockets: test_every_socket_enforces_its_declared_roles
            path = re.sub(r"\{\w+(:\w+)?\}", "1", spec.path)
            for method in spec.methods:
                r = await client.request(method, path, json={})
                assert r.status_code == 401, (method, path, r.status_code)
                for role, token in tokens.items():
                    r = await client.request(method, path, json={}, headers={"authorization": f"Bearer {token}"})
                    if role in spec.roles:
                        assert r.status_code not in (401, 500), (method, path, role, r.status_code, r.text)
                        # A declared role may still be refused for one object (another patient's records),
                        # never by the route table itself.
                        if r.status_code == 403:
                            assert not r.json()["detail"].startswith("route needs"), (method, path, role)
                    else:
                        assert r.status_code == 403, (method, path, role, r.status_code)
                    checked += 1
    assert checked > 100


async def test_every_socket_enforces_its_declared_roles(services: Services) -> None:
    tokens = {role: await token_for(services, user) for role, user in DEMO_USER_OF_ROLE.items()}
    sockets = [spec for spec in (route_spec(r) for r in build_routes()) if spec is not None and spec.kind == "ws"]
    assert {s.path for s in sockets} == {"/ws/grid", "/ws/wall", "/ws/queue"}
    day = services.reconciler.today()
    queries = {"/ws/grid": f"?department=US&day={day}", "/ws/wall": f"?day={day}", "/ws/queue": f"?room=CT1&day={day}"}
    checked = 0
    async with serve_app(services) as base:
        for spec in sockets:
            path = spec.path + queries[spec.path]
            ws = await open_socket(base, path, None)
            await ws.send('{"type":"auth","token":"nope"}')
            assert await _close_code(ws) == 4401, path
            for role, token in tokens.items():
                ws = await open_socket(base, path, token)
                if role == "display":
                    # /ws/grid and /ws/queue declare it (display devices with a grid or queue scope) but
                    # this account has no scope: refused for the object; /ws/wall does not declare it:
                    # refused by the table.
                    assert await _close_code(ws) == 4403, (path, role)
                elif role in spec.roles:
                    frame = await next_frame(ws)
                    assert frame["type"] in ("snapshot", "metrics"), (path, role, frame)
                    await ws.close()
                else:
                    assert await _close_code(ws) == 4403, (path, role)
                checked += 1
    assert checked == len(sockets) * len(tokens)


async def _close_code(ws: websockets.ClientConnection) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except websockets.ConnectionClosed:
        return ws.close_code


async def test_object_level_checks_hold_beyond_the_route_table(services: Services) -> None:
    """Roles the route allows, refused for objects that are not theirs: a patient another patient's
    records, a department admin another department's pools, a technician another department's
    room, a department head another department's statistics, a nurse another ward's patient."""
    from app.demo.data import PATIENTS

    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    tokens = {u: await token_for(services, u) for u in ("patient", "deptadmin", "tech", "depthead", "nurse")}
    me = await services.pool.fetchval("SELECT patient_id FROM staff_user WHERE username = 'patient'")
    other = await services.pool.fetchval("SELECT id FROM patient WHERE mrn = $1", PATIENTS[5].mrn)
    assert me != other
    inpatient = await services.pool.fetchval(
        """SELECT o.patient_id FROM exam_order o JOIN staff_user u ON u.department_id = o.ward_id
            WHERE u.username = 'nurse' AND o.patient_class = 'inpatient' LIMIT 1"""
    )
    assert inpatient is not None and inpatient != other
    us_template = await services.pool.fetchval(
        "SELECT t.id FROM slot_template t JOIN resource r ON r.id = t.resource_id WHERE r.department_id = 'US' LIMIT 1"
    )
    cases = [
        ("patient", "GET", f"/api/v1/patients/{other}/orders", None, 403),
        ("patient", "GET", f"/api/v1/patients/{me}/orders", None, 200),
        ("deptadmin", "GET", "/api/v1/admin/templates?resource_id=US01", None, 403),
        ("deptadmin", "GET", "/api/v1/admin/templates?resource_id=CT1", None, 200),
        ("deptadmin", "PUT", f"/api/v1/admin/templates/{us_template}", {"capacity": 2, "quotas": {}}, 403),
        ("tech", "GET", "/api/v1/queues/US01", None, 403),
        ("tech", "GET", "/api/v1/queues/CT1", None, 200),
        ("depthead", "GET", "/api/v1/stats/export?from=2026-01-01&to=2026-01-31&department=US", None, 403),
        ("nurse", "GET", f"/api/v1/patients/{other}/orders", None, 403),  # not an inpatient of her ward
        ("nurse", "GET", f"/api/v1/patients/{inpatient}/orders", None, 200),
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as client:
        for user, method, path, body, expected in cases:
            r = await client.request(method, path, json=body, headers={"authorization": f"Bearer {tokens[user]}"})
            assert r.status_code == expected, (user, method, path, r.status_code, r.text[:200])
            if expected == 403:
                assert not r.json()["detail"].startswith("route needs"), (user, path)  # the object, not the role
