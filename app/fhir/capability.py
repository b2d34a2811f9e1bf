"""The facade's CapabilityStatement (GET /fhir/R4/metadata): what it reads, searches and operates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.fhir.outcome import FHIR_JSON

IHE_SCHEDULING = "https://profiles.ihe.net/ITI/Scheduling"

# Search parameters per resource type, with their FHIR types (app/fhir/resources.py reads them).
SEARCH_TYPES: dict[str, dict[str, str]] = {
    "Patient": {"_id": "token", "identifier": "token"},
    "ServiceRequest": {
        "_id": "token",
        "patient": "reference",
        "subject": "reference",
        "identifier": "token",
        "status": "token",
        "code": "token",
    },
    "Schedule": {"_id": "token", "actor": "reference", "service-type": "token", "active": "token"},
    "Slot": {"_id": "token", "schedule": "reference", "service-type": "token", "start": "date", "status": "token"},
    "Appointment": {
        "_id": "token",
        "patient": "reference",
        "based-on": "reference",
        "date": "date",
        "status": "token",
        "slot": "reference",
    },
}

OPERATIONS = ("find", "hold", "book")


def capability_statement(base: str, version: str) -> dict[str, Any]:
    resources = []
    for kind, params in SEARCH_TYPES.items():
        entry: dict[str, Any] = {
            "type": kind,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": name, "type": t} for name, t in params.items()],
        }
        if kind == "Appointment":
            entry["operation"] = [
                {"name": op, "definition": f"{IHE_SCHEDULING}/OperationDefinition/appointment-{op}"}
                for op in OPERATIONS
            ]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "publisher": "HuiYue 汇约",
        "kind": "instance",
        "instantiates": [f"{IHE_SCHEDULING}/CapabilityStatement/IHE.Scheduling.server"],
        "software": {"name": "HuiYue 汇约 一站式检查预约平台", "version": version},
        "implementation": {"description": "汇约 FHIR R4 接口（检查申请、号源、预约）", "url": base},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "只读查询与 IHE ITI Scheduling 的 $find / $hold / $book；错误以 OperationOutcome 返回。"
                ),
                "security": {
                    "description": "Bearer 会话令牌（/api/v1/auth/login）；角色 clerk、doctor、nurse、sys_admin"
                },
                "resource": resources,
            }
        ],
    }
