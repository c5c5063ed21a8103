"""The dashboard's queue page over real HTTP: the site admin sees the deliveries by state,
the deferred ones with their last error, the failures and the quarantine, and replays a
quarantined post, which then reaches the list; nobody else sees the page."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailer import outbox, queues
from mailer.db import Database
from mailer.intake import Arrival, _store
from mailer.models import Delivery, Work
from tests.helpers import (
    DOMAIN,
    Sink,
    csrf_of,
    http,
    mail,
    make_config,
    make_list,
    running,
    sign_in,
    wait_quiet,
)

ADMIN = "admin@party.test"
ANA = "ana@party.test"
LIST = f"steering@{DOMAIN}"


def troubles(session: Session) -> int:
    """A post to the list quarantined after three failures; a delivery deferred after a
    451, one failed for good, one done. Returns the quarantined work's id."""
    _store(session, [Arrival("smtp", "127.0.0.1", "client.test", ANA, (LIST,),
                             mail(ANA, LIST, subject="Quarantined once"))], DOMAIN, DOMAIN)
    work = session.scalars(select(Work)).one()
    work.state, work.attempts, work.error = "quarantined", 3, "RuntimeError: the disk <full>"
    outbox.enqueue(session, sender="", recipients=[("late@far.test", None),
                                                   ("gone@far.test", None),
                                                   ("fine@far.test", None)],
                   data=b"Subject: x\r\n\r\nx\r\n", kind="test")
    later = time.time() + 3600
    for recipient, values in (
            ("late@far.test", {"attempts": 2, "due_at": later, "code": 451,
                               "error": "4.3.0 try again later"}),
            ("gone@far.test", {"state": "failed", "code": 550, "error": "5.1.1 no such user"}),
            ("fine@far.test", {"state": "done", "done_at": time.time()})):
        session.execute(update(Delivery).where(Delivery.recipient == recipient).values(values))
    return work.id


def test_the_queue_state_is_one_call_for_the_command_line_and_the_page(
        db: Database) -> None:
    db.transaction(troubles)
    found = db.query(queues.state)
    assert found.deliveries == {"pending": 1, "failed": 1, "done": 1}
    assert found.work == {"quarantined": 1}
    assert [(d.recipient, d.attempts, d.code) for d in found.deferred] == [
        ("late@far.test", 2, 451)]
    assert [(f.recipient, f.code) for f in found.recent_failures] == [("gone@far.test", 550)]
    assert found.oldest_waiting is not None and found.next_attempt is not None


async def test_the_admin_sees_the_queue_and_replays_a_quarantined_post(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         site={"admin": ADMIN})
    make_list(config, "steering", [ANA, "bo@party.test"])
    setup = Database(config.database.url, config.base_dir)
    work_id = setup.transaction(troubles)
    setup.close()
    async with running(config) as daemon:
        port = daemon.ports["http"]
        stranger = await sign_in(port, sink, ANA)
        status, _, _ = await http(port, "GET", "/dashboard/queue", headers={"Cookie": stranger})
        assert status == 403

        cookie = await sign_in(port, sink, ADMIN)
        status, _, page = await http(port, "GET", "/dashboard/queue", language="en",
                                     headers={"Cookie": cookie})
        assert status == 200
        assert "<td>late@far.test</td><td>2</td>" in page and "451 4.3.0 try again later" in page
        assert "550 5.1.1 no such user" in page
        assert "RuntimeError: the disk &lt;full&gt;" in page
        assert f'action="/dashboard/queue/replay/{work_id}"' in page
        csrf = csrf_of(page)

        forged, _, _ = await http(port, "POST", f"/dashboard/queue/replay/{work_id}",
                                  headers={"Cookie": cookie})
        assert forged == 403
        assert daemon.db.query(lambda s: s.get(Work, work_id).state) == "quarantined"

        sink.received.clear()
        status, headers, _ = await http(port, "POST", f"/dashboard/queue/replay/{work_id}",
                                        f"csrf={csrf}".encode(), headers={"Cookie": cookie})
        assert status == 303
        assert headers["location"] == f"/dashboard/queue?notice=replayed&count={work_id}"
        distributed = await wait_quiet(sink, 2)
        assert sorted(d.rcpt for d in distributed) == [ANA, "bo@party.test"]

        again, _, page = await http(port, "POST", f"/dashboard/queue/replay/{work_id}",
                                    f"csrf={csrf}".encode(), language="de",
                                    headers={"Cookie": cookie})
        assert again == 400 and f"no quarantined work with id {work_id}" in page
        assert "Nichts ist in Quarantäne." in page
    assert daemon.db.query(lambda s: s.get(Work, work_id).state) == "done"
