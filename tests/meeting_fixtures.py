"""Helpers for the meetings tests: the command line, invitations at the sink, ical.js.

ical.js is Thunderbird's own iCalendar parser; `tests/icaljs/parse.mjs` runs it under
node. Install it with `npm ci --prefix tests/icaljs` (CI does); without it the checks
that need it skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from icalendar import Calendar

from mailer.cli import main

ICALJS = Path(__file__).resolve().parent / "icaljs"
NEXT_YEAR = time.gmtime().tm_year + 1


def cli(config: Path, *args: str) -> str:
    """Run `alliance ARGS`; it must succeed. Returns what it printed."""
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def cli_error(config: Path, *args: str) -> str:
    """Run `alliance ARGS`; it must fail with one line. Returns that line."""
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 1, (args, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0].removeprefix("Error: ")


def local(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M")


def days_from_now(days: float, tz: str = "Europe/Berlin", *, base: float | None = None) -> str:
    """A local wall time `days` after now (or after `base`), for --start and --end."""
    moment = datetime.fromtimestamp(base if base is not None else time.time(), ZoneInfo(tz))
    return local((moment + timedelta(days=days)).replace(second=0, microsecond=0))


def seat(config: Path, address: str, name: str, party: str, body: str,
         language: str = "en", *extra: str) -> str:
    return cli(config, "delegate", "add", address, "--name", name, "--party", party,
               "--body", body, "--language", language, *extra)


def party(config: Path, name: str, country: str = "FR", region: str = "europe") -> None:
    cli(config, "party", "add", name, "--country", country, "--region", region)


def create_meeting(config: Path, body: str = "board", *extra: str,
                   start: str | None = None, end: str | None = None) -> int:
    """A meeting next year (unless told otherwise); returns its id."""
    output = cli(config, "meeting", "create", "--body", body, "--title", "Board meeting",
                 "--start", start or f"{NEXT_YEAR}-03-14T09:00",
                 "--end", end or f"{NEXT_YEAR}-03-14T17:00", "--tz", "Europe/Berlin",
                 "--location", "Rotes Rathaus, Berlin", *extra)
    return int(output.strip())


def calendars(message: EmailMessage) -> tuple[bytes, bytes]:
    """The inline text/calendar part's bytes and the invite.ics attachment's bytes."""
    inline = attached = b""
    for part in message.walk():
        if part.get_content_type() == "text/calendar":
            inline = part.get_payload(decode=True)
        elif part.get_filename() == "invite.ics":
            attached = part.get_payload(decode=True)
    return inline, attached


def event_of(data: bytes) -> tuple[Calendar, Any]:
    """The parsed calendar (icalendar, from bytes) and its one VEVENT."""
    calendar = Calendar.from_ical(data)
    [event] = calendar.events
    return calendar, event


def icaljs(data: bytes) -> dict[str, Any]:
    """What Thunderbird's parser finds in the calendar (skips without node and ical.js)."""
    node = shutil.which("node")
    if node is None or not (ICALJS / "node_modules" / "ical.js").exists():
        if os.environ.get("CI"):
            raise AssertionError("CI needs node and `npm ci --prefix tests/icaljs`")
        pytest.skip("ical.js is not installed (npm ci --prefix tests/icaljs)")
    result = subprocess.run([node, str(ICALJS / "parse.mjs")], input=data,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found
