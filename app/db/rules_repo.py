"""SQL of the rule table, patient facts, the patient's schedule as the rules see it, and overrides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from app.db.pool import database_errors
from app.planning.rules import RuleSpec, Selector


async def load_rule_specs(conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str) -> list[RuleSpec]:
    async with database_errors():
        rows = await conn.fetch(
            """SELECT id, kind, severity, enabled, a, b, params, message, override_roles
                 FROM booking_rule WHERE hospital_id = $1 ORDER BY id""",
            hospital_id,
        )
    return [
        RuleSpec(
            id=r["id"],
            kind=r["kind"],
            severity=r["severity"],
            message=r["message"],
            a=msgspec.convert(r["a"], Selector),
            b=msgspec.convert(r["b"], Selector) if r["b"] is not None else None,
            params=dict(r["params"]),
            override_roles=list(r["override_roles"]),
            enabled=r["enabled"],
        )
        for r in rows
    ]


_INSERT_RULE = """INSERT INTO booking_rule (hospital_id, id, kind, severity, enabled, a, b, params, message,
                                       override_roles, updated_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"""


def _rule_row(hospital_id: str, s: RuleSpec, actor_id: int | None) -> tuple[Any, ...]:
    b = msgspec.to_builtins(s.b) if s.b is not None else None
    return (
        hospital_id,
        s.id,
        s.kind,
        s.severity,
        s.enabled,
        msgspec.to_builtins(s.a),
        b,
        s.params,
        s.message,
        list(s.override_roles),
        actor_id,
    )


async def replace_rules(
    conn: asyncpg.Connection, hospital_id: str, specs: Sequence[RuleSpec], actor_id: int | None
) -> None:
    """Make the hospital's rule table exactly `specs` (an import), in the caller's transaction."""
    async with database_errors():
        await conn.execute("DELETE FROM booking_rule WHERE hospital_id = $1", hospital_id)
        await conn.executemany(_INSERT_RULE, [_rule_row(hospital_id, s, actor_id) for s in specs])


async def upsert_rule(
    conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, s: RuleSpec, actor_id: int | None
) -> None:
    async with database_errors():
        await conn.execute(
            _INSERT_RULE
            + """ ON CONFLICT (hospital_id, id) DO UPDATE SET
                   kind = EXCLUDED.kind, severity = EXCLUDED.severity, enabled = EXCLUDED.enabled, a = EXCLUDED.a,
                   b = EXCLUDED.b, params = EXCLUDED.params, message = EXCLUDED.message,
                   override_roles = EXCLUDED.override_roles, updated_by = EXCLUDED.updated_by, updated_at = now()""",
            *_rule_row(hospital_id, s, actor_id),
        )


async def delete_rule(conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, rule_id: str) -> bool:
    async with database_errors():
        status = await conn.execute("DELETE FROM booking_rule WHERE hospital_id = $1 AND id = $2", hospital_id, rule_id)
    return bool(status != "DELETE 0")


async def latest_facts(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int) -> dict[str, Any]:
    async with database_errors():
        rows = await conn.fetch(
            """SELECT DISTINCT ON (fact) fact, value FROM patient_fact WHERE patient_id = $1
                ORDER BY fact, recorded_at DESC, id DESC""",
            patient_id,
        )
    return {r["fact"]: r["value"] for r in rows}


async def fact_history(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int) -> list[asyncpg.Record]:
    async with database_errors():
        return await conn.fetch(
            """SELECT fact, value, source, recorded_by, recorded_at FROM patient_fact WHERE patient_id = $1
                ORDER BY recorded_at DESC, id DESC""",
            patient_id,
        )


async def add_facts(
    conn: asyncpg.Connection | asyncpg.Pool,
    patient_id: int,
    facts: Mapping[str, Any],
    source: str,
    actor_id: int | None,
) -> None:
    async with database_errors():
        await conn.executemany(
            # A null value records the fact as unknown again (the latest record of a fact counts).
            """INSERT INTO patient_fact (patient_id, fact, value, source, recorded_by)
               VALUES ($1, $2, COALESCE($3, 'null'::jsonb), $4, $5)""",
            [(patient_id, name, value, source, actor_id) for name, value in sorted(facts.items())],
        )


async def rule_context(
    conn: asyncpg.Connection | asyncpg.Pool, patient_id: int, start: datetime, end: datetime
) -> tuple[int, dict[str, Any], list[asyncpg.Record]]:
    """In one round trip: the patient's booking version, latest facts, and live appointments in
    [start, end) with the campus of their resource."""
    async with database_errors():
        row = await conn.fetchrow(
            """SELECT p.booking_version,
                      (SELECT COALESCE(jsonb_object_agg(f.fact, f.value), '{}'::jsonb) FROM (
                           SELECT DISTINCT ON (fact) fact, value FROM patient_fact WHERE patient_id = p.id
                            ORDER BY fact, recorded_at DESC, id DESC) f) AS facts,
                      (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                                'id', a.id, 'order_id', a.order_id, 'exam_code', a.exam_code,
                                's', extract(epoch FROM a.starts_at)::bigint,
                                'e', extract(epoch FROM a.ends_at)::bigint,
                                'resource_id', a.resource_id, 'campus_id', r.campus_id)
                                ORDER BY a.starts_at), '[]'::jsonb)
                         FROM (SELECT * FROM appointment x WHERE x.patient_id = p.id OFFSET 0) a
                         JOIN resource r ON r.id = a.resource_id  -- the fence: the patient's rows by their index
                        WHERE a.status = 'booked' AND a.starts_at < $3 AND a.ends_at > $2) AS appointments
                 FROM patient p WHERE p.id = $1""",
            patient_id,
            start,
            end,
        )
    if row is None:
        return 0, {}, []
    return int(row["booking_version"]), dict(row["facts"]), list(row["appointments"])


async def set_exam_tags(conn: asyncpg.Connection, tags: Mapping[str, Sequence[str]]) -> None:
    async with database_errors():
        await conn.executemany(
            "UPDATE exam_type SET tags = $2 WHERE code = $1", [(code, list(t)) for code, t in sorted(tags.items())]
        )
