"""A real mail client: Debian's swaks joins, confirms and posts (CI installs swaks)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import DOMAIN, Sink, make_config, make_list, running, wait_quiet

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(
    SWAKS is None and not os.environ.get("CI"),
    reason="swaks is not installed (apt-get install swaks); CI installs it")


async def swaks(port: int, sender: str, to: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        SWAKS or "swaks", "--server", f"127.0.0.1:{port}", "--from", sender, "--to", to,
        "--helo", "client.party.example", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def test_join_confirm_post_with_swaks(tmp_path: Path, sqlite_url: str,
                                            sink: Sink) -> None:
    ana = "ana@party.example"
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", ["bo@party.example"])
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        said = await swaks(port, ana, f"steering-join@{DOMAIN}",
                           "--header", "Subject: join")
        assert "<-  250 2.0.0 Ok: queued" in said
        [confirmation] = await wait_quiet(sink, 1)
        confirm_address = str(confirmation.message["Reply-To"])
        await swaks(port, ana, confirm_address, "--header",
                    f"Subject: Re: {confirmation.message['Subject']}")
        welcome = (await wait_quiet(sink, 2))[1]
        assert welcome.rcpt == ana and welcome.message["Subject"].startswith("Welcome")
        await swaks(port, ana, f"steering@{DOMAIN}", "--header", "Subject: Hello from swaks",
                    "--body", "First post.")
        posts = (await wait_quiet(sink, 4))[2:]
    assert sorted(d.rcpt for d in posts) == [ana, "bo@party.example"]
    assert {d.message["Subject"] for d in posts} == {"[steering] Hello from swaks"}
