"""Abuse limits in Redis (app/security/ratelimit.py): per account, address and device, answered with
429 problem+json and a Retry-After header."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.api.problem import app_error_handler
from app.api.routing import STAFF, Call, api_route
from app.demo.data import DEMO_PASSWORD
from app.errors import AppError
from app.main import create_app
from app.security.ratelimit import Policy, RateLimited, RateLimiter, Rule
from app.services import Services
from tests.helpers import new_patients_with_orders, set_phone, token_for


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hy.test") as c:
        yield c


def limited(r: httpx.Response, policy: str, by: str) -> dict[str, Any]:
    assert r.status_code == 429, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) >= 1
    body: dict[str, Any] = r.json()
    assert body["code"] == "rate_limited" and body["policy"] == policy and body["limit_by"] == by, body
    assert body["retry_after_s"] >= 1 and "频繁" in body["title"]
    return body


async def test_sliding_window_per_dimension(services: Services) -> None:
    now = [1_000_000_000]
    limiter = RateLimiter(
        services.redis,
        services.keys,
        {"t": Policy("t", (Rule("account", 3, 60), Rule("ip", 5, 60)))},
        clock_ms=lambda: now[0],
    )
    for _ in range(3):
        await limiter.hit("t", account="a", ip="1.1.1.1")
    with pytest.raises(RateLimited) as exc:
        await limiter.hit("t", account="a", ip="1.1.1.1")
    assert exc.value.extra["limit_by"] == "account" and exc.value.retry_after_s == 60
    # Another account from the same address: the address has 5, the refused attempt took one of
    # them (each rule counts on its own, see the module docstring).
    await limiter.hit("t", account="b", ip="1.1.1.1")
    with pytest.raises(RateLimited) as exc:
        await limiter.hit("t", account="c", ip="1.1.1.1")  # the address is spent
    assert exc.value.extra["limit_by"] == "ip"
    await limiter.hit("t", account="d", ip="2.2.2.2")
    now[0] += 30_000
    with pytest.raises(RateLimited) as exc:
        await limiter.hit("t", account="a", ip="3.3.3.3")
    assert exc.value.retry_after_s == 30  # sliding: the first attempts leave the window at 60 s
    now[0] += 30_001
    await limiter.hit("t", account="a", ip="3.3.3.3")
    # Keys live under the deployment's prefix, and hold no identifier in clear.
    keys = [k.decode() async for k in services.redis.scan_iter(match=f"{services.keys.prefix}:rl:t:*")]
    assert keys and not any("1.1.1.1" in k or k[-2:] == ":a" for k in keys)


async def test_login_limited_per_account_name(services: Services, client: httpx.AsyncClient) -> None:
    # A name without an account: it locks after five failures as an account would (423, so the
    # answers tell nobody which names exist), and the limit per name counts every attempt anyway.
    statuses = [
        (await client.post("/api/v1/auth/login", json={"username": "nobody", "password": "x"})).status_code
        for _ in range(10)
    ]
    assert statuses == [401] * 4 + [423] * 6
    limited(await client.post("/api/v1/auth/login", json={"username": "nobody", "password": "x"}), "login", "account")
    # Another account from the same address still gets through.
    r = await client.post("/api/v1/auth/login", json={"username": "doctor", "password": DEMO_PASSWORD})
    assert r.status_code == 200


async def test_login_limited_per_device(services: Services, client: httpx.AsyncClient) -> None:
    headers = {"x-device-id": "kiosk-7"}
    for n in range(30):
        r = await client.post("/api/v1/auth/login", json={"username": f"u{n}", "password": "x"}, headers=headers)
        assert r.status_code == 401
    limited(
        await client.post("/api/v1/auth/login", json={"username": "u99", "password": "x"}, headers=headers),
        "login",
        "device",
    )


async def test_sms_code_once_a_minute_per_number(services: Services, client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/self/sms-code", json={"phone": "13600000001"})).status_code == 202
    body = limited(await client.post("/api/v1/self/sms-code", json={"phone": "13600000001"}), "sms_code", "account")
    assert body["retry_after_s"] <= 60
    assert (await client.post("/api/v1/self/sms-code", json={"phone": "13600000002"})).status_code == 202


async def test_sms_code_resend_interval_holds_in_postgresql_too(services: Services, client: httpx.AsyncClient) -> None:
    [(pid, _)] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    await set_phone(services.pool, pid, "13600000003")
    services.sessions.limits.enabled = False  # as if Redis were down: the limits fail open
    assert (await client.post("/api/v1/self/sms-code", json={"phone": "13600000003"})).status_code == 202
    r = await client.post("/api/v1/self/sms-code", json={"phone": "13600000003"})
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert await services.pool.fetchval("SELECT count(*) FROM sms_login_code") == 1


async def test_identity_checks_limited_per_id_number(services: Services, client: httpx.AsyncClient) -> None:
    body = {"id_number": "11010519491231002X", "name": "某某"}
    for _ in range(10):
        r = await client.post("/api/v1/self/identify", json=body)
        assert r.status_code in (401, 422), r.text
    limited(await client.post("/api/v1/self/identify", json=body), "identify", "account")


async def test_booking_policy_counts_per_logged_in_account(services: Services) -> None:
    services.sessions.limits.policies["booking"] = Policy("booking", (Rule("account", 2, 60), Rule("ip", 100, 60)))

    async def book(call: Call) -> dict[str, str]:
        return {"ok": call.staff.username}

    app = Starlette(
        routes=[api_route("/book", book, methods=("POST",), roles=STAFF, summary="t", tag="t", limit="booking")],
        exception_handlers={AppError: app_error_handler},
    )
    app.state.services = services
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    clerk = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
    nurse = {"authorization": f"Bearer {await token_for(services, 'nurse')}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://hy.test") as c:
        assert (await c.post("/book", headers=clerk)).status_code == 200
        assert (await c.post("/book", headers=clerk)).status_code == 200
        limited(await c.post("/book", headers=clerk), "booking", "account")
        assert (await c.post("/book", headers=nurse)).json() == {"ok": "nurse"}
        # Unauthenticated calls are refused before they count.
        assert (await c.post("/book")).status_code == 401
