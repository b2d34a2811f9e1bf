"""The DICOM Modality Worklist SCP on the real servers, queried by dcmtk's findscu and by pynetdicom:
matching keys, only the keys asked for, Chinese names in UTF-8 and GB18030, identifiers stable
across a reschedule, the arrived status after check-in."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydicom
import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import AE

from app.booking.service import BookItem
from app.integrations.dicom.scp import MODALITY_WORKLIST_FIND, VERIFICATION, DicomServer, server_for
from app.integrations.dicom.settings import DicomSettings
from app.services import Services
from tests.helpers import actor_for, future_day, new_patients_with_orders, open_slots

TZ = ZoneInfo("Asia/Shanghai")
NAMES = {"CT1": "张三丰", "CT2": "欧阳娜娜", "MR1": "王𠮷"}  # 𠮷: outside the BMP, 4 bytes in GB18030


@pytest.fixture
async def dicom(services: Services) -> AsyncIterator[tuple[str, int]]:
    server: DicomServer = server_for(services, DicomSettings(port=0))
    address = server.start()
    yield address
    await server.stop()


async def _book(services: Services, exam: str, day: date, room: str, name: str) -> dict[str, Any]:
    clerk = await actor_for(services, "clerk")
    ((pid, (order,)),) = await new_patients_with_orders(services.pool, 1, [exam])
    await services.pool.execute(
        "UPDATE patient SET name = $2, gender = 'F', birth_date = DATE '1975-03-09' WHERE id = $1", pid, name
    )
    if exam.startswith("MR-"):
        await services.pool.execute(
            """INSERT INTO patient_fact (patient_id, fact, value, source)
               VALUES ($1, 'implants_declared', 'true'::jsonb, 'his')""",
            pid,
        )
    slot = next(s for s in await open_slots(services, exam, day, limit=400) if s["resource_id"] == room)
    (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(order, int(slot["id"]))])
    row = await services.pool.fetchrow(
        "SELECT o.accession_no, o.study_uid, p.mrn FROM exam_order o JOIN patient p ON p.id = o.patient_id"
        " WHERE o.id = $1",
        order,
    )
    assert row is not None and row["accession_no"] and row["study_uid"]
    return {
        "patient_id": pid,
        "order_id": order,
        "appointment_id": appt.appointment_id,
        "slot": slot,
        "accession": row["accession_no"],
        "study_uid": row["study_uid"],
        "mrn": row["mrn"],
        "name": name,
    }


@pytest.fixture
async def booked(services: Services) -> dict[str, dict[str, Any]]:
    day = future_day(services, 2)
    out = {}
    for room, exam in (("CT1", "CT-HEAD"), ("CT2", "CT-HEAD"), ("MR1", "MR-HEAD")):
        out[room] = await _book(services, exam, day, room, NAMES[room])
    return out


def _findscu_sync(address: tuple[str, int], out: Path, keys: tuple[str, ...]) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-W", "-aet", "CT1", "-aec", "HUIYUE", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run([*args, address[0], str(address[1])], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, (done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


async def _findscu(address: tuple[str, int], out: Path, *keys: str) -> list[Dataset]:
    """dcmtk's findscu -W, its responses written to files (-X) and read back with pydicom. In a
    thread: the SCP answers on this event loop."""
    return await asyncio.to_thread(_findscu_sync, address, out, keys)


def _find(address: tuple[str, int], query: Dataset, calling: str = "MR1") -> list[tuple[int, Dataset | None]]:
    """A pynetdicom C-FIND (blocking: run it in a thread, the SCP needs the event loop)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate(address[0], address[1], ae_title="HUIYUE")
    assert assoc.is_established
    try:
        return [(int(status.Status), ds) for status, ds in assoc.send_c_find(query, MODALITY_WORKLIST_FIND)]
    finally:
        assoc.release()


def _local(slot: Any) -> tuple[str, str]:
    at = slot["starts_at"].astimezone(TZ)
    return at.strftime("%Y%m%d"), at.strftime("%H%M%S")


pytestmark = pytest.mark.skipif(shutil.which("findscu") is None, reason="dcmtk's findscu is not installed")


async def test_findscu_gets_the_station_entries_of_the_day_with_the_keys_asked_in_utf8(
    services: Services, dicom: tuple[str, int], booked: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    ct1 = booked["CT1"]
    day, hms = _local(ct1["slot"])
    found = await _findscu(
        dicom,
        tmp_path,
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyInstanceUID",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "PatientWeight",  # asked, unknown to us: comes back empty
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT1",
        f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={day}",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
    )
    assert found, "no worklist entry"
    for ds in found:  # only CT1's entries of that day
        step = ds.ScheduledProcedureStepSequence[0]
        assert step.ScheduledStationAETitle == "CT1" and step.ScheduledProcedureStepStartDate == day
    (mine,) = [ds for ds in found if ds.PatientID == ct1["mrn"]]
    assert mine.SpecificCharacterSet == "ISO_IR 192"
    assert str(mine.PatientName) == "张三丰"
    assert mine.AccessionNumber == ct1["accession"] and mine.RequestedProcedureID == ct1["accession"]
    assert mine.StudyInstanceUID == ct1["study_uid"]
    assert mine.RequestedProcedureDescription == "头颅CT平扫"
    assert "PatientWeight" in mine and mine.PatientWeight is None
    assert "PatientBirthDate" not in mine and "PatientSex" not in mine  # not asked, not returned
    step = mine.ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepStartTime == hms  # Asia/Shanghai
    assert step.Modality == "CT" and step.ScheduledProcedureStepDescription == "头颅CT平扫"
    assert step.ScheduledProcedureStepID == f"A{ct1['appointment_id']:010d}"
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"
    assert "ScheduledStationName" not in step
    others = {booked[r]["mrn"] for r in ("CT2", "MR1")}
    assert not others & {ds.PatientID for ds in found}


async def test_findscu_matches_patient_id_accession_wildcards_and_time_ranges(
    services: Services, dicom: tuple[str, int], booked: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    ct2 = booked["CT2"]
    day, hms = _local(ct2["slot"])
    by_accession = await _findscu(dicom, tmp_path / "a", f"AccessionNumber={ct2['accession']}", "PatientName")
    assert [str(ds.PatientName) for ds in by_accession] == ["欧阳娜娜"]
    assert "ScheduledProcedureStepSequence" not in by_accession[0]
    by_mrn = await _findscu(dicom, tmp_path / "b", f"PatientID={ct2['mrn']}", "AccessionNumber")
    assert [ds.AccessionNumber for ds in by_mrn] == [ct2["accession"]]
    # Chinese wildcard on the name, a time range around the slot, the modality
    hh = int(hms[:2])
    window = f"{hh:02d}00-{hh:02d}59"
    named = await _findscu(
        dicom,
        tmp_path / "c",
        "SpecificCharacterSet=ISO_IR 192",
        "PatientName=欧阳*",
        "PatientID",
        f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={day}",
        f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime={window}",
        "ScheduledProcedureStepSequence[0].Modality=CT",
    )
    assert ct2["mrn"] in {ds.PatientID for ds in named}
    assert all(str(ds.PatientName).startswith("欧阳") for ds in named)
    outside = f"{(hh + 1) % 24:02d}00-{(hh + 1) % 24:02d}59"
    missed = await _findscu(
        dicom,
        tmp_path / "d",
        f"PatientID={ct2['mrn']}",
        f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={day}",
        f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime={outside}",
    )
    assert missed == []
    wrong_modality = await _findscu(
        dicom, tmp_path / "e", f"PatientID={ct2['mrn']}", "ScheduledProcedureStepSequence[0].Modality=MR"
    )
    assert wrong_modality == []


async def test_pynetdicom_gets_gb18030_names_when_asked_and_an_empty_step_sequence_in_full(
    services: Services, dicom: tuple[str, int], booked: dict[str, dict[str, Any]]
) -> None:
    mr = booked["MR1"]
    day = mr["slot"]["day"]
    query = Dataset()
    query.SpecificCharacterSet = "GB18030"
    query.PatientName = "王*"
    query.PatientID = ""
    query.PatientBirthDate = ""
    query.PatientSex = ""
    query.StudyInstanceUID = ""
    step = Dataset()
    step.Modality = "MR"
    step.ScheduledProcedureStepStartDate = f"{day:%Y%m%d}-{day + timedelta(days=1):%Y%m%d}"
    step.ScheduledStationAETitle = "MR?"
    step.ScheduledProcedureStepStartTime = ""
    query.ScheduledProcedureStepSequence = [step]
    results = await asyncio.to_thread(_find, dicom, query)
    assert results[-1][0] == 0x0000
    pending = [ds for status, ds in results if status == 0xFF00 and ds is not None]
    (mine,) = [ds for ds in pending if ds.PatientID == mr["mrn"]]
    assert mine.SpecificCharacterSet == "GB18030"
    assert str(mine.PatientName) == "王𠮷"
    assert mine.PatientBirthDate == "19750309" and mine.PatientSex == "F"
    assert mine.StudyInstanceUID == mr["study_uid"]
    assert mine.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "MR1"

    # An empty step sequence asks for the whole step.
    query = Dataset()
    query.AccessionNumber = mr["accession"]
    query.ScheduledProcedureStepSequence = []
    ((status, full), (done, _)) = await asyncio.to_thread(_find, dicom, query)
    assert (status, done) == (0xFF00, 0x0000) and full is not None
    item = full.ScheduledProcedureStepSequence[0]
    assert item.ScheduledStationAETitle == "MR1" and item.Modality == "MR"
    assert item.ScheduledProcedureStepDescription == "头颅MRI平扫" and item.ScheduledProcedureStepStatus == "SCHEDULED"
    assert full.SpecificCharacterSet == "ISO_IR 192"

    # A malformed date is refused with a failure status, not an empty answer.
    query = Dataset()
    query.PatientID = ""
    step = Dataset()
    step.add(DataElement(0x00400002, "DA", "2026-13-45", validation_mode=config.IGNORE))
    query.ScheduledProcedureStepSequence = [step]
    ((status, _),) = await asyncio.to_thread(_find, dicom, query)
    assert status == 0xA900


async def test_reschedule_keeps_accession_and_study_uid_and_check_in_shows_arrived(
    services: Services, dicom: tuple[str, int], booked: dict[str, dict[str, Any]]
) -> None:
    ct1 = booked["CT1"]
    clerk = await actor_for(services, "clerk")
    later_day = future_day(services, 3)
    new_slot = next(s for s in await open_slots(services, "CT-HEAD", later_day, limit=400) if s["resource_id"] == "CT2")
    moved = await services.booking.reschedule(clerk, ct1["appointment_id"], int(new_slot["id"]), "desk", "患者改期")

    def by_accession() -> Dataset:
        query = Dataset()
        query.AccessionNumber = ct1["accession"]
        query.StudyInstanceUID = ""
        query.PatientName = ""
        step = Dataset()
        step.ScheduledStationAETitle = ""
        step.ScheduledProcedureStepStartDate = ""
        step.ScheduledProcedureStepStartTime = ""
        step.ScheduledProcedureStepID = ""
        step.ScheduledProcedureStepStatus = ""
        query.ScheduledProcedureStepSequence = [step]
        results = _find(dicom, query)
        (entry,) = [ds for status, ds in results if status == 0xFF00 and ds is not None]
        return entry

    entry = await asyncio.to_thread(by_accession)
    assert entry.AccessionNumber == ct1["accession"] and entry.StudyInstanceUID == ct1["study_uid"]
    step = entry.ScheduledProcedureStepSequence[0]
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == _local(new_slot)
    assert step.ScheduledStationAETitle == "CT2"
    assert step.ScheduledProcedureStepID == f"A{moved.appointment_id:010d}"
    row = await services.pool.fetchrow("SELECT accession_no, study_uid FROM exam_order WHERE id = $1", ct1["order_id"])
    assert row is not None and (row["accession_no"], row["study_uid"]) == (ct1["accession"], ct1["study_uid"])

    # Paid and checked in on the day: the step is ARRIVED; once started it leaves the worklist.
    await services.orders.apply(clerk, ct1["order_id"], "pay", "", "desk")
    services.queues.clock = lambda: new_slot["starts_at"].timestamp() - 600
    await services.queues.check_in(clerk, moved.appointment_id, "desk")
    entry = await asyncio.to_thread(by_accession)
    assert entry.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "ARRIVED"
    tech = await actor_for(services, "tech")
    await services.queues.act(tech, "CT2", "start", moved.appointment_id, day=later_day)
    query = Dataset()
    query.AccessionNumber = ct1["accession"]
    results = await asyncio.to_thread(_find, dicom, query)
    assert [status for status, _ in results] == [0x0000]


async def test_only_our_called_ae_and_when_configured_only_known_stations_may_associate(services: Services) -> None:
    server = server_for(services, DicomSettings(port=0, known_callers_only=True), known_callers=["CT1", "MR1"])
    host, port = server.start()

    def try_echo(calling: str, called: str) -> int | None:
        ae = AE(ae_title=calling)
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate(host, port, ae_title=called)
        if not assoc.is_established:
            return None
        try:
            return int(assoc.send_c_echo().Status)
        finally:
            assoc.release()

    try:
        assert await asyncio.to_thread(try_echo, "CT1", "HUIYUE") == 0x0000
        assert await asyncio.to_thread(try_echo, "STRANGER", "HUIYUE") is None
        assert await asyncio.to_thread(try_echo, "CT1", "OTHERPACS") is None
    finally:
        await server.stop()


def test_matching_rules_of_dates_times_names_and_wildcards() -> None:
    from datetime import datetime

    from app.integrations.dicom.worklist import Entry, matches, parse_query, string_matches

    entry = Entry(
        appointment_id=1,
        top={"PatientName": "欧阳娜娜", "PatientID": "M001", "StudyInstanceUID": "2.25.7"},
        step={"Modality": "CT", "ScheduledStationAETitle": "CT1"},
        starts=datetime(2026, 12, 1, 15, 30),
    )

    def query(date: str = "", time: str = "", **top: str) -> Dataset:
        ds = Dataset()
        for k, v in top.items():
            setattr(ds, k, v)
        step = Dataset()
        step.ScheduledProcedureStepStartDate = date
        step.ScheduledProcedureStepStartTime = time
        ds.ScheduledProcedureStepSequence = [step]
        return ds

    def hit(ds: Dataset) -> bool:
        return matches(parse_query(ds), entry)

    assert hit(query())  # universal
    assert hit(query("20261201")) and not hit(query("20261202"))
    assert hit(query("20261130-")) and hit(query("-20261201")) and not hit(query("20261202-"))
    # a date and a time range together are one date-time range
    assert hit(query("20261130-20261201", "1400-1600"))
    assert hit(query("20261201-20261202", "1500-0900"))
    assert not hit(query("20261201-20261202", "1600-0900"))
    assert not hit(query("20261201", "0800-1200"))
    assert hit(query(time="15")) and not hit(query(time="16-"))  # a time alone: that hour / from 16:00
    assert hit(query(PatientName="欧阳*")) and hit(query(PatientName="欧?娜娜")) and not hit(query(PatientName="李*"))
    assert hit(query(PatientName="欧阳^娜娜"))  # component separators ignored
    assert hit(query(StudyInstanceUID="2.25.1\\2.25.7")) and not hit(query(StudyInstanceUID="2.25.1"))
    assert not hit(query(PatientID="m001"))  # LO: case-sensitive
    assert string_matches("C*", "CT1") and string_matches("CT?", "CT1") and not string_matches("C?", "CT1")
