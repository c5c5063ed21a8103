"""Crash safety, in CI: tools/crash.py --short, checked through its JSON document.

The intake scenario SIGKILLs the daemon 50 times at random moments while four clients
post numbered messages; the fan-out scenario kills it 5 times while a post goes to 1,000
members. Every message answered 250 must reach every member, nothing may be quarantined.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SINK = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink"
                                     if Path("/usr/sbin/smtp-sink").exists() else None)
needs_sink = pytest.mark.skipif(
    SINK is None and not os.environ.get("CI"),
    reason="Postfix's smtp-sink is not installed (apt-get install postfix)")


def crash(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run tools/crash.py --short ARGS; its outcome and its JSON document."""
    out = tmp_path / "crash.json"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "crash.py"), "--short",
                           "--json-out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(out.read_text(encoding="utf-8"))


def assert_nothing_lost(done: subprocess.CompletedProcess[str], result: dict[str, Any]) -> None:
    """The harness's verdict, and the figures behind it."""
    report = done.stdout[-3000:] + done.stderr[-3000:]
    assert result["acknowledged"] > 0, report
    assert result["undelivered"] == 0, report
    assert result["quarantined"] == 0, report
    assert result["stored_not_delivered"] == 0, report
    assert result["delivery_duplicates"] <= result["leased_at_kills"], report
    assert done.returncode == 0, report
    assert "crash OK" in done.stdout


@needs_sink
def test_fifty_kills_during_intake_lose_no_acknowledged_message(tmp_path: Path) -> None:
    done, document = crash(tmp_path, "--scenario", "intake")
    result = document["scenarios"]["intake"]
    assert result["kills"] >= 50
    assert_nothing_lost(done, result)


@needs_sink
def test_kills_during_a_fan_out_miss_no_member(tmp_path: Path) -> None:
    done, document = crash(tmp_path, "--scenario", "fanout")
    result = document["scenarios"]["fanout"]
    assert result["kills_during_fanout"] >= 5
    assert_nothing_lost(done, result)


def test_the_count_sees_a_missing_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: an acknowledged number missing at the sink is undelivered."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from crash_harness import tally
    from crash_harness.clients import Posting

    posting = Posting("r1", "bench@bench.test", next_number=3)
    posting.acked.update({1: 1, 2: 1})
    missing = tally.missing({(1, "m000001@members.test"): 1}, posting,
                            tally.members(1))
    assert missing == ["2 -> m000001@members.test"]
