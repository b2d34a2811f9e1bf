"""Pure mapping of the platform's records to FHIR R4 resources (plain dicts, encoded by orjson).

Statuses are mapped from the closed loop (app/orders/lifecycle.py) and the appointment record; the
platform's own state always travels along as an extension, so nothing is lost in the mapping.
Personal data: the Patient carries the MRN, the name, gender and birth date — never the ID number
or the phone (a staff interface; every read is audited by the caller).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, tzinfo
from typing import Any

from app.fhir.outcome import BASE_URL
from app.orders.lifecycle import STATE_NAMES, STATES
from app.planning.catalogue import Catalogue, ExamType, Resource

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
MRN_SYSTEM = f"{BASE_URL}/sid/mrn"
ORDER_NO_SYSTEM = f"{BASE_URL}/sid/order-no"
ACCESSION_SYSTEM = f"{BASE_URL}/sid/accession-no"
APPOINTMENT_SYSTEM = f"{BASE_URL}/sid/appointment"
RESOURCE_SYSTEM = f"{BASE_URL}/sid/resource"
EXAM_SYSTEM = f"{BASE_URL}/CodeSystem/exam-type"
ORDER_STATE_SYSTEM = f"{BASE_URL}/CodeSystem/order-state"
APPOINTMENT_STATE_SYSTEM = f"{BASE_URL}/CodeSystem/appointment-state"
CHANNEL_SYSTEM = f"{BASE_URL}/CodeSystem/booking-channel"
ORDER_STATE_EXT = f"{BASE_URL}/StructureDefinition/order-state"
APPOINTMENT_STATE_EXT = f"{BASE_URL}/StructureDefinition/appointment-state"
CHANNEL_EXT = f"{BASE_URL}/StructureDefinition/booking-channel"
HOLD_EXPIRES_EXT = f"{BASE_URL}/StructureDefinition/hold-expires"
PLACES_EXT = f"{BASE_URL}/StructureDefinition/places-left"

# ServiceRequest.status of each state of the closed loop. A no-show order is still to be done
# (it may be booked again): active. An aborted exam ends the request unfinished: revoked.
SERVICE_REQUEST_STATUS: Mapping[str, str] = {
    "ordered": "active",
    "booked": "active",
    "paid": "active",
    "checked_in": "active",
    "started": "active",
    "no_show": "active",
    "done": "completed",
    "report_written": "completed",
    "verified": "completed",
    "published": "completed",
    "viewed": "completed",
    "cancelled": "revoked",
    "aborted": "revoked",
}
assert set(SERVICE_REQUEST_STATUS) == set(STATES), "every state of the closed loop needs a FHIR status"

# Appointment.status of a live appointment ('booked' record) by its order's state. Check-in puts the
# patient in the room's waiting line: R4 'arrived' ("arrived and waiting to be seen"), kept while
# the exam is under way; done and every report state: 'fulfilled'.
LIVE_APPOINTMENT_STATUS: Mapping[str, str] = {
    "booked": "booked",
    "paid": "booked",
    "checked_in": "arrived",
    "started": "arrived",
    "done": "fulfilled",
    "report_written": "fulfilled",
    "verified": "fulfilled",
    "published": "fulfilled",
    "viewed": "fulfilled",
}

PRIORITY = {"routine": "routine", "urgent": "urgent", "emergency": "stat"}
GENDER = {"M": "male", "F": "female", "U": "unknown"}
APPOINTMENT_STATE_NAMES = {"booked": "已预约", "cancelled": "已取消", "rescheduled": "已改约", "no_show": "爽约"}

_PROPOSED_ID = re.compile(r"^proposed-(\d{1,18})-(\d{1,18})$")
_HOLD_ID = re.compile(r"^hold-(\d{8})-([0-9a-f]{32})$")


# -- ids ---------------------------------------------------------------------------------------


def proposed_id(order_id: int, slot_id: int) -> str:
    """The id of a proposed Appointment from $find: the order and the slot it would take."""
    return f"proposed-{order_id}-{slot_id}"


def parse_proposed_id(value: str) -> tuple[int, int] | None:
    m = _PROPOSED_ID.match(value)
    return (int(m.group(1)), int(m.group(2))) if m else None


def hold_appointment_id(day: date, hold_id: str) -> str:
    """The id of a pending Appointment from $hold: the hold's day (its Redis hash tag) and id."""
    return f"hold-{day:%Y%m%d}-{hold_id}"


def parse_hold_appointment_id(value: str) -> tuple[date, str] | None:
    m = _HOLD_ID.match(value)
    if not m:
        return None
    try:
        day = datetime.strptime(m.group(1), "%Y%m%d").date()
    except ValueError:
        return None
    return day, m.group(2)


# -- small types -------------------------------------------------------------------------------


def instant(value: datetime | int | float, tz: tzinfo) -> str:
    """A FHIR instant in the hospital's zone, to the second."""
    at = datetime.fromtimestamp(value, tz) if isinstance(value, int | float) else value.astimezone(tz)
    return at.isoformat(timespec="seconds")


def reference(kind: str, ident: str | int, display: str | None = None) -> dict[str, str]:
    ref = {"reference": f"{kind}/{ident}"}
    if display:
        ref["display"] = display
    return ref


def resource_actor(res: Resource) -> dict[str, str]:
    """A bookable resource as the actor of its Schedule: a device, a room (Location) or a physician."""
    kind = {"device": "Device", "room": "Location", "physician": "Practitioner"}.get(res.kind, "Location")
    return reference(kind, res.id, res.name)


def exam_concept(exam: ExamType | None, code: str, name: str | None = None) -> dict[str, Any]:
    display = exam.name if exam is not None else (name or code)
    return {"coding": [{"system": EXAM_SYSTEM, "code": code, "display": display}], "text": display}


def _state_extension(url: str, system: str, code: str, display: str) -> dict[str, Any]:
    return {"url": url, "valueCoding": {"system": system, "code": code, "display": display}}


def order_state_extension(state: str) -> dict[str, Any]:
    return _state_extension(ORDER_STATE_EXT, ORDER_STATE_SYSTEM, state, STATE_NAMES.get(state, state))


def _identifier(system: str, value: str, type_code: str, type_text: str) -> dict[str, Any]:
    return {
        "use": "usual" if type_code == "MR" else "official",
        "type": {"coding": [{"system": V2_0203, "code": type_code}], "text": type_text},
        "system": system,
        "value": value,
    }


# -- resources ---------------------------------------------------------------------------------


def patient(row: Mapping[str, Any], tz: tzinfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(row["id"]),
        "identifier": [_identifier(MRN_SYSTEM, row["mrn"], "MR", "就诊卡号")],
        "active": True,
        "name": [{"use": "official", "text": row["name"]}],
        "gender": GENDER.get(row["gender"], "unknown"),
        "birthDate": row["birth_date"].isoformat(),
    }
    if row.get("updated_at") is not None:
        out["meta"] = {"lastUpdated": instant(row["updated_at"], tz)}
    return out


def service_request(row: Mapping[str, Any], catalogue: Catalogue, tz: tzinfo) -> dict[str, Any]:
    state = row["status"]
    identifiers = [_identifier(ORDER_NO_SYSTEM, row["order_no"], "PLAC", "申请单号")]
    if row.get("accession_no"):
        identifiers.append(_identifier(ACCESSION_SYSTEM, row["accession_no"], "ACSN", "检查号"))
    requester = row["ordering_doctor"]
    if row.get("ordering_department_name"):
        requester = f"{requester}（{row['ordering_department_name']}）"
    out: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": str(row["id"]),
        "meta": {"lastUpdated": instant(row["updated_at"], tz)},
        "extension": [order_state_extension(state)],
        "identifier": identifiers,
        "status": SERVICE_REQUEST_STATUS.get(state, "unknown"),
        "intent": "order",
        "priority": PRIORITY.get(row["priority"], "routine"),
        "code": exam_concept(catalogue.exam_types.get(row["exam_code"]), row["exam_code"], row.get("exam_name")),
        "subject": reference("Patient", row["patient_id"]),
        "authoredOn": instant(row["ordered_at"], tz),
        "requester": {"display": requester},
    }
    if row.get("clinical_note"):
        out["note"] = [{"text": row["clinical_note"]}]
    return out


def schedule(res: Resource, catalogue: Catalogue, horizon: tuple[date, date]) -> dict[str, Any]:
    exams = sorted(code for code, ids in catalogue.capable.items() if res.id in ids and code in catalogue.exam_types)
    dept = catalogue.departments.get(res.department_id)
    out: dict[str, Any] = {
        "resourceType": "Schedule",
        "id": res.id,
        "identifier": [{"system": RESOURCE_SYSTEM, "value": res.id}],
        "active": True,
        "actor": [resource_actor(res)],
        "planningHorizon": {"start": horizon[0].isoformat(), "end": horizon[1].isoformat()},
        "comment": " ".join(x for x in (dept.name if dept else "", res.location) if x),
    }
    if exams:
        out["serviceType"] = [exam_concept(catalogue.exam_types[c], c) for c in exams]
    return out


def slot_status(row: Mapping[str, Any], live_left: int | None) -> str:
    """Closed, or locked for every channel: busy-unavailable; full in PostgreSQL: busy; full in
    the live index only (someone holds the last places): busy-tentative; else free."""
    if row["status"] != "open" or row["locked_all"]:
        return "busy-unavailable"
    if row["booked"] >= row["capacity"]:
        return "busy"
    if live_left is not None and live_left <= 0:
        return "busy-tentative"
    return "free"


def slot(row: Mapping[str, Any], status: str, tz: tzinfo) -> dict[str, Any]:
    comment = f"容量 {row['capacity']}，已约 {row['booked']}"
    if row["locked_some"] and not row["locked_all"]:
        comment += "，部分预约渠道已锁定"
    return {
        "resourceType": "Slot",
        "id": str(row["id"]),
        "schedule": reference("Schedule", row["resource_id"]),
        "status": status,
        "start": instant(row["starts_at"], tz),
        "end": instant(row["ends_at"], tz),
        "comment": comment,
    }


def appointment_status(appointment_state: str, order_state: str) -> tuple[str, str | None]:
    """(Appointment.status, cancelation reason text) of an appointment record and its order."""
    if appointment_state == "cancelled":
        return "cancelled", "已取消"
    if appointment_state == "rescheduled":
        return "cancelled", "已改约"
    if appointment_state == "no_show":
        return "noshow", None
    if order_state == "aborted":
        return "cancelled", STATE_NAMES["aborted"]
    return LIVE_APPOINTMENT_STATUS.get(order_state, "booked"), None


def _participants(patient_id: int, res: Resource | None, resource_id: str, status: str) -> list[dict[str, Any]]:
    actor = resource_actor(res) if res is not None else reference("Location", resource_id)
    return [
        {"actor": reference("Patient", patient_id), "required": "required", "status": status},
        {"actor": actor, "required": "required", "status": status},
    ]


def _timed(start: datetime | int, end: datetime | int, tz: tzinfo) -> dict[str, Any]:
    s = start if isinstance(start, int) else int(start.timestamp())
    e = end if isinstance(end, int) else int(end.timestamp())
    return {"start": instant(s, tz), "end": instant(e, tz), "minutesDuration": max(1, (e - s) // 60)}


def appointment(row: Mapping[str, Any], catalogue: Catalogue, tz: tzinfo) -> dict[str, Any]:
    """A recorded appointment (PostgreSQL)."""
    status, cancel_reason = appointment_status(row["status"], row["order_status"])
    state = row["status"]
    out: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": str(row["id"]),
        "extension": [
            _state_extension(
                APPOINTMENT_STATE_EXT, APPOINTMENT_STATE_SYSTEM, state, APPOINTMENT_STATE_NAMES.get(state, state)
            ),
            order_state_extension(row["order_status"]),
            {"url": CHANNEL_EXT, "valueCode": row["channel"]},
        ],
        "identifier": [{"system": APPOINTMENT_SYSTEM, "value": str(row["id"])}],
        "status": status,
        "serviceType": [exam_concept(catalogue.exam_types.get(row["exam_code"]), row["exam_code"], row["exam_name"])],
        "description": row["exam_name"],
        **_timed(row["starts_at"], row["ends_at"], tz),
        "created": instant(row["booked_at"], tz),
        "slot": [reference("Slot", row["slot_id"])],
        "basedOn": [reference("ServiceRequest", row["order_id"])],
        "participant": _participants(
            row["patient_id"], catalogue.resources.get(row["resource_id"]), row["resource_id"], "accepted"
        ),
    }
    if cancel_reason is not None:
        reason = row.get("end_reason") or cancel_reason
        out["cancelationReason"] = {"text": reason}
    if row.get("replaced_by"):
        out["comment"] = f"已改约至预约 {row['replaced_by']}"
    return out


def proposed_appointment(
    *,
    order_id: int,
    patient_id: int,
    exam_code: str,
    slot_id: int,
    resource_id: str,
    starts_at: int,
    ends_at: int,
    places: int,
    catalogue: Catalogue,
    tz: tzinfo,
) -> dict[str, Any]:
    """An Appointment $find proposes: the order in an open slot the channel can take now."""
    exam = catalogue.exam_types.get(exam_code)
    return {
        "resourceType": "Appointment",
        "id": proposed_id(order_id, slot_id),
        "extension": [{"url": PLACES_EXT, "valueInteger": places}],
        "status": "proposed",
        "serviceType": [exam_concept(exam, exam_code)],
        "description": exam.name if exam else exam_code,
        **_timed(starts_at, ends_at, tz),
        "slot": [reference("Slot", slot_id)],
        "basedOn": [reference("ServiceRequest", order_id)],
        "participant": _participants(patient_id, catalogue.resources.get(resource_id), resource_id, "needs-action"),
    }


def pending_appointment(
    *,
    day: date,
    hold_id: str,
    order_id: int,
    patient_id: int,
    exam_code: str,
    slot_id: int,
    resource_id: str,
    starts_at: int,
    ends_at: int,
    channel: str,
    expires_ms: int,
    catalogue: Catalogue,
    tz: tzinfo,
) -> dict[str, Any]:
    """A held place ($hold): pending until $book commits it or the hold expires."""
    exam = catalogue.exam_types.get(exam_code)
    expires = instant(expires_ms / 1000, tz)
    return {
        "resourceType": "Appointment",
        "id": hold_appointment_id(day, hold_id),
        "extension": [
            {"url": HOLD_EXPIRES_EXT, "valueInstant": expires},
            {"url": CHANNEL_EXT, "valueCode": channel},
        ],
        "status": "pending",
        "serviceType": [exam_concept(exam, exam_code)],
        "description": exam.name if exam else exam_code,
        **_timed(starts_at, ends_at, tz),
        "slot": [reference("Slot", slot_id)],
        "basedOn": [reference("ServiceRequest", order_id)],
        "participant": _participants(patient_id, catalogue.resources.get(resource_id), resource_id, "tentative"),
        "comment": f"号源已保留至 {expires[11:19]}，请在此之前确认预约（$book），逾期自动释放",
    }
