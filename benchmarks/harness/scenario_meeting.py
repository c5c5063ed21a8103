"""Scenario E: one meeting, `alliance meeting invite` to N delegates, then N replies.

E1 times the coordinator's command until every invitation is at the sink; E2 has every
invitee accept over SMTP, many clients at once, until the database shows every invitation
ACCEPTED (see benchmarks/run.py and benchmarks/README.md for the checks).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import random
import re
import statistics
import time
import zoneinfo
from typing import Any

from .catalogue import Scenario
from .common import log, percentile
from .daemon import Daemon, alliance, run_helper
from .database import DbWatcher, database_counts, read_database
from .invitations import Invited, check_invitation, make_reply, read_invited
from .poster import Post, PostRun, post_all
from .processes import children_cpu_seconds, proc_cpu_seconds, proc_status
from .profiling import cli_prefix, summarise_profile
from .sink import Watcher
from .trial import Rig, Trial, run_trial, wind_down

MEETING_BODY = "bench-forum"
DELEGATE_FORMAT = "d%06d@delegates.test"    # benchmarks/make_meeting.py's addresses
MEETING_TZ = "Europe/Berlin"
SAMPLE_CHECKS = 20                           # invitations taken apart in a full run
APPLIED = re.compile(r"rsvp: message \d+ for invitation \d+: (\w+) \(([^)]*)\)")


def meeting_times(now: float) -> tuple[str, str, str]:
    """Start, end and send-at of the benchmark's meeting, as `meeting create` takes them.

    Half a year ahead, so that no reminder is due (14 and 3 days before), with a send-at
    time months away, so that the daemon's scheduler never sends the invitations itself:
    `alliance meeting invite` does, as a coordinator would.
    """
    day = datetime.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(MEETING_TZ)).date()
    start = day + datetime.timedelta(days=180)
    send_at = day + datetime.timedelta(days=120)
    return f"{start}T09:00", f"{start}T17:00", f"{send_at}T09:00"


def log_outcomes(daemon: Daemon) -> collections.Counter[str]:
    """The RSVP handler's log lines by outcome: `applied (ACCEPTED)`, `forward (...)`."""
    return collections.Counter(f"{action} ({reason[:60]})"
                               for action, reason in APPLIED.findall(daemon.log_text()))


def ms(seconds: list[float], q: float | None) -> float | None:
    """The median (q None) or the q-th percentile of ascending `seconds`, in ms."""
    if not seconds:
        return None
    return round(1000 * (statistics.median(seconds) if q is None
                         else percentile(seconds, q)), 2)


def since(later: float | None, earlier: float | None) -> float | None:
    """later - earlier in s, rounded to ms, or None when either is unknown."""
    return round(later - earlier, 3) if later and earlier else None


def run_meeting(sc: Scenario, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """E: `alliance meeting invite` to N delegates, then N replies over SMTP (ACCEPTED)."""
    result: dict[str, Any] = {"scenario": sc.key, "title": sc.title, "meeting": True,
                              "delegates": sc.members, "replies": sc.posts,
                              "clients": sc.clients}
    return run_trial(sc, args, result, lambda rig, result, problems: MeetingTrial(
        rig, run_id, result, problems).run())


class MeetingTrial(Trial):
    """The steps of scenario E, and what they hand on to each other."""

    def __init__(self, rig: Rig, run_id: str, result: dict[str, Any],
                 problems: list[str]) -> None:
        super().__init__(rig, run_id, result, problems)
        self.started = time.monotonic()
        self.meeting_id = 0
        self.uid = ""
        self.watcher = Watcher(rig.sink, self.sc.members,
                               self.sc.timeout + self.args.settle + 5)
        self.by_recipient: dict[str, Invited] = {}
        self.replies = 0
        self.rss_invited = 0

    def remaining(self) -> float:
        """Seconds left of the scenario's time limit (0 when it is up)."""
        return max(self.sc.timeout - (time.monotonic() - self.started), 0.0)

    def run(self) -> None:
        """Set up, E1 (invitations), their checks, E2 (replies), stop, check."""
        self.set_up()
        self.invite()
        self.check_invitations()
        self.reply()
        self.finish()

    def set_up(self) -> None:
        """Sink, DNS server, config, the body and its delegates, the meeting, the daemon."""
        rig, sc = self.rig, self.sc
        rig.start_services()
        made = run_helper("make_meeting.py", "--config", str(rig.config),
                          "--body", MEETING_BODY, "--delegates", str(sc.members))
        self.result["setup_s"] = made["seconds"]
        self.result["meetings_package"] = made["meetings"]
        start, end, send_at = meeting_times(time.time())
        created = alliance(
            rig.config, "meeting", "create", "--body", MEETING_BODY,
            "--title", "Benchmark Forum", "--start", start, "--end", end, "--tz", MEETING_TZ,
            "--location", "Rotes Rathaus, Berlin", "--send-at", send_at)
        # "meeting 7 created: invitations to N delegates at …" (issue 11: no bare id)
        found = re.match(r"meeting (\d+) created", created)
        assert found, created
        self.meeting_id = int(found[1])
        [(self.uid,)] = read_database(
            rig.database, f"SELECT uid FROM meetings WHERE id = {self.meeting_id}")
        rig.start_daemon()
        log(f"{sc.key}: {sc.title}: meeting {self.meeting_id}, daemon pid {rig.daemon.pid} "
            f"on port {rig.daemon.port}, sink pid {rig.sink.pid} on port {rig.sink.port}")

    def invite(self) -> None:
        """E1: the coordinator's command, then every invitation to the sink."""
        rig, sc = self.rig, self.sc
        queue = DbWatcher(rig.database,
                          "SELECT count(*), sum(CASE WHEN state <> 'pending' THEN 1 ELSE 0 END) "
                          "FROM deliveries",
                          {"committed": (0, 1), "leased": (1, 1)}, sc.timeout)
        rig.watch(self.watcher, queue)
        rig.start_profile("E1")
        prefix = cli_prefix(rig.profile_path("E1-cli")) if rig.profiling else ()
        self.watcher.start()
        queue.start()
        # The dispatcher looks for deliveries made by another process once a second; a
        # random pause puts the CLI's commit at a random point of that cycle, as in use
        # (otherwise the harness's own rhythm fixes the wait from run to run).
        time.sleep(random.random())
        cpu_before = proc_cpu_seconds(rig.daemon.pid) or 0.0
        cli_started = time.monotonic()
        said = alliance(rig.config, "meeting", "invite", str(self.meeting_id), prefix=prefix)
        cli_returned = time.monotonic()
        queued = f"meeting {self.meeting_id}: {sc.members} invitation(s) queued"
        if queued not in said.splitlines():
            self.problems.append(f"alliance meeting invite said {said.strip()!r}")
        if not self.watcher.complete.wait(self.remaining()):
            self.problems.append(f"timed out with {rig.sink.poll()} of {sc.members} "
                                 "invitations")
        cpu_invite = (proc_cpu_seconds(rig.daemon.pid) or 0.0) - cpu_before
        time.sleep(self.args.settle)  # anything arriving now is a duplicate
        queue.halt.set()
        if rig.end_profile():
            self.result["profile_E1"] = summarise_profile(rig.profile_path("E1"))
            self.result["profile_E1_cli"] = summarise_profile(rig.profile_path("E1-cli"))
        self.rss_invited = proc_status(rig.daemon.pid).get("VmRSS", 0)
        self.result.update(self.invite_figures(queue, cli_started, cli_returned, cpu_invite))

    def invite_figures(self, queue: DbWatcher, cli_started: float, cli_returned: float,
                       cpu_invite: float) -> dict[str, Any]:
        """E1's times: the command, its commit seen, the daemon's lease, the sink."""
        first, done_at = self.watcher.first, self.watcher.complete_at
        committed, leased = queue.reached.get("committed"), queue.reached.get("leased")
        members = self.sc.members
        return {
            "meeting_id": self.meeting_id,
            "cli_s": round(cli_returned - cli_started, 3),
            "cli_to_commit_seen_s": round(committed - cli_started, 3) if committed else None,
            # The daemon's dispatcher looks for due deliveries every `poll` (1 s) unless
            # woken in-process: the CLI's commit in another process waits for that look.
            "commit_to_lease_s": since(leased, committed),
            "lease_to_first_s": since(first, leased),
            "return_to_first_s": round(first - cli_returned, 3) if first else None,
            "return_to_last_s": round(done_at - cli_returned, 3) if done_at else None,
            "cli_start_to_last_s": round(done_at - cli_started, 3) if done_at else None,
            "invitation_phase_per_s": (round((members - 1) / (done_at - first), 1)
                                       if done_at and first and done_at > first else None),
            "daemon_cpu_invite_s": round(cpu_invite, 2),
        }

    def check_invitations(self) -> None:
        """The invitations as delivered: counts for all, a sample taken apart."""
        members = self.sc.members
        delegates = {DELEGATE_FORMAT % n for n in range(1, members + 1)}
        received = [read_invited(record) for record in self.rig.sink.records()]
        per_recipient = collections.Counter(r for inv in received for r in inv.recipients)
        self.by_recipient = {inv.recipients[0]: inv for inv in received if inv.recipients}
        counts = {
            "transactions": len(received),
            "deliveries": sum(per_recipient.values()),
            "duplicates": sum(per_recipient.values()) - len(per_recipient),
            "missing": len(delegates - per_recipient.keys()),
            "unexpected": len(per_recipient.keys() - delegates),
            "one_recipient_each": sum(len(inv.recipients) == 1 for inv in received),
            "to_is_recipient": sum(inv.to == inv.recipients for inv in received),
            "distinct_rsvp": len({inv.sender for inv in received}),
        }
        self.result.update(counts)
        for key in ("duplicates", "missing", "unexpected"):
            if counts[key]:
                self.problems.append(f"{counts[key]} {key} invitation deliveries")
        for key in ("one_recipient_each", "to_is_recipient", "distinct_rsvp"):
            if counts[key] != members:
                self.problems.append(f"{key}: {counts[key]} of {members}")
        if not self.args.short and self.by_recipient:
            self.take_apart()

    def take_apart(self) -> None:
        """Full runs: SAMPLE_CHECKS invitations, spread over the delegates, checked whole."""
        step = max(1, len(self.by_recipient) // SAMPLE_CHECKS)
        sample = sorted(self.by_recipient)[::step][:SAMPLE_CHECKS]
        wrong = [w for address in sample
                 for w in check_invitation(self.by_recipient[address], self.uid)]
        self.result["sample_checked"] = len(sample)
        self.result["sample_wrong"] = len(wrong)
        if wrong:
            self.problems.append(f"{len(wrong)} problem(s) in {len(sample)} invitations "
                                 f"taken apart, first: {wrong[0]}")

    def reply(self) -> None:
        """E2: every invitee accepts, over SMTP, from many clients at once."""
        rig, sc = self.rig, self.sc
        replies: list[Post] = [
            (i, *make_reply(self.by_recipient[address], i, self.run_id), address,
             self.by_recipient[address].sender)
            for i, address in enumerate(sorted(self.by_recipient)[:sc.posts])]
        self.replies = len(replies)
        if len(replies) != sc.posts:
            self.problems.append(f"only {len(replies)} invitations to reply to")
        accepted_sql = (f"SELECT count(*) FROM invitations WHERE meeting_id = "
                        f"{self.meeting_id} AND partstat = 'ACCEPTED'")
        answers = DbWatcher(rig.database, accepted_sql,
                            {"first": (0, 1), "all": (0, len(replies))}, sc.timeout,
                            interval=0.01)
        rig.watch(answers)
        rig.start_profile("E2")
        answers.start()
        cpu_before = proc_cpu_seconds(rig.daemon.pid) or 0.0
        workers_before = children_cpu_seconds(rig.daemon.pid)
        harness_before = time.process_time()
        posting = post_all(rig.daemon.port, replies, sc.clients, sc.timeout)
        cpu = {"harness": time.process_time() - harness_before}
        self.check_posting(posting)
        if not answers.done.wait(self.remaining()):
            self.problems.append(f"timed out with {answers.last[:1]} of {len(replies)} "
                                 "ACCEPTED")
        cpu["daemon"] = (proc_cpu_seconds(rig.daemon.pid) or 0.0) - cpu_before
        cpu["workers"] = children_cpu_seconds(rig.daemon.pid) - workers_before
        time.sleep(self.args.settle)  # anything the replies make would show now
        if rig.end_profile():
            self.result["profile_E2"] = summarise_profile(rig.profile_path("E2"))
        self.result.update(self.reply_figures(posting, answers.reached.get("all"), cpu))

    def check_posting(self, posting: PostRun) -> None:
        """Every reply got 250."""
        accepted = posting.accepted()
        if posting.errors:
            self.problems.append(f"{len(posting.errors)} reply error(s), first: "
                                 f"{posting.errors[0]}")
        if len(accepted) != self.replies:
            self.problems.append(f"{len(accepted)} of {self.replies} replies accepted")

    def reply_figures(self, posting: PostRun, all_at: float | None,
                      cpu: dict[str, float]) -> dict[str, Any]:
        """E2's figures: intake, end-of-DATA -> 250, until all ACCEPTED, CPU time."""
        accepted = posting.accepted()
        last_250 = max((p.replied_at for p in accepted), default=None)
        latencies = sorted(p.latency for p in accepted)
        started = posting.started
        return {
            "replies_accepted": len(accepted),
            "sessions_closed_421": posting.closed_421,
            "intake_accepted_per_s": (round(len(accepted) / (last_250 - started), 1)
                                      if last_250 else None),
            "reply_latency_p50_ms": ms(latencies, None),
            "reply_latency_p99_ms": ms(latencies, 0.99),
            "first_send_to_all_accepted_s": round(all_at - started, 3) if all_at else None,
            "replies_per_s": (round(self.replies / (all_at - started), 1)
                              if all_at else None),
            "last_250_to_all_accepted_s": since(all_at, last_250),
            "daemon_cpu_replies_s": round(cpu["daemon"], 2),
            "workers_cpu_replies_s": round(cpu["workers"], 2),
            "harness_cpu_replies_s": round(cpu["harness"], 2),
        }

    def finish(self) -> None:
        """Stop everything; then the daemon's log, the sink and the database, by count."""
        rig, sc = self.rig, self.sc
        self.watcher.halt.set()
        at_sink = rig.sink.poll()
        status = wind_down(rig, self.problems)
        outcomes = log_outcomes(rig.daemon)
        self.result["reply_outcomes"] = dict(outcomes)
        if outcomes != {"applied (ACCEPTED)": self.replies}:
            self.problems.append(f"reply outcomes in the daemon log: {dict(outcomes)}")
        if at_sink != sc.members:
            self.problems.append(f"{at_sink} deliveries at the sink, not {sc.members} "
                                 "(the replies made mail)")
        self.check_database()
        self.result.update({
            "rss_ready_mib": round(rig.rss_ready / 1024, 1),
            "rss_invited_mib": round(self.rss_invited / 1024, 1),
            "rss_peak_mib": rig.peak_mib(status),
        })

    def check_database(self) -> None:
        """Every delivery and work unit done, every reply an ACCEPTED and an RSVP event."""
        database, members, replies = self.rig.database, self.sc.members, self.replies
        found = database_counts(database)
        found["invitations"] = dict(read_database(
            database, "SELECT partstat, count(*) FROM invitations GROUP BY partstat"))
        found["rsvp_events"] = dict(read_database(
            database, "SELECT kind || ' ' || partstat, count(*) FROM rsvp_events GROUP BY 1"))
        self.result["database"] = found
        invitations = ({"ACCEPTED": replies} if replies == members
                       else {"ACCEPTED": replies, "NEEDS-ACTION": members - replies})
        expected_db = {"deliveries": {"done": members}, "work": {"done": replies},
                       "invitations": invitations,
                       "rsvp_events": {"reply ACCEPTED": replies}}
        for table_name, wanted in expected_db.items():
            if found.get(table_name) != wanted:
                self.problems.append(f"database {table_name}: {found.get(table_name)}, "
                                     f"not {wanted}")
