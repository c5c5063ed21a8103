"""No human mail is ever dropped (issue 11, item 3): postmaster@, abuse@, coordination@
before a contact, and owner mail of a list with no owner reach the site contact."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from mailer.config import load
from mailer.models import Work
from tests.helpers import (
    DOMAIN,
    Sink,
    cli,
    config_file,
    free_port,
    invoke,
    mail,
    make_config,
    make_list,
    make_role,
    quiet,
    running,
    send,
)

ADMIN = "admin@site.test"


def reason(data: bytes) -> str:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return next(line.split(": ", 1)[1] for line in head.split("\r\n")
                if line.startswith("X-Alliance-Reason: "))


@pytest.mark.parametrize("local", ["postmaster", "Postmaster", "abuse"])
async def test_postmaster_and_abuse_reach_the_site_contact_as_they_came(
        tmp_path: Path, sqlite_url: str, sink: Sink, local: str) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    data = mail("someone@example.com", f"{local}@{DOMAIN}", subject="Your server")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "someone@example.com", [f"{local}@{DOMAIN}"], data)
        [delivered] = await sink.wait_for(1)
        await quiet(daemon)
    assert delivered.rcpt == ADMIN
    assert delivered.mail_from == "<>"            # a failure to deliver never loops back to us
    assert delivered.data.endswith(data)     # the message as it came, below two lines
    assert reason(delivered.data) == f"mail to {local.lower()}@{DOMAIN}"


async def test_coordination_mail_before_any_contact_reaches_the_admin_warned_once(
        tmp_path: Path, sqlite_url: str, sink: Sink,
        caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    caplog.set_level(logging.INFO)
    async with running(config) as daemon:
        for n in range(2):
            await send(daemon.ports["smtp"], "ana@example.com", [f"coordination@{DOMAIN}"],
                       mail("ana@example.com", f"coordination@{DOMAIN}", subject=f"Q{n}"))
        received = await sink.wait_for(2)
        await quiet(daemon)
    assert [d.rcpt for d in received] == [ADMIN, ADMIN]
    assert "before a coordination contact is named" in reason(received[0].data)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "site contact" in r.getMessage()]
    assert len(warnings) == 1


async def test_owner_mail_of_a_list_without_owners_reaches_the_admin(
        tmp_path: Path, sqlite_url: str, sink: Sink,
        caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    make_list(config, "steering", [])
    make_list(config, "board", [])
    make_role(config, "board", "bo@example.com", "owner")
    async with running(config) as daemon:
        for target in ("steering-owner", "steering-owner", "board-owner"):
            await send(daemon.ports["smtp"], "cy@example.com", [f"{target}@{DOMAIN}"],
                       mail("cy@example.com", f"{target}@{DOMAIN}", subject="Help"))
        received = await sink.wait_for(3)
        await quiet(daemon)
    assert sorted(d.rcpt for d in received) == [ADMIN, ADMIN, "bo@example.com"]
    to_admin = [d for d in received if d.rcpt == ADMIN]
    assert "a list with no owner" in reason(to_admin[0].data)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "steering-owner" in r.getMessage()]
    assert len(warnings) == 1


async def test_without_an_admin_the_mail_waits_in_the_quarantine_not_dropped(
        tmp_path: Path, sqlite_url: str, sink: Sink,
        caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         router={"processes": 0, "max_attempts": 1})
    async with running(config) as daemon:
        reply = await send(daemon.ports["smtp"], "someone@example.com",
                           [f"postmaster@{DOMAIN}"],
                           mail("someone@example.com", f"postmaster@{DOMAIN}"))
        assert reply[1].startswith("2")
        for _ in range(100):
            state = daemon.db.query(lambda s: s.scalar(select(Work.state)))
            if state == "quarantined":
                break
            await asyncio.sleep(0.05)
    assert state == "quarantined"
    listing = cli(config_file(config, tmp_path), "quarantine", "list")
    assert "site.admin is not set" in listing
    [failure] = [r for r in caplog.records if "site.admin is not set" in r.getMessage()
                 and r.name == "mailer.router"]
    assert not failure.exc_info, "a setting to make, told in one line"


@pytest.mark.skipif(not shutil.which("script"), reason="needs script(1) for a terminal")
def test_the_first_run_on_a_terminal_asks_for_the_site_contact(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    # A server that does not answer: serve asks, writes, then stops in one line.
    config.write_text(f'[site]\ndomain = "{DOMAIN}"\n[database]\n'
                      f'url = "postgresql://postgres@127.0.0.1:{free_port()}/x"\n')
    command = f"{sys.executable} -m mailer --config {config} serve"
    screen = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                            input=b"not an address\nadmin@site.test\n", timeout=60,
                            cwd=Path(__file__).parent.parent)
    shown = screen.stdout.decode("utf-8", "replace")
    assert "(site.admin)? Your address" in shown
    assert "expected an address such as admin@example.org" in shown
    assert f"site.admin = admin@site.test written to {config}" in shown
    assert "Traceback" not in shown and "cannot open it" in shown
    assert load(config).site.admin == "admin@site.test"
    assert load(config).site.domain == DOMAIN


def test_serve_without_a_terminal_does_not_ask(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "postgresql://postgres@127.0.0.1:{free_port()}/x"\n')
    result = invoke(config, "serve")
    assert result.exit_code == 1 and "cannot open it" in result.output
    assert "admin" not in config.read_text()


async def test_postmaster_without_a_domain_is_taken(tmp_path: Path, sqlite_url: str,
                                                    sink: Sink) -> None:
    """RFC 5321 §4.1.1.3: `RCPT TO:<Postmaster>` must be accepted, with no domain."""
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    async with running(config) as daemon:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.ports["smtp"],
                                   start_tls=False, timeout=10) as client:
            await client.mail("someone@example.com")
            code, _ = await client.rcpt("Postmaster")
            assert code == 250
            await client.data(mail("someone@example.com", "Postmaster"))
        [delivered] = await sink.wait_for(1)
        await quiet(daemon)
    assert delivered.rcpt == ADMIN
    assert reason(delivered.data) == f"mail to postmaster@{DOMAIN}"


async def test_a_post_held_on_a_list_without_owners_is_told_to_the_admin(
        tmp_path: Path, sqlite_url: str, sink: Sink,
        caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    make_list(config, "steering", ["ana@example.com"])
    async with running(config) as daemon:
        for n in range(2):
            await send(daemon.ports["smtp"], "x@elsewhere.test", [f"steering@{DOMAIN}"],
                       mail("x@elsewhere.test", f"steering@{DOMAIN}", subject=f"Hi {n}"))
        received = await sink.wait_for(4)
        await quiet(daemon)
    assert sorted(d.rcpt for d in received) == [ADMIN, ADMIN, "x@elsewhere.test",
                                                "x@elsewhere.test"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "moderators of steering" in r.getMessage()]
    assert len(warnings) == 1
