"""One trial's rig (folder, sink, DNS server, daemon, samplers) and its one teardown.

`run_trial` makes the rig, runs a scenario's steps on it and, whatever happens (a finding,
HarnessError, ^C, SIGTERM), ends with `Rig.shut_down`: the only place a trial's threads
and processes are stopped. The steps call it too, through `wind_down`, once they are done
timing, to read the daemon's exit code.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from . import profiling
from .catalogue import Scenario
from .common import HarnessError
from .daemon import Daemon, alliance, write_config
from .dns import DMARC_ZONE, DnsServer
from .processes import RssSampler, proc_status
from .sink import Sink

DKIM_SELECTOR = "bench"     # H: the selector of the trial's key


class Halting(Protocol):
    """A polling thread of the harness: it stops when `halt` is set."""

    halt: threading.Event


class Rig:
    """Everything one trial runs, in a fresh temporary folder."""

    def __init__(self, sc: Scenario, args: argparse.Namespace) -> None:
        self.sc = sc
        self.args = args
        self.folder = Path(tempfile.mkdtemp(prefix=f"alliance-bench-{sc.key}-"))
        self.sink = Sink(self.folder / "sink")
        self.dns = DnsServer(DMARC_ZONE, sc.timeout + 300)
        self.daemon = Daemon(self.folder, self.folder / "config.toml")
        self.database = self.folder / "alliance.sqlite3"
        self.profiler: subprocess.Popen[bytes] | None = None
        self.sampler: RssSampler | None = None
        self.threads: list[Halting] = []
        self.rss_ready = 0   # KiB, the daemon's VmRSS before the work
        self.dkim_record = ""  # H: the DNS record `alliance dkim keygen` printed

    @property
    def config(self) -> Path:
        """The trial's config.toml."""
        return self.daemon.config

    @property
    def profiling(self) -> bool:
        """Whether this trial is profiled (`--profile`, `--profile-scenarios`)."""
        return profiling.wanted(self.args, self.sc.key)

    def start_services(self) -> None:
        """smtp-sink and the DNS server, and the config that points the daemon at them."""
        self.sink.start()
        self.dns.start()
        write_config(self.folder, self.sink.port, self.dns.port, self.args.connections,
                     DKIM_SELECTOR if self.sc.dkim else "")
        if self.sc.dkim:
            printed = alliance(self.config, "dkim", "keygen", "--selector", DKIM_SELECTOR)
            self.dkim_record = printed.strip().splitlines()[-1]

    def start_daemon(self) -> None:
        """`alliance serve`, settled, and the thread that samples its memory."""
        self.daemon.start()
        time.sleep(0.5)  # start-up work (migrations, first queue scans) out of the way
        self.rss_ready = proc_status(self.daemon.pid).get("VmRSS", 0)
        self.sampler = RssSampler(self.daemon.pid, self.sc.timeout + 120)
        self.sampler.start()

    def watch(self, *threads: Halting) -> None:
        """Threads for `shut_down` to halt (they are started by the caller)."""
        self.threads.extend(threads)

    def start_profile(self, name: str) -> None:
        """py-spy on the daemon into DIR/<name>.folded, if this trial is profiled."""
        if self.profiling:
            Path(self.args.profile).mkdir(parents=True, exist_ok=True)
            self.profiler = profiling.start_profiler(self.daemon.pid, self.profile_path(name))

    def profile_path(self, name: str) -> Path:
        """DIR/<name>.folded."""
        return Path(self.args.profile) / f"{name}.folded"

    def end_profile(self) -> bool:
        """Stop py-spy so that it writes its file; whether one was recording."""
        if self.profiler is None:
            return False
        profiling.stop_profiler(self.profiler)
        self.profiler = None
        return True

    def peak_mib(self, status: dict[str, int]) -> float:
        """The daemon's peak RSS: its VmHWM or the highest sample, in MiB."""
        sampled = self.sampler.peak_kib if self.sampler is not None else 0
        return round(max(status.get("VmHWM", 0), sampled) / 1024, 1)

    def shut_down(self) -> int | None:
        """Halt the threads, stop py-spy, the daemon, smtp-sink, the DNS server.

        Safe to call again. Returns the daemon's exit code (None if it never started).
        """
        for thread in self.threads:
            thread.halt.set()
        if self.sampler is not None:
            self.sampler.halt.set()
            self.sampler.join(5)
        profiling.stop_profiler(self.profiler, grace=10)
        self.profiler = None
        exit_code = self.daemon.stop()
        self.sink.stop()
        self.dns.stop()
        return exit_code


def wind_down(rig: Rig, problems: list[str]) -> dict[str, int]:
    """Read the daemon's memory, stop everything, and note a bad exit or ERROR lines."""
    status = proc_status(rig.daemon.pid)
    exit_code = rig.shut_down()
    if exit_code != 0:
        problems.append(f"daemon exited with {exit_code} on SIGTERM")
    errors = rig.daemon.error_lines()
    if errors:
        problems.append(f"{len(errors)} ERROR line(s) in the daemon log, first: "
                        f"{errors[0][:200]}")
    return status


Steps = Callable[[Rig, dict[str, Any], list[str]], None]


def run_trial(sc: Scenario, args: argparse.Namespace, result: dict[str, Any],
              steps: Steps) -> dict[str, Any]:
    """Run `steps(rig, result, problems)` on a fresh rig, then tear it down.

    A HarnessError is a problem of the trial (`harness_error`); the folder is removed
    unless `--keep`. Adds `ok` and `problems` to `result` and returns it.
    """
    problems: list[str] = []
    rig = Rig(sc, args)
    try:
        steps(rig, result, problems)
    except HarnessError as error:
        problems.append(f"harness: {error}")
        result["harness_error"] = True
    finally:
        rig.shut_down()
        if args.keep:
            result["folder"] = str(rig.folder)
        else:
            shutil.rmtree(rig.folder, ignore_errors=True)
    result["ok"] = not problems
    result["problems"] = problems
    return result


class Trial:
    """What the steps of one trial share: its rig, the run's id, its figures and problems."""

    def __init__(self, rig: Rig, run_id: str, result: dict[str, Any],
                 problems: list[str]) -> None:
        self.rig = rig
        self.sc = rig.sc
        self.args = rig.args
        self.run_id = run_id
        self.result = result
        self.problems = problems
