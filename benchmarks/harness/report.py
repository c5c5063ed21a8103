"""The report: markdown tables and profiles on standard output, and the JSON document."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .catalogue import Scenario

Result = dict[str, Any]

FANOUT = ("| scenario | members x posts | deliveries | 250 -> last delivery s | "
          "deliveries/s | 250 -> first delivery s | delivery phase /s | dupes | "
          "missing | From rewritten (DMARC) | 421 reconnects | daemon CPU s | "
          "RSS ready MiB | RSS peak MiB | ok |")
INTAKE = ("| scenario | clients | posts accepted | accepted/s | "
          "end-of-DATA -> 250 p50 ms | p99 ms | max ms | p99 / D's p99 (G: target <= 2) | "
          "fan-out copies still to send at the last 250 | deliveries | dupes | "
          "last 250 -> last delivery s | From rewritten (DMARC) | 421 reconnects | "
          "daemon CPU s | RSS peak MiB | ok |")
DIGEST = ("| scenario | members x posts | digest KiB | posts in it | deliveries | "
          "last 250 -> digest queued s | queued -> first delivery s | "
          "queued -> last delivery s | deliveries/s | last 250 -> last delivery s | "
          "dupes | missing | daemon CPU s | RSS ready MiB | RSS peak MiB | ok |")
INVITATIONS = ("| scenario | delegates | CLI invite s | CLI commit -> daemon leases s "
               "(poll) | lease -> first at sink s | CLI return -> last invitation s "
               "(target <= 2) | CLI start -> last invitation s | invitations/s (delivery "
               "phase) | dupes | missing | sample taken apart | daemon CPU s | RSS ready / "
               "after MiB | ok |")
REPLIES = ("| scenario | clients | replies accepted | intake accepted/s | "
           "end-of-DATA -> 250 p50 ms | p99 ms | first send -> all ACCEPTED s | "
           "replies/s (target >= 500) | last 250 -> all ACCEPTED s | outcomes | "
           "CPU s: daemon / its workers / clients | RSS peak MiB | ok |")
DKIM = ("| scenario | copies DKIM-signed | sample verified by dkimpy | "
        "copies with an ARC set | sample ARC-validated by dkimpy | "
        "250 -> last delivery s | deliveries/s | daemon CPU s | its worker processes' "
        "CPU s | ok |")
PER_DAEMON = ("| scenario | database | daemon | deliveries it made (its /metrics) | "
              "RSS peak MiB |")
MAILMAN = ("| system | scenario | variant | deliveries | "
           "time to complete s (from before the post) | deliveries/s | "
           "first delivery s (from before the post) | dupes | complete |")
MAILMAN_KEYS = ("system", "scenario", "variant", "deliveries", "time_to_last_s",
                "deliveries_per_s", "first_delivery_s", "duplicates", "complete")


def fmt(value: object) -> str:
    """A figure as the tables show it.

    >>> fmt(None), fmt(True), fmt(0.1234), fmt(1234.5), fmt(12345), fmt("x")
    ('-', 'yes', '0.123', '1,234.5', '12,345', 'x')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def rewritten(result: Result) -> str:
    """How many list copies at the sink came From the list, of how many."""
    if result.get("transactions") is None:
        return "-"
    return f"{fmt(result.get('from_list'))} / {fmt(result.get('transactions'))}"


def section(heading: str, rows: list[list[str]]) -> list[str]:
    """A blank line, then one markdown table."""
    separator = "|" + "---|" * heading.count(" | ") + "---|"
    return ["", heading, separator, *("| " + " | ".join(cells) + " |" for cells in rows)]


def ok(result: Result) -> str:
    """The last column of every table."""
    return "yes" if result["ok"] else "**NO**"


def get(result: Result, *keys: str) -> list[str]:
    """These figures of a result, formatted."""
    return [fmt(result.get(key)) for key in keys]


def where(r: Result) -> str:
    """" (its database, daemons)" when a result is not from one daemon on SQLite.

    >>> where({"engine": "postgresql", "daemons": 2}), where({"engine": "sqlite"})
    (' (PostgreSQL, 2 daemons)', '')
    """
    engine, daemons = r.get("engine", "sqlite"), r.get("daemons", 1)
    if engine == "sqlite" and daemons == 1:
        return ""
    name = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}.get(engine, engine)
    return f" ({name}" + (f", {daemons} daemons)" if daemons > 1 else ")")


def label(r: Result) -> str:
    """A scenario's name, and its database when it is not one daemon on SQLite."""
    return f"{r['scenario']}: {r['title']}{where(r)}"


def per_daemon_rows(results: list[Result]) -> list[list[str]]:
    """One row per daemon of each result that ran more than one."""
    return [[label(r), fmt(r.get("engine")), f"{d['daemon']} (pid {d['pid']})",
             fmt(d.get("delivered")), fmt(d.get("rss_peak_mib"))]
            for r in results if len(r.get("per_daemon") or ()) > 1
            for d in r["per_daemon"]]


def fanout_row(r: Result) -> list[str]:
    """A, B, C: a post to every member."""
    return [label(r), f"{fmt(r['members'])} x {fmt(r['posts'])}",
            *get(r, "deliveries", "time_to_last_s", "deliveries_per_s", "first_delivery_s",
                 "delivery_phase_per_s", "duplicates", "missing"),
            rewritten(r),
            *get(r, "sessions_closed_421", "daemon_cpu_s", "rss_ready_mib", "rss_peak_mib"),
            ok(r)]


def dkim_row(r: Result) -> list[str]:
    """H: the fan-out with every copy signed."""
    return [label(r),
            f"{fmt(r.get('dkim_signed'))} / {fmt(r.get('dkim_transactions'))}",
            f"{fmt(r.get('dkim_verified'))} / {fmt(r.get('dkim_sample'))}",
            f"{fmt(r.get('arc_sealed'))} / {fmt(r.get('dkim_transactions'))}",
            f"{fmt(r.get('arc_verified'))} / {fmt(r.get('dkim_sample'))}",
            *get(r, "time_to_last_s", "deliveries_per_s", "daemon_cpu_s", "workers_cpu_s"),
            ok(r)]


def intake_row(r: Result, idle: Result | None) -> list[str]:
    """D: many clients posting at once; G: the same while large fan-outs run, and its
    p99 against D's (`idle`) in the same run."""
    ratio = None
    if idle and r is not idle and r.get("latency_p99_ms") and idle.get("latency_p99_ms"):
        ratio = round(r["latency_p99_ms"] / idle["latency_p99_ms"], 2)
    return [label(r), fmt(r["clients"]),
            f"{fmt(r.get('accepted'))} / {fmt(r['posts'])}",
            *get(r, "accepted_per_s", "latency_p50_ms", "latency_p99_ms", "latency_max_ms"),
            fmt(ratio),
            *get(r, "deliveries_pending_at_last_250", "deliveries", "duplicates", "drain_s"),
            rewritten(r), *get(r, "sessions_closed_421", "daemon_cpu_s", "rss_peak_mib"),
            ok(r)]


def digest_row(r: Result) -> list[str]:
    """F: one digest to every member."""
    return [label(r), f"{fmt(r['members'])} x {fmt(r['posts'])}",
            *get(r, "digest_kib", "posts_in_digest", "deliveries", "scheduler_wait_s",
                 "queued_to_first_s", "queued_to_last_s", "digest_deliveries_per_s",
                 "time_to_last_s", "duplicates", "missing", "daemon_cpu_s",
                 "rss_ready_mib", "rss_peak_mib"),
            ok(r)]


def invitations_row(r: Result) -> list[str]:
    """E1: the invitations."""
    sample = (f"{fmt(r.get('sample_checked'))}, {fmt(r.get('sample_wrong'))} wrong"
              if r.get("sample_checked") is not None else "- (counts only)")
    return [f"E1: {fmt(r['delegates'])} invitations{where(r)}", fmt(r["delegates"]),
            *get(r, "cli_s", "commit_to_lease_s", "lease_to_first_s", "return_to_last_s",
                 "cli_start_to_last_s", "invitation_phase_per_s", "duplicates", "missing"),
            sample, fmt(r.get("daemon_cpu_invite_s")),
            f"{fmt(r.get('rss_ready_mib'))} / {fmt(r.get('rss_invited_mib'))}", ok(r)]


def replies_row(r: Result) -> list[str]:
    """E2: the replies."""
    outcomes = ", ".join(f"{k}: {v}" for k, v in (r.get("reply_outcomes") or {}).items())
    cpu = " / ".join(fmt(r.get(f"{who}_cpu_replies_s"))
                     for who in ("daemon", "workers", "harness"))
    return [f"E2: {fmt(r['replies'])} replies (ACCEPTED){where(r)}", fmt(r["clients"]),
            f"{fmt(r.get('replies_accepted'))} / {fmt(r['replies'])}",
            *get(r, "intake_accepted_per_s", "reply_latency_p50_ms", "reply_latency_p99_ms",
                 "first_send_to_all_accepted_s", "replies_per_s",
                 "last_250_to_all_accepted_s"),
            outcomes or "-", cpu, fmt(r.get("rss_peak_mib")), ok(r)]


def table(results: list[Result], mailman: list[Result]) -> str:
    """Every table the results call for, in the order A-C, D, F, E, Mailman."""
    meeting = [r for r in results if r.get("meeting")]
    results = [r for r in results if not r.get("meeting")]
    fanout = [r for r in results if not r.get("clients", 1) > 1 and not r.get("digest")]
    intake = [r for r in results if r.get("clients", 1) > 1]
    digest = [r for r in results if r.get("digest")]
    lines = section(FANOUT, [fanout_row(r) for r in fanout])[1:] if fanout else []
    several = per_daemon_rows(results)
    if several:
        lines += section(PER_DAEMON, several)
    signed = [r for r in results if "dkim_signed" in r]
    if signed:
        lines += section(DKIM, [dkim_row(r) for r in signed])
    if intake:
        idle = next((r for r in intake if r["scenario"] == "D"), None)
        lines += section(INTAKE, [intake_row(r, idle) for r in intake])
    if digest:
        lines += section(DIGEST, [digest_row(r) for r in digest])
    if meeting:
        lines += section(INVITATIONS, [invitations_row(r) for r in meeting])
        lines += section(REPLIES, [replies_row(r) for r in meeting])
    if mailman:
        lines += section(MAILMAN, [get(r, *MAILMAN_KEYS) for r in mailman])
    return "\n".join(lines)


def profiles(result: Result) -> list[tuple[str, dict[str, Any]]]:
    """(label, summary) of each profile a scenario recorded."""
    found = []
    if result.get("profile_top"):
        found.append((f"{result['scenario']} ({result['profile']}, daemon, holding the GIL",
                      result["profile_top"]))
    for key, what in (("profile_E1", "daemon during E1, holding the GIL"),
                      ("profile_E1_cli", "`alliance meeting invite`, on CPU"),
                      ("profile_E2", "daemon during E2, holding the GIL")):
        if result.get(key):
            found.append((f"{key.removeprefix('profile_')} ({what}", result[key]))
    return found


def print_profiles(results: list[Result]) -> None:
    """Each recorded profile's top functions, by own and by inclusive samples."""
    for result in results:
        for label, top in profiles(result):
            print(f"\nprofile {label}, {top['samples'][0][1]} samples): top functions by "
                  "own time / our functions by inclusive time")
            for (own, own_share), (inc, inc_share) in zip(top["self"], top["inclusive"],
                                                              strict=False):
                print(f"  {own_share:5.1f}%  {own[:70]:70}  {inc_share:5.1f}%  {inc[:70]}")


def machine() -> dict[str, Any]:
    """The CPU, Python, kernel and event loop the figures were measured with."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    loop = subprocess.run([sys.executable, "-c", "import uvloop; print(uvloop.__version__)"],
                          capture_output=True, text=True, timeout=60)
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(),
            "event_loop": f"uvloop {loop.stdout.strip()}" if loop.returncode == 0
            else "asyncio", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def write_json(path: str, short: bool, scenarios: list[Scenario], results: list[Result],
               mailman: list[Result]) -> None:
    """Every figure, the machine and the scenario sizes (`--json-out`)."""
    document = {"machine": machine(), "mode": "short" if short else "full",
                "scenarios": {sc.key: asdict(sc) for sc in scenarios},
                "results": results, "mailman": mailman}
    Path(path).write_text(json.dumps(document, indent=2, default=str))


def verdict(results: list[Result]) -> int:
    """A FAIL line for each failed scenario, then the last line; the exit code."""
    failed = [r for r in results if not r["ok"]]
    for result in failed:
        print(f"FAIL {result['scenario']}: {'; '.join(result['problems'])}")
    if failed:
        print(f"benchmark FAILED: {len(failed)} of {len(results)} scenario(s) "
              f"({', '.join(str(r['scenario']) for r in failed)})")
        return 1
    print(f"benchmark OK: {len(results)} scenario(s), every post accepted, every delivery "
          "made exactly once")
    return 0
