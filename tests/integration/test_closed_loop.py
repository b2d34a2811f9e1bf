"""The closed loop on the real servers: every API transition from every state as PostgreSQL applies
it, a whole order's timeline, check-in refusals, the room queue's actions and their record."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest

from app.booking.service import BookItem
from app.db import order_repo
from app.errors import AppError, CheckInRefused, OrderStateConflict, QueueActionRefused
from app.notify.sweeps import schedule_report_notices
from app.orders import lifecycle
from app.queue import model
from app.services import Services
from tests.helpers import actor_for, assert_redis_matches_postgres, future_day, new_patients_with_orders, open_slots


async def _book(services: Services, exam: str, day: date, room: str, count: int = 1, **kw: Any) -> list[dict[str, Any]]:
    """`count` new patients, each booked into a slot of `room` on `day` by the desk."""
    clerk = await actor_for(services, "clerk")
    slots = [s for s in await open_slots(services, exam, day, limit=400) if s["resource_id"] == room]
    out = []
    for pid, (order,) in await new_patients_with_orders(services.pool, count, [exam], **kw):
        slot = slots.pop(0)
        (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(order, int(slot["id"]))])
        out.append({"patient_id": pid, "order_id": order, "appointment_id": appt.appointment_id, "slot": slot})
    return out


def _at(services: Services, when: float) -> None:
    services.queues.clock = lambda: when


async def _status(services: Services, order_id: int) -> str:
    return str(await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", order_id))


async def test_every_api_transition_from_every_state_is_applied_or_refused_by_postgresql(services: Services) -> None:
    admin = await actor_for(services, "admin")
    made = await new_patients_with_orders(services.pool, len(lifecycle.STATES), ["DX-CHEST"])
    orders = [order for _, (order,) in made]
    checked = 0
    for event in lifecycle.API_EVENTS:
        for order_id, state in zip(orders, lifecycle.STATES, strict=True):
            await services.pool.execute("UPDATE exam_order SET status = $2 WHERE id = $1", order_id, state)
            expected = lifecycle.TRANSITIONS[event].moves.get(state)
            events_before = await services.pool.fetchval(
                "SELECT count(*) FROM order_event WHERE order_id = $1", order_id
            )
            if expected is None:
                with pytest.raises(OrderStateConflict) as refused:
                    await services.orders.apply(admin, order_id, event, "测试", "desk")
                assert lifecycle.STATE_NAMES[state] in refused.value.message
                assert await _status(services, order_id) == state
                after = await services.pool.fetchval("SELECT count(*) FROM order_event WHERE order_id = $1", order_id)
                assert after == events_before  # a refusal changes nothing
            else:
                out = await services.orders.apply(admin, order_id, event, "测试", "desk")
                assert (out["from"], out["to"]) == (state, expected)
                assert await _status(services, order_id) == expected
                row = await services.pool.fetchrow(
                    "SELECT * FROM order_event WHERE order_id = $1 ORDER BY id DESC LIMIT 1", order_id
                )
                assert (row["event"], row["from_status"], row["to_status"]) == (event, state, expected)
                assert row["actor_role"] == "sys_admin" and row["channel"] == "desk" and row["reason"] == "测试"
            checked += 1
    assert checked == len(lifecycle.API_EVENTS) * len(lifecycle.STATES)


async def test_one_order_through_the_whole_loop_has_a_complete_timeline(services: Services) -> None:
    day = future_day(services, 2)
    (b,) = await _book(services, "CT-HEAD", day, "CT1")
    clerk, tech = await actor_for(services, "clerk"), await actor_for(services, "tech")
    doctor = await actor_for(services, "doctor")
    order, appt = b["order_id"], b["appointment_id"]
    await services.orders.apply(clerk, order, "pay", "", "desk")
    _at(services, b["slot"]["starts_at"].timestamp() - 600)
    ticket = await services.queues.check_in(clerk, appt, "desk")
    assert ticket["ticket"] == "0001" and ticket["ahead"] == 0
    called = await services.queues.act(tech, "CT1", "call", day=day)
    assert called["appointment_id"] == appt and called["entry"]["say"] == "请 0001 号 到 CT1室 检查"
    await services.queues.act(tech, "CT1", "start", appt, day=day)
    await services.queues.act(tech, "CT1", "finish", appt, day=day)
    for event in ("report_written", "verified", "published"):
        await services.orders.apply(tech, order, event, "", "desk")
    await services.orders.apply(doctor, order, "viewed", "", "desk")

    timeline = await services.orders.timeline(clerk, order)
    chain = [(e["event"], e["from_status"], e["to_status"]) for e in timeline["events"]]
    assert chain == [
        ("booked", "ordered", "booked"),
        ("pay", "booked", "paid"),
        ("checked_in", "paid", "checked_in"),
        ("started", "checked_in", "started"),
        ("done", "started", "done"),
        ("report_written", "done", "report_written"),
        ("verified", "report_written", "verified"),
        ("published", "verified", "published"),
        ("viewed", "published", "viewed"),
    ]
    assert all(e["actor_role"] and e["channel"] and e["at"] for e in timeline["events"])
    assert [e["actor_role"] for e in timeline["events"]][-1] == "doctor"
    assert timeline["order"]["status"] == "viewed" and timeline["order"]["state_name"] == "报告已查看"
    assert [q["action"] for q in timeline["queue_events"]] == ["call", "start", "finish"]
    assert timeline["queue"][0]["ticket"] == 1 and timeline["queue"][0]["state"] == "done"
    # Every status change went to the EMR through the outbox, in order.
    sent = await services.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = 'order.status' AND payload ->> 'order_id' = $1 ORDER BY id",
        str(order),
    )
    assert [p["payload"]["to"] for p in sent] == [c[2] for c in chain]
    # The notification sweep tells the patient of the published report, once.
    for _ in range(2):
        await schedule_report_notices(services.pool, "h1", datetime.now(UTC))
    notices = await services.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = 'patient.notice' AND aggregate_id = $1", str(b["patient_id"])
    )
    assert [n["payload"]["kind"] for n in notices] == ["report_ready"]


async def test_check_in_refuses_wrong_day_outside_the_window_unpaid_and_twice_and_changes_nothing(
    services: Services,
) -> None:
    day = future_day(services, 2)
    (b,) = await _book(services, "CT-HEAD", day, "CT1")
    clerk = await actor_for(services, "clerk")
    appt, order = b["appointment_id"], b["order_id"]
    start, end = b["slot"]["starts_at"].timestamp(), b["slot"]["ends_at"].timestamp()

    async def refused(when: float, reason: str, words: str) -> None:
        _at(services, when)
        with pytest.raises(CheckInRefused) as exc:
            await services.queues.check_in(clerk, appt, "desk")
        assert exc.value.extra["reason"] == reason and words in exc.value.message, exc.value.message
        assert await _status(services, order) == "booked"
        assert await services.pool.fetchval("SELECT count(*) FROM queue_entry WHERE appointment_id = $1", appt) == 0

    await refused(start - 86400, "wrong_day", "今天不能签到")
    await refused(start - 61 * 60, "too_early", "签到时间未到")
    await refused(end + 31 * 60, "too_late", "已超过签到时间")
    await refused(start - 600, "unpaid", "尚未缴费")
    await services.orders.apply(clerk, order, "pay", "", "desk")
    _at(services, end + 29 * 60)  # late but inside the grace
    await services.queues.check_in(clerk, appt, "desk")
    assert await _status(services, order) == "checked_in"
    with pytest.raises(CheckInRefused) as again:
        await services.queues.check_in(clerk, appt, "desk")
    assert again.value.extra["reason"] == "already_checked_in" and "0001" in again.value.message
    # A checked-in appointment is the queue's: it can no longer be cancelled.
    with pytest.raises(OrderStateConflict):
        await services.booking.cancel(clerk, appt, "desk", "测试")


async def test_inpatients_check_in_unpaid_and_queue_actions_are_checked_and_recorded(services: Services) -> None:
    day = future_day(services, 2)
    booked = await _book(services, "CT-HEAD", day, "CT2", count=3, patient_class="inpatient")
    nurse, tech = await actor_for(services, "nurse"), await actor_for(services, "tech")
    _at(services, booked[-1]["slot"]["starts_at"].timestamp() - 600)
    for b in booked:
        await services.queues.check_in(nurse, b["appointment_id"], "ward")
    a, b2, c = (x["appointment_id"] for x in booked)
    view = await services.queues.view("CT2", day)
    assert [e["appointment_id"] for e in view["waiting"]] == [a, b2, c]
    await services.queues.act(tech, "CT2", "start", a, day=day)  # straight from the line into the exam
    # Finishing c, who still waits, is refused.
    with pytest.raises(QueueActionRefused) as refused:
        await services.queues.act(tech, "CT2", "finish", c, day=day)
    assert "候检中" in refused.value.message
    called = await services.queues.act(tech, "CT2", "call", day=day)
    assert called["appointment_id"] == b2
    passed = await services.queues.act(tech, "CT2", "pass", b2, places=1, day=day)
    assert [e["appointment_id"] for e in passed["queue"]["waiting"]] == [c, b2]
    await services.queues.act(tech, "CT2", "defer", c, day=day)
    await services.queues.act(tech, "CT2", "resume", c, day=day)
    recorded = await services.pool.fetch(
        "SELECT appointment_id, state, calls, passes FROM queue_entry WHERE resource_id = 'CT2' AND day = $1", day
    )
    assert {r["appointment_id"]: (r["state"], r["calls"], r["passes"]) for r in recorded} == {
        a: ("in_exam", 0, 0),
        b2: ("waiting", 1, 1),
        c: ("waiting", 0, 0),
    }
    # Redis lost: the queue comes back from PostgreSQL with the same people in the same states.
    keys = services.keys.day(day).queue("CT2")
    await services.redis.delete(*keys)
    again = await services.queues.view("CT2", day)
    assert {e["appointment_id"] for e in again["waiting"]} == {b2, c}
    assert [e["appointment_id"] for e in again["in_exam"]] == [a]
    with pytest.raises(AppError):
        await services.queues.act(tech, "CT9", "call", day=day)


async def test_emergency_insertion_during_concurrent_check_ins_keeps_one_order_and_tells_the_delayed(
    services: Services,
) -> None:
    day = future_day(services, 2)
    booked = await _book(services, "CT-HEAD", day, "CT1", count=12)
    clerk, doctor = await actor_for(services, "clerk"), await actor_for(services, "doctor")
    for b in booked:
        await services.orders.apply(clerk, b["order_id"], "pay", "", "desk")
    first = booked[0]["slot"]["starts_at"].timestamp()
    # Check-in opens early enough for everyone (per exam type, data like every other window).
    await services.pool.execute("UPDATE exam_type SET checkin_early_min = 600 WHERE code = 'CT-HEAD'")
    _at(services, first - 1800)
    # Everyone checks in at once; one of them is brought in as an emergency.
    urgent = booked[7]
    results = await asyncio.gather(
        *[
            services.queues.check_in(
                doctor if b is urgent else clerk,
                b["appointment_id"],
                "desk",
                "emergency" if b is urgent else None,
                "急诊外伤" if b is urgent else "",
            )
            for b in booked
        ]
    )
    assert sorted(int(r["ticket"]) for r in results) == list(range(1, 13))
    view = await services.queues.view("CT1", day)
    order = [e["appointment_id"] for e in view["waiting"]]
    by_time = [b["appointment_id"] for b in sorted(booked, key=lambda b: (b["slot"]["starts_at"], b["appointment_id"]))]
    assert order[0] == urgent["appointment_id"]
    assert order[1:] == [a for a in by_time if a != urgent["appointment_id"]]
    rows = await services.pool.fetch("SELECT appointment_id, priority_class FROM queue_entry WHERE day = $1", day)
    assert {r["appointment_id"]: r["priority_class"] for r in rows}[urgent["appointment_id"]] == 0
    assert len(rows) == 12
    # Green channel for the last in line: it moves ahead of all normal patients, and exactly those whose
    # expected time moves later by more than the threshold (set to 5 minutes here) are told.
    services.queues.settings = msgspec.structs.replace(services.queues.settings, queue_notify_threshold_min=5)
    await services.pool.execute("DELETE FROM outbox WHERE topic = 'patient.notice'")
    now_ms = int(services.queues.clock() * 1000)
    before = model.expected_starts((await services.queues.state("CT1", day)).state, now_ms)
    last = order[-1]
    await services.queues.set_priority(doctor, "CT1", last, "green", "危重转诊", day)
    after_state = (await services.queues.state("CT1", day)).state
    assert model.waiting_ids(after_state)[:2] == [str(urgent["appointment_id"]), str(last)]
    delayed = {int(i) for i, _, _ in model.delayed(before, model.expected_starts(after_state, now_ms), 5 * 60_000)}
    told = await services.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = 'patient.notice' AND payload ->> 'kind' = 'queue_delay'"
    )
    assert delayed, "moving a CT patient ahead of ten others delays someone by more than 5 minutes"
    assert {int(t["payload"]["appointment_id"]) for t in told} == delayed
    assert all("预计" in t["payload"]["message"] and "请留意叫号" in t["payload"]["message"] for t in told)
    await assert_redis_matches_postgres(services, day)


async def _two_checked_in_ready(services: Services) -> tuple[date, list[dict[str, Any]]]:
    """Two paid CT patients of one room-day, the clock inside their check-in window."""
    day = future_day(services, 2)
    booked = await _book(services, "CT-HEAD", day, "CT1", count=2)
    clerk = await actor_for(services, "clerk")
    for b in booked:
        await services.orders.apply(clerk, b["order_id"], "pay", "", "desk")
    await services.pool.execute("UPDATE exam_type SET checkin_early_min = 600 WHERE code = 'CT-HEAD'")
    _at(services, booked[0]["slot"]["starts_at"].timestamp() - 1800)
    return day, booked


def _pause_first_queue_read(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """The first read of a room-day's queue from PostgreSQL returns only once `release` is set
    (`read` tells that it has read): a snapshot that goes stale while another check-in commits."""
    read, release = asyncio.Event(), asyncio.Event()
    real = order_repo.queue_entries

    async def paused(*args: Any) -> Any:
        rows = await real(*args)
        if not read.is_set():
            read.set()
            await release.wait()
        return rows

    monkeypatch.setattr(order_repo, "queue_entries", paused)
    return read, release


async def test_a_stale_queue_load_never_replaces_a_check_in_placed_meanwhile(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI flake of session 4: with a room-day not loaded in Redis, two callers each read
    PostgreSQL and load; the one with the older snapshot loaded last and a checked-in patient
    vanished from the line. Here the older snapshot is held back deterministically."""
    day, (a, b) = await _two_checked_in_ready(services)
    clerk = await actor_for(services, "clerk")
    await services.queues.check_in(clerk, a["appointment_id"], "desk")
    await services.queues.store.client.delete(*services.queues.store.keys.day(day).queue("CT1"))  # lost
    read, release = _pause_first_queue_read(monkeypatch)
    screen = asyncio.create_task(services.queues.view("CT1", day))  # reads [a], then waits
    await read.wait()
    out = await services.queues.check_in(clerk, b["appointment_id"], "desk")  # loads [a, b]
    assert out["ahead"] == 1
    release.set()
    shown = await screen
    ids = [e["appointment_id"] for e in shown["waiting"]]
    assert ids == [a["appointment_id"], b["appointment_id"]]
    view = await services.queues.view("CT1", day)
    assert [e["appointment_id"] for e in view["waiting"]] == ids
    await assert_redis_matches_postgres(services, day)


async def test_a_replacing_rebuild_reads_again_and_keeps_a_check_in_placed_meanwhile(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    day, (a, b) = await _two_checked_in_ready(services)
    clerk = await actor_for(services, "clerk")
    await services.queues.check_in(clerk, a["appointment_id"], "desk")
    read, release = _pause_first_queue_read(monkeypatch)
    rebuild = asyncio.create_task(services.queues.rebuild("CT1", day))  # after a failover: reads [a]
    await read.wait()
    await services.queues.check_in(clerk, b["appointment_id"], "desk")  # placed in the loaded line
    release.set()
    await rebuild  # loads [a], reads [a, b], loads again
    view = await services.queues.view("CT1", day)
    assert [e["appointment_id"] for e in view["waiting"]] == [a["appointment_id"], b["appointment_id"]]
    await assert_redis_matches_postgres(services, day)


async def test_the_wall_reads_its_closed_loop_kpis_from_the_event_log(services: Services) -> None:
    from dashboards.metrics import compute

    day = future_day(services, 2)
    booked = await _book(services, "CT-HEAD", day, "CT1", count=3)
    clerk, tech = await actor_for(services, "clerk"), await actor_for(services, "tech")
    done, missed = booked[:2], booked[2]
    for b in done:
        await services.orders.apply(clerk, b["order_id"], "pay", "", "desk")
    await services.pool.execute("UPDATE exam_type SET checkin_early_min = 600 WHERE code = 'CT-HEAD'")
    _at(services, done[0]["slot"]["starts_at"].timestamp() - 600)
    for b in done:
        await services.queues.check_in(clerk, b["appointment_id"], "desk")
    for b in done:
        await services.queues.act(tech, "CT1", "call", day=day)
        await services.queues.act(tech, "CT1", "start", b["appointment_id"], day=day)
        await services.queues.act(tech, "CT1", "finish", b["appointment_id"], day=day)
    for event in ("report_written", "verified"):
        await services.orders.apply(tech, done[0]["order_id"], event, "", "desk")
    await services.orders.sweep_no_shows(missed["slot"]["ends_at"] + timedelta(minutes=31))
    tz = services.settings.booking.timezone
    # The events happened now (PostgreSQL's clock), so they count for today's wall.
    today = await compute(services.pool, services.catalogue, "h1", tz, services.reconciler.today())
    t = today["totals"]
    assert t["started"] == 2 and t["on_time_start_rate"] == 1.0 and t["checkin_to_start_min"] is not None
    assert t["outpatients_completed"] == 2 and t["same_day_completion_rate"] == 1.0
    assert t["reports_verified"] == 1 and t["report_on_target_rate"] == 1.0
    assert today["reports"] == [
        {
            "modality": "CT",
            "patient_class": "outpatient",
            "n": 1,
            "avg_min": today["reports"][0]["avg_min"],
            "target_min": 240,
            "on_target_rate": 1.0,
        }
    ]
    exam_day = await compute(services.pool, services.catalogue, "h1", tz, day)
    rad = next(d for d in exam_day["departments"] if d["department_id"] == "RAD")
    live = await services.pool.fetchval(
        """SELECT count(*) FROM appointment a JOIN exam_type e ON e.code = a.exam_code
            WHERE a.day = $1 AND a.status = 'booked' AND e.department_id = 'RAD'""",
        day,
    )
    assert rad["no_show"] == 1 and rad["no_show_rate"] == round(1 / (live + 1), 4)
