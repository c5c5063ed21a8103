"""Optional profiling (`--profile DIR`): py-spy on the daemon, and a summary of its stacks."""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .common import log
from .processes import start_process, stop_process

OUR_CODE = re.compile(r"\((mailer|lists|meetings)/")
Summary = dict[str, list[tuple[str, float]]]


def wanted(args: argparse.Namespace, key: str) -> bool:
    """Whether to profile scenario `key` (`--profile`, `--profile-scenarios`)."""
    return bool(args.profile) and (not args.profile_scenarios or key in args.profile_scenarios)


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy recording process `pid` into `out`, or None without py-spy."""
    spy = shutil.which("py-spy")
    if spy is None:
        log("--profile: py-spy not found (pip install py-spy); not profiling")
        return None
    with open(out.with_suffix(".log"), "wb") as err:
        # --gil: only the thread holding the GIL, i.e. where the daemon's CPU goes.
        proc = start_process([spy, "record", "--pid", str(pid), "--format", "raw", "--gil",
                              "--rate", "200", "--output", str(out)],
                             stdout=err, stderr=subprocess.STDOUT)
    time.sleep(0.5)  # let it attach before the work starts
    return proc


def stop_profiler(proc: subprocess.Popen[bytes] | None, grace: float = 30) -> None:
    """SIGINT, on which py-spy writes its file (see processes.stop_process)."""
    stop_process(proc, grace=grace, sig=signal.SIGINT)


def cli_prefix(out: Path) -> tuple[str, ...]:
    """The words that run a command under py-spy (on CPU, not only the GIL) into `out`."""
    spy = shutil.which("py-spy")
    if spy is None:
        return ()
    return (spy, "record", "--format", "raw", "--rate", "200", "--output", str(out), "--")


def summarise_profile(path: Path, top: int = 15) -> Summary:
    """Top functions by own samples, and ours (mailer/, lists/, meetings/) by inclusive ones.

    Reads py-spy's raw (collapsed stack) format, recorded with --gil: the shares are of the
    time some thread of the daemon held the GIL.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if OUR_CODE.search(frame):
                inclusive[frame] += count
    if not total:
        return {}

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {"samples": [("total", total)], "self": share(own), "inclusive": share(inclusive)}
