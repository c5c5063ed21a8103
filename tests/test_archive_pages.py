"""The public archive on the web: months, threads, search, each post where Archived-At says.

Members post over SMTP and reply to each other; a visitor reads the archive over HTTP by
month and by thread, follows a copy's Archived-At to its page, searches it (on SQLite's
FTS5 and on PostgreSQL's full text), and never sees an address as an address. A list whose
owner keeps its archive private answers 404 on every route, as a list that does not exist.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from lists import archive, service
from lists.models import Archived
from mailer.db import Database
from tests.helpers import (
    DOMAIN,
    Sink,
    http,
    mail,
    make_config,
    make_list,
    members,
    running,
    send,
    set_option,
    upgrade_to,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"


def links(page: str) -> list[str]:
    """The single-quoted links of an archive page, in order."""
    return [part.split("'", 1)[0] for part in page.split("href='")[1:]]


async def test_posts_and_replies_read_by_month_and_thread_where_archived_at_points(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    ana, kofi = members(2)
    make_list(config, "steering", [ana, kofi], display_name="Steering Committee")
    first = mail(f"Ana Silva <{ana}>", LIST, subject="Agenda for Nairobi",
                 body=f"Dear all,\nwrite to me at {ana} or to chair@party.test.\n")
    first_id = first.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ana, [LIST], first)
        await wait_quiet(sink, 2)
        await send(port, kofi, [LIST], mail(kofi, LIST, subject="Re: Agenda for Nairobi",
                                            body="Agreed.\n", In_Reply_To=first_id,
                                            References=first_id))
        await send(port, kofi, [LIST], mail(kofi, LIST, subject="Minutes"))
        copies = await wait_quiet(sink, 6)
        web = daemon.ports["http"]
        reply = next(c for c in copies if "Re: Agenda" in str(c.message["Subject"]))
        at = str(reply.message["Archived-At"])
        post_status, _, post = await http(web, "GET", at.strip("<>").split(DOMAIN, 1)[1])
        _, _, index = await http(web, "GET", "/lists/steering/")
        month = next(link for link in links(index) if link.endswith("/"))
        month_status, _, month_page = await http(web, "GET", f"/lists/steering/{month}")
        threads = [link for link in links(month_page) if "thread/" in link]
        _, _, thread = await http(web, "GET", urljoin(f"/lists/steering/{month}", threads[0]))
        pages = [index, month_page, thread, post,
                 (await http(web, "GET", f"/lists/steering/{links(index)[-2]}"))[2]]

    assert all(c.message["Archived-At"] is not None for c in copies)
    assert at.startswith("<https://lists.example.org/lists/steering/") and at.endswith(">")
    assert post_status == 200 and "<h1>[steering] Re: Agenda for Nairobi</h1>" in post
    assert "Agreed." in post and "thread/" in post
    assert month_status == 200 and month == time.strftime("%Y-%m/", time.gmtime())
    assert len(threads) == 2, "the reply is in its parent's thread; Minutes is its own"
    assert "[steering] Agenda for Nairobi</a> <span class=\"meta\">(2)" in month_page
    assert "Dear all," in thread and "Agreed." in thread and "Minutes" not in thread
    assert "Ana Silva, " in thread and "m00002 at members.test, " in thread, "name, or address"
    first_page = pages[-1]
    assert "write to me at m00001 at members.test or to chair at party.test." in first_page
    for page in pages:
        assert "@members.test" not in page and "@party.test" not in page
        assert "mailto:" not in page


async def test_search_finds_every_word_in_pages_and_takes_any_query(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    make_list(config, "steering", members(1), display_name="Steering Committee")
    make_list(config, "other", members(1))
    db = Database(config.database.url, config.base_dir)
    try:
        db.transaction(lambda s: fill(s, [("Budget", "The budget for Nairobi is agreed.")] * 25
                                      + [("Venue", "The venue in Nairobi is booked."),
                                         ("Réunion", "Ordre du jour de la réunion.")]))
        db.transaction(lambda s: fill(s, [("Budget", "Nairobi budget, other list.")],
                                      list_name="other"))
    finally:
        db.close()
    async with running(config) as daemon:
        web = daemon.ports["http"]

        async def search(query: str, page: int = 1) -> tuple[int, str]:
            status, _, found = await http(
                web, "GET", f"/lists/steering/search?q={quote(query)}&page={page}")
            return status, found

        _, budget = await search("nairobi BUDGET")
        _, second = await search("nairobi BUDGET", 2)
        _, venue = await search("venue Nairobi")
        _, french = await search("réunion")
        _, nothing = await search("budget venue")
        odd = [await search(query) for query in (
            '"unbalanced', "NEAR(budget", "budget*", "a:b", "-budget", "'; DROP TABLE archive",
            "x" * 5000, "word " * 300, "")]
        beyond = await search("nairobi", 99)

    assert result_count(budget) == 20 and "page=2" in budget
    assert result_count(second) == 5 and "page=1" in second and "page=3" not in second
    assert result_count(venue) == 1 and "[steering] Venue" in venue
    assert "ana at party.test" in venue and "ana@party.test" not in venue
    assert result_count(french) == 1
    assert result_count(nothing) == 0
    assert all(status == 200 for status, _ in odd)
    assert beyond[0] == 200 and result_count(beyond[1]) == 0
    assert "other list" not in budget + second


def result_count(page: str) -> int:
    return sum(1 for link in links(page) if link.isdigit())


def fill(session: Session, posts: list[tuple[str, str]], list_name: str = "steering") -> None:
    """Archive posts as the fan-out does (lists.archive.store), each its own thread."""
    mailing_list = service.find(session, list_name)
    for subject, body in posts:
        raw = mail("ana@party.test", f"{list_name}@{DOMAIN}", f"[{list_name}] {subject}",
                   body + "\n")
        archive.store(session, mailing_list.id, "ana@party.test", raw, time.time())


async def test_a_private_archive_answers_404_everywhere_and_no_copy_points_at_it(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(1)
    make_list(config, "steering", people)
    set_option(config, "steering", "public_archive", "no")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], people[0], [LIST],
                   mail(people[0], LIST, subject="Private matters"))
        copy = (await wait_quiet(sink, 1))[0]
        ident = daemon.db.query(lambda s: s.scalar(select(Archived.id)))
        thread = daemon.db.query(lambda s: s.scalar(select(Archived.thread_id)))
        month = time.strftime("%Y-%m", time.gmtime())
        answers = {}
        for name in ("steering", "nosuchlist"):
            for route in ("", f"{month}/", f"thread/{thread}", "search?q=private", f"{ident}"):
                status, _, page = await http(daemon.ports["http"], "GET",
                                             f"/lists/{name}/{route}")
                answers[(name, route)] = (status, page)
    assert copy.message["Archived-At"] is None and copy.message["List-Archive"] is None
    assert {status for status, _ in answers.values()} == {404}
    for (name, route), (_, page) in answers.items():
        assert "Private matters" not in page
        if name == "steering":
            assert page == answers[("nosuchlist", route)][1], "private looks like missing"


async def test_each_page_costs_the_same_queries_for_three_posts_or_three_hundred(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", members(1))
    db = Database(config.database.url, config.base_dir)
    try:
        db.transaction(lambda s: fill(s, [("Budget", "Nairobi budget.")] * 3))
    finally:
        db.close()
    month = time.strftime("%Y-%m", time.gmtime())
    routes = ("", f"{month}/", "thread/1", "search?q=budget", "1")

    async def count_queries(daemon: Any) -> list[int]:
        counts = []
        for route in routes:
            seen: list[str] = []

            def listener(*args: Any, seen: list[str] = seen) -> None:
                # The page's own statements; the daemon's timed jobs read beside it.
                if "archive" in args[2] or "FROM lists" in args[2]:
                    seen.append(args[2])
            event.listen(daemon.db.reader, "before_cursor_execute", listener)
            status, _, _ = await http(daemon.ports["http"], "GET", f"/lists/steering/{route}")
            event.remove(daemon.db.reader, "before_cursor_execute", listener)
            assert status == 200, route
            counts.append(len(seen))
        return counts

    async with running(config) as daemon:
        few = await count_queries(daemon)
        await daemon.db.write(lambda s: fill(s, [("Budget", "Nairobi budget.")] * 300))
        await daemon.db.write(lambda s: s.execute(text(
            "UPDATE archive SET thread_id = 1 WHERE id <= 150")))
        many = await count_queries(daemon)
    assert few == many and max(many) <= 5, (few, many)


def test_posts_archived_before_the_upgrade_get_threads_months_and_search(
        database_url: str) -> None:
    upgrade_to(database_url, "0012")
    db = Database(database_url)
    try:
        with db.writer.begin() as connection:
            connection.execute(text(
                "INSERT INTO lists (name, display_name, description, subscription_policy, "
                "posting_policy, created_at, language, nonmember_action, subject_prefix, "
                "reply_to, footer, dmarc_mode, dmarc_poster_in, hold_days, confirm_days, "
                "bounce_threshold, bounce_decay_days, digest_period, digest_max_kb) VALUES "
                "('steering', 'Steering', '', 'confirm', 'members', 0, 'en', 'hold', '', "
                "'poster', true, 'dmarc-policy', 'reply-to', 14, 7, 5, 7, 'daily', 30)"))
            for number, reply in ((1, b""), (2, b"In-Reply-To: <first@client.test>\r\n")):
                raw = (b"From: ana@party.test\r\nSubject: Post %d\r\n"
                       b"Message-ID: <%s@client.test>\r\n%s\r\nNairobi agenda.\r\n"
                       % (number, b"first" if number == 1 else b"second", reply))
                connection.execute(text(
                    "INSERT INTO archive (list_id, archived_at, sender, subject, data) "
                    "VALUES (1, 86400 * 40, 'ana@party.test', :subject, :data)"),
                    {"subject": f"Post {number}", "data": raw})
        db.writer.dispose()
        db.upgrade()
        rows = db.query(lambda s: s.execute(select(
            Archived.message_id, Archived.thread_id, Archived.month, Archived.body)
            .order_by(Archived.id)).all())
        public = db.query(lambda s: service.find(s, "steering").public_archive)
        from lists import archive_search
        found, _ = db.query(lambda s: archive_search.search(s, 1, ["agenda", "nairobi"], 1))
    finally:
        db.close()
    assert public is True, "an archive public before the upgrade stays public"
    assert [(r.thread_id, r.month, r.body) for r in rows] == [
        (1, 197002, "Nairobi agenda.\n"), (1, 197002, "Nairobi agenda.\n")]
    assert [r.message_id for r in rows] == ["<first@client.test>", "<second@client.test>"]
    assert [post.id for post in found] == [2, 1]
