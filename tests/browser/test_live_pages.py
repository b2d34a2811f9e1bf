"""The live pages in a real Chromium (Playwright, the system's /usr/bin/chromium): the slot grid
changes after a booking made through the API without a reload, and the wall's charts draw with
data and move when bookings arrive. Screenshots go to tests/artifacts/screenshots/.

The pages run under the platform's strict Content-Security-Policy, which also forbids the `eval`
Playwright uses for string predicates (`wait_for_function`); these tests open pages with
`bypass_csp=True` for that reason, and tests/browser/test_csp.py checks every page under the real
policy."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from playwright.async_api import Browser, Page

from app.demo.data import PATIENTS
from app.services import Services
from app.slips.render import appointment_number
from tests.browser.conftest import SHOTS
from tests.helpers import future_day, lock_every_room_of, new_patients_with_orders, open_slots
from tests.integration.test_slips import decode_pages
from tests.live_server import book_through_api, serve_app


async def login(page: Page, username: str) -> None:
    await page.fill("#hy-login input[name=username]", username)
    await page.fill("#hy-login input[name=password]", "Huiyue@2026")
    await page.click("#hy-login button[type=submit]")


async def test_the_grid_cell_changes_after_a_booking_without_reload(services: Services, browser: Browser) -> None:
    day = future_day(services)
    (first,) = [
        s
        for s in await open_slots(services, "US-THYROID", day)
        if services.catalogue.resources[s["resource_id"]].department_id == "US"
    ][:1]
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1600, "height": 900})
        await page.goto(f"{base}/grid?department=US&day={day}")
        await login(page, "clerk")
        cell = page.locator(f"#slot-{first['id']}")
        await cell.wait_for()
        assert await cell.text_content() == f"{first['capacity']}/{first['capacity']}"
        await page.evaluate("window.__notReloaded = true")
        await page.screenshot(path=SHOTS / "grid-before.png", full_page=True)

        slot_id = await book_through_api(base, services, "US-THYROID", day, "US")
        assert slot_id == first["id"]
        await page.wait_for_function(
            f"document.getElementById('slot-{slot_id}').dataset.left === '{first['capacity'] - 1}'", timeout=5000
        )
        assert await cell.text_content() == f"{first['capacity'] - 1}/{first['capacity']}"
        assert await page.evaluate("window.__notReloaded === true")
        assert (await page.text_content("#state") or "").endswith("实时")
        await page.screenshot(path=SHOTS / "grid-after-booking.png", full_page=True)


async def test_the_wall_draws_its_charts_and_moves_when_bookings_arrive(services: Services, browser: Browser) -> None:
    today = services.reconciler.today()
    day = future_day(services)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        for _ in range(2):  # some data to draw before the page opens
            await book_through_api(base, services, "US-THYROID", day, "US")
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1920, "height": 1080})
        await page.goto(f"{base}/wall?day={today}")
        await login(page, "depthead")
        await page.wait_for_function("document.getElementById('t-bookings').textContent === '2'", timeout=10000)
        await page.wait_for_selector("#c-bookings .main-svg")
        bars = await page.locator("#c-bookings .bars .point").count()
        assert bars >= 1
        assert await page.locator("#c-devices .bars .point").count() > 10  # one bar per device
        # One labelled row per device (the axis must stay categorical across redraws).
        assert await page.locator("#c-devices .ytick").count() > 10
        await page.screenshot(path=SHOTS / "wall-before.png")

        await book_through_api(base, services, "CT-HEAD", day, "RAD")
        await page.wait_for_function("document.getElementById('t-bookings').textContent === '3'", timeout=10000)
        assert await page.locator("#c-bookings .bars .point").count() > bars  # a radiology bar appeared
        await page.screenshot(path=SHOTS / "wall-after-booking.png")


async def test_the_clinic_page_tells_the_doctor_to_send_the_patient_to_the_booking_centre(
    services: Services, browser: Browser
) -> None:
    today = services.reconciler.today()
    await lock_every_room_of(services, "ECG-REST", today)  # full that day, whatever the hour
    (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, ["ECG-REST"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1280, "height": 800})
        await page.goto(f"{base}/clinic?patient_id={pid}&orders={order}")
        await login(page, "doctor")
        panel = page.locator("#go-to-centre")
        await panel.wait_for()
        assert "请患者到预约中心预约" in (await panel.text_content() or "")
        assert "已无可用号源" in (await page.text_content("#go-to-centre .reason") or "")
        assert await page.locator("#go-to-centre table.plan tbody tr").count() >= 1  # the earliest options
        await page.screenshot(path=SHOTS / "clinic-go-to-centre.png", full_page=True)


async def test_the_doctor_books_todays_exams_in_one_click_from_the_clinic_page(
    services: Services, browser: Browser
) -> None:
    from datetime import time as clock

    # "Today" is a working day two days ahead, at 07:00 (the hospital's clock is the reconciler's;
    # the real clock only has to find those slots still ahead, which they are).
    visit = future_day(services, 2)
    services.reconciler.now = lambda: datetime.combine(visit, clock(7, 0), services.reconciler.tz)
    (pid, orders), *_ = await new_patients_with_orders(services.pool, 1, ["ECG-REST", "DX-CHEST"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1280, "height": 800})
        await page.goto(f"{base}/clinic?patient_id={pid}&orders={','.join(map(str, orders))}")
        await login(page, "doctor")
        await page.locator("#same-day").wait_for(timeout=20000)
        assert await page.locator("#same-day table.plan tbody tr").count() == 2
        await page.click("#book")
        await page.wait_for_selector("#book-result.ok", timeout=20000)
        assert "预约成功，共 2 项" in (await page.text_content("#book-result") or "")
        await page.screenshot(path=SHOTS / "clinic-booked-today.png", full_page=True)
    rows = await services.pool.fetch(
        "SELECT day, channel FROM appointment WHERE order_id = ANY($1::bigint[]) AND status = 'booked'", orders
    )
    assert [(r["day"], r["channel"]) for r in rows] == [(visit, "clinic")] * 2


async def test_the_printable_slips_page_shows_each_appointment_with_its_barcode(
    services: Services, browser: Browser
) -> None:
    day = future_day(services)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        ids = [
            await book_through_api(base, services, exam, day, dept)
            for exam, dept in (("ECG-REST", "ECG"), ("CT-HEAD", "RAD"))
        ]
        appointments = await services.pool.fetch(
            "SELECT id FROM appointment WHERE slot_id = ANY($1::bigint[]) AND status = 'booked' ORDER BY id", ids
        )
        numbers = [appointment_number(r["id"]) for r in appointments]
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1000, "height": 900})
        await page.goto(f"{base}/slips?ids={','.join(str(r['id']) for r in appointments)}")
        await login(page, "clerk")
        for number in numbers:
            card = page.locator(f"#slip-{number}")
            await card.wait_for()
            assert await card.locator("svg").count() == 1
            assert number in (await card.text_content() or "")
        await page.screenshot(path=SHOTS / "slips-printable.png", full_page=True)


async def test_a_nurse_batch_books_five_inpatients_and_opens_their_slips(services: Services, browser: Browser) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1280, "height": 900})
        await page.goto(f"{base}/ward")
        await login(page, "nurse")
        picks = page.locator(".pick")
        await picks.first.wait_for()
        assert await picks.count() >= 5
        for n in range(5):
            await picks.nth(n).check()
        await page.screenshot(path=SHOTS / "ward-selected.png", full_page=True)
        await page.click("#batch")
        await page.locator("#results tbody tr.ok").nth(4).wait_for(timeout=30000)
        assert await page.locator("#results tbody tr.ok").count() == 5
        await page.screenshot(path=SHOTS / "ward-booked.png", full_page=True)
        href = await page.get_attribute("#slips", "href")
        assert href and href.startswith("/slips?ids=")
        ids = href.split("=", 1)[1].split(",")
        slips = await browser.new_page(bypass_csp=True, viewport={"width": 1000, "height": 900})
        await slips.goto(base + href)
        await login(slips, "nurse")
        await slips.locator("section.slip").nth(len(ids) - 1).wait_for()
        assert await slips.locator("section.slip svg").count() == len(ids)
        # The PDF, downloaded as the nurse does: it opens, and each page's barcode reads back as
        # the number of one of the booked appointments.
        async with slips.expect_download() as download_info:
            await slips.click("#pdf")
        download = await download_info.value
        assert download.suggested_filename == "slips.pdf"
        pdf = await asyncio.to_thread(Path(await download.path()).read_bytes)
        pages = decode_pages(pdf)
        assert len(pages) == len(ids)
        assert sorted(code for page_codes in pages for code in page_codes) == sorted(
            appointment_number(int(i)) for i in ids
        )
        await slips.screenshot(path=SHOTS / "ward-slips.png", full_page=True)


PHONE = {"width": 390, "height": 844}


async def identify(page: Page, base: str) -> None:
    """Open /self and identify as PATIENTS[3], as at a kiosk."""
    who = PATIENTS[3]
    await page.goto(f"{base}/self")
    await page.fill("input[name=id_number]", who.id_number or "")
    await page.fill("input[name=name]", who.name)
    await page.click("#id-form button")


async def self_book(page: Page, base: str, shots: str = "self") -> int:
    """Identify as PATIENTS[3] on /self and book the one-tap plan; the number of appointments."""
    await identify(page, base)
    await page.locator("#order-list li").first.wait_for()
    pending = await page.locator("#order-list li").count()
    await page.click("#plan")
    await page.locator("#plan-body li").first.wait_for(timeout=20000)
    await page.screenshot(path=SHOTS / f"{shots}-proposal.png", full_page=True)
    await page.click("#confirm")
    await page.locator("#done").wait_for(state="visible", timeout=20000)
    await page.locator("#mine-list li.appt").first.wait_for()
    booked = await page.locator("#mine-list li.appt").count()
    assert 1 <= booked <= pending
    await page.screenshot(path=SHOTS / f"{shots}-booked.png", full_page=True)
    return booked


def shown_time(services: Services, at: datetime) -> str:
    """A time as the pages show it: 08月05日 14:30, in the hospital's zone."""
    local = at.astimezone(services.reconciler.tz)
    return f"{local:%m}月{local:%d}日 {local:%H:%M}"


def outside_change_window(services: Services) -> None:
    """The plan books the earliest places it finds, which during the hospital's day are inside
    the self-service change window (2 h before the exam): the cancel and reschedule below would be
    refused whenever the suite runs then. A cutoff of 0 is not enough: a slot stays bookable until
    it ends, so the earliest place may be one that started minutes ago (the CI run at 08:00 in
    Shanghai booked one and found no 改约 button). Those tests are about the change itself; the
    window has its own step in the reschedule test. Here changes stay open until a day after the
    start."""
    services.booking.self_change_cutoff_s = -86400.0


async def test_a_patient_self_books_on_a_phone_and_cancels_one(services: Services, browser: Browser) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    outside_change_window(services)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport=PHONE, is_mobile=True, has_touch=True)
        booked = await self_book(page, base)
        await page.locator("#mine-list li.appt button.cancel").first.click()
        await page.wait_for_function(f"document.querySelectorAll('#mine-list li.appt').length === {booked - 1}")


async def test_a_patient_reschedules_on_a_phone_until_the_change_window_closes(
    services: Services, browser: Browser
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    outside_change_window(services)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport=PHONE, is_mobile=True, has_touch=True)
        await self_book(page, base, "self-move")
        first = page.locator("#mine-list li.appt").first
        appt_id = int((await first.get_attribute("id") or "").removeprefix("appt-"))
        old = await services.pool.fetchrow(
            "SELECT order_id, slot_id, exam_code FROM appointment WHERE id = $1", appt_id
        )
        await first.locator("button.move").click()
        days = first.locator("button.day")
        await days.first.wait_for()
        await days.last.click()  # the last day offered: away from the plan's days and their rules
        times = first.locator("button.time")
        await times.first.wait_for()
        await page.screenshot(path=SHOTS / "self-reschedule-pick.png", full_page=True)
        moved = page.locator("#moved")
        for n in range(await times.count()):  # a time the rules refuse is struck out with the reason
            await times.nth(n).click()
            await first.locator("button.confirm").wait_for()
            if n == 0:
                await page.screenshot(path=SHOTS / "self-reschedule-confirm.png", full_page=True)
            await first.locator("button.confirm").click()
            await page.wait_for_function(
                f"!document.getElementById('moved').hidden"
                f" || document.querySelectorAll('#appt-{appt_id} button.time')[{n}]?.disabled === true"
            )
            if await moved.is_visible():
                break
        assert await moved.is_visible(), await page.text_content(".move-msg")
        new = await services.pool.fetchrow(
            "SELECT id, slot_id, starts_at FROM appointment WHERE order_id = $1 AND status = 'booked'", old["order_id"]
        )
        await page.locator(f"#appt-{new['id']}").wait_for()
        when = shown_time(services, new["starts_at"])
        body = await page.text_content("#moved-body") or ""
        prep = await services.pool.fetchval("SELECT prep_text FROM exam_type WHERE code = $1", old["exam_code"])
        assert when in body and "检查前准备" in body and prep.splitlines()[0].strip() in body, body
        assert when in (await page.text_content(f"#appt-{new['id']}") or "")
        await page.screenshot(path=SHOTS / "self-rescheduled.png", full_page=True)
        statuses = await services.pool.fetch(
            "SELECT id, status, slot_id FROM appointment WHERE order_id = $1 ORDER BY id", old["order_id"]
        )
        assert [(r["id"], r["status"]) for r in statuses] == [(appt_id, "rescheduled"), (new["id"], "booked")]
        assert new["slot_id"] != old["slot_id"]

        # Inside the hospital's change window the API refuses, and the page says so in its words.
        cutoff = services.booking.self_change_cutoff_s
        services.booking.self_change_cutoff_s = 30 * 86400.0
        try:
            li = page.locator(f"#appt-{new['id']}")
            await li.locator("button.move").click()
            await li.locator("button.time").first.click()
            await li.locator("button.confirm").click()
            refusal = li.locator(".move-msg")
            await refusal.wait_for()
            assert "不能自助取消或改约" in (await refusal.text_content() or "")
            await page.screenshot(path=SHOTS / "self-reschedule-refused.png", full_page=True)
            assert await li.locator("button.time").first.is_hidden()  # no other time offered then
            # Shown again inside the window (the patient identifies anew), the page no longer
            # offers what the API would refuse.
            await identify(page, base)
            li = page.locator(f"#appt-{new['id']}")
            await li.locator(".window").wait_for()
            assert "请联系预约中心" in (await li.text_content() or "")
            assert await li.locator("button.move").count() == 0 and await li.locator("button.cancel").count() == 0
            await page.screenshot(path=SHOTS / "self-change-window.png", full_page=True)
        finally:
            services.booking.self_change_cutoff_s = cutoff
    still = await services.pool.fetchval("SELECT status FROM appointment WHERE id = $1", new["id"])
    assert still == "booked"


async def test_a_clerk_finds_a_patient_and_books_a_three_exam_plan(services: Services, browser: Browser) -> None:
    (pid, orders), *_ = await new_patients_with_orders(services.pool, 1, ["US-THYROID", "ECG-REST", "DX-CHEST"])
    mrn = await services.pool.fetchval("SELECT mrn FROM patient WHERE id = $1", pid)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1280, "height": 1000})
        await page.goto(f"{base}/desk")
        await login(page, "clerk")
        await page.fill("#find input[name=card]", mrn)
        await page.click("#find button")
        await page.locator("#orders li").nth(2).wait_for()
        assert await page.locator("#orders li").count() == 3
        await page.click("#propose")
        first = page.locator(".plan-option").first
        await first.wait_for(timeout=20000)
        assert await first.locator("li").count() == 3  # all three exams placed
        await page.screenshot(path=SHOTS / "desk-plans.png", full_page=True)
        await first.locator("button.book").click()
        await page.locator(".booked").wait_for(timeout=20000)
        await page.locator("#appt-list li").nth(2).wait_for()
        assert await page.locator("#appt-list li").count() == 3
        await page.screenshot(path=SHOTS / "desk-booked.png", full_page=True)
        before = await services.pool.fetch(
            "SELECT id, slot_id FROM appointment WHERE patient_id = $1 AND status = 'booked' ORDER BY starts_at", pid
        )
        # Move the first exam to another slot the desk may take.
        await page.locator("#appt-list li").first.locator("button.move").click()
        options = page.locator("#appt-list li").first.locator("button.option")
        await options.first.wait_for()
        await page.screenshot(path=SHOTS / "desk-reschedule-options.png", full_page=True)
        # A clerk tries the offered times in turn: one the rules refuse is greyed out with the reason.
        for n in range(await options.count()):
            await options.nth(n).click()
            await page.wait_for_function(
                f"!document.querySelector('button.option') || document.querySelectorAll('button.option')[{n}].disabled"
            )
            if not await page.locator("button.option").count():
                break
        assert not await page.locator("button.option").count(), await page.text_content("#msg")
    booked = await services.pool.fetch(
        "SELECT channel, slot_id FROM appointment WHERE patient_id = $1 AND status = 'booked'", pid
    )
    assert [r["channel"] for r in booked] == ["desk"] * 3 and len(orders) == 3
    assert {r["slot_id"] for r in booked} != {r["slot_id"] for r in before}  # one of them moved


async def test_a_clerk_overrides_a_rule_warning_with_a_reason_but_not_a_hard_block(
    services: Services, browser: Browser
) -> None:
    day = future_day(services)
    (pid, (us_order, endo_order)), *_ = await new_patients_with_orders(
        services.pool, 1, ["US-ABD-UPPER", "ES-GASTRO-PAINLESS"]
    )
    mrn = await services.pool.fetchval("SELECT mrn FROM patient WHERE id = $1", pid)
    reason = "患者上午需透析，已告知检查前空腹6小时"
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1280, "height": 1000})
        await page.goto(f"{base}/desk")
        await login(page, "clerk")
        await page.fill("#find input[name=card]", mrn)
        await page.click("#find button")
        await page.locator("#orders li").nth(1).wait_for()

        # A hard block: painless gastroscopy before the anaesthesia assessment passed (R11).
        endo = page.locator(f"#order-{endo_order}")
        await endo.locator("button.pick-slot").click()
        await endo.locator("input[name=day]").fill(day.isoformat())
        morning = endo.locator(f"button.slot-option[data-day='{day}'][data-start^='08']").first
        await morning.click()
        blocked = endo.locator(".violations.blocked")
        await blocked.wait_for()
        assert "麻醉评估" in (await blocked.text_content() or "")
        assert await endo.locator("button.override").count() == 0
        await page.screenshot(path=SHOTS / "desk-rule-blocked.png", full_page=True)

        # A warning the clerk may override: a fasting upper-abdomen ultrasound in the afternoon (R09).
        us = page.locator(f"#order-{us_order}")
        await us.locator("button.pick-slot").click()
        await us.locator("input[name=day]").fill(day.isoformat())
        afternoon = us.locator(f"button.slot-option[data-day='{day}'][data-start^='15']").first
        slot_id = int(await afternoon.get_attribute("data-slot") or "0")
        await afternoon.click()
        warning = us.locator(".violations.can-override")
        await warning.wait_for()
        assert "空腹" in (await warning.text_content() or "")
        override = us.locator("button.override")
        assert await override.text_content() == "仍然预约（需填写理由）"
        await override.click()  # no reason yet: refused on the page
        assert "请填写越过规则的理由" in (await us.locator(".override-msg").text_content() or "")
        await us.locator("textarea[name=override_reason]").fill(reason)
        await page.screenshot(path=SHOTS / "desk-rule-warning.png", full_page=True)
        await override.click()
        notice = page.locator("#notice .booked")
        await notice.wait_for(timeout=20000)
        assert "已记录越过规则的理由" in (await notice.text_content() or "")
        assert await page.locator(f"#order-{us_order}").count() == 0  # no longer pending
        await page.locator("#appt-list li").first.wait_for()
        await page.screenshot(path=SHOTS / "desk-rule-overridden.png", full_page=True)
    overrides = await services.pool.fetch(
        "SELECT rule_id, reason, actor_role FROM rule_override WHERE order_id = $1", us_order
    )
    assert [dict(r) for r in overrides] == [
        {"rule_id": "R09-FASTING-MORNING-FIRST", "reason": reason, "actor_role": "clerk"}
    ]
    booked = await services.pool.fetchrow(
        "SELECT a.slot_id, a.channel, s.day FROM appointment a JOIN slot s ON s.id = a.slot_id"
        " WHERE a.order_id = $1 AND a.status = 'booked'",
        us_order,
    )
    assert booked is not None and (booked["slot_id"], booked["channel"], booked["day"]) == (slot_id, "desk", day)
    assert await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", endo_order) == "ordered"


async def test_an_admin_locks_a_window_with_bookings_and_the_patients_are_moved(
    services: Services, browser: Browser
) -> None:
    day = future_day(services)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        booked = [await book_through_api(base, services, "ECG-REST", day, "ECG") for _ in range(2)]
        slot = await services.pool.fetchrow("SELECT resource_id, starts_at, ends_at FROM slot WHERE id = $1", booked[0])
        tz = services.reconciler.tz
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1280, "height": 1000})
        await page.goto(f"{base}/pool?resource={slot['resource_id']}")
        await login(page, "admin")
        await page.locator("#templates tbody tr").first.wait_for()
        await page.fill("#lock input[name=day]", day.isoformat())
        await page.fill("#lock input[name=from]", slot["starts_at"].astimezone(tz).strftime("%H:%M"))
        await page.fill("#lock input[name=to]", slot["ends_at"].astimezone(tz).strftime("%H:%M"))
        await page.fill("#lock input[name=reason]", "设备检修")
        await page.click("#lock button")
        summary = page.locator("#lock-summary")
        await summary.wait_for(timeout=20000)
        text = await summary.text_content() or ""
        moved = sum(1 for s in booked if s == booked[0])
        assert f"已改约 {moved} 个" in text, text
        await page.locator("#locks li").first.wait_for()
        await page.screenshot(path=SHOTS / "pool-locked.png", full_page=True)
    live_in_slot = await services.pool.fetchval(
        "SELECT count(*) FROM appointment WHERE slot_id = $1 AND status = 'booked'", booked[0]
    )
    notices = await services.pool.fetchval("SELECT count(*) FROM outbox WHERE topic = 'patient.notice'")
    assert live_in_slot == 0 and notices == moved


async def test_the_call_screen_masks_names_reorders_on_emergency_insertion_and_shows_it_is_reconnecting(
    services: Services, browser: Browser
) -> None:
    from app.booking.service import BookItem
    from tests.helpers import actor_for

    day = future_day(services, 2)
    clerk, tech, doctor = [await actor_for(services, u) for u in ("clerk", "tech", "doctor")]
    admin = await actor_for(services, "admin")
    slots = [s for s in await open_slots(services, "CT-HEAD", day, limit=400) if s["resource_id"] == "CT1"]
    made = await new_patients_with_orders(services.pool, 5, ["CT-HEAD"])
    names = {}
    booked = []
    for (pid, (order,)), slot in zip(made, slots, strict=False):
        (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(order, int(slot["id"]))])
        await services.orders.apply(clerk, order, "pay", "", "desk")
        names[pid] = await services.pool.fetchval("SELECT name FROM patient WHERE id = $1", pid)
        booked.append((pid, order, appt.appointment_id))
    # The last patient was sent by gynaecology: a sensitive department, number only on screens.
    await services.pool.execute("UPDATE exam_order SET ordering_department_id = 'OBGYN' WHERE id = $1", booked[-1][1])
    await services.pool.execute("UPDATE exam_type SET checkin_early_min = 600 WHERE code = 'CT-HEAD'")
    services.queues.clock = lambda: slots[0]["starts_at"].timestamp() - 1800
    for _, _, appt_id in booked:
        await services.queues.check_in(clerk, appt_id, "desk")
    device = await services.devices.issue(admin, "CT1 候诊区电视", ["queue:CT1"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1920, "height": 1080})
        await page.goto(f"{base}/callscreen?room=CT1&day={day}#token={device.token}")
        await page.wait_for_function("document.querySelectorAll('#next li').length === 5", timeout=10000)
        assert "token" not in page.url  # the fragment is kept by the browser, not left in the address
        await page.evaluate("window.__notReloaded = true")
        shown = await page.locator("#next li .cs-n").all_text_contents()
        assert shown[:4] == ["测***" + n[-1] for n in (names[p] for p, _, _ in booked[:4])]
        assert shown[4] == ""  # gynaecology: number only
        content = await page.content()
        assert not any(full in content for full in names.values())

        await services.queues.act(tech, "CT1", "call", day=day)
        await page.wait_for_function("document.getElementById('now-ticket').textContent === '0001'", timeout=5000)
        assert await page.text_content("#now-say") == "请 0001 号 到 CT1室 检查"
        # Emergency insertion for the last in line: the screen reflows at once, without a reload.
        last = booked[-1][2]
        await services.queues.set_priority(doctor, "CT1", last, "emergency", "急诊外伤", day)
        await page.wait_for_function("document.querySelector('#next li .cs-t').textContent === '0005'", timeout=5000)
        assert await page.locator("#next li").first.locator(".cs-mark").text_content() == "急诊"
        assert await page.evaluate("window.__notReloaded === true")
        await page.screenshot(path=SHOTS / "callscreen.png")
    # The server is gone: the screen keeps the last queue and says it is reconnecting.
    await page.wait_for_selector("#offline", state="visible", timeout=10000)
    assert await page.locator("#next li").count() == 4
    assert await page.text_content("#now-ticket") == "0001"
    await page.screenshot(path=SHOTS / "callscreen-reconnecting.png")


async def test_a_technician_checks_a_patient_in_by_barcode_and_calls_him_from_the_console(
    services: Services, browser: Browser
) -> None:
    from app.booking.service import BookItem
    from tests.helpers import actor_for

    clerk = await actor_for(services, "clerk")
    # The console shows the room's queue of the hospital's today: the queue's clock is set to ten
    # minutes before the booked slot.
    slots = [
        s
        for s in await open_slots(services, "CT-HEAD", future_day(services, 1), limit=400)
        if s["resource_id"] == "CT1"
    ]
    slot = slots[0]
    day = slot["day"]
    (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(order, int(slot["id"]))])
    await services.orders.apply(clerk, order, "pay", "", "desk")
    services.queues.clock = lambda: slot["starts_at"].timestamp() - 600
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(bypass_csp=True, viewport={"width": 1400, "height": 900})
        await page.goto(f"{base}/console?room=CT1")
        await login(page, "tech")
        await page.wait_for_selector("#state.live", timeout=10000)
        await page.fill("#checkin input[name=barcode]", appointment_number(appt.appointment_id))
        await page.click("#checkin button[type=submit]")
        await page.wait_for_function("document.getElementById('msg').textContent.includes('签到成功')", timeout=5000)
        assert day == services.queues.today()
        await page.wait_for_function("document.querySelectorAll('#waiting tr').length === 1", timeout=5000)
        await page.click("#call")
        await page.wait_for_function("document.getElementById('msg').textContent.startsWith('已呼叫')", timeout=5000)
        assert "请 0001 号 到 CT1室 检查" in (await page.text_content("#msg") or "")
        await page.wait_for_function("document.querySelectorAll('#calling tr').length === 1", timeout=5000)
        await page.screenshot(path=SHOTS / "console.png", full_page=True)
    assert await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", order) == "checked_in"
    assert (
        await services.pool.fetchval("SELECT state FROM queue_entry WHERE appointment_id = $1", appt.appointment_id)
        == "called"
    )
