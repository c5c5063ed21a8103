"""Every distributed post is archived; the archive exports as an mbox that readers open.

Members post over SMTP, a stranger's post is held; the owner exports the archive with
`alliance list archive steering --mbox FILE` and reads it back with `mailbox.mbox` (and
with mutt, where it is installed).
"""

from __future__ import annotations

import asyncio
import mailbox
import os
import shutil
import subprocess
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

from sqlalchemy import select

from lists.models import Archived, Held
from tests.helpers import (
    DOMAIN,
    Sink,
    config_file,
    mail,
    make_config,
    make_list,
    members,
    run,
    running,
    send,
)

LIST = f"steering@{DOMAIN}"
CHAIR_LINE = "From the chair: the agenda is attached below."


def archive_cli(config_path: Path, *args: str) -> tuple[int, str]:
    return run(config_path, "list", "archive", *args)


async def test_distributed_posts_are_archived_and_held_posts_are_not(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    people = members(3)
    make_list(config, "steering", people, display_name="Steering Committee")
    stranger = "stranger@elsewhere.test"
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, people[0], [LIST], mail(people[0], LIST, subject="Agenda for Nairobi",
                                                 body=f"Dear all,\n{CHAIR_LINE}\nAna\n"))
        await send(port, stranger, [LIST], mail(stranger, LIST, subject="Buy now"))
        await send(port, people[1], [LIST], mail(people[1], LIST, subject="Réunion à Dakar",
                                                 body="On se retrouve à 9 h.\n"))
        await sink.wait_for(2 * len(people))
        for _ in range(100):
            held = daemon.db.query(lambda s: list(s.scalars(select(Held))))
            if held:
                break
            await asyncio.sleep(0.05)
        archived = daemon.db.query(lambda s: list(s.scalars(
            select(Archived).order_by(Archived.id))))

    assert [h.subject for h in held] == ["Buy now"]
    assert [(a.sender, a.subject) for a in archived] == [
        (people[0], "[steering] Agenda for Nairobi"), (people[1], "[steering] Réunion à Dakar")]
    distributed = {d.message["Subject"]: d.data for d in sink.received}
    for row in archived:
        assert b"\r\nList-Id: " in b"\r\n" + row.data, "the list copy, with the list's fields"
        assert b"@@unsubscribe-token@@" not in row.data, "no per-member link in the archive"
        copy = BytesParser(policy=default_policy).parsebytes(row.data.replace(b"\r\n", b"\n"))
        members_copy = BytesParser(policy=default_policy).parsebytes(
            distributed[row.subject].replace(b"\r\n", b"\n"))
        assert copy.get_content() == members_copy.get_content()


async def test_the_archive_exports_as_an_mbox_that_mailbox_and_mutt_read(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(2)
    make_list(config, "steering", people, display_name="Steering Committee")
    posts = [("Agenda for Nairobi", f"Dear all,\n{CHAIR_LINE}\nAna\n"),
             ("Minutes", "From now on, minutes go to the wiki.\n"),
             ("Réunion à Dakar", "On se retrouve à 9 h.\n")]
    async with running(config) as daemon:
        for subject, body in posts:
            await send(daemon.ports["smtp"], people[0], [LIST],
                       mail(people[0], LIST, subject=subject, body=body))
            await sink.wait_for(len(sink.received) + len(people))

    cli = config_file(config, tmp_path)
    path = tmp_path / "steering.mbox"
    assert archive_cli(cli, "steering", "--mbox", str(path)) == \
        (0, f"wrote 3 posts of steering to {path}\n")

    box = mailbox.mbox(str(path))
    senders = [message.get_from().split()[0] for message in box]
    read = [BytesParser(policy=default_policy).parsebytes(box.get_bytes(key))
            for key in box.iterkeys()]
    box.close()
    assert senders == [people[0]] * 3
    assert [str(message["subject"]) for message in read] == \
        [f"[steering] {subject}" for subject, _ in posts]
    bodies = [message.get_content() for message in read]
    # mbox quotes a body line that begins with "From " so the file does not split there.
    assert bodies[0].startswith(f"Dear all,\n>{CHAIR_LINE}\nAna\n")
    assert bodies[1].startswith(">From now on, minutes go to the wiki.\n")
    assert bodies[2].startswith("On se retrouve à 9 h.\n")
    if shutil.which("mutt") and shutil.which("script"):
        assert "Msgs:3" in mutt_screen(path, tmp_path)


def mutt_screen(path: Path, home: Path) -> str:
    """What mutt shows when it opens the file read-only and quits (needs a terminal)."""
    (home / "Mail").mkdir(exist_ok=True)
    command = (f"mutt -n -F /dev/null -R -f {path} -e 'set quit=yes' -e 'push <quit>'")
    screen = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                            timeout=20, env={**os.environ, "HOME": str(home), "TERM": "xterm"},
                            stdin=subprocess.DEVNULL)
    return screen.stdout.decode("utf-8", "replace")


def test_export_never_overwrites_and_names_a_missing_list(tmp_path: Path,
                                                          sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", members(2))
    cli = config_file(config, tmp_path)
    empty = tmp_path / "empty.mbox"
    assert archive_cli(cli, "steering", "--mbox", str(empty)) == \
        (0, f"wrote 0 posts of steering to {empty}\n")
    assert mailbox.mbox(str(empty)).keys() == []

    assert archive_cli(cli, "steering", "--mbox", str(empty)) == \
        (1, f"Error: {empty} already exists; choose a new file name\n")
    code, output = archive_cli(cli, "nosuchlist", "--mbox", str(tmp_path / "x.mbox"))
    assert (code, output) == (1, "Error: no list named 'nosuchlist'\n")
