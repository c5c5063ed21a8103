#!/usr/bin/env python3
"""How long an `alliance` command takes from start to exit (issue 11, item 10: ≤ 0.3 s).

    python3 tools/cli_startup.py [--runs 7]

Makes a fresh SQLite database with the shipped schema in a temporary folder, then runs
`alliance --help` and the listing commands each `--runs` times as separate processes, and
prints the median and the fastest wall time of each. Nothing else is started or stopped.
For where the time goes: `python3 -X importtime -m mailer --help 2> imports.txt`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (["--help"], ["queue"], ["party", "list"], ["delegate", "list"],
            ["meeting", "list"], ["list", "members", "steering"])


def timed(config: Path, args: list[str]) -> float:
    begun = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), *args],
                   cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - begun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text('[site]\ndomain = "lists.example.org"\nsecret = "startup"\n'
                          '[database]\nurl = "sqlite:///alliance.sqlite3"\n'
                          '[outbound]\nurl = "maildir:outbox"\n')
        # The first command creates and migrates the database, as `alliance serve` would.
        subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), "db",
                        "upgrade"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), "party",
                        "list"], cwd=ROOT, check=True, capture_output=True)
        for args in COMMANDS:
            times = [timed(config, args) for _ in range(runs)]
            print(f"alliance {' '.join(args):24} median {statistics.median(times):.3f} s, "
                  f"fastest {min(times):.3f} s ({runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
