"""The dashboard's list and queue pages in a real browser (Debian's Chromium through
Playwright): a moderator signs in by the mailed link and approves a held post, which
reaches the members; the admin opens the queue. axe-core in each page, screenshots at
phone and desktop widths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.helpers import (
    DOMAIN,
    Sink,
    check_page,
    chromium,
    mail,
    make_config,
    make_list,
    make_role,
    running,
    send,
    wait_quiet,
)

POSTER = "ana@party.test"
MODERATOR = "mod@party.test"
ADMIN = "admin@alliance.example"
LIST = f"steering@{DOMAIN}"


async def sign_in_as(page: Any, sink: Sink, address: str, root: str, wanted: str) -> None:
    """Ask for the page, get the sign-in form, take the mailed link, press its button."""
    await page.goto(root + wanted)
    await page.get_by_label("Your e-mail address").fill(address)
    sink.received.clear()
    await page.get_by_role("button", name="Mail me a link").click()
    [link] = await wait_quiet(sink, 1)
    found = re.search(r"https://lists\.example\.org(/sign-in/[0-9a-z-]+)",
                      link.message.get_content())
    assert found is not None and link.rcpt == address
    await page.goto(root + found[1])
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(root + wanted)


async def test_a_moderator_approves_a_held_post_in_chromium(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [POSTER, "bo@party.test"], posting="moderated",
              display_name="Steering Committee")
    make_role(config, "steering", MODERATOR, "moderator")
    async with running(config) as daemon, chromium() as browser:
        await send(daemon.ports["smtp"], POSTER, [LIST],
                   mail(POSTER, LIST, subject="Agenda for Nairobi", body="The agenda.\n"))
        await wait_quiet(sink, 2)       # the moderator's notice and the poster's
        root = f"http://127.0.0.1:{daemon.ports['http']}"
        page = await browser.new_page()
        await sign_in_as(page, sink, MODERATOR, root, "/dashboard/lists/steering/held")
        await page.get_by_role("heading", name="Agenda for Nairobi").wait_for()
        await check_page(page, "held-posts")

        sink.received.clear()
        await page.get_by_role("button", name="Approve").click()
        await page.get_by_text("Post approved").wait_for()
        distributed = await wait_quiet(sink, 2)
        assert sorted(d.rcpt for d in distributed) == ["ana@party.test", "bo@party.test"]
        await check_page(page, "held-posts-none")

        await page.get_by_role("link", name="Members", exact=True).click()
        await page.get_by_role("cell", name="bo@party.test").wait_for()
        await check_page(page, "list-members")
        await page.goto(f"{root}/dashboard/lists")
        await check_page(page, "lists")


async def test_the_admin_opens_the_queue_in_chromium(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    async with running(config) as daemon, chromium() as browser:
        root = f"http://127.0.0.1:{daemon.ports['http']}"
        page = await browser.new_page()
        await sign_in_as(page, sink, ADMIN, root, "/dashboard/queue")
        await page.get_by_text("Nothing is quarantined.").wait_for()
        await check_page(page, "queue")
