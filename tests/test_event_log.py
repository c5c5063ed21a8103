"""One log line per message event (issue 11, item 8): received, held, distributed,
delivered/deferred/failed per batch, bounced; `serve --log-format json`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailer.addresses import Role, Route
from mailer.db import Database
from mailer.inbound import Inbound
from mailer.logs import JsonFormatter, TextFormatter
from meetings.rsvp import RsvpHandler
from tests.helpers import (
    DOMAIN,
    Sink,
    fixture,
    free_port,
    mail,
    make_config,
    make_list,
    meeting_site,
    organise,
    quiet,
    running,
    send,
)


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


async def test_a_post_logs_received_distributed_and_one_delivery_line(
        tmp_path: Path, sqlite_url: str, sink: Sink,
        caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    members = [f"m{n}@example.com" for n in range(5)]
    make_list(config, "steering", members)
    sink.refuse["m4@example.com"] = "550 5.1.1 no such user"
    caplog.set_level(logging.INFO)
    post = mail("m0@example.com", f"steering@{DOMAIN}", subject="Agenda")
    stranger = mail("x@elsewhere.test", f"steering@{DOMAIN}", subject="Spam?")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "m0@example.com", [f"steering@{DOMAIN}"], post)
        await send(daemon.ports["smtp"], "x@elsewhere.test", [f"steering@{DOMAIN}"], stranger)
        await sink.wait_for(4)
        await quiet(daemon)
    header = post.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    received = events(caplog, "received")
    assert [r.message_id for r in received][0] == header
    assert len(received) == 2
    posts = {r.outcome: r for r in events(caplog, "post")}
    assert set(posts) == {"distributed", "held"}
    assert posts["distributed"].message_id == header
    assert posts["distributed"].list == "steering"
    fan_out = [r for r in events(caplog, "delivery") if r.message_id == header]
    # Per batch of deliveries, not per member: five members, a line or two.
    assert 1 <= len(fan_out) <= 2
    assert sum(getattr(r, "delivered", 0) for r in fan_out) == 4
    assert sum(getattr(r, "failed", 0) for r in fan_out) == 1
    assert all(r.list == "steering" for r in fan_out)
    [bounce] = events(caplog, "bounced")
    assert bounce.list == "steering"


def test_serve_logs_one_json_object_a_line(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[site]\ndomain = "{DOMAIN}"\nadmin = "admin@site.test"\n'
                      '[database]\nurl = "sqlite:///alliance.sqlite3"\n'
                      f'[smtp]\nlisten = "127.0.0.1:{port}"\n[lmtp]\nlisten = ""\n'
                      '[http]\nlisten = ""\n[router]\nprocesses = 0\n')
    daemon = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "serve",
         "--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    try:
        assert daemon.stdout is not None
        assert b"serving" in daemon.stdout.readline()
        asyncio.run(send(port, "a@example.com", [f"postmaster@{DOMAIN}"],
                         mail("a@example.com", f"postmaster@{DOMAIN}")))
        time.sleep(1.5)
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    received = [line for line in lines if line.get("event") == "received"]
    assert received and received[0]["outcome"] == "stored"
    assert received[0]["message_id"].startswith("<")
    assert any(line.get("event") == "delivery" for line in lines)


@pytest.mark.parametrize(("name", "sender", "outcome"), [
    ("outlook-reply-accepted.eml", "ana@party.test", "applied"),
    ("spoofed-reply-other-attendee.eml", "mallory@elsewhere.test", "forward"),
])
def test_an_rsvp_logs_the_meeting_and_whether_it_was_applied(
        db: Database, caplog: pytest.LogCaptureFixture, name: str, sender: str,
        outcome: str) -> None:
    world = db.transaction(organise)
    raw = fixture(name, world)
    rcpt = world.rsvp("ana@party.test")
    inbound = Inbound(1, 7, Route(Role.RSVP, None, rcpt.split("+", 1)[1].split("@")[0]),
                      rcpt, sender, raw, policy=RsvpHandler.options.policy)
    caplog.set_level(logging.INFO)
    db.transaction(RsvpHandler(meeting_site()).handle, inbound)
    [line] = events(caplog, "rsvp")
    assert line.outcome == outcome
    assert line.meeting == world.meeting_id
    assert line.message_id == str(inbound.message.get("message-id")).strip()
    assert line.message_id


def test_a_library_colour_field_is_not_logged() -> None:
    """uvicorn gives its records a `color_message` (the words with terminal colours):
    neither format writes it, whatever else the record carries."""
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1,
                               "Started server process [%d]", (42,), None)
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"
    record.event = "started"
    text = TextFormatter().format(record)
    assert text.endswith("uvicorn.error: Started server process [42] event=started"), text
    assert "color_message" not in JsonFormatter().format(record)
