"""Pages served by the platform itself (no internet on hospital networks: nothing external)."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse


def _page(name: str) -> str:
    return resources.files("dashboards").joinpath("static", name).read_text(encoding="utf-8")


async def index(request: Request) -> HTMLResponse:
    return HTMLResponse(_page("index.html"))
