"""Staff login (password, then a TOTP code where the account has or needs one), logout, password
change and TOTP enrolment. The rules themselves are in app/security/sessions.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from app.api.routing import ANY_ROLE, PUBLIC, STAFF, Call, api_route, bearer_token, client_ip
from app.security.sessions import LoginResult


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    terminal: Annotated[str, msgspec.Meta(max_length=64)] = ""


class LoginReply(msgspec.Struct):
    # The session token; empty when totp_required (then POST pending_token and the code to /auth/totp).
    token: str
    expires_at: datetime
    username: str
    roles: list[str]
    department_id: str | None
    patient_id: int | None
    totp_required: bool = False
    pending_token: str = ""
    # The session only reaches the password change (password_expired) or TOTP enrolment until done.
    password_expired: bool = False
    totp_enrolment_required: bool = False


class TotpBody(msgspec.Struct, forbid_unknown_fields=True):
    pending_token: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    code: Annotated[str, msgspec.Meta(min_length=6, max_length=6, pattern=r"^[0-9]{6}$")]


class TotpCodeBody(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(min_length=6, max_length=6, pattern=r"^[0-9]{6}$")]


class TotpEnrolReply(msgspec.Struct):
    secret: str
    uri: str


class PasswordBody(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    new_password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class MeReply(msgspec.Struct):
    user_id: int | None
    username: str
    roles: list[str]
    department_id: str | None
    patient_id: int | None


def _reply(result: LoginResult) -> LoginReply:
    a = result.actor
    pending = result.totp_required
    return LoginReply(
        "" if pending else result.token,
        result.expires_at,
        a.username,
        sorted(a.roles),
        a.department_id,
        a.patient_id,
        totp_required=pending,
        pending_token=result.token if pending else "",
        password_expired=result.password_expired,
        totp_enrolment_required=result.totp_enrolment_required,
    )


async def login(call: Call) -> LoginReply:
    body: LoginBody = call.body
    result = await call.services.sessions.login(body.username, body.password, body.terminal, client_ip(call.request))
    return _reply(result)


async def login_totp(call: Call) -> LoginReply:
    body: TotpBody = call.body
    return _reply(await call.services.sessions.verify_totp(body.pending_token, body.code, client_ip(call.request)))


async def logout(call: Call) -> dict[str, Any]:
    token = bearer_token(call.request)
    if token is not None:  # None: a certificate-authenticated call has no session to end
        await call.services.sessions.logout(token)
    return {"status": "logged_out"}


async def me(call: Call) -> MeReply:
    a = call.staff
    return MeReply(a.user_id, a.username, sorted(a.roles), a.department_id, a.patient_id)


async def change_password(call: Call) -> dict[str, Any]:
    body: PasswordBody = call.body
    await call.services.sessions.change_password(call.staff, body.current_password, body.new_password)
    return {"status": "password_changed", "relogin": True}


async def totp_enrol(call: Call) -> TotpEnrolReply:
    enrolment = await call.services.sessions.enrol_totp(call.staff)
    return TotpEnrolReply(enrolment.secret, enrolment.uri)


async def totp_confirm(call: Call) -> dict[str, Any]:
    body: TotpCodeBody = call.body
    await call.services.sessions.confirm_totp(call.staff, bearer_token(call.request) or "", body.code)
    return {"status": "totp_enrolled"}


routes = [
    api_route(
        "/api/v1/auth/login",
        login,
        methods=("POST",),
        roles=PUBLIC,
        summary="Log in; returns a bearer token, or totp_required with a pending token for /auth/totp",
        tag="auth",
        body=LoginBody,
        response=LoginReply,
        limit="login",
    ),
    api_route(
        "/api/v1/auth/totp",
        login_totp,
        methods=("POST",),
        roles=PUBLIC,
        summary="Log in, step 2: the pending token from /auth/login and the authenticator's 6-digit code",
        tag="auth",
        body=TotpBody,
        response=LoginReply,
        limit="totp",
    ),
    api_route(
        "/api/v1/auth/logout",
        logout,
        methods=("POST",),
        roles=ANY_ROLE,
        summary="End this session",
        tag="auth",
        allow_restricted=True,
    ),
    api_route(
        "/api/v1/auth/me",
        me,
        roles=ANY_ROLE,
        summary="The caller's account and roles",
        tag="auth",
        response=MeReply,
        allow_restricted=True,
    ),
    api_route(
        "/api/v1/auth/password",
        change_password,
        methods=("POST",),
        roles=STAFF | {"display"},
        summary="Change the password (8+ characters, 3 character classes, none of the last 5); ends every "
        "session of the account",
        tag="auth",
        body=PasswordBody,
        allow_restricted=True,
    ),
    api_route(
        "/api/v1/auth/totp/enrol",
        totp_enrol,
        methods=("POST",),
        roles=STAFF,
        summary="Start TOTP enrolment: a new secret and its otpauth:// URI",
        tag="auth",
        response=TotpEnrolReply,
        allow_restricted=True,
    ),
    api_route(
        "/api/v1/auth/totp/confirm",
        totp_confirm,
        methods=("POST",),
        roles=STAFF,
        summary="Finish TOTP enrolment with the authenticator's first code",
        tag="auth",
        body=TotpCodeBody,
        allow_restricted=True,
    ),
]
