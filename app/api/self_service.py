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
from app.security.idcard import mask_name
from app.security.identity import checked_id_number

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
    ),
]
