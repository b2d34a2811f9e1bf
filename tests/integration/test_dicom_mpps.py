"""MPPS on the real servers with pynetdicom's SCU: N-CREATE IN PROGRESS starts the order through the
room queue, N-SET COMPLETED finishes it, DISCONTINUED aborts it with the reason; the failure
statuses for unknown, duplicate and finished instances and for orders that cannot start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from app.booking.service import BookItem
from app.integrations.dicom.scp import MPPS, DicomServer, server_for
from app.integrations.dicom.settings import DicomSettings
from app.services import Services
from tests.helpers import actor_for, future_day, new_patients_with_orders, open_slots


@pytest.fixture
async def dicom(services: Services) -> AsyncIterator[tuple[str, int]]:
    server: DicomServer = server_for(services, DicomSettings(port=0))
    address = server.start()
    yield address
    await server.stop()


async def _book(services: Services, day: date, room: str, name: str) -> dict[str, Any]:
    clerk = await actor_for(services, "clerk")
    ((pid, (order,)),) = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    await services.pool.execute("UPDATE patient SET name = $2 WHERE id = $1", pid, name)
    slot = next(s for s in await open_slots(services, "CT-HEAD", day, limit=400) if s["resource_id"] == room)
    (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(order, int(slot["id"]))])
    row = await services.pool.fetchrow(
        "SELECT o.accession_no, o.study_uid, p.mrn FROM exam_order o JOIN patient p ON p.id = o.patient_id"
        " WHERE o.id = $1",
        order,
    )
    assert row is not None
    return {
        "order_id": order,
        "appointment_id": appt.appointment_id,
        "slot": slot,
        "accession": row["accession_no"],
        "study_uid": row["study_uid"],
        "mrn": row["mrn"],
        "name": name,
    }


def _in_progress(b: dict[str, Any], station: str, *, by_step_id: bool = False) -> Dataset:
    """An N-CREATE attribute list as a CT sends it."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = b["name"]
    ds.PatientID = b["mrn"]
    item = Dataset()
    if by_step_id:  # the step's own id only (a modality that keeps no accession number)
        item.StudyInstanceUID = ""
        item.AccessionNumber = ""
    else:
        item.StudyInstanceUID = b["study_uid"]
        item.AccessionNumber = b["accession"]
    item.RequestedProcedureID = b["accession"]
    item.ScheduledProcedureStepID = f"A{b['appointment_id']:010d}"
    item.ScheduledProcedureStepDescription = "头颅CT平扫"
    item.ReferencedStudySequence = []
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = station
    ds.PerformedProcedureStepStartDate = b["slot"]["day"].strftime("%Y%m%d")
    ds.PerformedProcedureStepStartTime = "083000"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "头颅CT平扫"
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedSeriesSequence = []
    return ds


def _ended(status: str, reason: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20260101"
    ds.PerformedProcedureStepEndTime = "084500"
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    series.PerformingPhysicianName = ""
    series.OperatorsName = "李技师"
    series.ProtocolName = "HEAD ROUTINE"
    series.RetrieveAETitle = ""
    series.SeriesDescription = "头颅平扫"
    series.ReferencedImageSequence = []
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    if reason is not None:
        code = Dataset()
        code.CodeValue = "110514"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = reason
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [code]
    return ds


class Mpps:
    """pynetdicom's MPPS SCU (blocking: called through asyncio.to_thread, the SCP needs the loop)."""

    def __init__(self, address: tuple[str, int], calling: str) -> None:
        self.address = address
        self.calling = calling

    def _send(self, op: str, ds: Dataset, uid: str | None) -> tuple[int, str, Dataset | None]:
        ae = AE(ae_title=self.calling)
        ae.add_requested_context(MPPS)
        assoc = ae.associate(self.address[0], self.address[1], ae_title="HUIYUE")
        assert assoc.is_established
        try:
            if op == "create":
                status, attrs = assoc.send_n_create(ds, MPPS, uid)
            else:
                assert uid is not None
                status, attrs = assoc.send_n_set(ds, MPPS, uid)
        finally:
            assoc.release()
        return int(status.Status), str(status.get("ErrorComment", "")), attrs

    async def create(self, ds: Dataset, uid: str | None) -> tuple[int, str, Dataset | None]:
        return await asyncio.to_thread(self._send, "create", ds, uid)

    async def set(self, ds: Dataset, uid: str) -> tuple[int, str, Dataset | None]:
        return await asyncio.to_thread(self._send, "set", ds, uid)


async def _status(services: Services, order_id: int) -> str:
    return str(await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", order_id))


async def _queue_state(services: Services, appointment_id: int) -> str:
    return str(await services.pool.fetchval("SELECT state FROM queue_entry WHERE appointment_id = $1", appointment_id))


async def test_in_progress_then_completed_moves_the_checked_in_order_to_started_then_done(
    services: Services, dicom: tuple[str, int]
) -> None:
    day = future_day(services, 2)
    b = await _book(services, day, "CT1", "张三丰")
    clerk = await actor_for(services, "clerk")
    await services.orders.apply(clerk, b["order_id"], "pay", "", "desk")
    services.queues.clock = lambda: b["slot"]["starts_at"].timestamp() - 600
    await services.queues.check_in(clerk, b["appointment_id"], "desk")
    assert await _status(services, b["order_id"]) == "checked_in"

    ct = Mpps(dicom, "CT1")
    uid = str(generate_uid())
    status, _, attrs = await ct.create(_in_progress(b, "CT1"), uid)
    assert status == 0x0000 and attrs is not None and attrs.PerformedProcedureStepStatus == "IN PROGRESS"
    assert await _status(services, b["order_id"]) == "started"
    assert await _queue_state(services, b["appointment_id"]) == "in_exam"
    view = await services.queues.view("CT1", day)
    assert [e["appointment_id"] for e in view["in_exam"]] == [b["appointment_id"]]

    # The same SOP instance again: duplicate; nothing moves.
    status, _, _ = await ct.create(_in_progress(b, "CT1"), uid)
    assert status == 0x0111

    # An attribute update in progress, then completed.
    more = Dataset()
    more.SpecificCharacterSet = "ISO_IR 192"
    more.PerformedProcedureStepDescription = "头颅CT平扫（补扫）"
    status, _, _ = await ct.set(more, uid)
    assert status == 0x0000 and await _status(services, b["order_id"]) == "started"
    status, _, attrs = await ct.set(_ended("COMPLETED"), uid)
    assert status == 0x0000 and attrs is not None and attrs.PerformedProcedureStepStatus == "COMPLETED"
    assert await _status(services, b["order_id"]) == "done"
    assert await _queue_state(services, b["appointment_id"]) == "done"

    # A finished step may no longer be updated; an unknown one does not exist.
    status, comment, _ = await ct.set(_ended("DISCONTINUED", "设备故障"), uid)
    assert status == 0x0110 and "no longer" in comment
    assert await _status(services, b["order_id"]) == "done"
    status, _, _ = await ct.set(_ended("COMPLETED"), str(generate_uid()))
    assert status == 0x0112

    events = await services.pool.fetch(
        "SELECT event, from_status, to_status, actor_role, terminal FROM order_event WHERE order_id = $1 ORDER BY id",
        b["order_id"],
    )
    tail = [(e["event"], e["from_status"], e["to_status"], e["actor_role"], e["terminal"]) for e in events][-2:]
    assert tail == [
        ("started", "checked_in", "started", "system", "DICOM CT1"),
        ("done", "started", "done", "system", "DICOM CT1"),
    ]
    row = await services.pool.fetchrow("SELECT * FROM mpps_instance WHERE sop_instance_uid = $1", uid)
    assert row is not None and row["status"] == "COMPLETED" and row["order_id"] == b["order_id"]
    assert row["station_ae"] == "CT1" and row["ended_at"] is not None
    # The N-SET attributes were merged into the step's record (DICOM JSON, keyed by tag).
    assert row["attributes"]["00400254"]["Value"] == ["头颅CT平扫（补扫）"]  # Performed Procedure Step Description
    assert "00400340" in row["attributes"]  # Performed Series Sequence


async def test_paid_not_checked_in_is_checked_in_by_the_modality_and_discontinued_aborts_with_the_reason(
    services: Services, dicom: tuple[str, int]
) -> None:
    day = future_day(services, 2)
    b = await _book(services, day, "CT2", "欧阳娜娜")
    clerk = await actor_for(services, "clerk")
    await services.orders.apply(clerk, b["order_id"], "pay", "", "desk")
    services.queues.clock = lambda: b["slot"]["starts_at"].timestamp() - 300
    ct = Mpps(dicom, "CT2")
    uid = str(generate_uid())
    status, _, _ = await ct.create(_in_progress(b, "CT2", by_step_id=True), uid)
    assert status == 0x0000
    assert await _status(services, b["order_id"]) == "started"
    moves = await services.pool.fetch(
        """SELECT event, terminal FROM order_event
            WHERE order_id = $1 AND event IN ('checked_in', 'started') ORDER BY id""",
        b["order_id"],
    )
    assert [(m["event"], m["terminal"]) for m in moves] == [("checked_in", "DICOM CT2"), ("started", "DICOM CT2")]

    status, _, _ = await ct.set(_ended("DISCONTINUED", "患者无法配合检查"), uid)
    assert status == 0x0000
    assert await _status(services, b["order_id"]) == "aborted"
    reason = await services.pool.fetchval(
        "SELECT reason FROM order_event WHERE order_id = $1 AND event = 'aborted'", b["order_id"]
    )
    assert "患者无法配合检查" in reason
    assert await _queue_state(services, b["appointment_id"]) == "left"
    stored = await services.pool.fetchrow("SELECT status, reason FROM mpps_instance WHERE sop_instance_uid = $1", uid)
    assert stored is not None and stored["status"] == "DISCONTINUED" and "患者无法配合检查" in stored["reason"]


async def test_steps_that_cannot_start_are_refused_and_leave_nothing_behind(
    services: Services, dicom: tuple[str, int]
) -> None:
    day = future_day(services, 2)
    unpaid = await _book(services, day, "CT1", "赵六")
    services.queues.clock = lambda: unpaid["slot"]["starts_at"].timestamp() - 300
    ct = Mpps(dicom, "CT1")

    # An outpatient who has not paid cannot be checked in by the modality either.
    status, comment, _ = await ct.create(_in_progress(unpaid, "CT1"), str(generate_uid()))
    assert status == 0x0110 and "not paid" in comment
    assert await _status(services, unpaid["order_id"]) == "booked"
    assert await services.pool.fetchval("SELECT count(*) FROM mpps_instance") == 0

    # No order behind the accession number / study.
    ghost = dict(unpaid, accession="HY9999999999", study_uid="2.25.1", appointment_id=999999999)
    status, _, _ = await ct.create(_in_progress(ghost, "CT1"), str(generate_uid()))
    assert status == 0x0110

    # A step must start IN PROGRESS.
    bad = _in_progress(unpaid, "CT1")
    bad.PerformedProcedureStepStatus = "COMPLETED"
    status, _, _ = await ct.create(bad, str(generate_uid()))
    assert status == 0x0106
    assert await _status(services, unpaid["order_id"]) == "booked"
