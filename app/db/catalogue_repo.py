"""SQL that loads the exam catalogue."""

from __future__ import annotations

import asyncpg

from app.db.pool import database_errors
from app.planning.catalogue import Catalogue, Department, ExamType, Resource


async def load_catalogue(conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str) -> Catalogue:
    async with database_errors():
        exams = await conn.fetch(
            """SELECT e.code, e.name, e.modality, e.department_id, e.body_part, e.duration_min, e.fasting,
                      e.full_bladder, e.contrast, e.anaesthesia, e.prep_text, e.tags
                 FROM exam_type e JOIN department d ON d.id = e.department_id
                WHERE e.active AND d.hospital_id = $1 ORDER BY e.code""",
            hospital_id,
        )
        resources = await conn.fetch(
            """SELECT id, department_id, campus_id, kind, modality, name, location FROM resource
                WHERE active AND hospital_id = $1 ORDER BY id""",
            hospital_id,
        )
        departments = await conn.fetch(
            """SELECT id, campus_id, name, category, sensitive, location FROM department
                WHERE hospital_id = $1 ORDER BY id""",
            hospital_id,
        )
        capabilities = await conn.fetch(
            """SELECT c.exam_code, c.resource_id FROM exam_capability c JOIN resource r ON r.id = c.resource_id
                WHERE r.active AND r.hospital_id = $1""",
            hospital_id,
        )
    return Catalogue.build(
        [ExamType(**dict(r)) for r in exams],
        [Resource(**dict(r)) for r in resources],
        [Department(**dict(r)) for r in departments],
        [(r["exam_code"], r["resource_id"]) for r in capabilities],
    )
