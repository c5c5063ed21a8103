"""The long fuzzing run: tests/test_fuzz.py's properties over many more inputs.

    python tools/fuzz.py [--examples 100000] [-- PYTEST ARGS]

FUZZ_EXAMPLES is spread over the targets (tests/test_fuzz.py SHARES) and hypothesis draws
fresh random inputs (CI's run is derandomised). The properties and strategies live in the
test module only; this runs pytest on it in this process and prints, per target, the
inputs tried, the slowest, the inputs that hit a bug already recorded there, the tests
that failed, the wall time and the peak resident memory (getrusage).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000,
                        help="inputs over all targets (default 100000)")
    parser.add_argument("pytest_args", nargs="*", help="more arguments for pytest")
    args = parser.parse_args(argv)
    report = Path(tempfile.mkstemp(prefix="fuzz-", suffix=".jsonl")[1])
    os.environ["FUZZ_EXAMPLES"] = str(args.examples)
    os.environ["FUZZ_REPORT"] = str(report)
    os.chdir(ROOT)
    started = time.monotonic()
    code = pytest.main(["tests/test_fuzz.py", "-p", "no:cacheprovider", "-rfE",
                        "--show-capture=no", *args.pytest_args])
    wall = time.monotonic() - started
    summarise(report, wall, int(code))
    return int(code)


def summarise(report: Path, wall: float, code: int) -> None:
    inputs: collections.Counter[str] = collections.Counter()
    slowest: dict[str, float] = {}
    unreadable: dict[str, int] = {}
    for line in report.read_text().splitlines():
        entry = json.loads(line)
        inputs.update(entry["inputs"])
        slowest.update(entry["slowest"])
        unreadable = entry["unreadable"]
        print(f"  {entry['test']}: {entry['seconds']} s")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\nfuzzing summary")
    for target, count in sorted(inputs.items()):
        print(f"  {target:16} {count:8d} inputs, slowest {slowest.get(target, 0):.3f} s")
    print(f"  {'total':16} {sum(inputs.values()):8d} inputs")
    print(f"  rsvp.read catch-all (logged, no crash): {unreadable or 'none'}")
    print(f"  pytest exit code {code} ({'no failures' if code == 0 else 'FAILURES above'})")
    print(f"  wall time {wall:.0f} s, peak RSS {peak_mb:.0f} MB")
    report.unlink()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
