"""Errors as FHIR OperationOutcome, and the application/fhir+json response.

The rest of the platform answers RFC 9457 problem+json (app/api/problem.py); a FHIR client expects
an OperationOutcome instead. Every AppError keeps its HTTP status; its Chinese message is the
issue's `diagnostics` and `details.text`, its stable code a coding of `details`, so a client can
branch on it. Conflicts of the booking path (slot taken, hold expired, order no longer bookable)
are issue type `conflict`; medical-rule refusals and steps the order's state does not allow are
`business-rule`.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from app.errors import (
    AppError,
    BadRequest,
    CheckInRefused,
    Forbidden,
    NotAuthenticated,
    NotFound,
    OrderStateConflict,
    PatientSuspended,
    RuleViolation,
    ServiceUnavailable,
    ValidationFailed,
)

FHIR_JSON = "application/fhir+json"
BASE_URL = "https://huiyue.invalid/fhir"
ERROR_CODE_SYSTEM = "https://huiyue.invalid/problems"
SLOT_REFUSAL_SYSTEM = f"{BASE_URL}/CodeSystem/slot-refusal"
RULE_SYSTEM = f"{BASE_URL}/CodeSystem/booking-rule"


def issue_type(exc: AppError) -> str:
    """The FHIR issue type (http://hl7.org/fhir/issue-type) of an error."""
    if isinstance(exc, FhirNotSupported):
        return "not-supported"
    if isinstance(exc, RuleViolation | OrderStateConflict | CheckInRefused | PatientSuspended):
        return "business-rule"
    if isinstance(exc, NotAuthenticated):
        return "login"
    if isinstance(exc, Forbidden):
        return "forbidden"
    if isinstance(exc, NotFound):
        return "not-found"
    if isinstance(exc, ServiceUnavailable):
        return "transient"
    if isinstance(exc, BadRequest):
        return "structure" if exc.code == "bad_request" else "invalid"
    if isinstance(exc, ValidationFailed):
        return "invalid"
    if exc.status == 409:
        return "conflict"
    if exc.status == 400 or exc.status == 422:
        return "invalid"
    return "exception"


def _issue(severity: str, code: str, text: str, codings: list[dict[str, str]], diagnostics: str = "") -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics or text}
    details: dict[str, Any] = {"text": text}
    if codings:
        details["coding"] = codings
    issue["details"] = details
    return issue


def outcome_of(exc: AppError) -> dict[str, Any]:
    """The OperationOutcome of an error: one issue for the error, then one per broken rule (a
    RuleViolation) so the clerk can read every reason out."""
    codings = [{"system": ERROR_CODE_SYSTEM, "code": exc.code}]
    reason = exc.extra.get("reason")
    if isinstance(reason, str):
        codings.append({"system": SLOT_REFUSAL_SYSTEM, "code": reason})
    issues = [_issue("error", issue_type(exc), exc.message, codings)]
    for v in exc.extra.get("violations", ()) if isinstance(exc, RuleViolation) else ():
        severity = "warning" if v.get("severity") == "warn" else "error"
        issues.append(
            _issue(
                severity,
                "business-rule",
                str(v.get("message", "")),
                [{"system": RULE_SYSTEM, "code": str(v.get("rule_id", ""))}],
            )
        )
    return {"resourceType": "OperationOutcome", "issue": issues}


def simple_outcome(severity: str, code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [_issue(severity, code, text, [])]}


def fhir_response(resource: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(resource), status_code=status, media_type=f"{FHIR_JSON}; charset=utf-8", headers=headers
    )


def outcome_response(exc: AppError) -> Response:
    headers = {"Retry-After": "5"} if exc.status == 503 else None
    return fhir_response(outcome_of(exc), exc.status, headers)


class FhirBadRequest(BadRequest):
    """A FHIR request the facade cannot read: an unknown or malformed search parameter, a
    Parameters resource without what the operation needs."""

    code = "fhir_bad_request"
    title = "FHIR 请求格式不正确"


class FhirNotSupported(AppError):
    code = "fhir_not_supported"
    status = 400
    title = "不支持该 FHIR 请求"
