"""Which process runs the background roles: a single `serve` process runs them itself; with
HY_WEB_BACKGROUND=0 (the Procfile's and compose file's web processes) it leaves them to
`python -m app worker`."""

from __future__ import annotations

import asyncio

import pytest

from app.main import create_app
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
