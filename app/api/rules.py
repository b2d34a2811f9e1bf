"""The rule table (admin: export, import, edit) and patient facts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from starlette.responses import Response

from app.api.routing import Call, api_route, json_response
from app.booking.service import check_patient_access
from app.db import patient_repo, rules_repo
from app.errors import NotFound, ValidationFailed
from app.planning.rules import RuleError, RuleSpec, compile_rule, compile_rules

RULE_READERS = frozenset({"doctor", "clerk", "dept_admin", "dept_head", "sys_admin"})
RULE_WRITERS = frozenset({"sys_admin"})
FACT_READERS = frozenset({"doctor", "nurse", "clerk", "technician", "sys_admin", "patient"})
FACT_WRITERS = frozenset({"doctor", "nurse", "clerk", "sys_admin"})

FactName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
FactValue = bool | int | float | str | None


class RulesBody(msgspec.Struct, forbid_unknown_fields=True):
    rules: Annotated[list[RuleSpec], msgspec.Meta(max_length=500)]


class FactsBody(msgspec.Struct, forbid_unknown_fields=True):
    facts: Annotated[dict[FactName, FactValue], msgspec.Meta(min_length=1, max_length=50)]
    source: Literal["his", "order", "desk", "patient", "clinician"] = "desk"


def _invalid(exc: RuleError) -> ValidationFailed:
    return ValidationFailed(f"规则不合法：{exc}", detail=str(exc))


async def export_rules(call: Call) -> Response:
    specs = await rules_repo.load_rule_specs(call.services.pool, call.services.settings.booking.hospital_id)
    return json_response({"rules": [msgspec.to_builtins(s) for s in specs]})


async def import_rules(call: Call) -> dict[str, Any]:
    """Replace the whole rule table, after validating every rule (all or nothing)."""
    b: RulesBody = call.body
    try:
        compile_rules(b.rules)
    except RuleError as exc:
        raise _invalid(exc) from exc
    s = call.services
    async with s.pool.acquire() as conn, conn.transaction():
        await rules_repo.replace_rules(conn, s.settings.booking.hospital_id, b.rules, call.staff.user_id)
        await patient_repo.audit(conn, call.staff, "import", "booking_rule", "*", None, {"count": len(b.rules)})
    s.rules.invalidate()
    return {"imported": len(b.rules)}


async def put_rule(call: Call) -> dict[str, Any]:
    spec: RuleSpec = call.body
    rule_id = call.request.path_params["rule_id"]
    if spec.id != rule_id:
        raise ValidationFailed("规则编号与地址不一致", detail=f"body id {spec.id!r} != path id {rule_id!r}")
    try:
        compile_rule(spec)
    except RuleError as exc:
        raise _invalid(exc) from exc
    s = call.services
    await rules_repo.upsert_rule(s.pool, s.settings.booking.hospital_id, spec, call.staff.user_id)
    await patient_repo.audit(s.pool, call.staff, "update", "booking_rule", spec.id, None)
    s.rules.invalidate()
    return {"id": spec.id}


async def delete_rule(call: Call) -> dict[str, Any]:
    s = call.services
    rule_id = call.request.path_params["rule_id"]
    if not await rules_repo.delete_rule(s.pool, s.settings.booking.hospital_id, rule_id):
        raise NotFound(f"规则不存在：{rule_id}", detail=f"rule {rule_id} not found")
    await patient_repo.audit(s.pool, call.staff, "delete", "booking_rule", rule_id, None)
    s.rules.invalidate()
    return {"deleted": rule_id}


async def _patient_id(call: Call) -> int:
    patient_id = call.path_int("patient_id")
    check_patient_access(call.staff, patient_id)
    if await patient_repo.patient_by_id(call.services.pool, patient_id) is None:
        raise NotFound("患者不存在", detail=f"patient {patient_id} not found")
    return patient_id


async def get_facts(call: Call) -> dict[str, Any]:
    patient_id = await _patient_id(call)
    pool = call.services.pool
    history = await rules_repo.fact_history(pool, patient_id)
    await patient_repo.audit(pool, call.staff, "read", "patient.facts", str(patient_id), patient_id)
    return {
        "patient_id": patient_id,
        "facts": await rules_repo.latest_facts(pool, patient_id),
        "history": [dict(r.items()) for r in history],
    }


async def add_facts(call: Call) -> dict[str, Any]:
    b: FactsBody = call.body
    patient_id = await _patient_id(call)
    if "patient" in call.staff.roles and b.source != "patient":
        raise ValidationFailed("患者本人填写的信息来源须为 patient", detail="patients record facts as source 'patient'")
    pool = call.services.pool
    await rules_repo.add_facts(pool, patient_id, b.facts, b.source, call.staff.user_id)
    await patient_repo.audit(
        pool, call.staff, "update", "patient.facts", str(patient_id), patient_id, {"facts": sorted(b.facts)}
    )
    return {"patient_id": patient_id, "facts": await rules_repo.latest_facts(pool, patient_id)}


routes = [
    api_route(
        "/api/v1/admin/rules",
        export_rules,
        roles=RULE_READERS,
        tag="rules",
        summary="Export the rule table as JSON",
        response=RulesBody,
    ),
    api_route(
        "/api/v1/admin/rules",
        import_rules,
        methods=("PUT",),
        roles=RULE_WRITERS,
        tag="rules",
        summary="Import (replace) the whole rule table; validated, all or nothing",
        body=RulesBody,
    ),
    api_route(
        "/api/v1/admin/rules/{rule_id}",
        put_rule,
        methods=("PUT",),
        roles=RULE_WRITERS,
        tag="rules",
        summary="Create or change one rule",
        body=RuleSpec,
    ),
    api_route(
        "/api/v1/admin/rules/{rule_id}",
        delete_rule,
        methods=("DELETE",),
        roles=RULE_WRITERS,
        tag="rules",
        summary="Delete one rule",
    ),
    api_route(
        "/api/v1/patients/{patient_id:int}/facts",
        get_facts,
        roles=FACT_READERS,
        tag="patients",
        summary="The patient's facts the rules read, with their history (audited)",
    ),
    api_route(
        "/api/v1/patients/{patient_id:int}/facts",
        add_facts,
        methods=("POST",),
        roles=FACT_WRITERS | {"patient"},
        tag="patients",
        summary="Record facts (implants, allergies, eGFR, assessment...) with their source",
        body=FactsBody,
    ),
]
