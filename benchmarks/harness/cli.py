"""The command line: `python3 benchmarks/run.py [options]` (see benchmarks/run.py)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from .catalogue import FULL, SHORT, SIZED_BY_MEMBERS, Scenario, with_members
from .common import log
from .mailman import run_mailman
from .processes import stop_everything
from .report import print_profiles, table, verdict, write_json
from .scenario_lists import run_lists
from .scenario_meeting import run_meeting


def parser() -> argparse.ArgumentParser:
    """The options."""
    parser = argparse.ArgumentParser(
        description="Alliance Mail benchmark against Postfix's smtp-sink "
                    "(see benchmarks/README.md).")
    parser.add_argument("--short", action="store_true",
                        help="small sizes; checks counts only (for CI)")
    parser.add_argument("--scenarios", default="A,B,C,D,E,F,G,H",
                        help="default A,B,C,D,E,F,G,H")
    parser.add_argument("--json-out", help="write every figure as JSON to this file")
    parser.add_argument("--members", type=int, default=None,
                        help="the list's member count in "
                             f"{', '.join(SIZED_BY_MEMBERS)} (default: the scenario's)")
    parser.add_argument("--database", metavar="URL", default=None,
                        help="postgresql://USER@HOST:PORT[/DB]: each trial on a database "
                             "of its own there, created before and dropped after "
                             "(default: SQLite, a file in the trial's folder)")
    parser.add_argument("--daemons", type=int, default=1,
                        help="`alliance serve` processes sharing the trial's database "
                             "(more than 1: PostgreSQL only); posts go to the first")
    parser.add_argument("--connections", type=int, default=None,
                        help="outbound.connections for the daemon (default: its own)")
    parser.add_argument("--processes", type=int, default=None,
                        help="router.processes for the daemon, the worker processes that "
                             "sign H's copies (default: its own)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait after the last delivery for duplicates "
                             "(default 2, short 1)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each trial's folder (config, database, logs, dump)")
    parser.add_argument("--profile", metavar="DIR",
                        help="record the daemon with py-spy into DIR/<scenario>.folded "
                             "and print its top functions")
    parser.add_argument("--profile-scenarios", default="",
                        help="with --profile: only these scenarios (default all)")
    parser.add_argument("--with-mailman", action="store_true",
                        help="also run shared/bench's GNU Mailman 3 driver on A, B, C "
                             "(full sizes; only if its venv exists)")
    parser.add_argument("--mailman-venv", default=os.environ.get("MM_VENV", "/tmp/mmvenv"))
    parser.add_argument("--mailman-variants", default="bulk,verp",
                        help="Mailman variants (bulk, personal, verp; default bulk,verp)")
    parser.add_argument("--mailman-work", default="/tmp/mmbench")
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[Scenario]]:
    """The options, with defaults filled in, and the scenarios to run, in order."""
    options = parser()
    args = options.parse_args(argv)
    if args.settle is None:
        args.settle = 1.0 if args.short else 2.0
    catalogue = SHORT if args.short else FULL
    keys = [k.strip().upper() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in keys if k not in catalogue]
    if unknown or not keys:
        options.error(f"unknown scenario(s) {unknown}; choose from {','.join(catalogue)}")
    if args.members is not None and args.members < 1:
        options.error("--members: at least 1")
    postgresql = (args.database or "").startswith(("postgresql://", "postgres://"))
    if args.database and not postgresql:
        options.error(f"--database {args.database}: give a postgresql://... URL "
                      "(SQLite, the default, needs none)")
    if args.daemons < 1 or (args.daemons > 1 and not postgresql):
        options.error("--daemons: more than 1 only with --database postgresql://... "
                      "(SQLite is one daemon per file)")
    args.profile_scenarios = {k.strip().upper() for k in args.profile_scenarios.split(",")
                              if k.strip()}
    scenarios = [catalogue[k] for k in keys]
    if args.members is not None:
        scenarios = [with_members(sc, args.members) for sc in scenarios]
    return args, scenarios


def run_all(args: argparse.Namespace, scenarios: list[Scenario],
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every scenario, one after another, then Mailman's; every process stopped after."""
    run_id = f"{int(time.time())}.{os.getpid()}"
    results: list[dict[str, Any]] = []
    mailman: list[dict[str, Any]] = []
    try:
        for scenario in scenarios:
            run = run_meeting if scenario.meeting else run_lists
            result = run(scenario, args, run_id)
            results.append(result)
            log(f"{scenario.key}: "
                f"{'ok' if result['ok'] else 'FAILED: ' + '; '.join(result['problems'])}")
        if args.with_mailman and args.short:
            log("--with-mailman: Mailman's driver has full sizes only; skipped in --short")
        elif args.with_mailman:
            mailman = run_mailman(args, [sc.key for sc in scenarios])
    except (KeyboardInterrupt, SystemExit):
        print("benchmark FAILED: interrupted; every process it started is stopped",
              flush=True)
        raise
    finally:
        stop_everything()
    return results, mailman


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print the report; 0 when every scenario passed, else 1."""
    args, scenarios = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally: runs
    results, mailman = run_all(args, scenarios)
    print(table(results, mailman))
    print_profiles(results)
    if args.json_out:
        write_json(args.json_out, args.short, scenarios, results, mailman)
    return verdict(results)
