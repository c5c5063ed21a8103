"""The router: failing work is retried, then quarantined, then replayed by an operator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from lists import service
from lists.models import Held
from lists.posting import PostHandler
from mailer import router as router_module
from mailer.addresses import Role, Route
from mailer.db import Database
from mailer.inbound import HandlerOptions, Inbound, RoleHandler, WorkerDied
from mailer.intake import Arrival, _store
from mailer.models import Delivery, Outgoing, Work
from mailer.router import Router
from tests.helpers import (
    DOMAIN,
    cap_pages,
    config_file,
    invoke,
    list_site,
    mail,
    make_config,
)


class Flaky(RoleHandler):
    """A role handler that fails until it is told to work (a test double, passed in)."""

    def __init__(self) -> None:
        self.broken = True
        self.handled: list[str] = []

    def accepts(self, session: Session, route: Route) -> bool:
        return True

    async def prepare(self, inbound: Inbound) -> None:
        return None

    def handle(self, session: Session, inbound: Inbound) -> None:
        if self.broken:
            raise RuntimeError("the handler is broken")
        self.handled.append(str(inbound.message["Subject"]))


async def wait_for_state(db: Database, state: str, timeout: float = 10) -> Work:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        work = db.query(lambda s: s.scalars(select(Work)).first())
        if work is not None and work.state == state:
            return work
        await asyncio.sleep(0.02)
    raise AssertionError(f"work never reached {state}")


async def test_failing_work_is_quarantined_after_max_attempts_and_replayed(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    db = Database(sqlite_url)
    db.upgrade()
    arrival = Arrival("smtp", "127.0.0.1", "client.test", "a@example.com",
                      (f"steering@{DOMAIN}",), mail("a@example.com", "x", subject="Poison"))
    db.transaction(_store, [arrival], DOMAIN, DOMAIN)
    handler = Flaky()
    router = Router(db, {Role.POST: handler}, max_attempts=2, on_outgoing=lambda: None,
                    poll=0.05)
    router.start()
    try:
        work = await wait_for_state(db, "quarantined")
        assert work.attempts == 2
        assert work.error == "RuntimeError: the handler is broken"

        cli = config_file(config, tmp_path)
        listing = invoke(cli, "quarantine", "list")
        assert "RuntimeError: the handler is broken" in listing.output
        handler.broken = False
        replayed = invoke(cli, "quarantine", "replay", str(work.id))
        assert replayed.output == f"work {work.id} queued again\n"
        router.wake()
        await wait_for_state(db, "done")
    finally:
        await router.stop()
        db.close()
    assert handler.handled == ["Poison"]


async def test_work_that_crashed_the_process_while_alone_too_often_is_quarantined(
        tmp_path: Path, sqlite_url: str) -> None:
    """A message that kills the process each time it is handled alone must stop doing so."""
    db = Database(sqlite_url)
    db.upgrade()
    arrival = Arrival("smtp", "127.0.0.1", "client.test", "a@example.com",
                      (f"steering@{DOMAIN}",), mail("a@example.com", "x"))
    db.transaction(_store, [arrival], DOMAIN, DOMAIN)
    # Earlier runs died twice while handling it alone, and the last one died holding it
    # alone too: this lease finds it still working, and counts the third crash.
    db.transaction(lambda s: s.execute(Work.__table__.update().values(
        attempts=3, state="working", alone=True, crashes=2, due_at=0)))
    handler = Flaky()
    handler.broken = False
    router = Router(db, {Role.POST: handler}, max_attempts=3, on_outgoing=lambda: None,
                    poll=0.05)
    router.start()
    try:
        work = await wait_for_state(db, "quarantined")
    finally:
        await router.stop()
        db.close()
    assert work.error == "the process died 3 times while handling it alone"
    assert work.crashes == 3
    assert handler.handled == []



class Picky(Flaky):
    """Fails on one subject only; counts the units of each transaction it is given."""

    options = HandlerOptions(batch=1)

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[int] = []

    def preload(self, session: Session, inbounds: list[Inbound]) -> None:
        self.transactions.append(len(inbounds))

    def handle(self, session: Session, inbound: Inbound) -> None:
        if str(inbound.message["Subject"]) == "Poison":
            session.add(Work(message_id=inbound.message_id, recipient="half@done",
                             role="post", state="done", attempts=0, due_at=0))
            session.flush()
            raise RuntimeError("the handler is broken")
        self.handled.append(str(inbound.message["Subject"]))


@pytest.mark.parametrize("batch", [1, 10], ids=["a-transaction-each", "one-transaction"])
async def test_one_failing_unit_in_a_batch_leaves_the_others_done(sqlite_url: str,
                                                                  batch: int) -> None:
    """With `batch` > 1 the three are handled in one transaction, which fails and is
    rolled back; each is then handled on its own, so only the poison is retried."""
    db = Database(sqlite_url)
    db.upgrade()
    arrivals = [Arrival("smtp", "127.0.0.1", "client.test", "a@example.com",
                        (f"steering@{DOMAIN}",), mail("a@example.com", "x", subject=subject))
                for subject in ("One", "Poison", "Three")]
    db.transaction(_store, arrivals, DOMAIN, DOMAIN)
    handler = Picky()
    handler.options = HandlerOptions(batch=batch)
    router = Router(db, {Role.POST: handler}, max_attempts=1, on_outgoing=lambda: None,
                    poll=0.05)
    router.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = db.query(lambda s: sorted(s.scalars(select(Work.state)).all()))
            if "pending" not in states and "working" not in states:
                break
            await asyncio.sleep(0.02)
    finally:
        await router.stop()
        db.close()
    handled_once = ["One", "Three"]
    assert handler.handled == (handled_once if batch == 1 else ["One", *handled_once])
    assert handler.transactions == ([1, 1, 1] if batch == 1 else [3, 1, 1, 1])
    assert states == ["done", "done", "quarantined"], "the failed unit's writes rolled back"


class Counting(Flaky):
    """Records whether its messages were parsed before it asked for them."""

    options = HandlerOptions(batch=10, lazy=True)

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.parsed_before: list[bool] = []

    def handle(self, session: Session, inbound: Inbound) -> None:
        self.parsed_before.append(inbound.parsed is not None)
        super().handle(session, inbound)


async def test_a_lazy_handler_gets_its_message_unparsed_until_it_asks(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    arrivals = [Arrival("smtp", "127.0.0.1", "client.test", "a@example.com",
                        (f"steering@{DOMAIN}",), mail("a@example.com", "x", subject=subject))
                for subject in ("One", "Two")]
    db.transaction(_store, arrivals, DOMAIN, DOMAIN)
    handler = Counting()
    router = Router(db, {Role.POST: handler}, max_attempts=1, on_outgoing=lambda: None,
                    poll=0.05)
    router.start()
    try:
        await wait_for_state(db, "done")
    finally:
        await router.stop()
        db.close()
    assert handler.parsed_before == [False, False]
    assert handler.handled == ["One", "Two"], "parsed on first use"


# -- batches in hand: order, stops, fences, retries alone -----------------------------------

def store(db: Database, subjects: list[str]) -> None:
    arrivals = [Arrival("smtp", "127.0.0.1", "client.test", "a@example.com",
                        (f"steering@{DOMAIN}",), mail("a@example.com", "x", subject=subject))
                for subject in subjects]
    db.transaction(_store, arrivals, DOMAIN, DOMAIN)


def states(db: Database) -> list[tuple[str, int]]:
    return db.query(lambda s: [(w.state, w.attempts) for w in s.scalars(
        select(Work).order_by(Work.id))])


async def settle(db: Database, timeout: float = 15) -> list[tuple[str, int]]:
    deadline = time.monotonic() + timeout
    while any(state in ("pending", "working") for state, _ in states(db)):
        assert time.monotonic() < deadline, states(db)
        await asyncio.sleep(0.02)
    return states(db)


class Recorder(Picky):
    """Works; prepares slowly (or never) what it is told to; records what it handles."""

    options = HandlerOptions(batch=10)

    def __init__(self, slow: str = "", stuck: str = "") -> None:
        super().__init__()
        self.broken = False
        self.slow, self.stuck = slow, stuck

    async def prepare(self, inbound: Inbound) -> None:
        subject = str(inbound.message["Subject"])
        if subject == self.slow:
            await asyncio.sleep(0.5)
        if subject == self.stuck:
            await asyncio.Event().wait()


async def test_batches_are_written_in_the_order_they_were_leased(sqlite_url: str) -> None:
    """The first batch of fifty prepares slowly: the two after it wait for it."""
    db = Database(sqlite_url)
    db.upgrade()
    subjects = [f"Post {n:03d}" for n in range(130)]
    store(db, subjects)
    handler = Recorder(slow="Post 000")
    router = Router(db, {Role.POST: handler}, max_attempts=1, on_outgoing=lambda: None,
                    poll=0.05)
    router.start()
    try:
        assert {state for state, _ in await settle(db)} == {"done"}
    finally:
        await router.stop()
        db.close()
    assert handler.handled == subjects


async def test_a_stop_puts_what_is_in_hand_back_as_it_was(database_url: str) -> None:
    db = Database(database_url)
    db.upgrade()
    store(db, ["One", "Stuck", "Three"])
    handler = Recorder(stuck="Stuck")
    router = Router(db, {Role.POST: handler}, max_attempts=3, on_outgoing=lambda: None,
                    poll=0.05, stop_grace=0.3)
    router.start()
    try:
        deadline = time.monotonic() + 10
        while states(db) != [("working", 1)] * 3:
            assert time.monotonic() < deadline, states(db)
            await asyncio.sleep(0.02)
    finally:
        await router.stop()
    assert states(db) == [("pending", 0)] * 3, "not handled, and the lease not counted"
    assert handler.handled == []
    db.close()


class Usurped(Recorder):
    """While the first unit is prepared, another daemon's lease takes it over."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db

    async def prepare(self, inbound: Inbound) -> None:
        if str(inbound.message["Subject"]) == "Taken":
            self.db.transaction(lambda s: s.execute(
                Work.__table__.update().where(Work.id == inbound.work_id)
                .values(attempts=Work.attempts + 1, due_at=time.time() + 600)))


async def test_a_unit_leased_again_elsewhere_is_left_to_that_lease(database_url: str) -> None:
    db = Database(database_url)
    db.upgrade()
    store(db, ["Taken", "Mine"])
    handler = Usurped(db)
    router = Router(db, {Role.POST: handler}, max_attempts=3, on_outgoing=lambda: None,
                    poll=0.05)
    router.start()
    try:
        deadline = time.monotonic() + 10
        while states(db)[1][0] != "done":
            assert time.monotonic() < deadline, states(db)
            await asyncio.sleep(0.02)
    finally:
        await router.stop()
    assert handler.handled == ["Mine"]
    assert states(db) == [("working", 2), ("done", 1)], "the other lease's, untouched"
    db.close()


async def test_a_unit_tried_before_is_handled_alone(sqlite_url: str) -> None:
    """As after a crash: the unit the dead process held is tried on its own, first."""
    db = Database(sqlite_url)
    db.upgrade()
    store(db, ["Held at the crash", "Two", "Three"])
    db.transaction(lambda s: s.execute(Work.__table__.update().where(
        Work.id == s.scalar(select(Work.id).order_by(Work.id))).values(
        attempts=1, state="working", due_at=0)))
    handler = Recorder()
    router = Router(db, {Role.POST: handler}, max_attempts=3, on_outgoing=lambda: None,
                    poll=0.05)
    router.start()
    try:
        assert await settle(db) == [("done", 2), ("done", 1), ("done", 1)]
    finally:
        await router.stop()
        db.close()
    assert handler.transactions == [1, 2]
    assert handler.handled == ["Held at the crash", "Two", "Three"]


async def test_a_stop_ends_a_retry_that_hangs(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    store(db, ["Stuck"])
    db.transaction(lambda s: s.execute(Work.__table__.update().values(attempts=1,
                                                                     failures=1)))
    router = Router(db, {Role.POST: Recorder(stuck="Stuck")}, max_attempts=3,
                    on_outgoing=lambda: None, poll=0.05, stop_grace=0.3)
    router.start()
    try:
        deadline = time.monotonic() + 10
        while states(db) != [("working", 2)]:
            assert time.monotonic() < deadline, states(db)
            await asyncio.sleep(0.02)
    finally:
        await asyncio.wait_for(router.stop(), 5)
    assert states(db) == [("pending", 1)]
    db.close()


async def test_a_prepare_that_hangs_fails_and_frees_the_router(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    store(db, ["Stuck", "Next"])
    handler = Recorder(stuck="Stuck")
    handler.options = HandlerOptions(batch=1)
    router = Router(db, {Role.POST: handler}, max_attempts=1, on_outgoing=lambda: None,
                    poll=0.05, lease=1.0)       # a prepare may take a fifth of it
    router.start()
    try:
        assert await settle(db) == [("quarantined", 1), ("done", 1)]
    finally:
        await router.stop()
    error = db.query(lambda s: s.scalar(select(Work.error).order_by(Work.id)))
    assert error is not None and error.startswith("TimeoutError")
    assert handler.handled == ["Next"]
    db.close()


async def test_the_outcome_of_an_old_lease_never_touches_the_new_one(database_url: str) -> None:
    """A unit whose lease ran out in hand, and which this router leased again: what the
    first batch still does with it (it failed, say) is not recorded against the second."""
    db = Database(database_url)
    db.upgrade()
    store(db, ["Leased twice"])
    router = Router(db, {Role.POST: Recorder()}, max_attempts=2, on_outgoing=lambda: None)
    [unit], first = await router._lease()
    work_id = unit.id
    db.transaction(lambda s: s.execute(Work.__table__.update().values(due_at=0)))
    [again], second = await router._lease()
    assert again.id == work_id and again.again and second != first
    await router._fail(work_id, first, RuntimeError("from the first batch"))
    await router._unclaim_all([work_id], first)
    assert states(db) == [("working", 2)]
    assert router._held == {work_id: second}
    db.close()


# -- crashes and transient faults (issue 10) ---------------------------------------

async def test_units_in_flight_beside_a_crash_are_retried_uncharged(sqlite_url: str) -> None:
    """A process died holding a batch: none of it was handled alone, so none of it is
    blamed; each is tried again alone, even with one try allowed (issue 10)."""
    db = Database(sqlite_url)
    db.upgrade()
    store(db, ["One", "Two", "Three"])
    db.transaction(lambda s: s.execute(Work.__table__.update().values(
        attempts=1, state="working", alone=False, due_at=0)))
    handler = Recorder()
    router = Router(db, {Role.POST: handler}, max_attempts=1, on_outgoing=lambda: None,
                    poll=0.05)
    router.start()
    try:
        assert await settle(db) == [("done", 2)] * 3
    finally:
        await router.stop()
    assert handler.transactions == [1, 1, 1], "each alone"
    assert db.query(lambda s: list(s.scalars(select(Work.crashes)))) == [0, 0, 0]
    db.close()


async def test_units_in_flight_at_a_crash_wait_while_the_process_settles(
        sqlite_url: str) -> None:
    """Right after a start (`router.crash_settle`), work in flight at the crash waits and
    fresh work goes on: a kill of a process just started (slow, cold) must not fall on
    the first suspect it handles, again and again (the 50-kill run quarantined one)."""
    db = Database(sqlite_url)
    db.upgrade()
    store(db, ["Suspect", "Charged", "Fresh"])
    db.transaction(lambda s: s.execute(Work.__table__.update().where(Work.id == 1).values(
        attempts=1, state="working", due_at=0)))
    db.transaction(lambda s: s.execute(Work.__table__.update().where(Work.id == 2).values(
        attempts=1, crashes=1)))
    handler = Recorder()
    router = Router(db, {Role.POST: handler}, max_attempts=3, on_outgoing=lambda: None,
                    poll=0.05, settle=60)
    router.start()
    try:
        deadline = time.monotonic() + 10
        while handler.handled != ["Fresh"]:
            assert time.monotonic() < deadline, handler.handled
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)    # several polls: the suspects are still left
    finally:
        await router.stop()
    assert handler.handled == ["Fresh"]
    assert states(db) == [("working", 1), ("pending", 1), ("done", 1)]
    db.close()

class Locked(Recorder):
    """Meets a database that is locked (a transient fault) its first `times` tries."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def handle(self, session: Session, inbound: Inbound) -> None:
        if self.times > 0:
            self.times -= 1
            raise OperationalError("UPDATE members", {}, Exception("database is locked"))
        super().handle(session, inbound)


async def test_a_transient_fault_is_retried_until_it_passes_and_never_quarantines(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_module, "TRANSIENT_BACKOFF", 0.05)
    db = Database(sqlite_url)
    db.upgrade()
    store(db, ["Through the fault"])
    handler = Locked(times=4)
    router = Router(db, {Role.POST: handler}, max_attempts=2, on_outgoing=lambda: None,
                    poll=0.02)
    router.start()
    try:
        assert await settle(db) == [("done", 5)], "four transient faults, then done"
    finally:
        await router.stop()
    assert db.query(lambda s: s.scalar(select(Work.failures))) == 0
    assert handler.handled == ["Through the fault"]
    db.close()


LARGE_BODY = "".join(f"line {n} " + "x" * 900 + "\n" for n in range(300))  # ~270 KB


def steering_with_posts(sqlite_url: str, *posts: tuple[str, str]) -> Database:
    """An open list with one member, and posts (subject, body) to it stored by intake."""
    db = Database(sqlite_url)
    db.upgrade()
    db.transaction(lambda s: service.add_members(
        s, service.create(s, "steering", posting="anyone"), ["ana@party.test"]))
    db.transaction(_store, [Arrival("smtp", "127.0.0.1", "client.test", "a@example.com",
                                    (f"steering@{DOMAIN}",),
                                    mail("a@example.com", "x", subject=subject, body=body))
                            for subject, body in posts], DOMAIN, DOMAIN)
    return db


async def test_a_full_disk_after_the_250_is_waited_out_not_quarantined(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """F04 after the acknowledgement: the fan-out cannot be written while the database is
    full; the post waits, uncounted, and goes out once there is room (issue 10)."""
    monkeypatch.setattr(router_module, "TRANSIENT_BACKOFF", 0.05)
    db = steering_with_posts(sqlite_url, ("Large", LARGE_BODY))
    await db.write(cap_pages, 0)
    router = Router(db, {Role.POST: PostHandler(list_site())}, max_attempts=1,
                    on_outgoing=lambda: None, poll=0.02)
    router.start()
    try:
        deadline = time.monotonic() + 10
        while "full" not in (db.query(lambda s: s.scalar(select(Work.error))) or ""):
            assert time.monotonic() < deadline, states(db)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)              # several tries while the database is full
        assert states(db)[0][0] in ("pending", "working")
        await db.write(cap_pages, None)
        assert (await settle(db))[0][0] == "done"
    finally:
        await router.stop()
    assert db.query(lambda s: s.scalar(select(Work.failures))) == 0
    assert db.query(lambda s: s.scalar(select(func.count()).select_from(Delivery))) == 1
    db.close()


class Dying:
    """Worker processes that every large post kills (a test double of mailer.inbound's
    Offload, handed to the handler as the daemon hands it the real pool)."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def batched(self, fn: Any) -> Any:
        async def call(item: bytes) -> str:
            self.items.append(item)
            raise WorkerDied("alone in a worker process: a worker process died")
        return call


async def test_a_post_that_kills_its_reader_is_held_for_a_person(sqlite_url: str) -> None:
    """Issue 10: a large post is read in a worker first; one that kills it is never read
    whole in the daemon, but held with the reason. A small post never goes there."""
    db = steering_with_posts(sqlite_url, ("Killer", LARGE_BODY), ("Small", "Hello."))
    workers = Dying()
    router = Router(db, {Role.POST: PostHandler(list_site(), workers)}, max_attempts=1,
                    on_outgoing=lambda: None, poll=0.02)
    router.start()
    try:
        assert [state for state, _ in await settle(db)] == ["done", "done"]
    finally:
        await router.stop()
    held = db.query(lambda s: s.scalars(select(Held)).one())
    assert held.subject == "Killer"
    assert held.reason.startswith("the message could not be read safely: reading it ended "
                                  "a worker process")
    assert len(workers.items) == 1, "the small post was read in the daemon's thread"
    sent = db.query(lambda s: sorted(s.scalars(select(Outgoing.kind))))
    assert sent == ["list", "reply"], "the small post's copy; the poster told of the hold"
    db.close()


def test_a_lease_of_large_messages_is_cut_short(sqlite_url: str) -> None:
    """Fifty 5 MB posts are never loaded at once: a lease holds at most BATCH_BYTES of
    messages, or one message alone (issue 10: the daemon's memory stays bounded)."""
    db = Database(sqlite_url)
    db.upgrade()
    big = "".join("x" * 998 + "\n" for _ in range(5000))               # ~5 MB each
    db.transaction(_store, [Arrival("smtp", "127.0.0.1", "client.test", "a@example.com",
                                    (f"steering@{DOMAIN}",), mail("a@example.com", "x",
                                                                  body=big))
                            for _ in range(3)] + [
        Arrival("smtp", "127.0.0.1", "client.test", "a@example.com", (f"steering@{DOMAIN}",),
                mail("a@example.com", "x"))], DOMAIN, DOMAIN)
    now = time.time()
    leases = [db.transaction(router_module.claim, now, now + 60, 50) for _ in range(3)]
    assert [len(lease) for lease in leases] == [1, 1, 2], "the last one takes the small one"
    db.close()


def test_a_claim_whose_answer_was_lost_gives_its_units_back(sqlite_url: str) -> None:
    """A claim committed whose answer never came (a connection cut in the commit, F06):
    the router gives back, uncounted, what carries that lease's end, and nothing else."""
    db = Database(sqlite_url)
    db.upgrade()
    store(db, ["one", "two"])
    now = time.time()
    lost = db.transaction(router_module.claim, now, now + 60, 1)     # "lost": never used
    kept = db.transaction(router_module.claim, now, now + 61, 1)     # another lease
    db.transaction(router_module._unclaim_leases, [now + 60])
    states = db.query(lambda s: {w.id: (w.state, w.attempts, w.due_at <= time.time())
                                 for w in s.scalars(select(Work))})
    db.close()
    assert states == {lost[0].id: ("pending", 0, True), kept[0].id: ("working", 1, False)}
