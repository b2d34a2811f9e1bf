"""The exam catalogue held in memory: exam types, resources, departments and which resource can do
which exam. Loaded from PostgreSQL at start-up; small (hundreds of rows) and read on every request."""

from __future__ import annotations

from collections import defaultdict

import msgspec


class ExamType(msgspec.Struct, frozen=True):
    code: str
    name: str
    modality: str
    department_id: str
    body_part: str
    duration_min: int
    fasting: bool
    full_bladder: bool
    contrast: str | None
    anaesthesia: bool
    prep_text: str
    tags: list[str] = msgspec.field(default_factory=list)


class Resource(msgspec.Struct, frozen=True):
    id: str
    department_id: str
    campus_id: str
    kind: str
    modality: str
    name: str
    location: str


class Department(msgspec.Struct, frozen=True):
    id: str
    campus_id: str
    name: str
    category: str
    sensitive: bool
    location: str


class Catalogue(msgspec.Struct, frozen=True):
    exam_types: dict[str, ExamType]
    resources: dict[str, Resource]
    departments: dict[str, Department]
    capable: dict[str, frozenset[str]]  # exam code -> resource ids

    @classmethod
    def build(
        cls,
        exam_types: list[ExamType],
        resources: list[Resource],
        departments: list[Department],
        capabilities: list[tuple[str, str]],
    ) -> Catalogue:
        capable: dict[str, set[str]] = defaultdict(set)
        for exam_code, resource_id in capabilities:
            capable[exam_code].add(resource_id)
        return cls(
            exam_types={e.code: e for e in exam_types},
            resources={r.id: r for r in resources},
            departments={d.id: d for d in departments},
            capable={code: frozenset(ids) for code, ids in capable.items()},
        )

    def resources_for(
        self, exam_code: str | None = None, department_id: str | None = None, resource_id: str | None = None
    ) -> list[str]:
        """Resource ids matching every filter given, sorted."""
        ids = set(self.resources)
        if exam_code is not None:
            ids &= self.capable.get(exam_code, frozenset())
        if department_id is not None:
            ids = {r for r in ids if self.resources[r].department_id == department_id}
        if resource_id is not None:
            ids &= {resource_id}
        return sorted(ids)
