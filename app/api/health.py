"""Liveness, readiness and the trivial endpoint that benchmarks measure against."""

from __future__ import annotations

from typing import Any

from app.api.routing import PUBLIC, Call, api_route
from app.errors import AppError, ServiceUnavailable


async def health(call: Call) -> dict[str, Any]:
    return {"status": "ok"}


async def ping(call: Call) -> dict[str, Any]:
    return {"pong": True}


async def ready(call: Call) -> dict[str, Any]:
    """Ready when PostgreSQL and Redis both answer."""
    services = call.services
    checks: dict[str, str] = {}
    try:
        async with services.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except (AppError, OSError, Exception):  # noqa: BLE001 - any failure means not ready
        checks["postgres"] = "unavailable"
    try:
        await services.redis.ping()
        checks["redis"] = "ok"
    except Exception:  # noqa: BLE001
        checks["redis"] = "unavailable"
    if any(v != "ok" for v in checks.values()):
        raise ServiceUnavailable("系统暂未就绪", detail=f"checks: {checks}", checks=checks)
    return {"status": "ready", "checks": checks}


routes = [
    api_route("/health", health, roles=PUBLIC, summary="Liveness", tag="health"),
    api_route("/ready", ready, roles=PUBLIC, summary="Readiness: PostgreSQL and Redis answer", tag="health"),
    api_route("/ping", ping, roles=PUBLIC, summary="Trivial endpoint for benchmark ratios", tag="health"),
]
