"""Each body's public page: upcoming meetings in the visitor's language, the calendar to
subscribe to, and each meeting as a calendar file, with no invitee on any of them."""

from __future__ import annotations

from pathlib import Path

from icalendar import Calendar

from mailer import dates
from tests.helpers import (
    NEXT_YEAR,
    Sink,
    config_file,
    create_meeting,
    http,
    icaljs,
    make_config,
    party,
    running,
    seat,
    wait_quiet,
)


async def test_a_body_page_shows_its_meetings_and_links_its_calendars(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"name": "Progressive Alliance"})
    path = config_file(config, tmp_path)
    party(path, "SPD", "DE")
    seat(path, "jorg@spd.example", "Jörg Schmidt", "SPD", "board")
    announced = create_meeting(path, "board", "--alongside", "the PES congress")
    draft = create_meeting(path, "board", start=f"{NEXT_YEAR}-09-01T09:00",
                           end=f"{NEXT_YEAR}-09-01T17:00", draft=True)
    async with running(config) as daemon:
        invitation = (await wait_quiet(sink, 1))[0]
        web = daemon.ports["http"]
        index_status, _, index = await http(web, "GET", "/bodies/", language="fr")
        status, headers, page = await http(web, "GET", "/bodies/board/", language="de")
        _, _, steering = await http(web, "GET", "/bodies/steering/", language="de")
        ics_status, ics_headers, ics = await http(web, "GET", f"/bodies/board/{announced}.ics")
        hidden = [(await http(web, "GET", route))[0] for route in (
            f"/bodies/board/{draft}.ics", f"/bodies/steering/{announced}.ics",
            "/bodies/senate/", f"/bodies/senate/{announced}.ics")]
        feed_status, _, _ = await http(web, "GET", "/feeds/board.ics")

    assert index_status == 200 and '<a href="/bodies/board/">Conseil</a>' in index
    assert "Comité directeur" in index
    span = dates.Span("Europe/Berlin", f"{NEXT_YEAR}-03-14T09:00:00", f"{NEXT_YEAR}-03-14T17:00:00")
    assert status == 200 and headers["content-language"] == "de"
    assert "<h1>Vorstand</h1>" in page and "Board meeting" in page
    assert f"{span.time('de')} ({span.zone('de')})" in page and span.utc("de") in page
    assert "Mitteleuropäische Normalzeit" in page and "Rotes Rathaus, Berlin" in page
    assert "the PES congress" in page
    assert 'href="webcal://lists.example.org/feeds/board.ics"' in page
    assert 'href="https://lists.example.org/feeds/board.ics"' in page and feed_status == 200
    assert f'href="/bodies/board/{announced}.ics"' in page
    assert f"/bodies/board/{draft}.ics" not in page, "a draft is not public"
    assert "jorg" not in page.lower() and "spd.example" not in page
    assert "/lists/board/" not in page, "the Board's list is closed: its archive is private"
    assert '<a href="/lists/steering/">Das öffentliche Archiv der Liste</a>' in steering

    assert ics_status == 200 and ics_headers["content-type"] == "text/calendar; charset=utf-8"
    assert ics_headers["content-disposition"].startswith("attachment")
    calendar = Calendar.from_ical(ics)
    sent = Calendar.from_ical(invitation.message.get_payload()[1].get_payload(decode=True))
    assert calendar["METHOD"] == "PUBLISH" and len(calendar.events) == 1
    assert str(calendar.events[0]["UID"]) == str(sent.events[0]["UID"]), "the same UID"
    assert "ATTENDEE" not in ics and "rsvp+" not in ics and "jorg" not in ics.lower()
    parsed = icaljs(ics.encode())
    assert parsed["method"] == "PUBLISH" and [e["attendees"] for e in parsed["events"]] == [[]]
    assert hidden == [404, 404, 404, 404]
