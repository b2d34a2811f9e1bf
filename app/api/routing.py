"""Declaring routes: every route names the roles that may call it, its input and output types.

`api_route` wraps a handler so that authentication, role checks, body and query decoding
(msgspec) and JSON encoding (orjson) happen in one place; handlers receive a `Call` and return
plain data. The declarations also feed the OpenAPI document and the route-table test.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any

import msgspec
import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.api.problem import problem_response
from app.errors import AppError, BadRequest, Forbidden, NotAuthenticated, NotFound, ValidationFailed
from app.security.actor import ROLES, Actor
from app.security.devices import DEVICE_PREFIX
from app.security.ratelimit import DEVICE_HEADER, RateLimited
from app.services import Services
from realtime.stream import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NOT_AUTHENTICATED,
    CLOSE_TRY_LATER,
    close_quietly,
)

logger = logging.getLogger(__name__)

PUBLIC = "public"
ANY_ROLE = frozenset(ROLES)
STAFF = frozenset({"doctor", "nurse", "clerk", "technician", "dept_admin", "dept_head", "sys_admin"})
MAX_BODY_BYTES = 64 * 1024
MAX_ID = 2**63 - 1  # PostgreSQL bigint


class RouteSpec(msgspec.Struct, frozen=True):
    path: str
    methods: tuple[str, ...]
    roles: frozenset[str]  # {"public"} for routes open to anyone
    summary: str
    tag: str
    body: Any = None
    query: Any = None
    response: Any = None
    status: int = 200
    media_type: str = "application/json"  # of a successful answer (text/csv for exports)
    kind: str = "api"  # "page" (HTML), "ws" (WebSockets), "fhir" (its CapabilityStatement): not in the OpenAPI


class Call(msgspec.Struct):
    """What a handler gets: the request, the caller, the services, and the decoded input."""

    request: Request
    services: Services
    actor: Actor | None
    body: Any = None
    query: Any = None

    @property
    def staff(self) -> Actor:
        assert self.actor is not None
        return self.actor

    def path_int(self, name: str) -> int:
        """An id from the path; one no record can have (beyond PostgreSQL's bigint) is not found."""
        value = int(self.request.path_params[name])
        if not 0 < value <= MAX_ID:
            raise NotFound(detail=f"{name} {value} out of range")
        return value


Handler = Callable[[Call], Awaitable[Any]]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        # Times are shown in the hospital's zone (asyncpg hands PostgreSQL's timestamptz over in UTC).
        return value.astimezone(_zone.tz).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value, builtin_types=(datetime, date))
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


class _Zone:
    """The zone times are rendered in; set once per app from the settings (create_app)."""

    tz: tzinfo = UTC


_zone = _Zone()


def set_display_zone(tz: tzinfo) -> None:
    _zone.tz = tz


def json_response(data: Any, status: int = 200) -> Response:
    body = orjson.dumps(data, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    return Response(body, status_code=status, media_type="application/json")


def bearer_token(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return header[7:].strip()
    return request.cookies.get("hy_session") or None


def _validation_message(exc: msgspec.ValidationError) -> str:
    return f"请求内容不符合要求：{exc}"


async def _decode_body(request: Request, body_type: Any) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest("请求内容过大", detail=f"body larger than {MAX_BODY_BYTES} bytes")
    if not raw:
        raise BadRequest("请求内容为空，需要 JSON 对象", detail="empty body, expected a JSON object")
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(_validation_message(exc), detail=str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest("请求内容不是有效的 JSON", detail=f"malformed JSON: {exc}") from exc


def decode_query(request: HTTPConnection, query_type: Any) -> Any:
    """The query string as `query_type` (HTTP requests and WebSockets alike), or ValidationFailed."""
    params = dict(request.query_params)
    try:
        return msgspec.convert(params, type=query_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(_validation_message(exc), detail=f"query: {exc}") from exc


def client_ip(request: HTTPConnection) -> str:
    return request.client.host if request.client else ""


async def _rate_limit(services: Services, policy: str, request: Request, actor: Actor | None, body: Any) -> None:
    limits = services.sessions.limits
    field = limits.policies[policy].account_field
    if actor is not None and actor.user_id is not None:
        account = f"u:{actor.user_id}"
    else:
        value = getattr(body, field, "") if field else ""
        account = f"{field}:{str(value).strip().lower()}" if value else ""
    device = request.headers.get(DEVICE_HEADER, "")[:64]
    await limits.hit(policy, account=account, ip=client_ip(request), device=device)


def api_route(
    path: str,
    handler: Handler,
    *,
    methods: tuple[str, ...] = ("GET",),
    roles: frozenset[str] | str,
    summary: str,
    tag: str,
    body: Any = None,
    query: Any = None,
    response: Any = None,
    status: int = 200,
    media_type: str = "application/json",
    limit: str | None = None,
    allow_restricted: bool = False,
) -> Route:
    """`limit` names a rate-limit policy (app/security/ratelimit.py) counted per account, address
    and device before the handler runs; `allow_restricted` lets a session restricted to a password
    change or TOTP enrolment through (app/security/sessions.py). Without a bearer token, a verified
    client certificate of an interface system authenticates the call (app/security/mtls.py)."""
    allowed = frozenset({roles}) if isinstance(roles, str) else roles
    if not allowed:
        raise ValueError(f"route {path} declares no roles")
    unknown = allowed - ANY_ROLE - {PUBLIC}
    if unknown:
        raise ValueError(f"route {path} names unknown roles {sorted(unknown)}")
    spec = RouteSpec(path, methods, allowed, summary, tag, body, query, response, status, media_type)

    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        actor: Actor | None = None
        if PUBLIC not in allowed:
            token = bearer_token(request)
            if token is None:
                actor = await services.sessions.certificate_actor(request.scope, client_ip(request))
                if actor is None:
                    raise NotAuthenticated(detail="no bearer token")
            else:
                actor = await services.sessions.resolve(token, client_ip(request), allow_restricted=allow_restricted)
            if not actor.roles & allowed:
                raise Forbidden(detail=f"route needs one of {sorted(allowed)}")
        call = Call(request=request, services=services, actor=actor)
        if query is not None:
            call.query = decode_query(request, query)
        if body is not None:
            call.body = await _decode_body(request, body)
        if limit is not None:
            try:
                await _rate_limit(services, limit, request, actor, call.body)
            except RateLimited as exc:
                limited = problem_response(exc.status, exc.code, exc.message, exc.detail, request.url.path, **exc.extra)
                limited.headers["Retry-After"] = str(exc.retry_after_s)
                return limited
        result = await handler(call)
        if isinstance(result, Response):
            return result
        return json_response(result, status)

    route = Route(path, endpoint, methods=list(methods), name=handler.__name__)
    route.spec = spec  # type: ignore[attr-defined]
    return route


def route_spec(route: Any) -> RouteSpec | None:
    return getattr(route, "spec", None)


def page_route(
    path: str, endpoint: Callable[[Request], Awaitable[Response]], *, roles: frozenset[str] | str, summary: str
) -> Route:
    """A route serving an HTML page; it declares its roles like every other route. Pages that
    need a login check the session themselves from the data calls they make."""
    allowed = frozenset({roles}) if isinstance(roles, str) else roles
    route = Route(path, endpoint, methods=["GET"], name=endpoint.__name__)
    route.spec = RouteSpec(path, ("GET",), allowed, summary, "pages", kind="page")  # type: ignore[attr-defined]
    return route


SocketHandler = Callable[[WebSocket, Actor, Services], Awaitable[None]]
AUTH_WAIT_S = 5.0


async def _socket_token(ws: WebSocket) -> str | None:
    """The session token: an Authorization header or the session cookie, else the first frame
    ``{"type": "auth", "token": "..."}`` within AUTH_WAIT_S (browsers cannot set headers on a
    WebSocket, and a token in the URL would end up in access logs)."""
    token = bearer_token(ws)
    if token is not None:
        return token
    try:
        first = await asyncio.wait_for(ws.receive_text(), AUTH_WAIT_S)
        message = orjson.loads(first)
    except (TimeoutError, orjson.JSONDecodeError, KeyError, RuntimeError, WebSocketDisconnect):
        return None
    if isinstance(message, dict) and message.get("type") == "auth" and isinstance(message.get("token"), str):
        return str(message["token"])
    return None


def _close_code(exc: AppError) -> int:
    if exc.status == 401:
        return CLOSE_NOT_AUTHENTICATED
    if exc.status == 403:
        return CLOSE_FORBIDDEN
    return CLOSE_BAD_REQUEST if exc.status < 500 else CLOSE_TRY_LATER


def ws_route(path: str, handler: SocketHandler, *, roles: frozenset[str], summary: str) -> WebSocketRoute:
    """A WebSocket route: the session — or a display device's token — is checked on connect
    (close 4401 / 4403, see realtime/stream.py for the codes), then `handler` serves the socket;
    an AppError it raises closes the socket with 4401 / 4403 / 4400 (the caller's mistake) or 1013
    (try again later)."""
    if not roles or PUBLIC in roles or roles - ANY_ROLE:
        raise ValueError(f"socket {path} must name known roles")
    spec = RouteSpec(path, ("WS",), roles, summary, "live", kind="ws")

    async def endpoint(ws: WebSocket) -> None:
        services: Services = ws.app.state.services
        await ws.accept()
        token = await _socket_token(ws)
        if token is None:
            await close_quietly(ws, CLOSE_NOT_AUTHENTICATED, "not_authenticated")
            return
        try:
            if token.startswith(DEVICE_PREFIX):
                actor = await services.devices.resolve(token, client_ip(ws))
            else:
                actor = await services.sessions.resolve(token, client_ip(ws))
        except AppError as exc:
            code = CLOSE_NOT_AUTHENTICATED if isinstance(exc, NotAuthenticated) else CLOSE_TRY_LATER
            await close_quietly(ws, code, exc.code)
            return
        if not actor.roles & roles:
            await close_quietly(ws, CLOSE_FORBIDDEN, "forbidden")
            return
        try:
            await handler(ws, actor, services)
        except AppError as exc:
            await close_quietly(ws, _close_code(exc), exc.code)
        except WebSocketDisconnect:
            pass
        except Exception:  # a bug must not leave the socket hanging, nor show its trace to the client
            logger.exception("socket %s failed", path)
            await close_quietly(ws, CLOSE_INTERNAL_ERROR, "internal_error")

    route = WebSocketRoute(path, endpoint, name=handler.__name__)
    route.spec = spec  # type: ignore[attr-defined]
    return route
