"""The command line: `python3 tools/crash.py [options]` (see tools/crash.py)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from harness.processes import stop_everything

from .report import table, verdict, write_json
from .rig import log
from .scenarios import run_scenario

SCENARIOS = ("intake", "fanout", "diskfull")


def parser() -> argparse.ArgumentParser:
    """The options."""
    options = argparse.ArgumentParser(
        description="Crash safety of alliance serve: SIGKILLs at random moments and a "
                    "full disk, against Postfix's smtp-sink (see tools/crash.py).")
    options.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="intake",
                         help="default intake")
    options.add_argument("--kills", type=int, default=None,
                         help="kills (intake: default 1,000, short 50; fanout: kills "
                              "during the fan-out, default 20, short 5)")
    options.add_argument("--clients", type=int, default=4,
                         help="concurrent SMTP clients posting (default 4)")
    options.add_argument("--short", action="store_true", help="the CI sizes")
    options.add_argument("--json-out", help="write every figure as JSON to this file")
    options.add_argument("--seed", type=int, default=None,
                         help="seed of the kill moments (default: from the clock)")
    options.add_argument("--keep", action="store_true",
                         help="keep each scenario's folder (config, database, log, dump)")
    return options


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print the table and the verdict; 0 when all passed, else 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time())
    log(f"seed {args.seed}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally: runs
    run_id = f"{int(time.time())}x{os.getpid()}"
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results: list[dict[str, Any]] = []
    try:
        for name in names:
            results.append(run_scenario(name, args, run_id))
            log(f"{name}: {'ok' if results[-1]['ok'] else 'FAILED'}")
    except (KeyboardInterrupt, SystemExit):
        print("crash FAILED: interrupted; every process it started is stopped", flush=True)
        raise
    finally:
        stop_everything()
    print(table(results))
    if args.json_out:
        write_json(args.json_out, argv, results)
    return verdict(results)
