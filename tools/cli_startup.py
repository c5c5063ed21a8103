#!/usr/bin/env python3
"""How long an `alliance` command takes from start to exit (issue 11, item 10: ≤ 0.3 s).

    python3 tools/cli_startup.py [--runs 7] [--bytecode]

Makes a fresh SQLite database with the shipped schema in a temporary folder and fills it
as a small network's would be (10 parties, 30 seats in two bodies, 5 meetings of which
2 with invitations, 3 lists of 10 members), then runs `alliance --help` and each listing
command `--runs` times as separate processes (after one run not counted), and prints the
median and the fastest wall time of each, and the median CPU time (user and system) the
command's process took: on a busy machine the wall time includes the waits for a core,
the CPU time does not. Nothing else is started or stopped.

Where PYTHONDONTWRITEBYTECODE is set, every start compiles our modules again; `--bytecode`
keeps the compiled files (in a temporary PYTHONPYCACHEPREFIX), as an installed package has
them.
For where the time goes: `python3 -X importtime -m mailer --config C party list 2> i.txt`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (["--help"], ["queue"], ["quarantine", "list"], ["party", "list"],
            ["body", "list"], ["delegate", "list"], ["meeting", "list"],
            ["meeting", "show", "1"], ["meeting", "attendance", "1"],
            ["coordination", "show"], ["cadence"], ["list", "members", "press"],
            ["list", "held", "press"], ["list", "show", "press"])
REGIONS = ("asia", "africa", "middle-east", "europe", "latin-america", "north-america")
COUNTRIES = ("KE", "IN", "JO", "DE", "BR", "US", "ZA", "JP", "FR", "MX")


def populate(config: Path) -> None:
    """Fill the database through the command line itself, in this one process."""
    from mailer.cli import main

    def alliance(*args: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            main(["--config", str(config), *args], standalone_mode=False)

    alliance("db", "upgrade")
    for number, country in enumerate(COUNTRIES):
        alliance("party", "add", f"Party {number}", "--country", country,
                 "--region", REGIONS[number % len(REGIONS)])
    seats = config.parent / "seats.csv"
    seats.write_text("address,name,party,body,language\n" + "".join(
        f"d{n}{seat}@example.org,Delegate {n}{seat},Party {n},{body},{language}\n"
        for n in range(10) for seat, body, language in
        (("a", "board", "en"), ("b", "board", "fr"), ("s", "steering", "es"))))
    alliance("delegate", "import", str(seats))
    for number, body in enumerate(("board", "board", "board", "steering", "steering")):
        when = ["--send-at", "now"] if number in (0, 3) else []
        alliance("meeting", "create", "--body", body, "--title", f"Meeting {number}",
                 "--start", f"2031-0{number + 3}-14T09:00",
                 "--end", f"2031-0{number + 3}-14T17:00", "--tz", "Europe/Berlin",
                 "--location", "Berlin", *when)
    for name in ("announce", "press", "youth"):
        alliance("list", "create", name)
        alliance("list", "add", name, *(f"m{n}@example.org" for n in range(10)))


def timed(config: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """One run of `alliance ARGS`: (wall time, CPU time of its process)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    begun = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), *args],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - begun
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--bytecode", action="store_true",
                        help="keep compiled bytecode between runs, as an installed package")
    options = parser.parse_args()
    runs = options.runs
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text('[site]\ndomain = "lists.example.org"\nsecret = "startup"\n'
                          '[database]\nurl = "sqlite:///alliance.sqlite3"\n'
                          '[outbound]\nurl = "maildir:outbox"\n')
        populate(config)
        env = dict(os.environ)
        if options.bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(folder) / "bytecode")
        for args in COMMANDS:
            timed(config, args, env)
            walls, cpus = zip(*(timed(config, args, env) for _ in range(runs)), strict=True)
            print(f"alliance {' '.join(args):24} median {statistics.median(walls):.3f} s, "
                  f"fastest {min(walls):.3f} s, CPU {statistics.median(cpus):.3f} s "
                  f"({runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
