"""The report: one table on standard output, the JSON document, the last line."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from harness.common import REPO

Result = dict[str, Any]

COLUMNS = (("scenario", "scenario"), ("kills", "kills"),
           ("kills_during_startup", "of which in start-up"),
           ("posted", "messages posted"), ("acknowledged", "acknowledged (250)"),
           ("resent", "sent again (no answer / 4xx)"), ("undelivered", "undelivered"),
           ("quarantined", "quarantined"), ("stored_not_delivered", "stored, not delivered"),
           ("delivery_duplicates", "delivery duplicates"),
           ("leased_at_kills", "deliveries in flight at the kills"),
           ("max_duplicates_after_one_kill", "max duplicates after one kill"),
           ("source_duplicates", "source duplicates (stored twice)"),
           ("answers_while_full", "answers while full"), ("drain_s", "drain s"),
           ("wall_s", "wall s"), ("ok", "ok"))


def cell(value: object) -> str:
    """A figure as the table shows it.

    >>> cell(None), cell(True), cell(12345), cell({"250": 3})
    ('-', 'yes', '12,345', '250: 3')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    return str(value)


def table(results: list[Result]) -> str:
    """The markdown table, one row per scenario (a skipped one says why)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for result in results:
        if result.get("skipped"):
            lines.append(f"| {result['scenario']} | skipped: {result['skipped']} |")
            continue
        lines.append("| " + " | ".join(cell(result.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def checkout() -> str:
    """The commit measured, and whether the tree had changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def write_json(path: str, argv: list[str], results: list[Result]) -> None:
    """Every figure, the command and the machine, to `path`."""
    document = {"command": ["tools/crash.py", *argv], "ok": verdict_ok(results),
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkout": checkout(),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()},
                "scenarios": {result["scenario"]: result for result in results}}
    Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n",
                          encoding="utf-8")


def verdict_ok(results: list[Result]) -> bool:
    """Whether every scenario passed (a skipped one passes)."""
    return bool(results) and all(result["ok"] for result in results)


def verdict(results: list[Result]) -> int:
    """Print a FAIL line per failed scenario and the last line; the exit code."""
    for result in results:
        for note in result.get("notes", []):
            print(f"NOTE {result['scenario']}: {note}")
        if not result["ok"]:
            print(f"FAIL {result['scenario']}: " + "; ".join(result["problems"]))
    if verdict_ok(results):
        print("crash OK: " + ", ".join(
            f"{r['scenario']} {'skipped' if r.get('skipped') else 'passed'}"
            for r in results))
        return 0
    print("crash FAILED: " + ", ".join(r["scenario"] for r in results if not r["ok"]))
    return 1
