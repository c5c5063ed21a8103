"""The list scenarios: fan-out (A, B, C), intake (D, and G while large fan-outs run) and
the digest (F).

One trial (`run_lists`): the list `bench` with N members (benchmarks/make_list.py), the
daemon, the posts over SMTP, then the wait for every expected delivery at the sink, a
little more for duplicates, and the checks, all by count (see benchmarks/run.py). G first
posts to a second list, `busy`, and takes D's posts in while those fan out.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalogue import Scenario
from .common import DOMAIN, LIST, LIST_ADDRESS, MEMBER_FORMAT, POSTER, HarnessError, log, percentile
from .daemon import alliance, run_helper
from .database import Store, database_counts, read_database
from .dns import DMARC_ZONE
from .poster import Post, Posted, PostRun, make_post, post_all
from .processes import children_cpu_seconds, proc_cpu_seconds
from .profiling import summarise_profile
from .sink import Watcher, dkim_check
from .trial import ARC_ID, Rig, Trial, run_trial, wind_down

# The daemon's `digests` job runs at start-up and then every 60 s (lists/digests.py job()).
# Scenario F posts this long before its second run: the wait for it is short, and the
# posts are archived and the threshold set (about a second) in time.
DIGEST_JOB_EVERY = 60.0
DIGEST_LEAD = 5.0
BUSY = "busy"                   # G: the list whose fan-outs run during the intake
# H: what OpenDKIM and OpenDMARC in front write on a post they passed (RFC 8601).
MTA_RESULTS = (f"Authentication-Results: {ARC_ID}; dkim=pass header.d=members.test;\r\n"
               f"\tspf=pass smtp.mailfrom={POSTER}\r\n"
               f"Authentication-Results: {ARC_ID}; dmarc=pass header.from=members.test\r\n"
               ).encode()


def threshold_kib(sizes: list[int]) -> int:
    """The `digest_max_kb` at which these posts, and not one fewer, fill a digest.

    lists/digests.py `backlog` cuts a digest at the first post that brings the waiting
    size to the threshold and sends it at once; so the threshold must lie above the size
    of all but the last post and at or below the size of all of them.

    >>> threshold_kib([2048, 2048])
    4
    """
    kib = sum(sizes) // 1024
    if kib < 1 or sum(sizes[:-1]) >= kib * 1024:
        raise HarnessError(f"no digest_max_kb makes posts of {sizes} bytes one digest")
    return kib


def arm_digest(database: Store, config: Path, posts: int, limit: float) -> dict[str, Any]:
    """Wait until the posts are archived, then set the list's threshold to their size.

    The threshold is set with the owners' CLI (`alliance list set`), as an owner would.
    """
    deadline = time.monotonic() + limit
    while True:
        sizes = [size for (size,) in read_database(
            database, "SELECT length(data) FROM archive ORDER BY id")]
        if len(sizes) >= posts:
            break
        if time.monotonic() > deadline:
            raise HarnessError(f"{len(sizes)} of {posts} posts archived after {limit:.0f} s")
        time.sleep(0.02)
    kib = threshold_kib(sizes)
    alliance(config, "list", "set", LIST, "digest_max_kb", str(kib), timeout=60)
    return {"archived_bytes": sum(sizes), "digest_max_kb": kib}


@dataclass(frozen=True)
class Digest:
    """A digest the daemon queued, as stored in `outgoing`."""

    created_at: float        # wall clock: when the digests job stored it
    message_id: str
    size: int
    posts: int               # how many of the posts' Message-IDs it carries
    from_list: int           # enclosed posts whose From is the list's (DMARC)


def digests_queued(database: Store, post_ids: list[str]) -> list[Digest]:
    """Every digest in the database after the run, with what it carries."""
    found = []
    for created_at, data in read_database(
            database, "SELECT created_at, data FROM outgoing WHERE kind = 'digest' "
            "ORDER BY id"):
        data = bytes(data)   # psycopg may give a memoryview
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        ids = re.findall(rb"(?im)^message-id:\s*(<[^>\r\n]*>)", head)
        found.append(Digest(
            created_at, ids[0].decode("ascii", "replace") if ids else "", len(data),
            sum(1 for post_id in post_ids if post_id.encode() in data),
            len(re.findall(rf"(?im)^from:[^\r\n]* via [^\r\n]*<{re.escape(LIST_ADDRESS)}>"
                           .encode(), data))))
    return found


def run_lists(sc: Scenario, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """A, B, C, D or F: one trial, its figures and problems (`ok` when there are none)."""
    result: dict[str, Any] = {"scenario": sc.key, "title": sc.title,
                              "members": sc.members, "posts": sc.posts,
                              "clients": sc.clients, "expected": sc.expected,
                              "digest": sc.digest}
    return run_trial(sc, args, result, lambda rig, result, problems: ListTrial(
        rig, run_id, result, problems).run())


class ListTrial(Trial):
    """The steps of one list trial, and what they hand on to each other."""

    def __init__(self, rig: Rig, run_id: str, result: dict[str, Any],
                 problems: list[str]) -> None:
        super().__init__(rig, run_id, result, problems)
        # Wall clock minus monotonic: the database's timestamps are wall-clock ones.
        self.wall_offset = time.time() - time.monotonic()
        self.watcher = Watcher(rig.sink, self.sc.expected,
                               self.sc.timeout + self.args.settle + 5)
        self.posting = PostRun()
        self.accepted: list[Posted] = []
        self.t0 = 0.0           # the (first) post's 250; for a digest, the last post's
        self.cpu_before = 0.0
        self.cpu_busy = 0.0
        self.workers_before = 0.0
        self.workers_busy = 0.0   # the daemon's worker processes (H: the RSA signatures)
        self.digests: list[Digest] = []
        self.busy_ids: list[str] = []   # G: the posts fanning out during the intake

    def run(self) -> None:
        """Set up, post, wait for the deliveries, stop, check."""
        self.set_up()
        self.post()
        self.await_deliveries()
        self.finish_profile()
        status = wind_down(self.rig, self.problems)
        self.check(status)

    def set_up(self) -> None:
        """Sink, DNS server, config, the list and its members, the daemon, the watcher."""
        rig, sc = self.rig, self.sc
        rig.start_services()
        made = run_helper("make_list.py", "--config", str(rig.config), "--list", LIST,
                          "--members", str(sc.members),
                          "--delivery", "digest" if sc.digest else "regular")
        self.result["list_setup_s"] = made["seconds"]
        self.result["mailer_package"] = made["mailer"]
        if sc.busy_posts:
            run_helper("make_list.py", "--config", str(rig.config), "--list", BUSY,
                       "--members", str(sc.busy_members))
        rig.start_daemon()
        rig.start_profile(sc.key)
        rig.watch(self.watcher)
        self.watcher.start()
        daemons = ", ".join(f"{d.name} pid {d.pid} on port {d.port}" for d in rig.daemons)
        log(f"{sc.key}: {sc.title}: {rig.database.engine}, {daemons}, "
            f"sink pid {rig.sink.pid} on port {rig.sink.port}, DNS on port {rig.dns.port}")

    def post(self) -> None:
        """Every post over SMTP (F: shortly before the digests job runs again; H: over
        LMTP, with the results of the MTA in front on top, as Postfix would hand it)."""
        sc, daemon = self.sc, self.rig.daemon
        posts: list[Post] = [(i, *make_post(i, self.run_id, sc.key), POSTER, LIST_ADDRESS)
                             for i in range(sc.posts)]
        if sc.arc:
            posts = [(i, message_id, MTA_RESULTS + data, sender, rcpt)
                     for i, message_id, data, sender, rcpt in posts]
        if sc.digest:
            # The digests job ran as the daemon started; post shortly before its next run.
            start_at = daemon.ready_at + DIGEST_JOB_EVERY - DIGEST_LEAD
            log(f"{sc.key}: posting in {start_at - time.monotonic():.1f} s, "
                f"{DIGEST_LEAD:.0f} s before the daemon's digests job runs again")
            time.sleep(max(0.0, start_at - time.monotonic()))
        self.cpu_before = self.daemons_cpu()
        self.workers_before = self.workers_cpu()
        if sc.busy_posts:
            self.post_busy()
        self.posting = post_all(daemon.lmtp_port if sc.arc else daemon.port, posts,
                                sc.clients, sc.timeout, lmtp=sc.arc)
        if sc.busy_posts:
            self.result["deliveries_pending_at_last_250"] = sc.expected - self.rig.sink.poll()
        self.accepted = self.posting.accepted()
        if self.posting.errors:
            self.problems.append(f"{len(self.posting.errors)} posting error(s), first: "
                                 f"{self.posting.errors[0]}")
        if len(self.accepted) != sc.posts:
            self.problems.append(f"{len(self.accepted)} of {sc.posts} posts accepted")
            if not sc.digest:
                self.watcher.expected = (sc.members * len(self.accepted)
                                         + sc.busy_members * sc.busy_posts)
        replies = [p.replied_at for p in self.accepted] or [self.posting.started]
        self.t0 = max(replies) if sc.digest else min(replies)

    def daemons_cpu(self) -> float:
        """CPU seconds the daemons have used (all of them: `--daemons`)."""
        return sum(proc_cpu_seconds(d.pid) or 0.0 for d in self.rig.daemons)

    def workers_cpu(self) -> float:
        """CPU seconds the daemons' live worker processes have used."""
        return sum(children_cpu_seconds(d.pid) for d in self.rig.daemons)

    def post_busy(self) -> None:
        """G: the posts to `busy`, all accepted before the intake starts."""
        sc = self.sc
        address = f"{BUSY}@{DOMAIN}"
        posts: list[Post] = [(i, *make_post(i, self.run_id, sc.key, to=address,
                                            size=sc.busy_size), POSTER, address)
                             for i in range(sc.busy_posts)]
        run = post_all(self.rig.daemon.port, posts, sc.busy_posts, sc.timeout)
        self.busy_ids = [p.message_id for p in run.accepted()]
        if len(self.busy_ids) != sc.busy_posts:
            self.problems.append(f"{len(self.busy_ids)} of {sc.busy_posts} posts to "
                                 f"{BUSY} accepted")

    def await_deliveries(self) -> None:
        """F: arm the digest; then wait for the last delivery, and `--settle` s more."""
        sc, rig = self.sc, self.rig
        if sc.digest and self.accepted:
            self.result.update(arm_digest(rig.database, rig.config, len(self.accepted),
                                          DIGEST_LEAD))
            self.result["armed_after_s"] = round(time.monotonic() - self.t0, 3)
        remaining = sc.timeout - (time.monotonic() - self.posting.started)
        if self.accepted and not self.watcher.complete.wait(max(remaining, 0.0)):
            self.problems.append(f"timed out after {sc.timeout:.0f} s with "
                                 f"{rig.sink.poll()} of {self.watcher.expected} deliveries")
        self.cpu_busy = self.daemons_cpu() - self.cpu_before
        self.workers_busy = self.workers_cpu() - self.workers_before
        time.sleep(self.args.settle)  # anything arriving now is a duplicate
        self.watcher.halt.set()
        self.watcher.join(5)

    def finish_profile(self) -> None:
        """With --profile: stop py-spy and summarise what it recorded."""
        if self.rig.end_profile():
            profile = self.rig.profile_path(self.sc.key)
            self.result["profile"] = str(profile)
            self.result["profile_top"] = summarise_profile(profile)

    def check(self, status: dict[str, int]) -> None:
        """The checks by count (sink, DNS, database), then every figure into the result."""
        sc, rig = self.sc, self.rig
        members = [MEMBER_FORMAT % n for n in range(1, sc.members + 1)]
        post_ids = [p.message_id for p in self.accepted]
        letters = self.check_digests(post_ids) if sc.digest else post_ids
        expected = {(letter, m) for letter in letters for m in members}
        expected |= {(busy, MEMBER_FORMAT % n) for busy in self.busy_ids
                     for n in range(1, sc.busy_members + 1)}
        counts = rig.sink.analyse(expected,
                                  tuple(i.encode() for i in post_ids) if sc.digest else ())
        self.check_counts(counts, len(post_ids))
        if self.accepted and not rig.dns.asked.get(next(iter(DMARC_ZONE))):
            self.problems.append(f"the daemon never asked the benchmark's DNS server for "
                                 f"{next(iter(DMARC_ZONE))} (asked: {dict(rig.dns.asked)})")
        database = database_counts(rig.database)
        if database.get("deliveries", {}) != {"done": len(expected)}:
            self.problems.append(f"database deliveries by state: {database.get('deliveries')}")
        self.result.update(self.figures(counts, len(expected), status, database))
        self.check_per_daemon(len(expected))
        if sc.digest and self.digests:
            self.result.update(self.digest_figures(counts, len(expected)))
        if sc.intake and self.accepted:
            self.result.update(self.intake_figures())
        if sc.dkim:
            self.check_dkim()

    def check_per_daemon(self, expected: int) -> None:
        """With several daemons: what each one's /metrics counted adds up to the
        deliveries made (a copy sent by two would be counted by both)."""
        counted = [d["delivered"] for d in self.rig.per_daemon]
        if len(counted) > 1 and None not in counted and sum(counted) != expected:
            self.problems.append(f"the daemons' /metrics count {counted} deliveries "
                                 f"(sum {sum(counted)}), not {expected}")

    def check_dkim(self) -> None:
        """H: every copy signed; an even sample of 200 verified by dkimpy."""
        found = dkim_check(self.rig.sink.records(), self.rig.dkim_record, 200)
        self.result.update(found)
        if found["dkim_signed"] != found["dkim_transactions"]:
            self.problems.append(f"{found['dkim_signed']} of {found['dkim_transactions']} "
                                 "copies at the sink DKIM-signed")
        if found["dkim_verified"] is not None and found["dkim_verified"] != found["dkim_sample"]:
            self.problems.append(f"dkimpy verified {found['dkim_verified']} of a sample of "
                                 f"{found['dkim_sample']} signatures")
        if self.sc.arc and found["arc_sealed"] != found["dkim_transactions"]:
            self.problems.append(f"{found['arc_sealed']} of {found['dkim_transactions']} "
                                 "copies at the sink with an ARC set")
        if self.sc.arc and found["arc_verified"] not in (None, found["dkim_sample"]):
            self.problems.append(f"dkimpy's arc_verify passed {found['arc_verified']} of a "
                                 f"sample of {found['dkim_sample']} copies")

    def check_digests(self, post_ids: list[str]) -> list[str]:
        """F: one digest queued, carrying every post; its Message-ID(s)."""
        self.digests = digests_queued(self.rig.database, post_ids)
        if len(self.digests) != 1:
            self.problems.append(f"{len(self.digests)} digests queued, not 1")
        for digest in self.digests:
            if digest.posts != len(post_ids):
                self.problems.append(f"a digest carries {digest.posts} of "
                                     f"{len(post_ids)} posts")
        return [d.message_id for d in self.digests]

    def check_counts(self, counts: dict[str, int], posts: int) -> None:
        """Exactly once each, nothing else; the DMARC From on every copy (and in digests)."""
        problems, digest = self.problems, self.sc.digest
        if counts["duplicates"]:
            problems.append(f"{counts['duplicates']} duplicate deliveries")
        if counts["missing"]:
            problems.append(f"{counts['missing']} expected deliveries missing")
        if counts["unexpected"]:
            problems.append(f"{counts['unexpected']} unexpected deliveries")
        if not digest and counts["from_list"] != counts["transactions"]:
            problems.append(f"{counts['transactions'] - counts['from_list']} of "
                            f"{counts['transactions']} list copies at the sink without "
                            f"the DMARC From (... via {LIST})")
        if digest and self.digests and counts["holding_contents"] != counts["transactions"]:
            problems.append(f"{counts['transactions'] - counts['holding_contents']} digests "
                            "at the sink lack some of the posts")
        if digest and any(d.from_list != posts for d in self.digests):
            problems.append("posts in the digest without the DMARC From: "
                            f"{[d.from_list for d in self.digests]} of {posts}")

    def figures(self, counts: dict[str, int], expected: int, status: dict[str, int],
                database: dict[str, dict[str, int]]) -> dict[str, Any]:
        """Every scenario's figures: counts, times from the 250, CPU, memory."""
        posting, watcher, t0, rig = self.posting, self.watcher, self.t0, self.rig
        done_at, first = watcher.complete_at, watcher.first
        return {
            "accepted": len(self.accepted),
            "posting_s": round(posting.finished - posting.started, 4),
            "sessions_closed_421": posting.closed_421,
            **{key: counts[key] for key in ("deliveries", "duplicates", "missing",
                                            "unexpected", "transactions", "from_list")},
            "dns_queries": sum(rig.dns.asked.values()),
            "dns_asked": dict(rig.dns.asked),
            "time_to_last_s": round(done_at - t0, 4) if done_at else None,
            "deliveries_per_s": (round(expected / (done_at - t0), 1)
                                 if done_at and done_at > t0 else None),
            "first_delivery_s": round(first - t0, 4) if first else None,
            "delivery_phase_per_s": (round((expected - 1) / (done_at - first), 1)
                                     if done_at and first and done_at > first else None),
            "daemon_cpu_s": round(self.cpu_busy, 2),
            "workers_cpu_s": round(self.workers_busy, 2),
            "rss_ready_mib": round(rig.rss_ready / 1024, 1),
            "rss_peak_mib": rig.peak_mib(status),
            "database": database,
            "engine": rig.database.engine,
            "daemons": len(rig.daemons),
            "per_daemon": rig.per_daemon,
        }

    def digest_figures(self, counts: dict[str, int], expected: int) -> dict[str, Any]:
        """F: the digest run proper, from the moment the job stored the digest."""
        done_at, first = self.watcher.complete_at, self.watcher.first
        queued = self.digests[0].created_at - self.wall_offset
        return {
            "digest_kib": round(self.digests[0].size / 1024, 1),
            "posts_in_digest": self.digests[0].posts,
            "digests_holding_every_post": counts["holding_contents"],
            "scheduler_wait_s": round(queued - self.t0, 3),
            "queued_to_first_s": round(first - queued, 4) if first else None,
            "queued_to_last_s": round(done_at - queued, 4) if done_at else None,
            "digest_deliveries_per_s": (round(expected / (done_at - queued), 1)
                                        if done_at and done_at > queued else None),
        }

    def intake_figures(self) -> dict[str, Any]:
        """D: how fast the posts were taken in, and their end-of-DATA -> 250 latency."""
        accepted, started = self.accepted, self.posting.started
        latencies = sorted(p.latency for p in accepted)
        last_reply = max(p.replied_at for p in accepted)
        done_at = self.watcher.complete_at
        return {
            "accepted_per_s": round(len(accepted) / (last_reply - started), 1),
            "latency_p50_ms": round(1000 * statistics.median(latencies), 2),
            "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 2),
            "latency_max_ms": round(1000 * latencies[-1], 2),
            "drain_s": round(done_at - last_reply, 4) if done_at else None,
        }
