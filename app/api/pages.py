"""The pages the platform serves itself (no internet on hospital networks: every script, style and
font is local) and their assets. A page holds no data: its data calls and sockets need a login."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources, util
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from app.api.routing import PUBLIC, page_route
from app.demo.data import DEMO_PASSWORD
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
    "callscreen.js": "text/javascript",
    "console.js": "text/javascript",
    "index.js": "text/javascript",
    "index.css": "text/css",
}
_PLOTLY_SPEC = util.find_spec("plotly")  # located, not imported: only its bundled plotly.min.js is served
_PLOTLY = Path(_PLOTLY_SPEC.origin or "").parent / "package_data" / "plotly.min.js" if _PLOTLY_SPEC else Path()
_CACHE = {"cache-control": "public, max-age=3600"}


# path -> (its HTML file, what it is). The pages hold no data: their calls and sockets need a login.
PAGES = {
    "/": ("index.html", "Landing page"),
    "/grid": ("grid.html", "Live slot grid (data: staff)"),
    "/wall": ("wall.html", "Utilisation wall (data: department heads)"),
    "/desk": ("desk.html", "Booking centre desk (data: clerks and other staff)"),
    "/clinic": ("clinic.html", "Clinic workstation page, ?patient_id=&orders= (data: doctors)"),
    "/ward": ("ward.html", "Ward nurse station: batch booking (data: ward nurses)"),
    "/self": ("self.html", "Self-service booking for kiosks and phones (identity check)"),
    "/slips": ("slips.html", "Printable appointment slips, ?ids= (data: staff)"),
    "/pool": ("pool.html", "Slot-pool administration (data: admins)"),
    "/callscreen": ("callscreen.html", "A room's call screen, ?room= (data: display devices with a queue scope)"),
    "/console": ("console.html", "Check-in and the room queue for modality staff, ?room= (data: technicians)"),
}


def _page(name: str) -> Callable[[Request], Awaitable[Response]]:
    html = _STATIC.joinpath(name).read_text(encoding="utf-8")
    # The landing page names the demo accounts' password only on a demo server (`serve` without
    # --no-demo): a hospital's own server has no such accounts, and its page says nothing of them.
    demo_html = html.replace("<!--demo-->", f"（演示账号密码均为 {DEMO_PASSWORD}）")

    async def page(request: Request) -> Response:
        return HTMLResponse(demo_html if getattr(request.app.state, "demo", False) else html)

    page.__name__ = name.removesuffix(".html") + "_page"
    return page


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media = _ASSETS.get(name)
    if media is None:
        raise NotFound("文件不存在", detail=f"no asset {name}")
    return Response(_STATIC.joinpath(name).read_bytes(), media_type=media, headers=_CACHE)


async def plotly_js(request: Request) -> Response:
    """plotly.js as shipped inside the plotly package: the wall needs no internet."""
    return FileResponse(_PLOTLY, media_type="text/javascript", headers=_CACHE)


routes = [
    *(page_route(path, _page(name), roles=PUBLIC, summary=summary) for path, (name, summary) in PAGES.items()),
    page_route("/static/vendor/plotly.min.js", plotly_js, roles=PUBLIC, summary="plotly.js, served locally"),
    page_route("/static/{name}", asset, roles=PUBLIC, summary="The pages' scripts and styles"),
]
