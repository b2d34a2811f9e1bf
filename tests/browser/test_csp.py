"""Every page under the platform's Content-Security-Policy (app/security/headers.py) in a real
Chromium (Playwright, the system's /usr/bin/chromium): each page loads, logs in and draws its data
without a single CSP violation (securitypolicyviolation events and console reports), the policy
is really enforced (an injected inline script never runs), and HTML in a patient's name is shown
as text, never run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from playwright.async_api import Browser, ConsoleMessage, Page

from app.api.pages import PAGES
from app.services import Services
from app.slips.render import appointment_number
from tests.browser.conftest import SHOTS
from tests.helpers import actor_for, future_day
from tests.integration.test_transport_security import directives, serve_secured
from tests.live_server import book_through_api

PASSWORD = "Huiyue@2026"
# Collects the page's CSP violation reports (an init script runs before the page's own, outside its CSP).
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.effectiveDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sample || ''));
});
"""


class Watched:
    """A page whose CSP violations are collected from both the DOM event and the console."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.on("console", self._on_console)

    def _on_console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.console.append(message.text)

    async def violations(self) -> list[str]:
        events: list[str] = await self.page.evaluate("window.__csp || []")
        return events + self.console


async def watched(browser: Browser, **kw: object) -> Watched:
    page = await browser.new_page(**kw)  # type: ignore[arg-type]
    await page.add_init_script(WATCH)
    return Watched(page)


async def login(page: Page, username: str) -> None:
    await page.fill("#hy-login input[name=username]", username)
    await page.fill("#hy-login input[name=password]", PASSWORD)
    await page.click("#hy-login button[type=submit]")


async def until(page: Page, expression: str, timeout_s: float = 10.0) -> None:
    """Wait until `expression` is true in the page. Playwright's wait_for_function evaluates its
    predicate with eval() inside the page, which this CSP (no 'unsafe-eval') refuses: poll from here."""
    for _ in range(int(timeout_s / 0.1)):
        if await page.evaluate(expression):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"not true after {timeout_s} s: {expression}")


Visit = Callable[[Page, str], Awaitable[None]]


async def test_every_page_works_under_the_csp_without_a_violation(services: Services, browser: Browser) -> None:
    today = services.reconciler.today()
    day = future_day(services)
    admin = await actor_for(services, "admin")
    device = await services.devices.issue(admin, "CT1 候诊区电视", ["queue:CT1"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with serve_secured(services) as base:
        slot_ids = [await book_through_api(base, services, exam, day, dept) for exam, dept in (("CT-HEAD", "RAD"),)]
        appt_ids = [
            r["id"]
            for r in await services.pool.fetch(
                "SELECT id FROM appointment WHERE slot_id = ANY($1::bigint[]) AND status = 'booked'", slot_ids
            )
        ]

        async def landing(page: Page, base: str) -> None:
            await until(page, "document.getElementById('status').className === 'ok'")

        async def grid(page: Page, base: str) -> None:
            await login(page, "clerk")
            await page.locator("#board table.grid td.cell").first.wait_for()

        async def wall(page: Page, base: str) -> None:
            await login(page, "depthead")
            await page.wait_for_selector("#c-bookings .main-svg")
            await page.wait_for_selector("#c-devices .bars .point", state="attached")
            bar = await page.locator("#c-bookings .bars .point").first.bounding_box()
            assert bar is not None
            await page.mouse.move(bar["x"] + bar["width"] / 2, bar["y"] + bar["height"] / 2)  # a hover label too
            await page.locator("#c-bookings .hoverlayer .hovertext").first.wait_for()

        async def desk(page: Page, base: str) -> None:
            await login(page, "clerk")
            await until(page, "document.getElementById('hy-login').hidden")

        async def clinic(page: Page, base: str) -> None:
            await login(page, "doctor")
            await until(page, "document.getElementById('hy-login').hidden")

        async def ward(page: Page, base: str) -> None:
            await login(page, "nurse")
            await page.locator(".pick").first.wait_for()

        async def self_service(page: Page, base: str) -> None:
            await page.locator("input[name=id_number]").wait_for()

        async def slips(page: Page, base: str) -> None:
            await login(page, "clerk")
            code = page.locator("section.slip .code svg")
            await code.first.wait_for()
            assert await code.count() == len(appt_ids)
            # The barcode is drawn (bars filled) from presentation attributes, no inline styles.
            assert await page.locator("section.slip .code svg rect[fill]").count() > 10
            assert await page.locator("section.slip [style]").count() == 0
            number = appointment_number(appt_ids[0])
            assert number in (await page.locator(f"#slip-{number}").text_content() or "")

        async def pool(page: Page, base: str) -> None:
            await login(page, "admin")
            await page.locator("#templates tbody tr").first.wait_for()

        async def callscreen(page: Page, base: str) -> None:
            await until(page, "!location.hash")  # the device token was taken from the fragment

        async def console(page: Page, base: str) -> None:
            await login(page, "tech")
            await page.wait_for_selector("#state.live", timeout=10000)

        visits: dict[str, tuple[str, Visit]] = {
            "/": ("/", landing),
            "/grid": (f"/grid?department=RAD&day={day}", grid),
            "/wall": (f"/wall?day={today}", wall),
            "/desk": ("/desk", desk),
            "/clinic": ("/clinic?patient_id=1", clinic),
            "/ward": ("/ward", ward),
            "/self": ("/self", self_service),
            "/slips": (f"/slips?ids={','.join(map(str, appt_ids))}", slips),
            "/pool": ("/pool", pool),
            "/callscreen": (f"/callscreen?room=CT1&day={day}#token={device.token}", callscreen),
            "/console": ("/console?room=CT1", console),
        }
        assert set(visits) == set(PAGES)  # a new page must be visited here too
        for path, (address, visit) in visits.items():
            w = await watched(browser, viewport={"width": 1400, "height": 900})
            response = await w.page.goto(base + address)
            assert response is not None and response.status == 200
            csp = directives(response.headers["content-security-policy"])
            assert csp["script-src"] == "'self'" and "'unsafe-inline'" not in csp["default-src"]
            await visit(w.page, base)
            await w.page.wait_for_timeout(300)  # late redraws report their violations too
            assert await w.violations() == [], path
            await w.page.screenshot(path=SHOTS / f"csp{path.replace('/', '-') or '-index'}.png")
            await w.page.close()


async def test_the_policy_is_enforced_an_injected_inline_script_never_runs(
    services: Services, browser: Browser
) -> None:
    async with serve_secured(services) as base:
        w = await watched(browser)
        await w.page.goto(base + "/")
        await until(w.page, "document.getElementById('status').className === 'ok'")
        await w.page.evaluate(
            """() => {
              const s = document.createElement('script');
              s.textContent = 'window.__ran = true';
              document.body.appendChild(s);
              const d = document.createElement('div');
              d.innerHTML = '<img src="data:," onerror="window.__ran = true">';
              document.body.appendChild(d);
            }"""
        )
        await w.page.wait_for_timeout(300)
        assert await w.page.evaluate("window.__ran === undefined")
        reported = await w.violations()
        assert any(v.startswith("script-src") for v in reported), reported


async def test_html_in_a_patients_name_is_shown_as_text_never_run(services: Services, browser: Browser) -> None:
    nurse = await actor_for(services, "nurse")
    patients = await services.ward.patients(nurse)
    pid = patients[0].patient_id
    payload = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>王'
    await services.pool.execute("UPDATE patient SET name = $1 WHERE id = $2", payload, pid)
    async with serve_secured(services) as base:
        w = await watched(browser, viewport={"width": 1280, "height": 900})
        await w.page.goto(base + "/ward")
        await login(w.page, "nurse")
        await w.page.locator(".pick").first.wait_for()
        cells = await w.page.locator("td").all_text_contents()
        assert any("<img src=x" in c or c.startswith("<") for c in cells), cells  # shown as text (maybe masked)
        assert await w.page.locator("td img, td script").count() == 0
        assert await w.page.evaluate("window.__xss === undefined")
        assert await w.violations() == []
    stored = await services.pool.fetchval("SELECT name FROM patient WHERE id = $1", pid)
    assert stored == payload  # kept as given: inert data, escaped only where shown
