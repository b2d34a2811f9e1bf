"""The OpenAPI document against the running server, with schemathesis (an independent client
generating requests from the document): for every operation, generated requests — valid and not —
never get a 500, and every answer matches the document (status, content type, body schema)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import hypothesis
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.services import Services
from tests.conftest import CloneDb, Servers
from tests.helpers import token_for
from tests.live_server import worker_process

EXAMPLES = int(os.environ.get("HY_SCHEMATHESIS_EXAMPLES", "15"))  # more for a deeper run by hand
# Ending the session the rest of the run uses is not a thing to fuzz.
SKIP = {"POST /api/v1/auth/logout"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _run(base: str, token: str) -> tuple[int, list[str]]:
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    headers = {"authorization": f"Bearer {token}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.label in SKIP:
            continue
        operations += 1

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=op.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=base, headers=headers, timeout=30)
            case.validate_response(response, checks=CHECKS)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # one line per failing operation, all reported at the end
            failures.append(f"{op.label}: {type(exc).__name__}: {str(exc)[:600]}")
    return operations, failures


async def test_every_operation_answers_as_documented_without_server_errors(
    services: Services, seeded_db: CloneDb, servers: Servers, redis_prefix: str
) -> None:
    token = await token_for(services, "admin")
    async with worker_process(seeded_db.url, servers.redis, redis_prefix) as base:
        operations, failures = await asyncio.to_thread(_run, base, token)
    assert operations > 50
    assert not failures, "\n".join(failures)
