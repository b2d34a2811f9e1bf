"""Which process runs the background roles: a single `serve` process runs them itself; with
HY_WEB_BACKGROUND=0 (the Procfile's and compose file's web processes) it leaves them to
`python -m app worker`."""

from __future__ import annotations

import asyncio
import gc

import pytest

from app.main import GC_YOUNG_THRESHOLD, create_app
from app.services import Services
from app.settings import load_settings
from tests.conftest import make_settings


def _background_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") == "run_background"]


@pytest.mark.parametrize(("flag", "runs"), [(None, True), ("1", True), ("0", False), ("off", False)])
async def test_the_web_process_runs_the_background_roles_unless_told_not_to(
    services: Services, flag: str | None, runs: bool
) -> None:
    env = {} if flag is None else {"HY_WEB_BACKGROUND": flag}
    settings = make_settings(services.settings.database.url or "", services.settings.redis.url or "", "hyroles", **env)
    assert settings.server.background is runs
    app = create_app(settings, "", "", services=services)
    assert app.state.background is runs
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0)
        assert len(_background_tasks()) == (1 if runs else 0)
    assert _background_tasks() == []


def test_a_bad_switch_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="HY_WEB_BACKGROUND must be 1 or 0"):
        load_settings({"HY_WEB_BACKGROUND": "maybe"})


async def test_a_server_process_settles_its_heap_once_its_services_are_up(services: Services) -> None:
    """The objects made at start-up are frozen out of the collector's scans and young collections
    come every GC_YOUNG_THRESHOLD allocations (app.main.settle_heap): full collections walked them
    all every few seconds under load, stopping the event loop for ~37 ms each time."""
    settings = make_settings(
        services.settings.database.url or "", services.settings.redis.url or "", services.settings.redis.key_prefix
    )
    db, redis = settings.database.url or "", settings.redis.url or ""
    before = gc.get_threshold()
    app = create_app(settings, db, redis, background=False)
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
