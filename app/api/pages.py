"""The pages the platform serves itself (no internet on hospital networks: every script, style and
font is local) and their assets. A page holds no data: its data calls and sockets need a login."""

from __future__ import annotations

from importlib import resources, util
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from app.api.routing import PUBLIC, page_route
from app.errors import NotFound

_STATIC = resources.files("dashboards").joinpath("static")
_ASSETS = {
    "huiyue.js": "text/javascript",
    "huiyue.css": "text/css",
    "grid.js": "text/javascript",
    "wall.js": "text/javascript",
    "clinic.js": "text/javascript",
    "slips.js": "text/javascript",
    "ward.js": "text/javascript",
    "self.js": "text/javascript",
    "desk.js": "text/javascript",
    "pool.js": "text/javascript",
}
_PLOTLY_SPEC = util.find_spec("plotly")  # located, not imported: only its bundled plotly.min.js is served
_PLOTLY = Path(_PLOTLY_SPEC.origin or "").parent / "package_data" / "plotly.min.js" if _PLOTLY_SPEC else Path()
_CACHE = {"cache-control": "public, max-age=3600"}


def _html(name: str) -> HTMLResponse:
    return HTMLResponse(_STATIC.joinpath(name).read_text(encoding="utf-8"))


async def grid_page(request: Request) -> Response:
    return _html("grid.html")


async def wall_page(request: Request) -> Response:
    return _html("wall.html")


async def clinic_page(request: Request) -> Response:
    return _html("clinic.html")


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media = _ASSETS.get(name)
    if media is None:
        raise NotFound("文件不存在", detail=f"no asset {name}")
    return Response(_STATIC.joinpath(name).read_bytes(), media_type=media, headers=_CACHE)


async def plotly_js(request: Request) -> Response:
    """plotly.js as shipped inside the plotly package: the wall needs no internet."""
    return FileResponse(_PLOTLY, media_type="text/javascript", headers=_CACHE)


async def slips_page(request: Request) -> Response:
    return _html("slips.html")


async def ward_page(request: Request) -> Response:
    return _html("ward.html")


async def self_page(request: Request) -> Response:
    return _html("self.html")


async def desk_page(request: Request) -> Response:
    return _html("desk.html")


async def pool_page(request: Request) -> Response:
    return _html("pool.html")


async def index(request: Request) -> Response:
    return _html("index.html")


routes = [
    page_route("/", index, roles=PUBLIC, summary="Landing page"),
    page_route("/grid", grid_page, roles=PUBLIC, summary="Live slot grid (page; its data needs a staff login)"),
    page_route("/wall", wall_page, roles=PUBLIC, summary="Utilisation wall (page; its data needs a head's login)"),
    page_route(
        "/clinic", clinic_page, roles=PUBLIC, summary="Clinic workstation page, ?patient_id=&orders= (data: doctors)"
    ),
    page_route("/slips", slips_page, roles=PUBLIC, summary="Printable appointment slips, ?ids= (data: staff)"),
    page_route("/ward", ward_page, roles=PUBLIC, summary="Ward nurse station: batch booking (data: ward nurses)"),
    page_route("/self", self_page, roles=PUBLIC, summary="Self-service booking for kiosks and phones (identity check)"),
    page_route("/desk", desk_page, roles=PUBLIC, summary="Booking centre desk (data: clerks and other staff)"),
    page_route("/pool", pool_page, roles=PUBLIC, summary="Slot-pool administration (data: admins)"),
    page_route("/static/vendor/plotly.min.js", plotly_js, roles=PUBLIC, summary="plotly.js, served locally"),
    page_route("/static/{name}", asset, roles=PUBLIC, summary="The pages' scripts and styles"),
]
