"""The daemon under test: its config, `alliance --config FILE serve`, and its CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .common import BENCHMARKS, DOMAIN, LOOPBACK, REPO, HarnessError, log
from .processes import start_process, stop_process


def alliance_command() -> list[str]:
    """`alliance`, the console script of this interpreter if there is one."""
    script = Path(sys.executable).parent / "alliance"
    if script.exists():
        return [str(script)]
    found = shutil.which("alliance")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from mailer.cli import main; sys.exit(main())"]


def child_env() -> dict[str, str]:
    """This checkout's packages ahead of any installed copy."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def write_config(folder: Path, database_url: str, sink_port: int, dns_port: int,
                 connections: int | None, dkim_selector: str = "", arc_id: str = "",
                 processes: int | None = None) -> Path:
    """The trial's config.toml: its database, the sink as smarthost, our DNS server;
    with `dkim_selector`, DKIM on (its key is var/dkim/SELECTOR.pem beside the config);
    with `arc_id`, ARC on for posts over LMTP whose results carry that authserv-id;
    `processes`, router.processes (the worker processes that sign)."""
    outbound = f'url = "smtp://{LOOPBACK}:{sink_port}"\n'
    if connections:
        outbound += f"connections = {connections}\n"
    path = folder / "config.toml"
    path.write_text(
        "# Written by benchmarks/run.py for one trial.\n"
        f'[site]\ndomain = "{DOMAIN}"\nname = "Benchmark"\n\n'
        f'[database]\nurl = "{database_url}"\n\n'
        f'[smtp]\nlisten = "{LOOPBACK}:0"\n\n'
        + (f'[lmtp]\nlisten = "{LOOPBACK}:0"\n\n' if arc_id else '[lmtp]\nlisten = ""\n\n')
        + f"[outbound]\n{outbound}\n"
        + (f"[router]\nprocesses = {processes}\n\n" if processes is not None else "")
        + f'[http]\nlisten = "{LOOPBACK}:0"\nbase_url = "http://{LOOPBACK}"\n\n'
        f'[dns]\nnameserver = "{LOOPBACK}:{dns_port}"\n'
        + (f'\n[dkim]\nselector = "{dkim_selector}"\n' if dkim_selector else "")
        + (f'\n[arc]\nauthserv_id = "{arc_id}"\n' if arc_id else ""),
        encoding="utf-8")
    return path


def run_helper(script: str, *args: str) -> dict[str, Any]:
    """benchmarks/<script> (make_list.py, make_meeting.py): the JSON line it printed last."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                          env=child_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        log(f"{script}'s last words:\n" + "\n".join(tail))
        raise HarnessError(f"{script} failed: {tail[-1] if tail else 'no output'}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def alliance(config: Path, *args: str, prefix: tuple[str, ...] = (),
             timeout: float = 300) -> str:
    """`alliance --config FILE ARGS` as the coordinator runs it; what it printed."""
    done = subprocess.run([*prefix, *alliance_command(), "--config", str(config), *args],
                          env=child_env(), cwd=config.parent, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise HarnessError(f"alliance {' '.join(args[:2])} failed: "
                           + (done.stderr or done.stdout).strip()[-300:])
    return done.stdout


class Daemon:
    """`alliance --config FILE serve`, its SMTP and HTTP ports read from the line it
    prints. Several may serve one config (PostgreSQL): each is named, for its files."""

    def __init__(self, folder: Path, config: Path, name: str = "daemon") -> None:
        self.folder = folder
        self.config = config
        self.name = name
        self.stdout = folder / f"{name}.stdout"
        self.stderr = folder / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.http_port = 0
        self.lmtp_port = 0    # H with ARC: the posts come over LMTP, as from Postfix
        self.ready_at = 0.0   # monotonic time we read its "SMTP on port" line

    @property
    def pid(self) -> int:
        """The daemon's PID (it must have been started)."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait for its "SMTP on port N" line, or HarnessError."""
        cmd = [*alliance_command(), "--config", str(self.config), "serve"]
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = start_process(cmd, stdout=out, stderr=err, cwd=self.folder,
                                      env=child_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            printed = self.stdout.read_text(errors="replace")
            found = re.search(r"SMTP on port (\d+)", printed)
            if found:
                self.port = int(found.group(1))
                http = re.search(r"HTTP on port (\d+)", printed)
                self.http_port = int(http.group(1)) if http else 0
                lmtp = re.search(r"LMTP on port (\d+)", printed)
                self.lmtp_port = int(lmtp.group(1)) if lmtp else 0
                self.ready_at = time.monotonic()
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.stderr.read_text(errors="replace").strip().splitlines()[-15:]
        log(f"{self.name}'s last words:\n" + "\n".join(tail))
        raise HarnessError(f"{self.name} did not start (exit {self.proc.poll()}): "
                           + (tail[-1] if tail else "no output"))

    def stop(self) -> int | None:
        """SIGTERM, and its exit code (see processes.stop_process)."""
        return stop_process(self.proc, grace=45)

    def log_text(self) -> str:
        """What it wrote to standard error so far ("" if that cannot be read)."""
        try:
            return self.stderr.read_text(errors="replace")
        except OSError:
            return ""

    def error_lines(self) -> list[str]:
        """The ERROR, CRITICAL and Traceback lines of its log."""
        return [line for line in self.log_text().splitlines()
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]

    def delivered(self) -> int | None:
        """How many deliveries this daemon made, from its /metrics (None if unreadable)."""
        if not self.http_port:
            return None
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}/metrics",
                                        timeout=10) as answer:
                text = answer.read().decode("utf-8", "replace")
        except OSError:
            return None
        found = re.search(r'^alliance_deliveries_total\{outcome="delivered"\} ([0-9.e+]+)$',
                          text, re.M)
        return int(float(found.group(1))) if found else None
