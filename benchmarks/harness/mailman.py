"""GNU Mailman 3 beside us (`--with-mailman`), through shared/bench's own driver."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import MAILMAN_BENCH, log
from .processes import free_port, start_process, stop_process


def run_mailman(args: argparse.Namespace, scenarios: list[str]) -> list[dict[str, Any]]:
    """GNU Mailman 3 on A, B, C through shared/bench's own driver, if its venv exists."""
    venv = Path(args.mailman_venv)
    wanted = [s for s in scenarios if s in ("A", "B", "C")]
    if not (venv / "bin" / "mailman").exists():
        log(f"--with-mailman: no Mailman at {venv} (see {MAILMAN_BENCH.parent}/"
            "install_deps.sh); skipped")
        return []
    if not MAILMAN_BENCH.exists() or not wanted:
        log("--with-mailman: nothing to run (driver missing or no A/B/C scenario)")
        return []
    out = Path(tempfile.mkdtemp(prefix="alliance-bench-mailman-")) / "mailman.json"
    cmd = [sys.executable, str(MAILMAN_BENCH), "--venv", str(venv),
           "--work", args.mailman_work, "--scenarios", ",".join(wanted),
           "--variants", args.mailman_variants, "--runs", "1",
           "--lmtp-port", str(free_port()), "--sink-port", str(free_port()),
           "--rest-port", str(free_port()), "--json-out", str(out)]
    log("--with-mailman: " + " ".join(cmd))
    proc = start_process(cmd, stdout=sys.stderr)  # its progress and table; ours is stdout
    try:
        proc.wait(3600 * 2)
    except subprocess.TimeoutExpired:
        log("--with-mailman: over two hours; stopping it")
    finally:
        stop_process(proc, grace=120)
    try:
        trials = json.loads(out.read_text())["trials"]
    except (OSError, ValueError, KeyError):
        log("--with-mailman: the driver left no results")
        return []
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return [summary(t) for t in trials]


def summary(trial: dict[str, Any]) -> dict[str, Any]:
    """One of the driver's trials, in the figures of our own fan-out table."""
    return {"system": trial.get("system"), "scenario": trial.get("scenario"),
            "variant": trial.get("variant"), "deliveries": trial.get("expected"),
            "time_to_last_s": trial.get("time_to_complete_s"),
            "deliveries_per_s": trial.get("deliveries_per_s"),
            "first_delivery_s": trial.get("first_delivery_s"),
            "duplicates": (trial.get("sink") or {}).get("duplicate_deliveries"),
            "complete": trial.get("complete")}
