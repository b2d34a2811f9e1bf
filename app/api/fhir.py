"""The FHIR R4 REST facade under /fhir/R4 (docs/fhir.md).

Routes are declared like every other route (`api_route`: roles, session), but answer
application/fhir+json, and every error — the route table's own 401 / 403 included — becomes an
OperationOutcome with the error's HTTP status instead of problem+json.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.routing import MAX_BODY_BYTES, Call, Handler, api_route
from app.errors import AppError
from app.fhir.capability import capability_statement
from app.fhir.operations import Params, Scheduling
from app.fhir.outcome import FhirBadRequest, fhir_response, outcome_response, simple_outcome
from app.fhir.resources import SEARCH_PARAMS, Facade
from app.fhir.search import parse_query

logger = logging.getLogger(__name__)

BASE = "/fhir/R4"
# A staff interface (EMR, HIS, the booking centre's tools): the roles that book and read orders.
FHIR_ROLES = frozenset({"clerk", "doctor", "nurse", "sys_admin"})


def _facade(call: Call) -> Facade:
    return Facade(call.services, str(call.request.base_url).rstrip("/") + BASE)


async def _params(call: Call) -> Params:
    if call.request.method == "GET":
        return Params.from_query(call.request.query_params.multi_items())
    raw = await call.request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise FhirBadRequest("请求内容过大", detail=f"body larger than {MAX_BODY_BYTES} bytes")
    if not raw:
        raise FhirBadRequest("请求内容为空，需要 FHIR Parameters 资源", detail="empty body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirBadRequest("请求内容不是有效的 JSON", detail=f"malformed JSON: {exc}") from exc
    return Params.from_body(body)


def _search(kind: str, call: Call) -> Any:
    return parse_query(call.request.query_params.multi_items(), SEARCH_PARAMS[kind])


def _ident(call: Call) -> str:
    return str(call.request.path_params["ident"])


# -- handlers ------------------------------------------------------------------------------------


async def metadata(call: Call) -> Response:
    try:
        v = version("huiyue")
    except PackageNotFoundError:
        v = "0.0.0"
    return fhir_response(capability_statement(_facade(call).base, v))


async def read_patient(call: Call) -> Response:
    return fhir_response(await _facade(call).read_patient(call.staff, _ident(call)))


async def search_patients(call: Call) -> Response:
    return fhir_response(await _facade(call).search_patients(call.staff, _search("Patient", call)))


async def read_service_request(call: Call) -> Response:
    return fhir_response(await _facade(call).read_service_request(call.staff, _ident(call)))


async def search_service_requests(call: Call) -> Response:
    return fhir_response(await _facade(call).search_service_requests(call.staff, _search("ServiceRequest", call)))


async def read_schedule(call: Call) -> Response:
    return fhir_response(_facade(call).read_schedule(_ident(call)))


async def search_schedules(call: Call) -> Response:
    return fhir_response(_facade(call).search_schedules(_search("Schedule", call)))


async def read_slot(call: Call) -> Response:
    return fhir_response(await _facade(call).read_slot(_ident(call)))


async def search_slots(call: Call) -> Response:
    return fhir_response(await _facade(call).search_slots(_search("Slot", call)))


async def read_appointment(call: Call) -> Response:
    return fhir_response(await _facade(call).read_appointment(call.staff, _ident(call)))


async def search_appointments(call: Call) -> Response:
    return fhir_response(await _facade(call).search_appointments(call.staff, _search("Appointment", call)))


async def find(call: Call) -> Response:
    return fhir_response(await Scheduling(_facade(call)).find(call.staff, await _params(call)))


async def hold(call: Call) -> Response:
    return fhir_response(await Scheduling(_facade(call)).hold(call.staff, await _params(call)))


async def book(call: Call) -> Response:
    return fhir_response(await Scheduling(_facade(call)).book(call.staff, await _params(call)))


# -- routes --------------------------------------------------------------------------------------


def fhir_route(path: str, handler: Handler, *, summary: str, methods: tuple[str, ...] = ("GET",)) -> Route:
    """`api_route` (roles, session), with every error answered as an OperationOutcome."""
    declared = api_route(BASE + path, handler, methods=methods, roles=FHIR_ROLES, summary=summary, tag="fhir")
    inner = declared.endpoint

    async def endpoint(request: Request) -> Response:
        try:
            response: Response = await inner(request)
        except AppError as exc:
            if exc.status >= 500:
                logger.warning("%s %s -> %s (%s)", request.method, request.url.path, exc.code, exc.detail)
            return outcome_response(exc)
        except Exception:
            logger.exception("unhandled error on %s %s", request.method, request.url.path)
            return fhir_response(simple_outcome("fatal", "exception", "系统内部错误，请稍后重试"), 500)
        return response

    route = Route(BASE + path, endpoint, methods=list(methods), name=f"fhir_{handler.__name__}")
    # Described by the CapabilityStatement (/fhir/R4/metadata), not by the OpenAPI document.
    route.spec = msgspec.structs.replace(declared.spec, kind="fhir")  # type: ignore[attr-defined]
    return route


routes = [
    fhir_route("/metadata", metadata, summary="FHIR CapabilityStatement of the facade"),
    # The operations come before Appointment/{ident}, which would match their paths too.
    fhir_route(
        "/Appointment/$find",
        find,
        methods=("GET", "POST"),
        summary="IHE ITI-115 $find: proposed appointments for pending orders",
    ),
    fhir_route("/Appointment/$hold", hold, methods=("POST",), summary="IHE ITI-116 $hold: hold a proposed slot"),
    fhir_route("/Appointment/$book", book, methods=("POST",), summary="IHE ITI-117 $book: commit a hold"),
    fhir_route("/Patient", search_patients, summary="Search Patient (identifier = MRN); audited"),
    fhir_route("/Patient/{ident}", read_patient, summary="Read Patient; audited, no ID number"),
    fhir_route("/ServiceRequest", search_service_requests, summary="Search ServiceRequest (exam orders); audited"),
    fhir_route("/ServiceRequest/{ident}", read_service_request, summary="Read ServiceRequest; audited"),
    fhir_route("/Schedule", search_schedules, summary="Search Schedule (bookable devices and rooms)"),
    fhir_route("/Schedule/{ident}", read_schedule, summary="Read Schedule"),
    fhir_route("/Slot", search_slots, summary="Search Slot"),
    fhir_route("/Slot/{ident}", read_slot, summary="Read Slot"),
    fhir_route("/Appointment", search_appointments, summary="Search Appointment; audited"),
    fhir_route("/Appointment/{ident}", read_appointment, summary="Read Appointment (or a hold); audited"),
]
