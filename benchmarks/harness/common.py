"""What every part of the harness shares: the addresses, the log, the harness's own error."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent   # benchmarks/: the helper scripts
REPO = BENCHMARKS.parent                               # the checkout being measured
LOOPBACK = "127.0.0.1"
DOMAIN = "bench.test"
LIST = "bench"
LIST_ADDRESS = f"{LIST}@{DOMAIN}"
MEMBER_FORMAT = "m%06d@members.test"
POSTER = MEMBER_FORMAT % 1          # a member: receives its own post, like shared/bench
MAILMAN_BENCH = Path(os.environ.get("MLBENCH_DIR", "/work/shared/bench")) / "mailman_bench.py"


class HarnessError(Exception):
    """The benchmark could not be run (not a finding about the daemon)."""


def log(*parts: object) -> None:
    """One progress line on standard error (standard output is the report's)."""
    print(f"[bench {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
