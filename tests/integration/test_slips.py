"""Appointment slips: the PDF opens, its barcode decodes to the appointment number, the printable
page's data carries the same; only live appointments of patients the caller may act for, audited."""

from __future__ import annotations

import httpx
import pypdfium2 as pdfium
import zxingcpp

from app.booking.service import BookItem
from app.main import create_app
from app.services import Services
from app.slips.render import appointment_number
from tests.helpers import actor_for, future_day, new_patients_with_orders, open_slots, token_for


def decode_pages(pdf: bytes) -> list[list[str]]:
    """Per page of the PDF, the barcodes read from its rendering (300 dpi)."""
    out = []
    doc = pdfium.PdfDocument(pdf)
    for page in doc:
        image = page.render(scale=300 / 72).to_pil()
        out.append([(r.text, r.format.name) for r in zxingcpp.read_barcodes(image)])
    return [[text for text, fmt in page if fmt == "Code128"] for page in out]


async def test_a_batch_of_slips_prints_one_decodable_barcode_per_appointment(services: Services) -> None:
    day = future_day(services)
    nurse = await actor_for(services, "nurse")
    ids: list[int] = []
    for exam in ("ECG-REST", "US-THYROID", "CT-HEAD"):
        (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, [exam], patient_class="inpatient")
        slot = (await open_slots(services, exam, day, limit=1))[0]
        (appt,) = await services.booking.book(nurse, pid, "ward", [BookItem(order, slot["id"])])
        ids.append(appt.appointment_id)
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        headers = {"authorization": f"Bearer {await token_for(services, 'nurse')}"}
        r = await c.post("/api/v1/slips", json={"appointment_ids": ids}, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
        pages = decode_pages(r.content)
        assert sorted(p[0] for p in pages) == sorted(appointment_number(i) for i in ids)
        assert all(len(p) == 1 for p in pages)

        r = await c.get(f"/api/v1/appointments/{ids[0]}/slip.pdf", headers=headers)
        assert r.status_code == 200 and decode_pages(r.content) == [[appointment_number(ids[0])]]

        r = await c.post("/api/v1/slips/data", json={"appointment_ids": ids[:1]}, headers=headers)
        (data,) = r.json()
        assert data["number"] == appointment_number(ids[0]) and data["barcode_svg"].startswith("<svg")
        assert "*" in data["patient"] and "测试患者" not in data["patient"]  # masked on paper too
        audited = await services.pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'print_slip' AND object_id LIKE $1", f"%{ids[0]}%"
        )
        assert audited >= 3


async def test_slips_only_for_live_appointments_the_caller_may_see(services: Services) -> None:
    day = future_day(services)
    clerk = await actor_for(services, "clerk")
    (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, ["ECG-REST"])
    slot = (await open_slots(services, "ECG-REST", day, limit=1))[0]
    (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(order, slot["id"])])
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        patient = {"authorization": f"Bearer {await token_for(services, 'patient')}"}  # 萧子轩, not this patient
        r = await c.post("/api/v1/slips", json={"appointment_ids": [appt.appointment_id]}, headers=patient)
        assert r.status_code == 403
        clerk_h = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
        r = await c.post("/api/v1/slips", json={"appointment_ids": [999_999]}, headers=clerk_h)
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        r = await c.post("/api/v1/slips", json={"appointment_ids": []}, headers=clerk_h)
        assert r.status_code == 422
        await services.booking.cancel(clerk, appt.appointment_id, "desk", "患者要求")
        r = await c.post("/api/v1/slips", json={"appointment_ids": [appt.appointment_id]}, headers=clerk_h)
        assert r.status_code == 422 and "不能打印" in r.json()["title"] + r.json().get("detail", "")
