"""End to end in a real browser: Debian's Chromium, headless, through Playwright, against a
running daemon; axe-core in every main page; screenshots at phone and desktop widths."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import SHOTS, Sink, check_page, chromium, make_config, running, wait_quiet

ADMIN = "admin@alliance.example"


def path_of_link(text: str) -> str:
    found = re.search(r"https://lists\.example\.org(/sign-in/[0-9a-z-]+)", text)
    assert found is not None, text
    return found[1]


async def test_a_coordinator_signs_in_by_a_mailed_link_in_chromium(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    async with running(config) as daemon, chromium() as browser:
        root = f"http://127.0.0.1:{daemon.ports['http']}"
        page = await browser.new_page()
        await page.goto(f"{root}/dashboard")
        assert page.url == f"{root}/sign-in?next=%2Fdashboard"
        await check_page(page, "sign-in")
        await page.get_by_label("Your e-mail address").fill(ADMIN)
        await page.get_by_role("button", name="Mail me a link").click()
        await page.get_by_text("a link is on its way").wait_for()

        [mail] = await wait_quiet(sink, 1)
        await page.goto(root + path_of_link(mail.message.get_content()))
        await check_page(page, "sign-in-link")
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"{root}/dashboard")
        assert await page.get_by_text(f"Signed in as {ADMIN}").is_visible()
        await check_page(page, "dashboard")

        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url(f"{root}/sign-in")
        await page.goto(f"{root}/dashboard")
        assert page.url.startswith(f"{root}/sign-in"), "signed out"
    assert (SHOTS / "dashboard-phone.png").stat().st_size > 0
