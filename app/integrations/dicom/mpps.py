"""Modality Performed Procedure Step (MPPS, PS3.4 F.7): the modality tells us the exam began and ended,
and the order's closed loop follows through the room queue.

N-CREATE (status IN PROGRESS), referring to the order by the Study Instance UID, else the accession
number, else our Scheduled Procedure Step ID (`A` + the appointment id) in its Scheduled Step
Attributes Sequence:
  * the order checked in          -> the room queue's `start` (order `started`);
  * booked or paid, not checked in -> checked in first (the patient is at the modality), with the
    check-in's own rules (the appointment's day, its window, paid unless inpatient / emergency), then
    `start`; a refused check-in answers 0x0110 with the reason (e.g. `unpaid`, `wrong_day`);
  * already started (the console, or another step of the same order) -> recorded only;
  * any other state -> 0x0110 Processing failure, nothing recorded.
N-SET on a step IN PROGRESS: attributes merged; COMPLETED or DISCONTINUED end the step, and when it
was the order's last step in progress the queue's `finish` (order `done`, when any step of the
order completed) or `abort` (order `aborted`, with the discontinuation reason) follows. An unknown
SOP Instance answers 0x0112 No such object instance; a step already ended 0x0110 with Error ID
0xA710 ("may no longer be updated"); a refused order transition 0x0110 and the step stays as it was.

Every transition is recorded on the order with the actor `mpps:<station AE>` (role `system`) and the
terminal `DICOM <AE>`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import asyncpg
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.db import dicom_repo
from app.errors import AppError, OrderStateConflict
from app.integrations.dicom.worklist import appointment_of_step
from app.queue.service import QueueService
from app.security.actor import Actor

logger = logging.getLogger(__name__)

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
STATES = (IN_PROGRESS, COMPLETED, DISCONTINUED)

SUCCESS = 0x0000
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MAY_NO_LONGER_BE_UPDATED = 0xA710  # Error ID with 0x0110 (PS3.4 F.7.2.2.2)


class Outcome(NamedTuple):
    status: int
    comment: str = ""
    error_id: int | None = None
    attributes: Dataset | None = None

    def status_dataset(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        if self.comment:
            # The command set is always in the default repertoire: ASCII, at most 64 characters.
            ds.ErrorComment = self.comment.encode("ascii", "replace").decode()[:64]
        if self.error_id is not None:
            ds.ErrorID = self.error_id
        return ds


def mpps_actor(ae_title: str) -> Actor:
    """The modality acting on the room queue: role `system` passes the room check."""
    return Actor(user_id=None, username=f"mpps:{ae_title}", roles=frozenset({"system"}), terminal=f"DICOM {ae_title}")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip() if value is not None else ""


def _json(ds: Dataset) -> dict[str, Any]:
    try:
        out: dict[str, Any] = ds.to_json_dict()
        return out
    except Exception:  # an attribute pydicom cannot render must not lose the exam's state change
        logger.warning("MPPS attributes not convertible to DICOM JSON; kept without them", exc_info=True)
        return {}


def discontinuation_reason(ds: Dataset) -> str:
    seq = ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence")
    meaning = ""
    if seq is not None and len(seq) > 0:
        meaning = _text(seq[0], "CodeMeaning") or _text(seq[0], "CodeValue")
    meaning = meaning or _text(ds, "CommentsOnThePerformedProcedureStep")
    return f"设备端中止检查（MPPS）：{meaning}" if meaning else "设备端中止检查（MPPS DISCONTINUED）"


class MppsService:
    def __init__(self, pool: asyncpg.Pool, queues: QueueService, hospital_id: str) -> None:
        self.pool = pool
        self.queues = queues
        self.hospital_id = hospital_id

    async def create(self, sop_instance_uid: str | None, ds: Dataset, calling_ae: str) -> Outcome:
        """N-CREATE: a step begins."""
        status = _text(ds, "PerformedProcedureStepStatus")
        if status != IN_PROGRESS:
            return Outcome(INVALID_ATTRIBUTE_VALUE, f"PerformedProcedureStepStatus must be IN PROGRESS, got {status}")
        ssas = ds.get("ScheduledStepAttributesSequence")
        if ssas is None or len(ssas) == 0:
            return Outcome(MISSING_ATTRIBUTE, "ScheduledStepAttributesSequence missing")
        item = ssas[0]
        study_uid = _text(item, "StudyInstanceUID") or None
        accession = _text(item, "AccessionNumber") or None
        step_appt = appointment_of_step(_text(item, "ScheduledProcedureStepID"))
        if study_uid is None and accession is None and step_appt is None:
            return Outcome(MISSING_ATTRIBUTE, "no StudyInstanceUID, AccessionNumber or SPS ID")
        order = await dicom_repo.order_for_step(
            self.pool, self.hospital_id, study_uid=study_uid, accession_no=accession, appointment_id=step_appt
        )
        if order is None:
            return Outcome(PROCESSING_FAILURE, f"no booked order for accession {accession} / study {study_uid}")
        uid = sop_instance_uid or str(generate_uid())
        station = _text(ds, "PerformedStationAETitle") or calling_ae
        claimed = await dicom_repo.create_instance(
            self.pool,
            sop_instance_uid=uid,
            hospital_id=self.hospital_id,
            order_id=order["order_id"],
            appointment_id=order["appointment_id"],
            station_ae=station,
            calling_ae=calling_ae,
            attributes=_json(ds),
        )
        if not claimed:
            return Outcome(DUPLICATE_SOP_INSTANCE, f"SOP instance {uid} exists")
        try:
            await self._start(order, station)
        except AppError as exc:
            await dicom_repo.drop_instance(self.pool, uid)
            logger.info("MPPS N-CREATE %s for order %s refused: %s", uid, order["order_id"], exc)
            return Outcome(PROCESSING_FAILURE, exc.detail or exc.code)
        except BaseException:
            await dicom_repo.drop_instance(self.pool, uid)
            raise
        logger.info("MPPS %s: order %s started at %s", uid, order["order_id"], station)
        answer = Dataset()
        answer.PerformedProcedureStepStatus = IN_PROGRESS
        if sop_instance_uid is None:
            answer.AffectedSOPInstanceUID = uid  # pynetdicom moves it into the response's command set
        return Outcome(SUCCESS, attributes=answer)

    async def _start(self, order: asyncpg.Record, station: str) -> None:
        state = order["order_status"]
        actor = mpps_actor(station)
        if state == "started":
            return  # the console (or another step of the order) started it: recorded only
        if state in ("booked", "paid"):
            await self.queues.check_in(actor, order["appointment_id"], order["channel"], reason="MPPS")
            state = "checked_in"
        if state != "checked_in":
            raise _state_refused(state, "start")
        await self.queues.act(actor, order["resource_id"], "start", order["appointment_id"], day=order["day"])

    async def set(self, sop_instance_uid: str, mods: Dataset, calling_ae: str) -> Outcome:
        """N-SET: a step's attributes change, or it ends (COMPLETED / DISCONTINUED)."""
        step = await dicom_repo.instance(self.pool, sop_instance_uid)
        if step is None:
            return Outcome(NO_SUCH_SOP_INSTANCE, f"no MPPS instance {sop_instance_uid}")
        if step["status"] != IN_PROGRESS:
            return Outcome(
                PROCESSING_FAILURE, f"MPPS is {step['status']}: may no longer be updated", MAY_NO_LONGER_BE_UPDATED
            )
        new = _text(mods, "PerformedProcedureStepStatus") or IN_PROGRESS
        if new not in STATES:
            return Outcome(INVALID_ATTRIBUTE_VALUE, f"PerformedProcedureStepStatus {new}")
        old_attrs: dict[str, Any] = dict(step["attributes"] or {})
        attrs = {**old_attrs, **_json(mods)}
        reason = discontinuation_reason(mods) if new == DISCONTINUED else ""
        if not await dicom_repo.update_instance(
            self.pool, sop_instance_uid, expect=IN_PROGRESS, status=new, attributes=attrs, reason=reason
        ):
            return Outcome(
                PROCESSING_FAILURE, "MPPS ended meanwhile: may no longer be updated", MAY_NO_LONGER_BE_UPDATED
            )
        if new != IN_PROGRESS:
            try:
                await self._end(step, new, reason)
            except AppError as exc:
                # The step stays in progress: the modality may retry, staff can act on the console.
                await dicom_repo.update_instance(
                    self.pool, sop_instance_uid, expect=new, status=IN_PROGRESS, attributes=old_attrs
                )
                logger.info("MPPS N-SET %s (%s) refused: %s", sop_instance_uid, new, exc)
                return Outcome(PROCESSING_FAILURE, exc.detail or exc.code)
            except BaseException:
                await dicom_repo.update_instance(
                    self.pool, sop_instance_uid, expect=new, status=IN_PROGRESS, attributes=old_attrs
                )
                raise
            logger.info("MPPS %s %s (order %s)", sop_instance_uid, new, step["order_id"])
        answer = Dataset()
        answer.PerformedProcedureStepStatus = new
        return Outcome(SUCCESS, attributes=answer)

    async def _end(self, step: asyncpg.Record, new: str, reason: str) -> None:
        """The order's transition once its last step in progress ended."""
        siblings = await dicom_repo.sibling_states(self.pool, step["order_id"], step["sop_instance_uid"])
        if IN_PROGRESS in siblings:
            return  # another step of the order is still running: the last one decides
        completed = new == COMPLETED or COMPLETED in siblings
        action, target = ("finish", "done") if completed else ("abort", "aborted")
        state = await dicom_repo.order_status(self.pool, step["order_id"])
        if state == target:
            return  # the console got there first
        if state != "started" and not (action == "abort" and state == "checked_in"):
            raise _state_refused(state or "", action)
        actor = mpps_actor(step["station_ae"] or step["calling_ae"] or "MODALITY")
        await self.queues.act(
            actor,
            step["resource_id"],
            action,
            step["appointment_id"],
            reason=reason if action == "abort" else "",
            day=step["day"],
        )


def _state_refused(state: str, action: str) -> AppError:
    return OrderStateConflict(detail=f"order is {state}: cannot {action}", state=state)
