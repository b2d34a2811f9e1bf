"""The live pages in a real Chromium (Playwright, the system's /usr/bin/chromium): the slot grid
changes after a booking made through the API without a reload, and the wall's charts draw with
data and move when bookings arrive. Screenshots go to tests/artifacts/screenshots/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from app.demo.data import PATIENTS
from app.services import Services
from app.slips.render import appointment_number
from tests.helpers import future_day, lock_every_room_of, new_patients_with_orders, open_slots
from tests.live_server import book_through_api, serve_app

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not installed", allow_module_level=True)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        await b.close()


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
        page = await browser.new_page(viewport={"width": 1600, "height": 900})
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
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
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
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(f"{base}/clinic?patient_id={pid}&orders={order}")
        await login(page, "doctor")
        panel = page.locator("#go-to-centre")
        await panel.wait_for()
        assert "请患者到预约中心预约" in (await panel.text_content() or "")
        assert "已无可用号源" in (await page.text_content("#go-to-centre .reason") or "")
        assert await page.locator("#go-to-centre table.plan tbody tr").count() >= 1  # the earliest options
        await page.screenshot(path=SHOTS / "clinic-go-to-centre.png", full_page=True)


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
        page = await browser.new_page(viewport={"width": 1000, "height": 900})
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
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
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
        slips = await browser.new_page(viewport={"width": 1000, "height": 900})
        await slips.goto(base + href)
        await login(slips, "nurse")
        await slips.locator("section.slip").nth(len(ids) - 1).wait_for()
        assert await slips.locator("section.slip svg").count() == len(ids)


async def test_a_patient_self_books_on_a_phone_and_cancels_one(services: Services, browser: Browser) -> None:
    who = PATIENTS[3]
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        await page.goto(f"{base}/self")
        await page.fill("input[name=id_number]", who.id_number or "")
        await page.fill("input[name=name]", who.name)
        await page.click("#id-form button")
        await page.locator("#order-list li").first.wait_for()
        pending = await page.locator("#order-list li").count()
        await page.click("#plan")
        await page.locator("#plan-body li").first.wait_for(timeout=20000)
        await page.screenshot(path=SHOTS / "self-proposal.png", full_page=True)
        await page.click("#confirm")
        await page.locator("#done").wait_for(state="visible", timeout=20000)
        await page.locator("#mine-list li").first.wait_for()
        booked = await page.locator("#mine-list li").count()
        assert 1 <= booked <= pending
        await page.screenshot(path=SHOTS / "self-booked.png", full_page=True)
        await page.locator("#mine-list li button").first.click()
        await page.wait_for_function(f"document.querySelectorAll('#mine-list li').length === {booked - 1}")


async def test_a_clerk_finds_a_patient_and_books_a_three_exam_plan(services: Services, browser: Browser) -> None:
    (pid, orders), *_ = await new_patients_with_orders(services.pool, 1, ["US-THYROID", "ECG-REST", "DX-CHEST"])
    mrn = await services.pool.fetchval("SELECT mrn FROM patient WHERE id = $1", pid)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
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


async def test_an_admin_locks_a_window_with_bookings_and_the_patients_are_moved(
    services: Services, browser: Browser
) -> None:
    day = future_day(services)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_app(services) as base:
        booked = [await book_through_api(base, services, "ECG-REST", day, "ECG") for _ in range(2)]
        slot = await services.pool.fetchrow("SELECT resource_id, starts_at, ends_at FROM slot WHERE id = $1", booked[0])
        tz = services.reconciler.tz
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
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
