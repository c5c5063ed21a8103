"""One scenario's rig: a folder, smtp-sink, the DNS server, the config, the lists, and the
daemon, started again after each SIGKILL on the same port."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.common import DOMAIN, LOOPBACK, HarnessError
from harness.daemon import alliance, alliance_command, child_env, run_helper, write_config
from harness.database import SqliteStore, read_database
from harness.dns import DMARC_ZONE, DnsServer
from harness.processes import free_port, start_process, stop_process
from harness.sink import Sink

START_LIMIT = 90.0      # seconds a start may take before the harness gives up
DRAIN_LIMIT = 480.0     # seconds the queue may take to empty after the last start (the
                        # router's 300 s lease and 60 s transient backoff, and more)
READY_LINE = b"SMTP on port"


def log(*parts: object) -> None:
    """One progress line on standard error (standard output is the report's)."""
    print(f"[crash {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


class Incarnation:
    """One run of `alliance serve`; its output appended to the rig's two log files."""

    def __init__(self, number: int, proc: subprocess.Popen[bytes], stdout: Path,
                 offset: int) -> None:
        self.number = number
        self.proc = proc
        self.stdout = stdout
        self.offset = offset            # where this run's output begins in `stdout`
        self.started = time.monotonic()
        self.ready_at: float | None = None

    def ready(self) -> bool:
        """Whether it has said that it listens (checked once more after it did)."""
        if self.ready_at is None:
            with open(self.stdout, "rb") as out:
                out.seek(self.offset)
                if READY_LINE in out.read():
                    self.ready_at = time.monotonic()
        return self.ready_at is not None

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None


class Rig:
    """Everything one scenario runs, in a fresh temporary folder."""

    def __init__(self, name: str, keep: bool) -> None:
        self.name = name
        self.keep = keep
        self.folder = Path(tempfile.mkdtemp(prefix=f"alliance-crash-{name}-"))
        self.sink = Sink(self.folder / "sink")
        self.dns = DnsServer(DMARC_ZONE, 24 * 3600)
        self.database = self.folder / "alliance.sqlite3"
        self.config = self.folder / "config.toml"
        self.port = 0
        self.runs: list[Incarnation] = []
        self.stdout = self.folder / "daemon.stdout"
        self.stderr = self.folder / "daemon.log"

    @property
    def current(self) -> Incarnation:
        """The daemon's latest incarnation (it must have been started)."""
        return self.runs[-1]

    def start_services(self, database_folder: Path | None = None) -> None:
        """smtp-sink, the DNS server and the config (SMTP on a fixed free port)."""
        self.sink.start()
        self.dns.start()
        if database_folder is not None:
            self.database = database_folder / "alliance.sqlite3"
        write_config(self.folder, f"sqlite:///{self.database}", self.sink.port,
                     self.dns.port, None)
        self.port = free_port()
        text = self.config.read_text(encoding="utf-8")
        edits = {f'[smtp]\nlisten = "{LOOPBACK}:0"':
                 f'[smtp]\nlisten = "{LOOPBACK}:{self.port}"'}
        for old, new in edits.items():
            if old not in text:
                raise HarnessError(f"harness.daemon.write_config changed: no {old!r}")
            text = text.replace(old, new)
        self.config.write_text(text, encoding="utf-8")

    def make_list(self, name: str, members: int) -> None:
        """The list NAME@bench.test with members m000001@members.test ... (make_list.py)."""
        made = run_helper("make_list.py", "--config", str(self.config), "--list", name,
                          "--members", str(members))
        log(f"list {name}@{DOMAIN}: {made['members']} members in {made['seconds']} s")

    def start(self) -> Incarnation:
        """Start `alliance serve` once more (not waiting for it to listen)."""
        cmd = [*alliance_command(), "--config", str(self.config), "serve"]
        offset = self.stdout.stat().st_size if self.stdout.exists() else 0
        with open(self.stderr, "ab") as err:
            err.write(f"=== crash harness: start {len(self.runs) + 1} ===\n".encode())
        with open(self.stdout, "ab") as out, open(self.stderr, "ab") as err:
            proc = start_process(cmd, stdout=out, stderr=err, cwd=self.folder,
                                 env=child_env())
        self.runs.append(Incarnation(len(self.runs) + 1, proc, self.stdout, offset))
        return self.current

    def wait_ready(self, limit: float = START_LIMIT) -> None:
        """Wait until the latest incarnation listens, or HarnessError."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.current.ready():
                return
            if not self.current.alive():
                break
            time.sleep(0.02)
        raise HarnessError(f"the daemon did not start (exit {self.current.proc.poll()}): "
                           + " | ".join(self.log_tail(5)))

    def kill(self) -> None:
        """SIGKILL the latest incarnation, by its PID, and reap it."""
        stop_process(self.current.proc, grace=10, sig=signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM the latest incarnation; its exit code."""
        return stop_process(self.current.proc, grace=60) if self.runs else None

    def log_tail(self, lines: int) -> list[str]:
        """The daemon log's last lines."""
        try:
            return self.stderr.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return []

    def log_lines(self, *marks: str) -> list[str]:
        """The daemon log's lines holding any of `marks`."""
        try:
            text = self.stderr.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if any(mark in line for mark in marks)]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """One query on the daemon's database, read-only."""
        return read_database(SqliteStore(self.database), sql)

    def queue_left(self) -> int:
        """Work and deliveries not settled yet (pending, working, sending)."""
        left = self.rows("SELECT (SELECT count(*) FROM work WHERE state IN "
                         "('pending', 'working')) + (SELECT count(*) FROM deliveries "
                         "WHERE state IN ('pending', 'sending'))")
        return int(left[0][0])

    def drain(self, expected_at_sink: int, limit: float = DRAIN_LIMIT) -> float:
        """Wait until the queue is empty and the sink holds `expected_at_sink` deliveries
        or more, then a second for stragglers; the seconds it took, or HarnessError."""
        started = time.monotonic()
        deadline = started + limit
        while time.monotonic() < deadline:
            if not self.current.alive():
                raise HarnessError("the daemon died while the queue drained: "
                                   + " | ".join(self.log_tail(5)))
            if self.queue_left() == 0 and self.sink.poll() >= expected_at_sink:
                time.sleep(1.0)
                return time.monotonic() - started
            time.sleep(0.1)
        raise HarnessError(f"the queue did not empty in {limit:.0f} s: "
                           f"{self.queue_left()} left, {self.sink.poll()} of "
                           f"{expected_at_sink} deliveries at the sink")

    def cli_json(self, *args: str) -> Any:
        """`alliance --config FILE ARGS --json`, parsed."""
        return json.loads(alliance(self.config, *args, "--json", timeout=120))

    def shut_down(self) -> None:
        """Stop the daemon (SIGTERM), smtp-sink and the DNS server. Safe to call again."""
        if self.runs:
            stop_process(self.current.proc, grace=30)
        self.sink.stop()
        self.dns.stop()

    def remove(self, failed: bool = False) -> None:
        """Remove the folder, unless --keep or the scenario failed (kept to be read)."""
        if self.keep or failed:
            log(f"{self.name}: folder kept: {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
