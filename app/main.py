"""The Starlette application: routes, error handlers, and a lifespan that builds the services."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute

from app.api import (
    admin,
    appointments,
    audit,
    auth,
    catalogue,
    clinic,
    closed_loop,
    devices,
    fhir,
    health,
    live,
    pages,
    patients,
    plans,
    rules,
    self_service,
    slips,
    stats,
    ward,
    webhooks,
)
from app.api.openapi import build_openapi
from app.api.problem import app_error_handler, client_gone_handler, http_error_handler, unexpected_error_handler
from app.api.routing import PUBLIC, Call, api_route, json_response, set_display_zone
from app.background import run_background
from app.errors import AppError
from app.security.headers import install as install_security_headers
from app.services import Services
from app.settings import Settings, load_settings

logger = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("huiyue")
    except PackageNotFoundError:
        return "0.0.0"


def build_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    # Starlette tries the routes in order: the booking routes and the probes, the busiest by far,
    # come first (every request otherwise pays a regex match per route ahead of its own).
    modules = [
        appointments,
        health,
        pages,
        auth,
        catalogue,
        patients,
        plans,
        clinic,
        slips,
        rules,
        admin,
        devices,
        live,
        ward,
        self_service,
        closed_loop,
        webhooks,
        fhir,
        audit,
        stats,
    ]
    for module in modules:
        routes += module.routes

    async def openapi(call: Call) -> Response:
        return json_response(call.request.app.state.openapi)

    routes.append(api_route("/openapi.json", openapi, roles=PUBLIC, summary="This API's OpenAPI document", tag="meta"))
    return routes


# Young collections every this many new container objects, instead of CPython's 700: a booking
# allocates a few hundred, so at 700 most of the objects of requests in flight were still alive at a
# collection and were promoted, each promotion bringing the next full collection closer.
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Once the services are up: the objects made so far (modules, routes, the rule catalogue, pools)
    live as long as the process, so the collector is told to stop scanning them (gc.freeze), and
    young collections come less often. Before, a full collection walked them all every few seconds
    under load: 14 in a 45-second benchmark, ~37 ms each with the event loop stopped, which is the
    latency tail (docs/scaling.md, 2026-12-01; load_tests/README.md, "Garbage collection")."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def create_app(
    settings: Settings,
    database_url: str,
    redis_url: str,
    *,
    background: bool | None = None,
    services: Services | None = None,
) -> Starlette:
    """The app for one worker. Pass `services` to share ones the caller already opened (tests).
    `background`: run the background roles in this process too (default: HY_WEB_BACKGROUND)."""
    run_roles = settings.server.background if background is None else background

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own = services is None
        svc = services or await Services.open(settings, database_url, redis_url)
        app.state.services = svc
        if own:  # a server process (tests share their services, and their heap is not ours to freeze)
            settle_heap()
        stop = asyncio.Event()
        task = asyncio.create_task(run_background(svc, stop)) if run_roles else None
        if not run_roles:
            logger.info("background roles off in this process: `python -m app worker` runs them")
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            if own:
                await svc.close()

    set_display_zone(ZoneInfo(settings.booking.timezone))
    routes = build_routes()
    handlers: dict[Any, Any] = {
        AppError: app_error_handler,
        HTTPException: http_error_handler,
        ClientDisconnect: client_gone_handler,
        Exception: unexpected_error_handler,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    install_security_headers(app, settings.web)
    app.state.openapi = build_openapi(routes, _version())
    app.state.background = run_roles
    app.state.demo = settings.server.demo  # the landing page names the demo password (app/api/pages.py)
    return app


def create_app_from_env() -> Starlette:
    """uvicorn factory for multi-worker production runs (DATABASE_URL and REDIS_URL required)."""
    try:
        settings = load_settings()
    except ValueError as exc:
        raise SystemExit(f"configuration: {exc}") from None
    if settings.database.url is None or settings.redis.url is None:
        raise SystemExit("several workers need DATABASE_URL and REDIS_URL (embedded servers are single-process)")
    return create_app(settings, settings.database.url, settings.redis.url)
