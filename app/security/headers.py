"""Security headers, CORS and CSRF, for every response: a pure ASGI middleware (no Starlette
BaseHTTPMiddleware, so streaming answers and WebSockets pass through untouched).

Every HTTP response gets
  - Content-Security-Policy: pages may load scripts, styles, fonts and data only from the platform
    itself (no 'unsafe-inline', no 'unsafe-eval', no inline event handlers; the one exception,
    inline styles on the wall for plotly.js, is INLINE_STYLE_PAGES); images also from data: URLs
    (the pages' empty favicon); frame-ancestors from HY_FRAME_ANCESTORS (the clinic page
    is embedded in the HIS doctor workstation). API answers (/api/, /fhir/, /ws/) get
    `default-src 'none'; frame-ancestors 'none'`: JSON is never a document.
  - X-Frame-Options consistent with frame-ancestors, for old embedded browsers that know only it:
    SAMEORIGIN for 'self', DENY for 'none', and none at all when other origins may frame the
    pages (X-Frame-Options cannot name them; browsers that know CSP follow frame-ancestors).
  - X-Content-Type-Options: nosniff, Referrer-Policy: no-referrer (addresses carry patient ids),
    a Permissions-Policy switching off device APIs the pages never use,
    Cross-Origin-Opener-Policy / Cross-Origin-Resource-Policy: same-origin.
  - Cache-Control: no-store on /api/ and /fhir/ (personal data stays out of browser and proxy
    caches), whatever the route said.
  - Strict-Transport-Security when the request came over TLS (scope scheme https: uvicorn serving
    the certificates of HY_TLS_CERT, or a trusted proxy's X-Forwarded-Proto).
  - Set-Cookie hardened: HttpOnly, Secure over TLS (or whenever TLS is configured), SameSite=Strict
    unless the route chose a SameSite - and Strict always for the hy_session cookie.

CORS is closed by default: no Access-Control-* header ever leaves (a route's own are removed), and
a preflight (OPTIONS with Access-Control-Request-Method) is answered 403 problem+json. With
HY_CORS_ORIGINS set, those exact origins get preflights answered (methods GET, POST, PUT, PATCH,
DELETE; headers Authorization, Content-Type) and Access-Control-Allow-Origin on answers - never
Access-Control-Allow-Credentials: cross-origin callers use bearer tokens, not the session cookie.

CSRF: the pages keep the session token in sessionStorage and send it as a bearer token, which a
browser never attaches by itself, so their calls need no CSRF defence. The API also accepts the
session in the `hy_session` cookie (app/api/routing.py bearer_token), which a browser does attach
to a cross-site form post. So every state-changing request (not GET, HEAD, OPTIONS) authenticated
by that cookie alone - no Authorization header - must come from the platform's own origin: its
Origin header, or without one its Referer, must be the request's own scheme://host:port, and the
browser's Sec-Fetch-Site, when sent, must be same-origin (it alone admits a same-origin form post,
which under Referrer-Policy: no-referrer carries Origin: null and no Referer); otherwise 403
problem+json (code csrf_refused) before any handler runs. A request with none of these headers is
refused too: browsers always send one, and non-browser clients use the bearer header. The same holds for a
WebSocket handshake carrying the cookie from a foreign Origin (cross-site WebSocket hijacking):
refused with 403 before the socket opens. Requests with a bearer header, and requests without the
cookie, are not affected (an attacker's page cannot set an Authorization header cross-origin
without a preflight, which CORS refuses).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problem import problem_response
from app.security.web_settings import WebSecuritySettings

SESSION_COOKIE = "hy_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CORS_HEADERS = frozenset({"authorization", "content-type", "accept", "accept-language", "content-language"})
CORS_MAX_AGE_S = 600
# Answers that may carry personal data: never cached, never a document.
API_PREFIXES = ("/api/", "/fhir/", "/ws/")
NO_STORE_PREFIXES = ("/api/", "/fhir/")
PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "camera",
        "display-capture",
        "geolocation",
        "gyroscope",
        "hid",
        "magnetometer",
        "microphone",
        "payment",
        "serial",
        "usb",
    )
)
# plotly.js (the wall's charts) adds its stylesheet as <style> elements at run time (and the
# maplibre styles of its bundle), which style-src 'self' blocks: its layered SVGs would no longer
# overlap. On those pages only, style-src also allows inline styles; script-src stays 'self' (no
# page ever runs an inline script), and the wall shows aggregated figures, no patient.
INLINE_STYLE_PAGES = ("/wall",)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def page_policy(frame_ancestors: tuple[str, ...], *, style_src: str = "'self'") -> str:
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            f"style-src {style_src}",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            f"frame-ancestors {' '.join(frame_ancestors)}",
        )
    )


API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL, default ports filled in; None if not one."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _own_origin(scope: Scope, headers: Headers) -> tuple[str, str, int] | None:
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    host = headers.get("host", "")
    if not host and scope.get("server"):
        server_host, server_port = scope["server"]
        host = f"{server_host}:{server_port}"
    return _origin_key(f"{scheme}://{host}") if host else None


def cookie_authenticated(headers: Headers) -> bool:
    """The session comes from the hy_session cookie: no bearer header, the cookie present."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return False
    cookie = headers.get("cookie")
    return bool(cookie and cookie_parser(cookie).get(SESSION_COOKIE))


def same_origin(scope: Scope, headers: Headers) -> bool:
    """The request comes from a page of the platform's own origin: its Origin header (or, when that
    is missing or "null", its Referer) is the request's own scheme://host:port. A browser's
    Sec-Fetch-Site, when sent, must say same-origin; it alone vouches for a request whose Origin is
    "null" and that has no Referer (a same-origin form post under Referrer-Policy: no-referrer)."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site != "same-origin":
        return False
    origin = headers.get("origin")
    claimed = origin if origin and origin != "null" else headers.get("referer")
    if not claimed:
        return fetch_site == "same-origin"
    own, source = _own_origin(scope, headers), _origin_key(claimed)
    return own is not None and source == own


def _harden_cookie(value: str, secure: bool) -> str:
    """HttpOnly always; Secure over TLS; SameSite=Strict unless the route chose one - and always
    Strict for the session cookie (Starlette's set_cookie says Lax by default)."""
    name, _, rest = value.partition(";")
    parts = [part.strip() for part in rest.split(";") if part.strip()]
    if name.split("=", 1)[0].strip() == SESSION_COOKIE:
        parts = [part for part in parts if part.split("=", 1)[0].strip().lower() != "samesite"]
    attributes = {part.split("=", 1)[0].strip().lower() for part in parts}
    if "httponly" not in attributes:
        parts.append("HttpOnly")
    if "samesite" not in attributes:
        parts.append("SameSite=Strict")
    if secure and "secure" not in attributes:
        parts.append("Secure")
    return "; ".join([name.strip(), *parts])


class SecurityHeadersMiddleware:
    """Wrap the whole app (see install below): headers on every answer, CORS, CSRF."""

    def __init__(
        self, app: ASGIApp, web: WebSecuritySettings, *, page_policies: Mapping[str, str] | None = None
    ) -> None:
        self.app = app
        self.web = web
        ancestors = web.frame_ancestors
        self.page_csp = page_policy(ancestors)
        # Per-path page policies (exact paths), for a page that cannot live with the strict one.
        self.page_policies = {
            path: page_policy(ancestors, style_src="'self' 'unsafe-inline'") for path in INLINE_STYLE_PAGES
        }
        self.page_policies.update(page_policies or {})
        frame_options: dict[tuple[str, ...], str] = {("'self'",): "SAMEORIGIN", ("'none'",): "DENY"}
        self.frame_options = frame_options.get(ancestors)
        self.cors_origins = frozenset(web.cors_origins)
        self.hsts = f"max-age={web.hsts_max_age_s}; includeSubDomains" if web.hsts_max_age_s > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if "origin" in headers and cookie_authenticated(headers) and not same_origin(scope, headers):
            # Closing before accepting: the server answers the handshake 403.
            await send({"type": "websocket.close", "code": 1008, "reason": "cross-origin session cookie"})
            return
        await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        method = scope["method"]
        path: str = scope["path"]
        origin = (headers.get("origin") or "").lower().rstrip("/")
        cors_origin = origin if origin in self.cors_origins else None
        secure = scope.get("scheme") == "https"

        preflight = method == "OPTIONS" and "access-control-request-method" in headers

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._secure(message, path, secure, cors_origin, preflight)
            await send(message)

        if preflight:
            await self._preflight(headers, path, cors_origin)(scope, receive, send_secured)
            return
        if method not in SAFE_METHODS and cookie_authenticated(headers) and not same_origin(scope, headers):
            refused = problem_response(
                403,
                "csrf_refused",
                "请求来源不可信，已拒绝（跨站请求）",
                "a state-changing request authenticated by the session cookie must come from this site's origin",
                path,
            )
            await refused(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def _preflight(self, headers: Headers, path: str, cors_origin: str | None) -> Response:
        method = headers.get("access-control-request-method", "").upper()
        asked = {h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()}
        if cors_origin is None or method not in CORS_METHODS or not asked <= CORS_HEADERS:
            return problem_response(
                403,
                "cors_refused",
                "不允许跨域访问",
                f"cross-origin request from {headers.get('origin', 'no origin')!r} refused"
                + ("" if cors_origin is None else f" (method {method}, headers {sorted(asked)})"),
                path,
            )
        return Response(status_code=204)  # its Access-Control-* headers: _secure

    def _secure(self, message: Message, path: str, secure: bool, cors_origin: str | None, preflight: bool) -> None:
        headers = MutableHeaders(scope=message)
        for name in {key for key in headers if key.startswith("access-control-")}:
            del headers[name]  # only this middleware speaks CORS
        if cors_origin is not None:
            headers["access-control-allow-origin"] = cors_origin
            headers.add_vary_header("Origin")
            if preflight and message["status"] == 204:
                headers["access-control-allow-methods"] = ", ".join(CORS_METHODS)
                headers["access-control-allow-headers"] = ", ".join(sorted(CORS_HEADERS))
                headers["access-control-max-age"] = str(CORS_MAX_AGE_S)
        elif self.cors_origins:
            headers.add_vary_header("Origin")  # the answer depends on the caller's origin
        api = path.startswith(API_PREFIXES)
        headers["content-security-policy"] = API_POLICY if api else self.page_policies.get(path, self.page_csp)
        if api:
            headers["x-frame-options"] = "DENY"
        elif self.frame_options is not None:
            headers["x-frame-options"] = self.frame_options
        elif "x-frame-options" in headers:
            del headers["x-frame-options"]
        headers["x-content-type-options"] = "nosniff"
        headers["referrer-policy"] = "no-referrer"
        headers["permissions-policy"] = PERMISSIONS_POLICY
        headers["cross-origin-opener-policy"] = "same-origin"
        headers["cross-origin-resource-policy"] = "same-origin" if cors_origin is None else "cross-origin"
        if path.startswith(NO_STORE_PREFIXES):
            headers["cache-control"] = "no-store"
            headers["pragma"] = "no-cache"
        if secure and self.hsts is not None:
            headers["strict-transport-security"] = self.hsts
        cookies = headers.getlist("set-cookie")
        if cookies:
            del headers["set-cookie"]
            for cookie in cookies:
                headers.append("set-cookie", _harden_cookie(cookie, secure or self.web.tls))


def install(app: Starlette, web: WebSecuritySettings, *, page_policies: Mapping[str, str] | None = None) -> None:
    """Put the middleware around `app`'s whole middleware stack, Starlette's error handler included,
    so a 500 answer carries the headers too (Starlette's `middleware=` list sits inside that
    handler). `app` stays a Starlette (its state, routes, lifespan)."""
    build = app.build_middleware_stack

    def build_secured() -> ASGIApp:
        return SecurityHeadersMiddleware(build(), web, page_policies=page_policies)

    app.build_middleware_stack = build_secured  # type: ignore[method-assign]
