"""Staff login and logout."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from app.api.routing import ANY_ROLE, PUBLIC, Call, api_route, bearer_token, client_ip


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    terminal: Annotated[str, msgspec.Meta(max_length=64)] = ""


class LoginReply(msgspec.Struct):
    token: str
    expires_at: datetime
    username: str
    roles: list[str]
    department_id: str | None
    patient_id: int | None


class MeReply(msgspec.Struct):
    user_id: int | None
    username: str
    roles: list[str]
    department_id: str | None
    patient_id: int | None


async def login(call: Call) -> LoginReply:
    body: LoginBody = call.body
    result = await call.services.sessions.login(body.username, body.password, body.terminal, client_ip(call.request))
    a = result.actor
    return LoginReply(result.token, result.expires_at, a.username, sorted(a.roles), a.department_id, a.patient_id)


async def logout(call: Call) -> dict[str, Any]:
    token = bearer_token(call.request)
    assert token is not None
    await call.services.sessions.logout(token)
    return {"status": "logged_out"}


async def me(call: Call) -> MeReply:
    a = call.staff
    return MeReply(a.user_id, a.username, sorted(a.roles), a.department_id, a.patient_id)


routes = [
    api_route(
        "/api/v1/auth/login",
        login,
        methods=("POST",),
        roles=PUBLIC,
        summary="Log in; returns a bearer token",
        tag="auth",
        body=LoginBody,
        response=LoginReply,
    ),
    api_route("/api/v1/auth/logout", logout, methods=("POST",), roles=ANY_ROLE, summary="End this session", tag="auth"),
    api_route(
        "/api/v1/auth/me", me, roles=ANY_ROLE, summary="The caller's account and roles", tag="auth", response=MeReply
    ),
]
