"""ID numbers and phones encrypted at rest: no plaintext in PostgreSQL, look-ups through the blind
index (desk, self-service, HL7), the start-up step that encrypts leftover plaintext, key rotation,
clear failures with a wrong key, and the de-identified statistics export."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import httpx
import pytest

from app.api import stats
from app.booking.service import BookItem
from app.db import patient_repo
from app.demo.data import PATIENTS
from app.demo.seed import seed_demo
from app.integrations.hl7.inbound import Hl7Inbound
from app.main import create_app
from app.security.crypto import KeyRing, PiiDecryptError, PiiKeyError, pii_keys
from app.services import Services
from tests.helpers import actor_for, future_day, new_patients_with_orders, open_slots, token_for

ID_NUMBER = "11010519491231002X"


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    if not any(getattr(r, "path", "") == "/api/v1/stats/export" for r in app.routes):
        app.router.routes.extend(stats.routes)  # until app/main.py lists app.api.stats
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        yield c


async def _no_plaintext_anywhere(conn: asyncpg.Connection | asyncpg.Pool, secrets: list[str]) -> None:
    assert await conn.fetchval("SELECT count(*) FROM patient WHERE id_number IS NOT NULL OR phone IS NOT NULL") == 0
    for row in await conn.fetch("SELECT p::text AS text, id_number_enc, phone_enc FROM patient p"):
        for secret in secrets:
            assert secret not in row["text"]
            for blob in (row["id_number_enc"], row["phone_enc"]):
                assert blob is None or secret.encode() not in blob


async def test_the_patient_table_holds_no_plaintext_id_number_or_phone(services: Services) -> None:
    secrets = [p.id_number for p in PATIENTS] + [p.phone for p in PATIENTS]
    await _no_plaintext_anywhere(services.pool, secrets)
    rows = await services.pool.fetch("SELECT mrn, id_number_enc, id_number_idx, phone_enc, phone_idx FROM patient")
    assert len(rows) == len(PATIENTS)
    keys = pii_keys(services.settings)
    by_mrn = {p.mrn: p for p in PATIENTS}
    for row in rows:
        p = by_mrn[row["mrn"]]
        assert keys.open_id_number(row["id_number_enc"]) == p.id_number
        assert keys.open_phone(row["phone_enc"]) == p.phone
        assert bytes(row["id_number_idx"]) == keys.id_number_index(p.id_number)
        assert bytes(row["phone_idx"]) == keys.phone_index(p.phone)  # what the SMS login looks up


async def test_desk_and_self_service_find_the_patient_through_the_blind_index(
    services: Services, client: httpx.AsyncClient
) -> None:
    who = PATIENTS[6]
    clerk = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
    r = await client.post("/api/v1/patients/lookup", json={"card": who.id_number.lower()}, headers=clerk)
    assert r.status_code == 200, r.text
    found = r.json()
    assert found["mrn"] == who.mrn
    assert found["id_number_masked"] == who.id_number[:3] + "*" * 11 + who.id_number[-4:]
    assert found["phone_masked"] == who.phone[:3] + "****" + who.phone[-4:]
    assert who.id_number not in r.text and who.phone not in r.text and who.name not in r.text

    r = await client.post("/api/v1/self/identify", json={"id_number": who.id_number, "name": who.name})
    assert r.status_code == 200, r.text
    me = {"authorization": f"Bearer {r.json()['token']}"}
    mine = await client.get(f"/api/v1/patients/{found['id']}/orders", headers=me)
    assert mine.status_code == 200
    assert mine.json()["patient"]["id_number_masked"] == found["id_number_masked"]  # his own, masked too
    assert who.id_number not in mine.text and who.phone not in mine.text

    audit = await services.pool.fetch("SELECT detail::text AS d FROM audit_log WHERE patient_id = $1", found["id"])
    assert audit and all(who.id_number not in a["d"] and who.phone not in a["d"] for a in audit)


async def test_hl7_registration_and_update_store_encrypted_values(services: Services) -> None:
    inbound = Hl7Inbound(services.pool, services.booking, hospital_id="h1", keys=pii_keys(services.settings))

    def adt(control: str, event: str, phone: str, id_number: str = "") -> bytes:
        msh = f"MSH|^~\\&|HIS|H1|HUIYUE|H1|20261130120000||ADT^{event}^ADT_A01|{control}|P|2.5||||||UNICODE UTF-8"
        pid = f"PID|1||PII-001^^^H1^MR||王^小明||19800101|M|||||{phone}||||||{id_number}"
        return "\r".join([msh, f"EVN|{event}", pid]).encode()

    assert b"|AA|" in await inbound.handle(adt("PII-1", "A04", "13812345678", ID_NUMBER), "test")
    assert b"|AA|" in await inbound.handle(adt("PII-2", "A08", "13900001111"), "test")
    await _no_plaintext_anywhere(services.pool, [ID_NUMBER, "13812345678", "13900001111"])
    keys = pii_keys(services.settings)
    found = await patient_repo.find_patient(services.pool, keys, None, ID_NUMBER)
    assert found is not None and found.mrn == "PII-001"
    assert (found.id_number, found.phone) == (ID_NUMBER, "13900001111")


async def test_the_start_up_step_encrypts_leftover_plaintext_once(services: Services) -> None:
    """Rows written in plaintext (before migration 0015, or by a writer outside app/) are encrypted
    and emptied by protect_pii; a second run finds nothing to do."""
    keys = pii_keys(services.settings)
    pid = await services.pool.fetchval(
        """INSERT INTO patient (hospital_id, mrn, name, gender, birth_date, id_number, phone)
           VALUES ('h1', 'LEGACY-1', '旧数据', 'F', DATE '1949-12-31', $1, '13712345678') RETURNING id""",
        ID_NUMBER.lower(),
    )
    # A legacy writer changed the phone of a patient already encrypted: the plaintext is newer.
    seeded = PATIENTS[2]
    await services.pool.execute("UPDATE patient SET phone = '13600000000' WHERE mrn = $1", seeded.mrn)
    assert await patient_repo.find_patient(services.pool, keys, None, ID_NUMBER) is None  # not indexed yet
    async with services.pool.acquire() as conn:
        report = await patient_repo.protect_pii(conn, keys)
        assert report.encrypted == 2
        assert (await patient_repo.protect_pii(conn, keys)).encrypted == 0
    # What `python -m app serve` runs after the migrations (and `encrypt-pii --reencrypt`): nothing left.
    assert services.settings.database.url is not None
    again_report = await patient_repo.protect_database(services.settings.database.url, keys, reencrypt=True)
    assert again_report == patient_repo.PiiReport(encrypted=0, reencrypted=0)
    await _no_plaintext_anywhere(services.pool, [ID_NUMBER, "13712345678", "13600000000"])
    found = await patient_repo.find_patient(services.pool, keys, None, ID_NUMBER)
    assert found is not None and (found.id, found.id_number, found.phone) == (pid, ID_NUMBER, "13712345678")
    again = await patient_repo.find_patient(services.pool, keys, seeded.mrn, None)
    assert again is not None and (again.id_number, again.phone) == (seeded.id_number, "13600000000")


async def test_key_rotation_reencrypts_to_the_new_key_and_a_wrong_key_fails_clearly(
    db_conn: asyncpg.Connection,
) -> None:
    k1, k2, index, pseudonym = (os.urandom(32) for _ in range(4))
    old = KeyRing([("k1", k1)], index, pseudonym)
    await seed_demo(db_conn, old)
    who = PATIENTS[9]
    assert await db_conn.fetchval("SELECT count(*) FROM patient WHERE substring(phone_enc FROM 1 FOR 3) = 'k1:'") == 60

    # k2 goes first: new writes use it, the k1 rows still open.
    both = KeyRing([("k2", k2), ("k1", k1)], index, pseudonym)
    found = await patient_repo.find_patient(db_conn, both, None, who.id_number)
    assert found is not None and (found.id_number, found.phone) == (who.id_number, who.phone)

    report = await patient_repo.reencrypt_pii(db_conn, both)
    assert report.reencrypted == len(PATIENTS)
    assert (await patient_repo.reencrypt_pii(db_conn, both)).reencrypted == 0  # idempotent
    prefixes = await db_conn.fetch(
        """SELECT DISTINCT substring(id_number_enc FROM 1 FOR 3) AS a, substring(phone_enc FROM 1 FOR 3) AS b
             FROM patient"""
    )
    assert [(bytes(r["a"]), bytes(r["b"])) for r in prefixes] == [(b"k2:", b"k2:")]
    await _no_plaintext_anywhere(db_conn, [p.id_number for p in PATIENTS] + [p.phone for p in PATIENTS])

    # k1 can now be dropped from HY_PII_KEYS.
    only_new = KeyRing([("k2", k2)], index, pseudonym)
    found = await patient_repo.find_patient(db_conn, only_new, None, who.id_number)
    assert found is not None and found.phone == who.phone

    # The old ring alone no longer opens the rows, and says which key is missing.
    with pytest.raises(PiiKeyError, match="'k2'"):
        await patient_repo.find_patient(db_conn, old, who.mrn, None)
    # Another key under the same id: refused, never garbage.
    wrong = KeyRing([("k2", os.urandom(32))], index, pseudonym)
    with pytest.raises(PiiDecryptError, match="does not decrypt with key 'k2'"):
        await patient_repo.find_patient(db_conn, wrong, who.mrn, None)

    # A new index key needs a re-index: before it the number is not found, after it it is.
    reindexed = KeyRing([("k2", k2)], os.urandom(32), pseudonym)
    assert await patient_repo.find_patient(db_conn, reindexed, None, who.id_number) is None
    assert (await patient_repo.reencrypt_pii(db_conn, reindexed, reindex=True)).reencrypted == len(PATIENTS)
    found = await patient_repo.find_patient(db_conn, reindexed, None, who.id_number)
    assert found is not None and found.mrn == who.mrn


async def _book(services: Services, patient_id: int, order_id: int, exam: str, nth: int) -> int:
    clerk = await actor_for(services, "clerk")
    slot = (await open_slots(services, exam, future_day(services, nth)))[0]
    (appt,) = await services.booking.book(clerk, patient_id, "desk", [BookItem(order_id, int(slot["id"]))])
    return appt.appointment_id


async def test_statistics_export_is_de_identified_and_scoped(services: Services, client: httpx.AsyncClient) -> None:
    who = PATIENTS[7]
    pid = await services.pool.fetchval("SELECT id FROM patient WHERE mrn = $1", who.mrn)
    order = await services.pool.fetchval(
        """INSERT INTO exam_order (order_no, hospital_id, patient_id, exam_code, ordering_department_id,
                                   ordering_doctor, patient_class)
           VALUES ('STATS-1', 'h1', $1, 'DX-CHEST', 'GI', '测试医生', 'outpatient') RETURNING id""",
        pid,
    )
    await _book(services, pid, order, "DX-CHEST", 2)
    ((other, (other_order,)),) = await new_patients_with_orders(services.pool, 1, ["ES-GASTRO"])
    await _book(services, other, other_order, "ES-GASTRO", 2)
    day_from, day_to = services.reconciler.today(), future_day(services, 5)
    query = {"from": str(day_from), "to": str(day_to)}

    admin = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
    r = await client.get("/api/v1/stats/export", params=query, headers=admin)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv") and "attachment" in r.headers["content-disposition"]
    text = r.content.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(stats.COLUMNS)
    keys = pii_keys(services.settings)
    mine = [row for row in rows if row["patient_key"] == keys.pseudonym(pid)]
    assert len(mine) == 1 and mine[0]["exam_code"] == "DX-CHEST" and mine[0]["department"] == "RAD"
    assert mine[0]["sex"] == who.gender and mine[0]["status"] == "booked" and mine[0]["channel"] == "desk"
    age = (future_day(services, 2) - who.birth_date).days // 365
    assert mine[0]["age_band"] in (stats.age_band(age), stats.age_band(age - 1))
    assert mine[0]["exam_hour"].endswith(":00") and int(mine[0]["lead_days"]) >= 0
    assert {row["department"] for row in rows} >= {"RAD", "ENDO"}
    # Nothing that names a patient: no name, MRN, ID number, phone, birth date.
    names = await services.pool.fetch("SELECT name, mrn, birth_date::text AS born FROM patient")
    for p in names:
        assert p["name"] not in text and p["mrn"] not in text and p["born"] not in text
    for p in PATIENTS:
        assert p.id_number not in text and p.phone not in text
    assert (
        await services.pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'export' AND object_type = 'stats.appointments'"
        )
        == 1
    )

    # A department head gets his own department only.
    head = {"authorization": f"Bearer {await token_for(services, 'depthead')}"}
    r = await client.get("/api/v1/stats/export", params=query, headers=head)
    assert r.status_code == 200
    own = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert own and {row["department"] for row in own} == {"RAD"}
    r = await client.get("/api/v1/stats/export", params={**query, "department": "ENDO"}, headers=head)
    assert r.status_code == 403

    clerk = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
    assert (await client.get("/api/v1/stats/export", params=query, headers=clerk)).status_code == 403
    backwards = {"from": str(day_to), "to": str(day_from)}
    assert (await client.get("/api/v1/stats/export", params=backwards, headers=admin)).status_code == 422
    too_long = {"from": str(day_from), "to": str(day_from + timedelta(days=400))}
    assert (await client.get("/api/v1/stats/export", params=too_long, headers=admin)).status_code == 422
    empty = {"from": "2001-01-01", "to": "2001-01-31"}
    r = await client.get("/api/v1/stats/export", params=empty, headers=admin)
    assert r.status_code == 200 and r.content.decode("utf-8-sig").strip() == ",".join(stats.COLUMNS)
