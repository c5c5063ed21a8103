"""The three scenarios: intake under kills, a fan-out under kills, a full disk.

Each returns its figures and its problems (`ok` when there are none); a HarnessError (the
harness could not do its part) is one of the problems.
"""

from __future__ import annotations

import argparse
import collections
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.common import DOMAIN, HarnessError

from . import disk
from .clients import Clients, Posting, post_one
from .killer import Kill, Moments, ended_by_themselves, kill_loop, kill_once
from .rig import Rig, log
from .tally import count, members

SMALL = 3                   # members of the list the intake clients post to
FANOUT_POST = 1_000_001     # the first number of the fan-out posts
MAX_FANOUT_POSTS = 10       # a new fan-out is posted when one completes before the kills


@dataclass(frozen=True)
class Sizes:
    """One scenario's sizes, full or --short."""

    kills: int
    members: int = SMALL
    moments: Moments = Moments(0.3, 3.0)
    full_seconds: float = 0.0
    tmpfs_mib: int = 0


def sizes(name: str, args: argparse.Namespace) -> Sizes:
    """The sizes of scenario `name`, with --kills applied."""
    table = {
        "intake": (Sizes(1000, moments=Moments(0.3, 3.0)),
                   Sizes(50, moments=Moments(0.3, 2.0))),
        "fanout": (Sizes(20, 10_000, Moments(0.0, 0.4, from_ready=True)),
                   Sizes(5, 1_000, Moments(0.0, 0.15, from_ready=True))),
        "diskfull": (Sizes(0, 10_000, full_seconds=60.0, tmpfs_mib=256),
                     Sizes(0, 1_000, full_seconds=5.0, tmpfs_mib=64)),
    }
    chosen = table[name][1 if args.short else 0]
    if args.kills is not None and name != "diskfull":
        chosen = Sizes(args.kills, chosen.members, chosen.moments)
    return chosen


def run_scenario(name: str, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """Run one scenario on a fresh rig, then tear the rig down whatever happened."""
    started = time.monotonic()
    result: dict[str, Any] = {"scenario": name, "skipped": None}
    problems: list[str] = []
    rig = Rig(name, args.keep)
    steps: dict[str, Callable[..., None]] = {"intake": intake, "fanout": fanout,
                                             "diskfull": diskfull}
    try:
        steps[name](rig, sizes(name, args), args, run_id, result, problems)
    except HarnessError as error:
        problems.append(f"harness: {error}")
    finally:
        rig.shut_down()
        if name == "diskfull":
            disk.unmount(rig.folder / "db")
        rig.remove(failed=bool(problems))
    result.update(wall_s=round(time.monotonic() - started, 1), problems=problems,
                  ok=not problems)
    return result


def intake(rig: Rig, sz: Sizes, args: argparse.Namespace, run_id: str,
           result: dict[str, Any], problems: list[str]) -> None:
    """C clients post numbered messages to a list of 3 while the daemon is killed."""
    rig.start_services()
    rig.make_list("bench", sz.members)
    rig.start()
    rig.wait_ready()
    posting = Posting(run_id, f"bench@{DOMAIN}")
    limit = sz.kills * 8.0 + 300
    clients = Clients(posting, rig.port, args.clients, pause=0.01, limit=10**7,
                      deadline=time.monotonic() + limit)
    clients.start()
    kills = kill_loop(rig, sz.moments, random.Random(args.seed), kills=sz.kills,
                      deadline=time.monotonic() + limit)
    log(f"intake: {len(kills)} kills done; the clients finish what they hold")
    finish_clients(clients, problems)
    settle(rig, [(posting, members(sz.members))], kills, result, problems)


def finish_clients(clients: Clients, problems: list[str], limit: float = 120.0) -> None:
    """No new numbers; wait for the clients to get a 250 for what they hold."""
    clients.open_for_new.clear()
    clients.join(limit)
    if clients.is_alive():
        problems.append(f"the clients still held messages {limit:.0f} s after the kills")
    if clients.error is not None:
        problems.append(f"the clients failed: {clients.error!r}")


def fanout(rig: Rig, sz: Sizes, args: argparse.Namespace, run_id: str,
           result: dict[str, Any], problems: list[str]) -> None:
    """A post to a big list; kills at random moments while its deliveries are pending."""
    rig.start_services()
    rig.make_list("bench", sz.members)
    rig.start()
    posting = Posting(run_id, f"bench@{DOMAIN}", first=FANOUT_POST)
    rng = random.Random(args.seed)
    deadline = time.monotonic() + sz.kills * 30.0 + 600
    kills: list[Kill] = []
    during = posts = 0
    while during < sz.kills and time.monotonic() < deadline and len(kills) < 10 * sz.kills:
        if rig.queue_left() == 0:
            if posts == MAX_FANOUT_POSTS:
                break
            posts += 1
            post_fanout(rig, posting, posts * sz.members)
        kills.append(kill_once(rig, sz.moments, rng, len(kills) + 1))
        during += kills[-1].pending > 0
        rig.start()
    rig.wait_ready()
    result.update(posts=posts, kills_during_fanout=during)
    if during < sz.kills:
        problems.append(f"only {during} of {sz.kills} kills landed during a fan-out")
    settle(rig, [(posting, members(sz.members))], kills, result, problems)


def post_fanout(rig: Rig, posting: Posting, deliveries: int, limit: float = 300.0) -> None:
    """One post to the big list, then the wait until its deliveries are queued."""
    rig.wait_ready()
    number = posting.next_number
    posting.next_number += 1
    if not post_one(rig.port, posting, number):
        raise HarnessError(f"the fan-out post {number} got no 250")
    deadline = time.monotonic() + limit
    while int(rig.rows("SELECT count(*) FROM deliveries")[0][0]) < deliveries:
        if time.monotonic() > deadline or not rig.current.alive():
            raise HarnessError(f"post {number}'s deliveries were not queued in {limit} s")
        time.sleep(0.01)
    log(f"fanout: post {number} routed, {deliveries} deliveries queued in all")


def diskfull(rig: Rig, sz: Sizes, args: argparse.Namespace, run_id: str,
             result: dict[str, Any], problems: list[str]) -> None:
    """The database's filesystem full for a while, during a fan-out and intake."""
    mount = rig.folder / "db"
    reason = disk.mount_tmpfs(mount, sz.tmpfs_mib)
    if reason is not None:
        log(f"diskfull SKIPPED: {reason}")
        result["skipped"] = reason
        return
    rig.start_services(database_folder=mount)
    rig.make_list("bench", sz.members)
    rig.make_list("small", SMALL)
    rig.start()
    rig.wait_ready()
    small = Posting(run_id, f"small@{DOMAIN}")
    clients = Clients(small, rig.port, args.clients, pause=0.02, limit=10**7,
                      deadline=time.monotonic() + sz.full_seconds + 600)
    clients.start()
    big = Posting(run_id, f"bench@{DOMAIN}", first=FANOUT_POST)
    post_fanout(rig, big, sz.members)
    window = fill(rig, mount, sz.full_seconds, result)
    time.sleep(2.0)
    finish_clients(clients, problems)
    judge_full(small, window, result, problems)
    settle(rig, [(small, members(SMALL)), (big, members(sz.members))], [], result, problems)


def fill(rig: Rig, mount: Any, seconds: float, result: dict[str, Any]) -> tuple[float, float]:
    """The filler for `seconds`; the monotonic window in which the disk was full."""
    filler = disk.Filler(mount, seconds + 120)
    filler.start()
    if not filler.full.wait(30):
        raise HarnessError("the filler did not fill the tmpfs in 30 s")
    full_from = time.monotonic()
    log(f"diskfull: full ({filler.written >> 20} MiB filler, "
        f"{disk.free_bytes(mount)} bytes free) for {seconds:.0f} s")
    while time.monotonic() < full_from + seconds and rig.current.alive():
        time.sleep(0.1)
    full_until = time.monotonic()
    filler.halt.set()
    filler.join(30)
    log(f"diskfull: filler removed, {disk.free_bytes(mount) >> 20} MiB free")
    result["filler_mib"] = filler.written >> 20
    if not rig.current.alive():
        raise HarnessError("the daemon died while the disk was full: "
                           + " | ".join(rig.log_tail(5)))
    return full_from, full_until


def judge_full(posting: Posting, window: tuple[float, float], result: dict[str, Any],
               problems: list[str]) -> None:
    """While full, intake answers 250 (room was left in the WAL) or 452 4.3.1, and does
    answer 452 4.3.1."""
    answers = collections.Counter(
        "250" if reply.code == 250 else reply.text[:9]
        for reply in posting.replies if window[0] <= reply.at <= window[1])
    result["answers_while_full"] = dict(answers)
    if not answers["452 4.3.1"]:
        problems.append(f"intake never answered 452 4.3.1 while full: {dict(answers)}")
    others = {text: n for text, n in answers.items() if text not in ("250", "452 4.3.1")}
    if others:
        problems.append(f"other answers while full: {others}")


def settle(rig: Rig, audiences: list[tuple[Posting, list[str]]], kills: list[Kill],
           result: dict[str, Any], problems: list[str]) -> None:
    """Drain the queue, stop the daemon, and count: the checks of tools/crash.py."""
    expected = sum(len(audience) * sum(1 for n in posting.acked if posting.acked[n])
                   for posting, audience in audiences)
    result["drain_s"] = round(rig.drain(expected), 1)
    quarantined = rig.cli_json("quarantine", "list")
    queue = rig.cli_json("queue")
    result.update(kill_figures(kills), quarantined=len(quarantined),
                  quarantined_sample=[explain(rig, row, kills) for row in quarantined[:10]],
                  queue=queue)
    for posting, audience in audiences:
        figures = count(rig, posting, audience, kills).figures()
        for key, value in figures.items():
            result[key] = result.get(key, 0) + value if isinstance(value, int) \
                else [*result.get(key, []), *value]
        result["posted"] = result.get("posted", 0) + len(posting.numbers())
        result["resent"] = result.get("resent", 0) + sum(
            1 for n in posting.numbers() if posting.sent[n] > 1)
        result["refused"] = result.get("refused", 0) + len(posting.refused)
        result["unacknowledged"] = result.get("unacknowledged", 0) + len(
            posting.unacknowledged())
        result["tries"] = result.get("tries", 0) + posting.tries
    exit_code = rig.stop()
    result["errors_in_log"] = len(rig.log_lines(" ERROR ", " CRITICAL "))
    result["failures_not_recorded"] = len(rig.log_lines("could not record the failure"))
    result["notes"] = notes(result)
    problems.extend(findings(result, queue, exit_code, ended_by_themselves(rig)))


def explain(rig: Rig, row: dict[str, Any], kills: list[Kill]) -> dict[str, Any]:
    """A quarantined unit with the kills that found it handled alone, and its log lines."""
    work_id = row["id"]
    return {**row, "charged_at_kills": [
        {"kill": k.number, "after_start_s": k.after, "serving": k.serving,
         "work_in_flight": k.working} for k in charged(work_id, kills)],
        "log": [line[:300] for line in rig.log_lines(f"work {work_id} ",
                                                     f"work {work_id}\n")][:10]}


def notes(result: dict[str, Any]) -> list[str]:
    """What is no failure but worth saying: the queue was slow to empty, and why."""
    said = []
    if result.get("failures_not_recorded"):
        said.append(f"{result['failures_not_recorded']} work unit(s) failed transiently and "
                    "the failure could not be recorded (the database was full): they stay "
                    "leased until the router's lease (300 s) ends")
    if result.get("drain_s", 0) > 60:
        said.append(f"the queue took {result['drain_s']} s to empty after the last start "
                    "(or after the disk was freed)")
    return said


def charged(work_id: int, kills: list[Kill]) -> list[Kill]:
    """The kills that found the unit handled alone after this start leased it again (its
    attempts went up): those the router counts as its crashes."""
    found, seen = [], 0
    for kill in kills:
        attempts = dict(kill.alone).get(work_id, 0)
        if attempts > seen:
            found.append(kill)
        seen = max(seen, attempts)
    return found


def kill_figures(kills: list[Kill]) -> dict[str, Any]:
    """The kills: how many, when, and what was in flight."""
    return {"kills": len(kills), "kills_during_startup": sum(not k.serving for k in kills),
            "leased_at_kills": sum(k.leased for k in kills),
            "max_leased_at_a_kill": max((k.leased for k in kills), default=0),
            "work_in_flight_at_kills": sum(k.working for k in kills)}


def findings(result: dict[str, Any], queue: dict[str, Any], exit_code: int | None,
             ended: list[str]) -> list[str]:
    """What the figures show that must not be."""
    found = []
    for key in ("undelivered", "quarantined", "stored_not_delivered", "refused",
                "unacknowledged", "unexplained_duplicates"):
        if result.get(key):
            found.append(f"{result[key]} {key.replace('_', ' ')}")
    failed = queue.get("deliveries", {}).get("failed", 0)
    unsettled = {k: v for k, v in queue.get("work", {}).items() if k != "done"}
    if failed:
        found.append(f"{failed} deliveries failed: {queue.get('recent_failures', [])[:3]}")
    if unsettled:
        found.append(f"work not done: {unsettled}")
    if result.get("delivery_duplicates", 0) > result.get("leased_at_kills", 0):
        found.append(f"{result['delivery_duplicates']} delivery duplicates, more than the "
                     f"{result['leased_at_kills']} deliveries in flight at the kills")
    if exit_code != 0:
        found.append(f"the last start exited with {exit_code} on SIGTERM")
    if ended:
        found.append(f"starts that ended by themselves: {ended[:5]}")
    return found
