"""The medical rules on the booking path: DOMAIN.md's cases refused with the rule id and a Chinese
explanation, overrides recorded, and concurrent bookings of one patient serialised."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from app.booking.service import BookItem
from app.db import rules_repo
from app.errors import RuleViolation
from app.planning.rule_service import Override
from app.services import Services
from tests.helpers import actor_for, assert_redis_matches_postgres, future_day, new_patients_with_orders, open_slots


async def morning_slot(services: Services, exam: str, day: date, nth: int = 0) -> int:
    """The nth open slot of the day for the exam that starts before 11:00 (fasting exams are morning ones)."""
    slots = await open_slots(services, exam, day)
    morning = [s["id"] for s in slots if s["starts_at"].astimezone(services.reconciler.tz).hour < 11]
    return int(morning[nth])


async def test_barium_meal_blocks_an_abdominal_ct_within_7_days_after_it(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    d1, d2 = future_day(services, 1), future_day(services, 3)
    [(pid, [barium, ct])] = await new_patients_with_orders(services.pool, 1, ["DX-BARIUM", "CT-ABD"])
    await services.booking.book(clerk, pid, "desk", [BookItem(barium, await morning_slot(services, "DX-BARIUM", d1))])
    with pytest.raises(RuleViolation) as err:
        await services.booking.book(clerk, pid, "desk", [BookItem(ct, await morning_slot(services, "CT-ABD", d2))])
    v = err.value.extra["violations"]
    assert [x["rule_id"] for x in v] == ["R04-BARIUM-THEN-CT-7D"] and not v[0]["overridable"]
    assert "钡" in err.value.message and "7天" in err.value.message
    assert await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", ct) == "ordered"
    await assert_redis_matches_postgres(services, d2)


async def test_a_ct_before_the_barium_meal_is_allowed(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    d1, d2 = future_day(services, 1), future_day(services, 3)
    [(pid, [barium, ct])] = await new_patients_with_orders(services.pool, 1, ["DX-BARIUM", "CT-ABD"])
    await services.booking.book(clerk, pid, "desk", [BookItem(barium, await morning_slot(services, "DX-BARIUM", d2))])
    await services.booking.book(clerk, pid, "desk", [BookItem(ct, await morning_slot(services, "CT-ABD", d1))])


async def test_past_appointments_count(services: Services) -> None:
    """A barium meal done yesterday blocks a CT today (the appointment is in the past)."""
    clerk = await actor_for(services, "clerk")
    today = services.reconciler.today()
    [(pid, [barium, ct])] = await new_patients_with_orders(services.pool, 1, ["DX-BARIUM", "CT-ABD"])
    await services.pool.execute(
        """INSERT INTO appointment (hospital_id, order_id, patient_id, slot_id, exam_code, resource_id, day, starts_at,
                                    ends_at, channel, pool, hold_id)
           SELECT 'h1', $1, $2, s.id, 'DX-BARIUM', s.resource_id, s.day, s.starts_at - interval '1 day',
                  s.ends_at - interval '1 day', 'desk', 'open', 'past'
             FROM slot s WHERE s.resource_id = 'DR1' AND s.day = $3 ORDER BY s.starts_at LIMIT 1""",
        barium,
        pid,
        future_day(services, 1),
    )
    day = future_day(services, 2)
    with pytest.raises(RuleViolation) as err:
        await services.booking.book(clerk, pid, "desk", [BookItem(ct, await morning_slot(services, "CT-ABD", day))])
    assert err.value.extra["violations"][0]["rule_id"] == "R04-BARIUM-THEN-CT-7D"
    _ = today


async def test_pacemaker_blocks_mri_even_for_a_doctor_with_a_reason(services: Services) -> None:
    doctor = await actor_for(services, "doctor")
    day = future_day(services, 2)
    [(pid, [mr])] = await new_patients_with_orders(services.pool, 1, ["MR-HEAD"])
    await rules_repo.add_facts(services.pool, pid, {"pacemaker": True, "implants_declared": True}, "desk", None)
    slot = (await open_slots(services, "MR-HEAD", day))[0]["id"]
    with pytest.raises(RuleViolation) as err:
        await services.booking.book(
            doctor, pid, "clinic", [BookItem(mr, slot)], overrides=[Override("R13-MRI-PACEMAKER", "病情需要")]
        )
    assert "起搏器" in err.value.message
    assert err.value.extra["violations"][0]["rule_id"] == "R13-MRI-PACEMAKER"


async def test_painless_gastroscopy_needs_a_passed_assessment(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    day = future_day(services, 2)
    [(pid, [gastro])] = await new_patients_with_orders(services.pool, 1, ["ES-GASTRO-PAINLESS"])
    slot = await morning_slot(services, "ES-GASTRO-PAINLESS", day)
    with pytest.raises(RuleViolation) as err:
        await services.booking.book(clerk, pid, "desk", [BookItem(gastro, slot)])
    assert err.value.extra["violations"][0]["rule_id"] == "R11-PAINLESS-NEEDS-ASSESSMENT"
    assert "麻醉评估" in err.value.message
    await rules_repo.add_facts(services.pool, pid, {"anaesthesia_assessment": "passed"}, "clinician", None)
    [booked] = await services.booking.book(clerk, pid, "desk", [BookItem(gastro, slot)])
    assert booked.order_id == gastro


async def test_warning_rules_are_overridden_only_by_their_roles_with_a_reason(services: Services) -> None:
    clerk, doctor = await actor_for(services, "clerk"), await actor_for(services, "doctor")
    day = future_day(services, 2)
    [(pid, [ct])] = await new_patients_with_orders(services.pool, 1, ["CT-ABD-C"])
    await rules_repo.add_facts(services.pool, pid, {"egfr": 25}, "his", None)
    slot = await morning_slot(services, "CT-ABD-C", day)
    with pytest.raises(RuleViolation) as err:
        await services.booking.book(
            clerk, pid, "desk", [BookItem(ct, slot)], overrides=[Override("R24-IODINE-EGFR", "医生口头同意")]
        )
    assert err.value.extra["violations"] == [
        {
            "rule_id": "R24-IODINE-EGFR",
            "kind": "contraindication",
            "severity": "warn",
            "message": err.value.message,
            "exams": [str(ct)],
            "overridable": False,
        }
    ]
    with pytest.raises(RuleViolation) as err:
        await services.booking.book(doctor, pid, "clinic", [BookItem(ct, slot)])
    assert err.value.extra["violations"][0]["overridable"] is True
    [booked] = await services.booking.book(
        doctor, pid, "clinic", [BookItem(ct, slot)], overrides=[Override("R24-IODINE-EGFR", "水化后检查，已评估")]
    )
    row = await services.pool.fetchrow("SELECT * FROM rule_override WHERE order_id = $1", ct)
    assert (
        row["rule_id"] == "R24-IODINE-EGFR" and row["actor_role"] == "doctor" and row["reason"] == "水化后检查，已评估"
    )
    assert booked.order_id == ct


async def test_two_iodine_contrast_exams_must_be_a_week_apart(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    d1, d2 = future_day(services, 1), future_day(services, 4)
    [(pid, [chest, abd])] = await new_patients_with_orders(services.pool, 1, ["CT-CHEST-C", "CT-ABD-C"])
    await services.booking.book(clerk, pid, "desk", [BookItem(chest, await morning_slot(services, "CT-CHEST-C", d2))])
    with pytest.raises(RuleViolation) as err:
        # Before the other one counts too: the rule is undirected.
        await services.booking.book(clerk, pid, "desk", [BookItem(abd, await morning_slot(services, "CT-ABD-C", d1))])
    assert err.value.extra["violations"][0]["rule_id"] == "R06-IODINE-TWICE-7D"


async def test_a_bundle_is_checked_as_a_whole(services: Services) -> None:
    """Gastroscopy before the upper-abdomen ultrasound on the same morning is refused."""
    clerk = await actor_for(services, "clerk")
    day = future_day(services, 2)
    [(pid, [us, gastro])] = await new_patients_with_orders(services.pool, 1, ["US-ABD-UPPER", "ES-GASTRO"])
    gastro_slots = [s for s in await open_slots(services, "ES-GASTRO", day)]
    us_slots = await open_slots(services, "US-ABD-UPPER", day)
    early_gastro = gastro_slots[0]
    late_us = next(s for s in us_slots if s["starts_at"] >= early_gastro["ends_at"])
    with pytest.raises(RuleViolation) as err:
        await services.booking.book(
            clerk, pid, "desk", [BookItem(us, late_us["id"]), BookItem(gastro, early_gastro["id"])]
        )
    assert "R01-US-BEFORE-GASTRO" in {v["rule_id"] for v in err.value.extra["violations"]}
    await assert_redis_matches_postgres(services, day)


async def test_concurrent_bookings_of_one_patient_are_checked_one_after_the_other(services: Services) -> None:
    """Two clerks book two iodine contrast exams for one patient at the same moment on different
    days: both rule checks see no conflict, but only one commit can win; the other is re-checked
    against the winner and refused."""
    clerk_a, clerk_b = await actor_for(services, "clerk"), await actor_for(services, "clerk")
    d1, d2 = future_day(services, 1), future_day(services, 2)
    for n in range(5):
        [(pid, [chest, abd])] = await new_patients_with_orders(services.pool, 1, ["CT-CHEST-C", "CT-ABD-C"])
        s1, s2 = await morning_slot(services, "CT-CHEST-C", d1, n), await morning_slot(services, "CT-ABD-C", d2, n)
        results = await asyncio.gather(
            services.booking.book(clerk_a, pid, "desk", [BookItem(chest, s1)]),
            services.booking.book(clerk_b, pid, "desk", [BookItem(abd, s2)]),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, list)]
        refused = [r for r in results if isinstance(r, RuleViolation)]
        assert len(ok) == 1 and len(refused) == 1, results
        assert (
            await services.pool.fetchval(
                "SELECT count(*) FROM appointment WHERE patient_id = $1 AND status = 'booked'", pid
            )
            == 1
        )
    await assert_redis_matches_postgres(services, d1)
    await assert_redis_matches_postgres(services, d2)


async def test_a_commit_with_a_stale_patient_version_is_refused(services: Services) -> None:
    """The guard behind the test above, directly: hy_book refuses a version that moved on."""
    import time
    import uuid
    from datetime import UTC, datetime

    from app.db import booking_repo
    from app.errors import PatientChanged

    clerk = await actor_for(services, "clerk")
    day = future_day(services, 2)
    [(pid, [o1, o2])] = await new_patients_with_orders(services.pool, 1, ["ECG-REST", "US-THYROID"])
    version = await services.pool.fetchval("SELECT booking_version FROM patient WHERE id = $1", pid)
    await services.booking.book(
        clerk, pid, "desk", [BookItem(o1, (await open_slots(services, "ECG-REST", day))[0]["id"])]
    )
    slot = (await open_slots(services, "US-THYROID", day))[-1]
    with pytest.raises(PatientChanged):
        await booking_repo.book(
            services.pool,
            hold_id=uuid.uuid4().hex,
            patient_id=pid,
            channel="desk",
            items=[{"order_id": o2, "slot_id": slot["id"], "pool": "open"}],
            deadline=datetime.fromtimestamp(time.time() + 30, UTC),
            actor=clerk,
            reason="",
            version=version,
        )
    assert await services.pool.fetchval("SELECT count(*) FROM appointment WHERE order_id = $1", o2) == 0


async def test_a_resource_added_after_start_up_is_booked_without_a_restart(services: Services) -> None:
    """A room added straight in PostgreSQL (the worker's catalogue does not know it yet) is picked
    up by the rule check instead of failing the booking."""
    clerk = await actor_for(services, "clerk")
    day = future_day(services, 2)
    await services.pool.execute(
        """INSERT INTO resource (id, hospital_id, department_id, campus_id, kind, modality, name)
           VALUES ('ECG-NEW', 'h1', 'ECG', 'main', 'room', 'ECG', '心电新诊室')"""
    )
    await services.pool.execute("INSERT INTO exam_capability VALUES ('ECG-REST', 'ECG-NEW')")
    slot = await services.pool.fetchval(
        """INSERT INTO slot (hospital_id, resource_id, day, starts_at, ends_at, capacity)
           SELECT 'h1', 'ECG-NEW', day, starts_at, ends_at, 3 FROM slot
            WHERE resource_id = 'ECG1' AND day = $1 ORDER BY starts_at LIMIT 1 RETURNING id""",
        day,
    )
    await services.reconciler.reconcile_day(day)
    assert "ECG-NEW" not in services.catalogue.resources
    [(pid, [order])] = await new_patients_with_orders(services.pool, 1, ["ECG-REST"])
    [booked] = await services.booking.book(clerk, pid, "desk", [BookItem(order, slot)])
    assert booked.resource_id == "ECG-NEW" and "ECG-NEW" in services.catalogue.resources
