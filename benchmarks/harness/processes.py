"""The child processes: started in a session of their own, stopped by PID, in one place.

`stop_process` is the only code that signals a process; `stop_everything` is the last
resort at the end of a run, for whatever is still alive of what `start_process` started.
Also what /proc says about a process (memory, CPU time).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from .common import LOOPBACK, log

_started: list[subprocess.Popen[bytes]] = []   # every process this run started


def free_port() -> int:
    """A TCP port on the loopback that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_port(port: int, timeout: float, alive: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether the port takes connections within `timeout` s (False if `alive` ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            return False
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_process(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start `cmd` and remember it, so that `stop_everything` can stop it."""
    # A session of its own: a ^C at the terminal reaches only us, and we stop it by PID.
    proc: subprocess.Popen[bytes] = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, start_new_session=True,
        **kwargs)  # type: ignore[call-overload]
    _started.append(proc)
    return proc


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 40.0,
                 sig: int = signal.SIGTERM) -> int | None:
    """Stop one process we started, by its PID: `sig`, then SIGKILL after `grace` s."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} still running {grace:.0f} s after signal {sig}; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def stop_everything() -> None:
    """Stop every process this run started that is still running, the last first."""
    for proc in reversed(_started):
        stop_process(proc, grace=10)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB (empty if it is gone)."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process (all its threads) has used."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def children_cpu_seconds(pid: int) -> float:
    """CPU time used by the live children of a process (the daemon's worker processes)."""
    total = 0.0
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 12 and fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class RssSampler(threading.Thread):
    """Samples the daemon's VmRSS every 50 ms (bounded by `limit` seconds)."""

    def __init__(self, pid: int, limit: float) -> None:
        super().__init__(daemon=True, name="rss")
        self.pid = pid
        self.limit = limit
        self.peak_kib = 0
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.halt.is_set() and time.monotonic() < deadline:
            self.peak_kib = max(self.peak_kib, proc_status(self.pid).get("VmRSS", 0))
            self.halt.wait(0.05)
