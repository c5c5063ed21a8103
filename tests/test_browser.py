"""End to end in a real browser: Debian's Chromium, headless, through Playwright, against a
running daemon; axe-core in every main page; screenshots at phone and desktop widths."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import select

from lists.models import Member
from tests.helpers import (
    ANA,
    DOMAIN,
    SHOTS,
    Sink,
    board_of_two,
    calendars,
    check_page,
    chromium,
    cli,
    config_file,
    create_meeting,
    event_of,
    mail,
    make_config,
    make_list,
    running,
    send,
    sign_in,
    wait_quiet,
)

ADMIN = "admin@alliance.example"


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
        await page.goto(root + path_in(mail.message.get_content(), r"/sign-in/[0-9a-z-]+"))
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


def path_in(text: str, pattern: str) -> str:
    found = re.search(rf"https://lists\.example\.org({pattern})", text)
    assert found is not None, text
    return found[1]


async def test_a_person_confirms_a_subscription_in_chromium(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", ["ana@members.test"], display_name="Steering Committee")
    async with running(config) as daemon, chromium() as browser:
        await send(daemon.ports["smtp"], "cy@members.test", [f"steering-join@{DOMAIN}"],
                   mail("cy@members.test", f"steering-join@{DOMAIN}", subject="join"))
        [request] = await wait_quiet(sink, 1)
        link = path_in(request.message.get_content(), r"/confirm/steering/[0-9]+-[a-z2-7]+")
        page = await browser.new_page()
        root = f"http://127.0.0.1:{daemon.ports['http']}"
        await page.goto(root + link)
        await check_page(page, "confirm-subscription")
        assert not daemon.db.query(lambda s: s.scalar(select(Member.id).where(
            Member.address == "cy@members.test"))), "showing the page changes nothing"
        await page.get_by_role("button", name="Join the list").click()
        await page.get_by_text("cy@members.test is now subscribed").wait_for()
        await check_page(page, "subscribed")
    assert daemon.db.query(lambda s: s.scalar(select(Member.id).where(
        Member.address == "cy@members.test")))


async def test_a_delegate_accepts_in_chromium_and_the_calendar_hears_of_it(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    path = config_file(config, tmp_path)
    board_of_two(path)
    meeting_id = create_meeting(path, "board")
    async with running(config) as daemon, chromium() as browser:
        invitations = {d.rcpt: d for d in await wait_quiet(sink, 2)}
        text = invitations[ANA].message.get_body(("plain",)).get_content()
        accept = path_in(text, r"/rsvp/[0-9]+-[a-z2-7]+/accept")
        page = await browser.new_page()
        root = f"http://127.0.0.1:{daemon.ports['http']}"
        await page.goto(root + accept)
        await check_page(page, "answer-accept")
        await page.get_by_label("Un commentaire (facultatif)").fill("J’arrive vers 10 h.")
        await page.get_by_role("button", name="Accepter").click()
        await page.wait_for_load_state()
        await check_page(page, "answered")
        [back] = (await wait_quiet(sink, 3))[2:]

        # The coordinator's dashboard shows it: the admin signs in (by the mailed link)
        # and opens the meeting's attendance in the same browser.
        cookie = await sign_in(daemon.ports["http"], sink, ADMIN)
        name, _, value = cookie.partition("=")
        await browser.add_cookies([{"name": name, "value": value, "url": root}])
        await page.goto(f"{root}/dashboard/meetings/{meeting_id}/attendance")
        row = page.get_by_role("row").filter(has_text=ANA)
        assert "Accepted" in await row.inner_text() and "J’arrive vers 10 h." in \
            await row.inner_text()
        await check_page(page, "dashboard-attendance")
    assert back.rcpt == ANA
    _, event = event_of(calendars(back.message)[0])
    assert event["ATTENDEE"].params["PARTSTAT"] == "ACCEPTED", "the calendar agrees"
    rows = {r["address"]: r for r in json.loads(cli(path, "meeting", "attendance",
                                                    str(meeting_id), "--json"))}
    assert (rows[ANA]["partstat"], rows[ANA]["comment"]) == ("ACCEPTED", "J’arrive vers 10 h.")
