"""A body's public calendar: `alliance meeting feed BODY`, and the same over HTTP."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from icalendar import Calendar

from tests.helpers import (
    NEXT_YEAR,
    Sink,
    cli,
    config_file,
    create_meeting,
    icaljs,
    invoke,
    make_config,
    party,
    running,
    seat,
    wait_quiet,
)


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP GET over a real socket: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: lists.example.org\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, body = response.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def feed_of(config: Path, body: str) -> bytes:
    result = invoke(config, "meeting", "feed", body)
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


def check_feed(data: bytes, titles: list[str]) -> Calendar:
    """PUBLISH, no ATTENDEE, no invitee's token; parsed by icalendar and by ical.js."""
    assert b"ATTENDEE" not in data and b"rsvp+" not in data
    calendar = Calendar.from_ical(data)
    assert calendar["METHOD"] == "PUBLISH"
    assert [str(e["SUMMARY"]) for e in calendar.events] == titles
    found = icaljs(data)
    assert found["method"] == "PUBLISH" and found["timezones"] == ["Europe/Berlin"]
    assert [e["attendees"] for e in found["events"]] == [[] for _ in titles]
    assert found["name"] == "Progressive Alliance: Board"
    return calendar


async def test_the_board_feed_publishes_meetings_without_attendees(tmp_path: Path,
                                                                   sqlite_url: str,
                                                                   sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"name": "Progressive Alliance"})
    path = config_file(config, tmp_path)
    party(path, "SPD", "DE")
    seat(path, "jorg@spd.example", "Jörg", "SPD", "board")
    create_meeting(path, "board")
    second = create_meeting(path, "board", start=f"{NEXT_YEAR}-06-01T09:00",
                            end=f"{NEXT_YEAR}-06-01T17:00")
    create_meeting(path, "steering")
    async with running(config) as daemon:
        await wait_quiet(sink, 2)
        cli(path, "meeting", "cancel", str(second))
        await wait_quiet(sink, 3)
        status, headers, body = await get(daemon.ports["http"], "/feeds/board.ics")
        missing, _, _ = await get(daemon.ports["http"], "/feeds/senate.ics")
    assert status == 200 and headers["content-type"] == "text/calendar; charset=utf-8"
    calendar = check_feed(body, ["Board meeting", "Board meeting"])
    assert [str(e["STATUS"]) for e in calendar.events] == ["CONFIRMED", "CANCELLED"]
    assert str(calendar["SOURCE"]) == "https://lists.example.org/feeds/board.ics"
    invited = [d for d in sink.received if d.rcpt == "jorg@spd.example"]
    uid = Calendar.from_ical(invited[0].message.get_payload()[1].get_payload(decode=True))
    assert str(calendar.events[0]["UID"]) == str(uid.events[0]["UID"]), "the same UID"
    assert missing == 404

    from_cli = feed_of(path, "board")
    check_feed(from_cli, ["Board meeting", "Board meeting"])
    assert b"mailto:coordination@lists.example.org" in from_cli


def test_the_feed_time_zone_covers_its_last_meeting_too(tmp_path: Path,
                                                       sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url, site={"name": "Progressive Alliance"})
    path = config_file(config, tmp_path)
    create_meeting(path, "board")
    later = NEXT_YEAR + 4
    create_meeting(path, "board", start=f"{later}-07-01T09:00", end=f"{later}-07-01T17:00")
    data = feed_of(path, "board")
    calendar = check_feed(data, ["Board meeting", "Board meeting"])
    [zone] = calendar.walk("VTIMEZONE")
    assert f"COMMENT:This timezone only works from {NEXT_YEAR - 1}-01-01 to " \
           f"{later + 2}-01-01.".encode() in zone.to_ical(), "the last meeting's summer"
    assert b"RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3" in zone.to_ical()
    summer = datetime(later, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    assert [e["start_utc"] for e in icaljs(data)["events"]][1] == int(summer)


async def test_the_feed_is_served_from_a_reader_while_the_writer_is_busy(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"name": "Progressive Alliance"})
    path = config_file(config, tmp_path)
    meeting_id = create_meeting(path, "board")
    async with running(config) as daemon:
        port = daemon.ports["http"]
        _, _, first = await get(port, "/feeds/board.ics")
        release = threading.Event()
        busy = asyncio.ensure_future(daemon.db.write(lambda session: release.wait(30)))
        try:
            status, _, again = await get(port, "/feeds/board.ics")
        finally:
            release.set()
            await busy
        assert (status, again) == (200, first), "served while the writer was taken"
        cli(path, "meeting", "update", str(meeting_id), "--title", "Board meeting 2")
        _, _, changed = await get(port, "/feeds/board.ics")
    assert b"SUMMARY:Board meeting 2" in changed and changed != first
