"""The coordinator's meeting and organisation pages, over real HTTP against a running
daemon: a coordinator signs in by a mailed link, makes a draft, previews it in each
invitee's language, sends it, records an answer by hand and downloads the attendance; a
refusal is shown on the form; a delegate is kept out; a POST without the session's CSRF
token changes nothing; every change is logged with who made it."""

from __future__ import annotations

import csv
import html
import io
import logging
import re
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from sqlalchemy import func, select

from mailer.config import Config
from meetings.models import Invitation
from tests.helpers import (
    ANA,
    JORG,
    NEXT_YEAR,
    Sink,
    board_of_two,
    calendars,
    cli,
    cli_error,
    config_file,
    http,
    make_config,
    organisation_cli,
    running,
)

ADMIN = "admin@alliance.example"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{32})"')


def site(tmp_path: Path, sqlite_url: str, sink: Sink) -> tuple[Config, Path]:
    """A daemon's config (the site admin named) and the command line's, two delegates
    seated on the Board: Ana in French, Jörg in German."""
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    command_line = config_file(config, tmp_path)
    board_of_two(command_line)
    return config, command_line


class Browser:
    """One signed-in visitor: their session cookie and their forms' CSRF token."""

    def __init__(self, port: int, cookie: str) -> None:
        self.port, self.cookie, self.csrf = port, cookie, ""

    async def get(self, path: str) -> tuple[int, dict[str, str], str]:
        status, headers, page = await http(self.port, "GET", path,
                                           headers={"Cookie": self.cookie})
        found = CSRF.search(page)
        self.csrf = found[1] if found else self.csrf
        return status, headers, page

    async def post(self, path: str, csrf: bool = True,
                   **fields: str) -> tuple[int, dict[str, str], str]:
        body = urlencode({**fields, **({"csrf": self.csrf} if csrf else {})}).encode()
        return await http(self.port, "POST", path, body, headers={"Cookie": self.cookie})


async def sign_in(port: int, sink: Sink, address: str) -> Browser:
    """Ask for a link, read it at the sink, press its button: the visitor's browser."""
    await http(port, "POST", "/sign-in", f"address={quote(address)}".encode())
    for _ in range(500):
        links = [re.search(r"https://lists\.example\.org(/sign-in/[0-9a-z-]+)",
                           d.message.get_content()) for d in list(sink.received)
                 if d.rcpt == address and "/sign-in/" in d.data.decode("latin-1")]
        if links and links[-1]:
            break
        await sink.wait_for(len(sink.received) + 1)
    status, headers, _ = await http(port, "POST", links[-1][1])
    assert status == 303, status
    browser = Browser(port, headers["set-cookie"].split(";", 1)[0])
    await browser.get("/dashboard")
    return browser


def invitations(sink: Sink) -> dict[str, str]:
    """Subject of each invitation at the sink, by recipient."""
    return {d.rcpt: str(d.message["Subject"]) for d in sink.received
            if "text/calendar" in d.data.decode("latin-1")}


def preview_subjects(page: str) -> dict[str, str]:
    """The subject of each language's letter on the preview page."""
    return {language: html.unescape(subject) for language, subject in re.findall(
        r'<section lang="([a-z]{2})">.*?</strong> (.*?)</p>', page, flags=re.S)}


async def test_a_coordinator_drafts_previews_sends_and_reads_the_attendance(
        tmp_path: Path, sqlite_url: str, sink: Sink,
        caplog: pytest.LogCaptureFixture) -> None:
    config, command_line = site(tmp_path, sqlite_url, sink)
    caplog.set_level(logging.INFO, logger="alliance.audit")
    async with running(config) as daemon:
        admin = await sign_in(daemon.ports["http"], sink, ADMIN)
        status, _, page = await admin.get("/dashboard/meetings/new")
        assert status == 200 and '<option value="board"' in page
        status, headers, _ = await admin.post(
            "/dashboard/meetings/new", body="board", title="Board meeting",
            start=f"{NEXT_YEAR}-03-14T09:00", end=f"{NEXT_YEAR}-03-14T17:00",
            zone="Europe/Paris", zone_other="Europe/Berlin", location="Rotes Rathaus",
            host="SPD", alongside="", agenda_url="", description="Budget", send_at="")
        assert status == 303, headers
        found = re.fullmatch(r"/dashboard/meetings/(\d+)\?notice=created&count=0",
                             headers["location"])
        assert found is not None, headers["location"]
        meeting = f"/dashboard/meetings/{found[1]}"
        _, _, page = await admin.get(headers["location"])
        assert "The meeting is saved." in page and "Draft: nothing sent" in page
        assert "Europe/Berlin" in page, "the zone typed in the free field won"

        status, _, page = await admin.get(f"{meeting}/preview")
        subjects = preview_subjects(page)
        assert status == 200 and set(subjects) == {"fr", "de"}, page
        assert invitations(sink) == {}, "a preview sends nothing"
        _, _, page = await admin.get(meeting)
        assert "Draft: nothing sent" in page, "and stores nothing"

        status, headers, _ = await admin.post(f"{meeting}/invite")
        assert status == 303 and headers["location"] == f"{meeting}?notice=invited&count=2"
        await sink.wait_for(len(sink.received) + 2)
        sent = invitations(sink)
        assert sent == {ANA: subjects["fr"], JORG: subjects["de"]}, "as previewed"

        await admin.get(f"{meeting}/attendance")
        status, headers, _ = await admin.post(f"{meeting}/answer", address=ANA,
                                              answer="accepted", comment="=yes, by phone")
        assert status == 303 and "notice=answered" in headers["location"]
        csv_status, csv_headers, text = await admin.get(f"{meeting}/attendance.csv")
        _, _, listing = await admin.get("/dashboard/meetings")
        assert re.search(rf'href="{meeting}">Board meeting</a>.*?Invitations sent</td>\s*'
                         r"<td>2</td>", listing, flags=re.S), listing
        assert "The charter’s cadence in" in listing
        refused = cli_error(command_line, "meeting", "update", meeting.rsplit("/", 1)[1],
                            "--send-at", "now")
        assert "invitations went out; their send time cannot change" in refused
        await admin.get(meeting)
        status, headers, _ = await admin.post(f"{meeting}/cancel", reason="No\nquorum")
        assert status == 303 and headers["location"] == f"{meeting}?notice=cancelled&count=2"
        cancelled = [d for d in await sink.wait_for(len(sink.received) + 2)
                     if b"METHOD:CANCEL" in calendars(d.message)[0]]
        assert {d.rcpt for d in cancelled} == {ANA, JORG}
        assert all("No quorum" in d.message.get_body(("plain",)).get_content()
                   for d in cancelled), "the reason, made one line, is told"
    assert csv_status == 200 and csv_headers["content-type"].startswith("text/csv")
    rows = {row["address"]: row for row in csv.DictReader(io.StringIO(text))}
    assert set(rows) == {ANA, JORG}
    assert (rows[ANA]["partstat"], rows[ANA]["answered"]) == ("ACCEPTED", "by hand")
    assert rows[ANA]["comment"] == "'=yes, by phone", "no formula reaches a spreadsheet"
    assert rows[JORG]["partstat"] == "NEEDS-ACTION"
    logged = [(r.who, r.action) for r in caplog.records if hasattr(r, "action")]
    assert logged == [(ADMIN, "meeting.create"), (ADMIN, "meeting.invite"),
                      (ADMIN, "meeting.answer"), (ADMIN, "meeting.cancel")]


async def test_a_refusal_is_shown_on_its_form_and_a_forged_post_changes_nothing(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config, command_line = site(tmp_path, sqlite_url, sink)
    output = cli(command_line, "meeting", "create", "--body", "board", "--title", "Board",
                 "--start", f"{NEXT_YEAR}-03-14T09:00", "--end", f"{NEXT_YEAR}-03-14T17:00",
                 "--tz", "Europe/Berlin")
    meeting = "/dashboard/meetings/" + re.search(r"meeting (\d+) created", output)[1]  # type: ignore[index]
    async with running(config) as daemon:
        admin = await sign_in(daemon.ports["http"], sink, ADMIN)
        await admin.get(meeting)
        status, _, page = await admin.post(f"{meeting}/reschedule", start="2020-01-01T09:00",
                                           end="2020-01-01T10:00", zone="Europe/Berlin")
        assert status == 400 and "Not done: the start (2020-01-01 09:00 Europe/Berlin) " \
            "is in the past" in page
        assert 'value="2020-01-01T09:00"' in page, "the values entered are kept"
        status, _, page = await admin.post(f"{meeting}/reschedule", start="2027-01-01T09:00",
                                           end="2027-01-01T10:00", zone="<script>x")
        assert status == 400 and "unknown time zone &#39;&lt;script&gt;x&#39;" in page
        assert "<script>" not in page, "the refusal is escaped like every value"
        status, _, page = await admin.post(f"{meeting}/cancel", csrf=False, reason="x")
        assert status == 403 and "The form was out of date" in page
        status, _, page = await admin.post(f"{meeting}/delete", csrf=False)
        assert status == 403
        number = meeting.rsplit("/", 1)[1]
        assert "(draft)" in cli(command_line, "meeting", "show", number)
        status, headers, _ = await admin.post(
            f"{meeting}/update", title="Board", location="", alongside="", agenda_url="",
            description="", status="CONFIRMED", host="SPD",
            send_at=f"{NEXT_YEAR}-03-01T09:00")
        assert status == 303 and headers["location"] == f"{meeting}?notice=updated&count=0"
        shown = cli(command_line, "meeting", "show", number)
        assert "(scheduled)" in shown and re.search(r"host:\s+SPD", shown), shown
        cli(command_line, "meeting", "update", number, "--send-at", "", "--host", "")
        shown = cli(command_line, "meeting", "show", number)
        assert "(draft)" in shown and not re.search(r"host:\s+SPD", shown), shown
        status, _, page = await http(
            admin.port, "POST", f"{meeting}/reschedule", language="fr",
            body=urlencode({"csrf": admin.csrf, "start": "x", "end": "y",
                            "zone": "Europe/Berlin"}).encode(),
            headers={"Cookie": admin.cookie})
        assert status == 400 and '<html lang="fr">' in page
        assert "Non fait : start: not a date and time" in page, "French words, the CLI's line"
        _, _, page = await http(admin.port, "GET", "/dashboard/meetings", language="fr",
                                headers={"Cookie": admin.cookie})
        assert "Le rythme de la charte en" in page and "<td>Comité directeur</td>" in page
        status, headers, _ = await admin.post(f"{meeting}/delete")
        assert status == 303 and headers["location"] == "/dashboard/meetings?notice=deleted&count=0"
        status, _, _ = await admin.get(meeting)
    assert status == 404
    assert "Board" not in cli(command_line, "meeting", "list")


async def test_a_delegate_may_not_use_the_coordinators_pages(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config, command_line = site(tmp_path, sqlite_url, sink)
    async with running(config) as daemon:
        ana = await sign_in(daemon.ports["http"], sink, ANA)
        for path in ("/dashboard/meetings", "/dashboard/organisation",
                     "/dashboard/meetings/new"):
            status, _, _ = await ana.get(path)
            assert status == 403, path
        status, _, _ = await ana.post("/dashboard/organisation/party-add", name="Intruders",
                                      country="FR", region="europe")
        assert status == 403
    assert "Intruders" not in cli(command_line, "party", "list")


async def test_a_coordination_contact_keeps_the_parties_and_seats(
        tmp_path: Path, sqlite_url: str, sink: Sink,
        caplog: pytest.LogCaptureFixture) -> None:
    config, command_line = site(tmp_path, sqlite_url, sink)
    coordinator = "kofi@odm.example"
    cli(command_line, "party", "add", "ODM", "--country", "KE", "--region", "africa")
    cli(command_line, "coordination", "handover", "ODM", "--contact", coordinator)
    caplog.set_level(logging.INFO, logger="alliance.audit")
    async with running(config) as daemon:
        kofi = await sign_in(daemon.ports["http"], sink, coordinator)
        status, _, page = await kofi.get("/dashboard/organisation")
        assert status == 200 and "Parti Socialiste" in page
        status, headers, _ = await kofi.post("/dashboard/organisation/party-add",
                                             name="Labour", country="GB", region="europe")
        assert status == 303 and headers["location"].endswith("notice=party_added&count=0")
        status, _, page = await kofi.post("/dashboard/organisation/party-add",
                                          name="LABOUR", country="GB", region="europe")
        assert status == 400 and "Not done: party &#39;Labour&#39; already exists" in page
        status, _, page = await kofi.post("/dashboard/organisation/party-remove",
                                          name="SPD")
        assert status == 400 and "Not done: SPD still has 1 seat(s)" in page
        status, headers, _ = await kofi.post(
            "/dashboard/organisation/seat", address="sam@labour.example", name="Sam Tarry",
            party="Labour", body="steering", language="en", substitute="")
        assert status == 303 and "notice=seated" in headers["location"]
        status, _, page = await kofi.get(headers["location"])
        assert "The seat is given" in page and "sam@labour.example" in page
        await kofi.post("/dashboard/organisation/body-name", body="board", language="fr",
                        name="Conseil")
        status, _, page = await kofi.get("/dashboard/organisation?body=board&q=spd")
        assert status == 200 and JORG in page and ANA not in page, "a search of the seats"
        status, headers, _ = await kofi.post("/dashboard/organisation/unseat", body="board",
                                             address=JORG)
        assert headers["location"] == "/dashboard/organisation?body=board&notice=unseated" \
            "&count=0"
    assert "sam@labour.example" in cli(command_line, "delegate", "list", "--body", "steering")
    assert JORG not in cli(command_line, "delegate", "list", "--body", "board")
    assert "fr Conseil" in cli(command_line, "body", "list")
    logged = [(r.who, r.action) for r in caplog.records if hasattr(r, "action")]
    assert logged == [(coordinator, "organisation.party-add"),
                      (coordinator, "organisation.seat"),
                      (coordinator, "organisation.body-name"),
                      (coordinator, "organisation.unseat")], "refusals are not logged"


def test_the_preview_shows_an_html_part_as_its_words() -> None:
    from meetings.meeting_pages import html_text

    part = ("<html><head><style>p { color: red }</style></head><body>"
            "<p>Dear &amp; Ana,</p><table><tr><th>When</th><td>Monday</td></tr></table>"
            "<p>see <a href='https://x.test/a'>the agenda</a> or <a>this</a></p>"
            "<script>alert(1)</script></body></html>")
    assert html_text(part) == ("Dear & Ana,\n\nWhen Monday\n\n"
                               "see the agenda [https://x.test/a] or this")


def test_a_preview_writes_one_letter_a_language_and_lists_everyone(tmp_path: Path) -> None:
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    board_of_two(config)
    cli(config, "party", "add", "PSOE", "--country", "ES", "--region", "europe")
    cli(config, "delegate", "add", "eva@psoe.example", "--name", "Eva", "--party", "PSOE",
        "--body", "board", "--language", "fr")
    number = re.search(r"meeting (\d+) created", cli(
        config, "meeting", "create", "--body", "board", "--title", "Board", "--tz",
        "Europe/Berlin", "--start", f"{NEXT_YEAR}-03-14T09:00",
        "--end", f"{NEXT_YEAR}-03-14T17:00"))
    assert number is not None
    shown = cli(config, "meeting", "invite", number[1], "--dry-run")
    assert "would queue 3 invitation(s)" in shown
    subjects = re.findall(r"^.*<(\S+)> +fr +(Invitation : .*)$", shown, flags=re.M)
    assert [address for address, _ in subjects] == [ANA, "eva@psoe.example"]
    assert subjects[0][1] == subjects[1][1], "one subject a language"
    assert shown.count("--- the text to") == 2, "a letter a language: Ana's, Jörg's"
    assert f"--- the text to {ANA} (fr) ---" in shown
    assert db.query(lambda s: s.scalar(select(func.count()).select_from(Invitation))) == 0
    db.close()
