"""The ward nurse station: the ward's inpatients with pending orders (masked), a batch of five
booked on the ward channel with its reserved quota first, and one PDF of their slips whose
barcodes decode to the appointment numbers."""

from __future__ import annotations

import httpx

from app.main import create_app
from app.services import Services
from app.slips.render import appointment_number
from tests.helpers import token_for
from tests.integration.test_slips import decode_pages


async def test_a_nurse_batch_books_five_inpatients_and_prints_their_slips(services: Services) -> None:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        nurse = {"authorization": f"Bearer {await token_for(services, 'nurse')}"}
        listed = (await c.get("/api/v1/ward/patients", headers=nurse)).json()
        assert len(listed) >= 5, listed
        assert all("*" in p["name"] for p in listed)  # masked on the station's screen
        chosen = [p["patient_id"] for p in listed[:5]]
        r = await c.post("/api/v1/ward/batch", json={"patient_ids": chosen}, headers=nurse)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["patient_id"] for x in body["results"]] == chosen
        assert body["booked_patients"] == 5, body
        ids = body["appointment_ids"]
        rows = await services.pool.fetch(
            """SELECT a.channel, a.pool, a.slot_id, s.quotas FROM appointment a JOIN slot s ON s.id = a.slot_id
                WHERE a.id = ANY($1::bigint[])""",
            ids,
        )
        assert {r["channel"] for r in rows} == {"ward"}
        # The ward's reserved quota first: wherever a slot reserves ward places, the batch's bookings
        # in it took those before the open pool (two patients may share a slot with one ward place:
        # the planner puts them in the earliest, which late in the morning is the one under way).
        for slot_id in {r["slot_id"] for r in rows}:
            mine = [r for r in rows if r["slot_id"] == slot_id]
            reserved = dict(mine[0]["quotas"]).get("ward", 0)
            assert sum(r["pool"] == "ward" for r in mine) == min(reserved, len(mine)), [dict(r) for r in mine]
        left = (await c.get("/api/v1/ward/patients", headers=nurse)).json()
        fully = {x["patient_id"] for x in body["results"] if not x["unplaced"]}
        assert fully and not {p["patient_id"] for p in left} & fully  # nothing of theirs is pending now

        r = await c.post("/api/v1/slips", json={"appointment_ids": ids}, headers=nurse)
        assert r.status_code == 200
        assert sorted(code for page in decode_pages(r.content) for code in page) == sorted(
            appointment_number(i) for i in ids
        )

        # Someone else's patient is refused whole, nothing booked.
        r = await c.post("/api/v1/ward/batch", json={"patient_ids": [chosen[0], 1]}, headers=nurse)
        assert r.status_code == 422 and r.json()["code"] == "validation_failed"
        clerk = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
        assert (await c.get("/api/v1/ward/patients", headers=clerk)).status_code == 403
