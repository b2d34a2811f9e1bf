"""Self-service (自助机 / 微信 H5): a patient proves who he is with ID number and name (checksum,
then the hospital's patient index through an adapter) and gets a short patient session; with it
the patient uses the same APIs as staff, limited to his own records."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from app.api.routing import PUBLIC, Call, api_route, client_ip
from app.db import patient_repo
from app.errors import NotAuthenticated, ValidationFailed
from app.security.idcard import mask_name, mask_phone
from app.security.identity import checked_id_number
from app.security.sessions import SMS_CODE_TTL_S, LoginResult

SELF_SESSION_S = 15 * 60  # a kiosk is shared: the session lapses soon


class IdentifyBody(msgspec.Struct, forbid_unknown_fields=True):
    id_number: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    terminal: Literal["kiosk", "h5"] = "kiosk"


class IdentifyReply(msgspec.Struct):
    token: str
    expires_at: datetime
    patient_id: int
    name: str  # masked
    # Self-service booking suspended for no-shows (app/orders/credit.py): until when, and where to go.
    suspended_until: datetime | None = None
    suspended_message: str = ""


PHONE = r"^1[3-9][0-9]{9}$"


class SmsCodeBody(msgspec.Struct, forbid_unknown_fields=True):
    phone: Annotated[str, msgspec.Meta(min_length=11, max_length=11, pattern=PHONE)]


class SmsCodeReply(msgspec.Struct):
    status: str
    message: str
    expires_in_s: int


class SmsLoginBody(msgspec.Struct, forbid_unknown_fields=True):
    phone: Annotated[str, msgspec.Meta(min_length=11, max_length=11, pattern=PHONE)]
    code: Annotated[str, msgspec.Meta(min_length=6, max_length=6, pattern=r"^[0-9]{6}$")]
    terminal: Literal["h5"] = "h5"


async def sms_code(call: Call) -> SmsCodeReply:
    b: SmsCodeBody = call.body
    s = call.services
    await s.sessions.issue_sms_code(s.settings.booking.hospital_id, b.phone)
    return SmsCodeReply("sent", f"如该手机号已在本院登记，验证码将以短信发送至{mask_phone(b.phone)}", SMS_CODE_TTL_S)


async def sms_login(call: Call) -> IdentifyReply:
    b: SmsLoginBody = call.body
    s = call.services
    result = await s.sessions.sms_login(
        s.settings.booking.hospital_id, b.phone, b.code, b.terminal, client_ip(call.request), SELF_SESSION_S
    )
    patient_id = result.actor.patient_id
    assert patient_id is not None
    await patient_repo.audit(s.pool, result.actor, "sms_login", "patient", str(patient_id), patient_id)
    return await _reply(call, result, patient_id)


async def _reply(call: Call, result: LoginResult, patient_id: int) -> IdentifyReply:
    s = call.services
    suspension = await s.credit.suspension(patient_id)
    suspended = suspension is not None and "self" in suspension["channels"]
    return IdentifyReply(
        result.token,
        result.expires_at,
        patient_id,
        mask_name(result.display_name),
        suspension["ends_at"] if suspended and suspension else None,
        s.credit.message(suspension["ends_at"]) if suspended and suspension else "",
    )


async def identify(call: Call) -> IdentifyReply:
    b: IdentifyBody = call.body
    s = call.services
    id_number = checked_id_number(b.id_number)
    if id_number is None:
        raise ValidationFailed("身份证号码不正确，请核对后重新输入", detail="id number fails GB 11643")
    who = await s.identity.look_up(id_number, b.name.strip())
    if who is None:
        # Which of the two did not match is not said: the answer would help someone guess.
        raise NotAuthenticated("未找到您的就诊信息，请到人工服务窗口办理", detail="no patient with that id and name")
    result = await s.sessions.patient_session(
        s.settings.booking.hospital_id, who.patient_id, who.name, b.terminal, client_ip(call.request), SELF_SESSION_S
    )
    await patient_repo.audit(s.pool, result.actor, "identify", "patient", str(who.patient_id), who.patient_id)
    suspension = await s.credit.suspension(who.patient_id)
    suspended = suspension is not None and "self" in suspension["channels"]
    return IdentifyReply(
        result.token,
        result.expires_at,
        who.patient_id,
        mask_name(who.name),
        suspension["ends_at"] if suspended and suspension else None,
        s.credit.message(suspension["ends_at"]) if suspended and suspension else "",
    )


routes = [
    api_route(
        "/api/v1/self/identify",
        identify,
        methods=("POST",),
        roles=PUBLIC,
        summary="Self-service identity check (ID number with its checksum, name, the patient index): a 15-minute "
        "patient session",
        tag="self-service",
        body=IdentifyBody,
        response=IdentifyReply,
        limit="identify",
    ),
    api_route(
        "/api/v1/self/sms-code",
        sms_code,
        methods=("POST",),
        roles=PUBLIC,
        summary="Mobile login, step 1: a 6-digit code by SMS to the patient whose record holds the number "
        "(the same answer whether or not one does)",
        tag="self-service",
        body=SmsCodeBody,
        response=SmsCodeReply,
        status=202,
        limit="sms_code",
    ),
    api_route(
        "/api/v1/self/sms-login",
        sms_login,
        methods=("POST",),
        roles=PUBLIC,
        summary="Mobile login, step 2: the number and the code; a 15-minute patient session",
        tag="self-service",
        body=SmsLoginBody,
        response=IdentifyReply,
        limit="sms_login",
    ),
]
