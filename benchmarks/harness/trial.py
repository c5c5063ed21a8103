"""One trial's rig (folder, database, sink, DNS server, daemons, samplers) and its one
teardown.

`run_trial` makes the rig, runs a scenario's steps on it and, whatever happens (a finding,
HarnessError, ^C, SIGTERM), ends with `Rig.shut_down`: the only place a trial's threads
and processes are stopped; then a PostgreSQL database made for the trial is dropped. The
steps call `shut_down` too, through `wind_down`, once they are done timing, to read the
daemons' exit codes.

With `--daemons N` (PostgreSQL only) N `alliance serve` processes share the trial's config
and database; `rig.daemon` is the first, which the posts go to.
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
from .database import make_store
from .dns import DMARC_ZONE, DnsServer
from .processes import RssSampler, proc_status
from .sink import Sink

DKIM_SELECTOR = "bench"     # H: the selector of the trial's key
ARC_ID = "mx.bench.test"    # H: the authserv-id of the MTA the posts come through


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
        self.database = make_store(args.database, self.folder, sc.key)
        config = self.folder / "config.toml"
        self.daemons = [Daemon(self.folder, config, "daemon" if n == 1 else f"daemon-{n}")
                        for n in range(1, args.daemons + 1)]
        self.daemon = self.daemons[0]   # the one the posts go to
        self.profiler: subprocess.Popen[bytes] | None = None
        self.samplers: list[RssSampler] = []
        self.threads: list[Halting] = []
        self.rss_ready = 0   # KiB, the first daemon's VmRSS before the work
        self.exit_codes: dict[str, int | None] = {}
        self.per_daemon: list[dict[str, Any]] = []   # wind_down: each one's figures
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
        """The database, smtp-sink and the DNS server, and the config that points the
        daemons at them."""
        self.database.create()
        self.sink.start()
        self.dns.start()
        write_config(self.folder, self.database.url, self.sink.port, self.dns.port,
                     self.args.connections, DKIM_SELECTOR if self.sc.dkim else "",
                     ARC_ID if self.sc.arc else "", self.args.processes)
        if self.sc.dkim:
            printed = alliance(self.config, "dkim", "keygen", "--selector", DKIM_SELECTOR)
            self.dkim_record = printed.strip().splitlines()[-1]

    def start_daemon(self) -> None:
        """`alliance serve` (each of them, one after another), settled, and the threads
        that sample their memory."""
        for daemon in self.daemons:
            daemon.start()
        time.sleep(0.5)  # start-up work (migrations, first queue scans) out of the way
        self.rss_ready = proc_status(self.daemon.pid).get("VmRSS", 0)
        for daemon in self.daemons:
            sampler = RssSampler(daemon.pid, self.sc.timeout + 120)
            sampler.start()
            self.samplers.append(sampler)

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

    def peak_mib(self, status: dict[str, int], number: int = 0) -> float:
        """A daemon's peak RSS (the first's by default): its VmHWM or the highest
        sample, in MiB."""
        sampled = self.samplers[number].peak_kib if number < len(self.samplers) else 0
        return round(max(status.get("VmHWM", 0), sampled) / 1024, 1)

    def shut_down(self) -> int | None:
        """Halt the threads, stop py-spy, the daemons, smtp-sink, the DNS server.

        Safe to call again. Returns the first daemon's exit code (None if it never
        started); `exit_codes` has each one's.
        """
        for thread in self.threads:
            thread.halt.set()
        for sampler in self.samplers:
            sampler.halt.set()
            sampler.join(5)
        profiling.stop_profiler(self.profiler, grace=10)
        self.profiler = None
        for daemon in self.daemons:
            self.exit_codes[daemon.name] = daemon.stop()
        self.sink.stop()
        self.dns.stop()
        return self.exit_codes[self.daemon.name]


def wind_down(rig: Rig, problems: list[str]) -> dict[str, int]:
    """Read the daemons' memory and delivery counts, stop everything, and note a bad
    exit or ERROR lines. The first daemon's /proc status; each one's figures in
    `rig.per_daemon`."""
    statuses = [proc_status(daemon.pid) for daemon in rig.daemons]
    rig.per_daemon = [
        {"daemon": daemon.name, "pid": daemon.pid, "delivered": daemon.delivered(),
         "rss_peak_mib": rig.peak_mib(status, number)}
        for number, (daemon, status) in enumerate(zip(rig.daemons, statuses, strict=True))]
    rig.shut_down()
    for daemon in rig.daemons:
        if rig.exit_codes.get(daemon.name) != 0:
            problems.append(f"{daemon.name} exited with {rig.exit_codes.get(daemon.name)} "
                            "on SIGTERM")
        errors = daemon.error_lines()
        if errors:
            problems.append(f"{len(errors)} ERROR line(s) in the {daemon.name} log, "
                            f"first: {errors[0][:200]}")
    return statuses[0]


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
        if rig.database.engine != "sqlite":
            result["database_url"] = rig.database.url   # dropped now, unless --keep
        if args.keep:
            result["folder"] = str(rig.folder)
        else:
            rig.database.drop()
            shutil.rmtree(rig.folder, ignore_errors=True)
    result.setdefault("engine", rig.database.engine)
    result.setdefault("daemons", len(rig.daemons))
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
