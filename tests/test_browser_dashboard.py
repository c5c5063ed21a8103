"""The coordinator's meeting and organisation pages in a real browser (Debian's Chromium
through Playwright, against a running daemon): sign in by a mailed link, create a
meeting, preview and send it, read its attendance; axe-core in each page, no sideways
scrolling on a phone, screenshots kept."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import (
    ANA,
    JORG,
    NEXT_YEAR,
    SHOTS,
    Sink,
    board_of_two,
    check_page,
    chromium,
    config_file,
    make_config,
    running,
    wait_quiet,
)

ADMIN = "admin@alliance.example"


async def test_a_coordinator_creates_previews_and_sends_a_meeting_in_chromium(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    board_of_two(config_file(config, tmp_path))
    async with running(config) as daemon, chromium() as browser:
        root = f"http://127.0.0.1:{daemon.ports['http']}"
        page = await browser.new_page()
        await page.goto(f"{root}/dashboard/meetings")
        await page.get_by_label("Your e-mail address").fill(ADMIN)
        await page.get_by_role("button", name="Mail me a link").click()
        await page.get_by_text("a link is on its way").wait_for()
        [mail] = await wait_quiet(sink, 1)
        link = re.search(r"https://lists\.example\.org(/sign-in/[0-9a-z-]+)",
                         mail.message.get_content())
        assert link is not None
        await page.goto(root + link[1])
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"{root}/dashboard/meetings")
        await check_page(page, "dashboard-meetings")

        await page.get_by_role("link", name="New meeting").click()
        await page.get_by_label("Title", exact=True).fill("Board meeting")
        await page.get_by_label("Start (local time").fill(f"{NEXT_YEAR}-03-14T09:00")
        await page.get_by_label("End (local time)").fill(f"{NEXT_YEAR}-03-14T17:00")
        await page.get_by_label("Time zone", exact=True).select_option("Europe/Berlin")
        await page.get_by_label("Place", exact=True).fill("Rotes Rathaus, Berlin")
        await check_page(page, "dashboard-meeting-new")
        await page.get_by_role("button", name="Save the meeting").click()
        await page.get_by_text("The meeting is saved.").wait_for()
        await check_page(page, "dashboard-meeting")

        await page.get_by_role("link", name="Preview the invitations").click()
        await page.get_by_role("heading", name=f"In French, as {ANA} gets it").wait_for()
        await page.get_by_role("heading", name=f"In German, as {JORG} gets it").wait_for()
        await check_page(page, "dashboard-meeting-preview")
        assert len(sink.received) == 1, "a preview sends nothing"

        await page.get_by_role("link", name="Back to the meeting").click()
        await page.get_by_role("button", name="Send the invitations").click()
        await page.get_by_text("2 invitation(s) queued.").wait_for()
        sent = {d.rcpt for d in (await wait_quiet(sink, 3))[1:]}
        await page.get_by_role("link", name="Attendance").click()
        await check_page(page, "dashboard-meeting-attendance")
        await page.goto(f"{root}/dashboard/organisation")
        await check_page(page, "dashboard-organisation")
    assert sent == {ANA, JORG}
    assert (SHOTS / "dashboard-meeting-preview-phone.png").stat().st_size > 0
