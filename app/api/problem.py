"""RFC 9457 problem+json: the one place errors become HTTP answers. Never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.errors import AppError, ServiceUnavailable

logger = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://huiyue.invalid/problems/"

_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "请求格式不正确"),
    401: ("not_authenticated", "请先登录"),
    403: ("forbidden", "您没有执行此操作的权限"),
    404: ("not_found", "未找到请求的内容"),
    405: ("method_not_allowed", "不支持该请求方法"),
    413: ("payload_too_large", "请求内容过大"),
    415: ("unsupported_media_type", "请求内容类型不受支持，请使用 application/json"),
}


def problem_response(
    status: int, code: str, title: str, detail: str = "", instance: str = "", **extra: Any
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
        "detail": detail or title,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    headers = {"Retry-After": "5"} if status == 503 else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=headers)


async def app_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    if isinstance(exc, ServiceUnavailable):
        logger.warning("%s %s -> %s (%s)", request.method, request.url.path, exc.code, exc.detail)
    return problem_response(exc.status, exc.code, exc.message, exc.detail, request.url.path, **exc.extra)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "请求无法处理"))
    response = problem_response(exc.status_code, code, title, str(exc.detail or ""), request.url.path)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def client_gone_handler(request: Request, exc: Exception) -> Response:
    # The client hung up before its request body arrived: nobody reads this answer.
    logger.debug("client disconnected during %s %s", request.method, request.url.path)
    return problem_response(400, "client_disconnected", "连接已断开", "client disconnected", request.url.path)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    # Logged with the traceback for operators; the caller sees only a stable code.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(500, "internal_error", "系统内部错误，请稍后重试", "internal error", request.url.path)
