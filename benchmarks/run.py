#!/usr/bin/env python3
"""Alliance Mail benchmark: list fan-out and SMTP intake against Postfix's smtp-sink.

    python3 benchmarks/run.py [--short] [--scenarios A,B,C,D,E,F] [--json-out FILE]

For each scenario: a fresh temporary folder with a SQLite database and a config, Postfix's
`smtp-sink` on a free loopback port as the smarthost (every transaction appended to a dump
file, one `X-Rcpt-Args:` line per delivered recipient), a DNS server on a free loopback
port that publishes `_dmarc.members.test TXT "v=DMARC1; p=reject"` (so every list copy
has its From rewritten, and no outside DNS is asked), the list `bench@bench.test` with N
members m000001@members.test ..., then `alliance --config FILE serve` as a subprocess,
posts over SMTP, and a watcher that polls the dump every 5 ms.

  A  one post to 1,000 members          (short: 50)
  B  one post to 10,000 members         (short: 200)
  C  100 posts to 100 members           (short: 5 posts to 20 members)
  D  intake: 50 concurrent SMTP clients post 5,000 2 KB messages to a list with one
     member (short: 200 messages)
  E  meeting: `alliance meeting invite` to 1,000 delegates of one body, then each replies
     ACCEPTED over SMTP, 50 clients at once (short: 50 delegates); see run_meeting
  F  digest: 10 posts archived, then one MIME digest to 10,000 digest members
     (short: 2 posts, 200 members)

A scenario passes when every expected (Message-ID, recipient) pair reached the sink exactly
once, nothing else did, every post got 250, the database shows every delivery done, every
list copy at the sink came From the list ("... via bench", DMARC), the digest carried
every post, each delegate got one invitation and every reply was applied (E), and the
daemon stopped cleanly with no ERROR in its log. The exit code is 0 if
every scenario passed, 1 otherwise (also when the harness itself could not run). Timings
are reported, never asserted. Everything talks to 127.0.0.1 only; every loop is bounded in
count and time; only the processes started here are stopped, by PID, also on errors and on
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import datetime
import email
import email.utils
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zoneinfo
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOOPBACK = "127.0.0.1"
SMTP_SINK = os.environ.get("SMTP_SINK", "/usr/sbin/smtp-sink")
RECORD_MARK = b"==ALLIANCE-BENCH-RECORD=="
RCPT_LINE = b"\nX-Rcpt-Args: "
DOMAIN = "bench.test"
LIST = "bench"
LIST_ADDRESS = f"{LIST}@{DOMAIN}"
MEMBER_FORMAT = "m%06d@members.test"
POSTER = MEMBER_FORMAT % 1          # a member: receives its own post, like shared/bench
MESSAGE_SIZE = 2048                 # bytes per post, headers included
SMTP_STEP_TIMEOUT = 60.0            # seconds for any one SMTP reply to the poster
MAILMAN_BENCH = Path(os.environ.get("MLBENCH_DIR", "/work/shared/bench")) / "mailman_bench.py"
# The posters' domain publishes p=reject: every list copy goes out From the list
# (lists/dmarc.py), the expensive path. Any other name is NXDOMAIN.
DMARC_ZONE: dict[str, tuple[str, ...]] = {"_dmarc.members.test": ("v=DMARC1; p=reject",)}
# The daemon's `digests` job runs at start-up and then every 60 s (lists/digests.py job()).
# Scenario F posts this long before its second run: the wait for it is short, and the
# posts are archived and the threshold set (about a second) in time.
DIGEST_JOB_EVERY = 60.0
DIGEST_LEAD = 5.0


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    members: int
    posts: int
    clients: int = 1          # concurrent SMTP sessions posting
    intake: bool = False      # D: the figures that matter are the poster's
    digest: bool = False      # F: members take digests; one digest each is expected
    meeting: bool = False     # E: `members` delegates invited, `posts` replies sent
    timeout: float = 300.0    # whole trial, seconds

    @property
    def expected(self) -> int:
        return self.members if self.digest or self.meeting else self.members * self.posts


FULL = {
    "A": Scenario("A", "1 post -> 1,000 members", 1000, 1, timeout=300),
    "B": Scenario("B", "1 post -> 10,000 members", 10000, 1, timeout=900),
    "C": Scenario("C", "100 posts -> 100 members", 100, 100, timeout=600),
    "D": Scenario("D", "intake: 50 clients, 5,000 x 2 KB -> list of 1", 1, 5000,
                  clients=50, intake=True, timeout=600),
    "E": Scenario("E", "meeting: 1,000 invitations, 1,000 replies", 1000, 1000, clients=50,
                  meeting=True, timeout=600),
    "F": Scenario("F", "digest of 10 posts -> 10,000 members", 10000, 10, digest=True,
                  timeout=900),
}
SHORT = {
    "A": Scenario("A", "1 post -> 50 members", 50, 1, timeout=60),
    "B": Scenario("B", "1 post -> 200 members", 200, 1, timeout=60),
    "C": Scenario("C", "5 posts -> 20 members", 20, 5, timeout=60),
    "D": Scenario("D", "intake: 50 clients, 200 x 2 KB -> list of 1", 1, 200,
                  clients=50, intake=True, timeout=60),
    "E": Scenario("E", "meeting: 50 invitations, 50 replies", 50, 50, clients=50,
                  meeting=True, timeout=90),
    "F": Scenario("F", "digest of 2 posts -> 200 members", 200, 2, digest=True,
                  timeout=150),
}

_started: list[subprocess.Popen] = []   # every process this run started, for the last resort


def log(*parts: object) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_port(port: int, timeout: float, alive: subprocess.Popen | None = None) -> bool:
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


def start_process(cmd: list[str], **kwargs: object) -> subprocess.Popen:
    # A session of its own: a ^C at the terminal reaches only us, and we stop it by PID.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True,
                            **kwargs)  # type: ignore[call-overload]
    _started.append(proc)
    return proc


def stop_process(proc: subprocess.Popen | None, grace: float = 40.0,
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
    for proc in reversed(_started):
        stop_process(proc, grace=10)


def wind_down(daemon: Any, sink: Any, dns: Any, sampler: Any,
              problems: list[str]) -> Any:
    """Read the daemon's memory, stop everything, and note a bad exit or ERROR lines."""
    status = proc_status(daemon.pid)
    sampler.halt.set()
    sampler.join(5)
    exit_code = daemon.stop()
    sink.stop()
    dns.stop()
    if exit_code != 0:
        problems.append(f"daemon exited with {exit_code} on SIGTERM")
    errors = daemon.error_lines()
    if errors:
        problems.append(f"{len(errors)} ERROR line(s) in the daemon log, first: "
                        f"{errors[0][:200]}")
    return status


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


# -- the DMARC records --------------------------------------------------------------------

DNS_TXT, DNS_ANY, DNS_NXDOMAIN, DNS_FORMERR = 16, 255, 3, 1


def dns_reply(query: bytes, zone: dict[str, tuple[str, ...]], ttl: int = 3600) -> bytes | None:
    """The authoritative answer to one DNS query over UDP (RFC 1035 §4.1), or None.

    TXT records (RFC 1035 §3.3.14) for the names in `zone`, NOERROR with no answer for
    another type there, NXDOMAIN for every other name. Anything past the question (an
    EDNS OPT record, RFC 6891) is ignored, and the reply carries none: a server without
    EDNS. Returns None for what is not a query (it gets no reply at all).
    """
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000:                       # a response, not a query
        return None
    name, pos = dns_question(query)
    end = pos + 5                            # the root label, QTYPE, QCLASS
    if qdcount != 1 or end > len(query) or query[pos]:
        return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7900) | DNS_FORMERR,
                           0, 0, 0, 0)
    qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0]
    records = zone.get(name)
    answers = []
    if records is not None and qtype in (DNS_TXT, DNS_ANY):
        for text in records:
            raw = text.encode()
            rdata = b"".join(bytes([len(raw[i:i + 255])]) + raw[i:i + 255]
                             for i in range(0, len(raw), 255))
            # 0xC00C: a pointer to the name in the question (RFC 1035 §4.1.4).
            answers.append(struct.pack("!HHHIH", 0xC00C, DNS_TXT, 1, ttl, len(rdata)) + rdata)
    rcode = DNS_NXDOMAIN if records is None else 0
    # QR, the query's opcode and RD, AA: this server is the authority for what it says.
    header = struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7900) | 0x0400 | rcode,
                         1, len(answers), 0, 0)
    return header + query[12:end] + b"".join(answers)


class DnsServer(threading.Thread):
    """A UDP DNS server on 127.0.0.1:<free port> answering from `zone` (see dns_reply).

    The daemon asks it for `_dmarc.<poster's domain>` (config `[dns] nameserver`), so a
    benchmark never depends on outside DNS. Counts the questions, by name.
    """

    def __init__(self, zone: dict[str, tuple[str, ...]], limit: float) -> None:
        super().__init__(daemon=True, name="dns")
        self.zone = zone
        self.limit = limit
        self.asked: collections.Counter[str] = collections.Counter()
        self.halt = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))        # port 0: no race for a free port
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        try:
            while not self.halt.is_set() and time.monotonic() < deadline:
                try:
                    query, client = self.sock.recvfrom(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                reply = dns_reply(query, self.zone)
                if reply is not None:
                    self.asked[dns_question(query)[0]] += 1
                    with contextlib.suppress(OSError):
                        self.sock.sendto(reply, client)
        finally:
            self.sock.close()

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(5)
        else:
            self.sock.close()


def dns_question(query: bytes) -> tuple[str, int]:
    """The name a query asks about, lower-cased, and the offset where its labels end.

    Reads the uncompressed labels after the 12-byte header (RFC 1035 §4.1.2); a
    compression pointer or a cut-off name ends the reading there.
    """
    labels, pos = [], 12
    while pos < len(query) and query[pos] and not query[pos] & 0xC0:
        labels.append(query[pos + 1:pos + 1 + query[pos]])
        pos += 1 + query[pos]
    return b".".join(labels).decode("ascii", "replace").lower(), min(pos, len(query))


# -- the counting sink -------------------------------------------------------------------

class Sink:
    """Postfix smtp-sink on 127.0.0.1:<free port>, appending every transaction to a dump."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dump = folder / "dump"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.count = 0
        self._handle: IO[bytes] | None = None
        self._carry = b"\n"
        self._lock = threading.Lock()

    def start(self) -> Sink:
        if not os.access(SMTP_SINK, os.X_OK):
            raise HarnessError(f"{SMTP_SINK} not found: apt-get install postfix "
                               "(only smtp-sink is used; the postfix daemon is never started)")
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd_user: list[str] = []
        if os.geteuid() == 0:
            # smtp-sink will not run as root without -u; that user must write the dump.
            os.chmod(self.folder.parent, 0o755)
            os.chmod(self.folder, 0o1777)
            cmd_user = ["-u", "nobody"]
        for _ in range(5):  # a free port can be taken between our probe and its bind
            self.port = free_port()
            cmd = [SMTP_SINK, *cmd_user, "-S", RECORD_MARK.decode() + "\\n",
                   "-D", str(self.dump), f"{LOOPBACK}:{self.port}", "1024"]
            with open(self.folder / "sink.stderr", "ab") as errors:
                self.proc = start_process(cmd, stdout=subprocess.DEVNULL, stderr=errors)
            if wait_port(self.port, 15, alive=self.proc):
                return self
            stop_process(self.proc, grace=5)
        raise HarnessError("smtp-sink did not come up: "
                           + (self.folder / "sink.stderr").read_text(errors="replace")[-500:])

    def poll(self) -> int:
        """Recipient deliveries in the dump so far (reads only what was appended)."""
        with self._lock:
            if self._handle is None:
                try:
                    self._handle = open(self.dump, "rb")  # noqa: SIM115 (kept open)
                except FileNotFoundError:
                    return self.count
            new = self._handle.read()
            if new:
                data = self._carry + new
                cut = data.rfind(b"\n")
                self.count += data[:cut + 1].count(RCPT_LINE)
                self._carry = data[cut:]
            return self.count

    def stop(self) -> None:
        stop_process(self.proc, grace=10)
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def records(self, chunk: int = 1 << 22) -> Iterator[bytes]:
        """The dump's transactions one by one, read a few MiB at a time (F's is ~250 MB)."""
        try:
            handle = open(self.dump, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return
        with handle:
            carry = b""
            for _ in range(1 << 20):  # bounded: 4 TiB of dump
                data = handle.read(chunk)
                if not data:
                    break
                parts = (carry + data).split(RECORD_MARK + b"\n")
                carry = parts.pop()
                yield from (part for part in parts if part.strip())
            if carry.strip():
                yield carry

    def analyse(self, expected: set[tuple[str, str]],
                contents: tuple[bytes, ...] = ()) -> dict[str, int]:
        """Every recipient delivery in the dump, keyed by (Message-ID, recipient).

        Also counts, without timing anything, the transactions whose From is the list's
        ("... via <list>", the DMARC rewrite) and those whose text holds every one of
        `contents` (for a digest: the Message-IDs of the posts it should carry).
        """
        seen: collections.Counter[tuple[str, str]] = collections.Counter()
        transactions = from_list = holding = size = 0
        for record in self.records():
            transactions += 1
            size += len(record) + len(RECORD_MARK) + 1
            head = record.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
            message_id = ""
            sender = b""
            recipients = []
            for line in head.split(b"\n"):
                if line.startswith(b"X-Rcpt-Args: "):
                    recipients.append(line[13:].split(b" ")[0].strip(b"<>\r").lower()
                                      .decode("ascii", "replace"))
                elif line[:11].lower() == b"message-id:" and not message_id:
                    message_id = line[11:].strip().decode("ascii", "replace")
                elif line[:5].lower() == b"from:" and not sender:
                    sender = line[5:].strip()
            if b" via " in sender and f"<{LIST_ADDRESS}>".encode() in sender.lower():
                from_list += 1
            if contents and all(needle in record for needle in contents):
                holding += 1
            for recipient in recipients:
                seen[(message_id, recipient)] += 1
        delivered = sum(seen.values())
        return {
            "transactions": transactions,
            "deliveries": delivered,
            "unique": len(seen),
            "duplicates": delivered - len(seen),
            "missing": len(expected - seen.keys()),
            "unexpected": len(seen.keys() - expected),
            "from_list": from_list,
            "holding_contents": holding,
            "dump_bytes": size,
        }


class Watcher(threading.Thread):
    """Polls the sink every 5 ms: when the first delivery came, when the last expected did."""

    def __init__(self, sink: Sink, expected: int, limit: float) -> None:
        super().__init__(daemon=True, name="watcher")
        self.sink = sink
        self.expected = expected
        self.limit = limit
        self.first: float | None = None
        self.complete_at: float | None = None
        self.last_change: float | None = None
        self.complete = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        seen = 0
        while not self.halt.is_set() and time.monotonic() < deadline:
            count = self.sink.poll()
            now = time.monotonic()
            if count > seen:
                seen = count
                self.last_change = now
                if self.first is None:
                    self.first = now
                if count >= self.expected and self.complete_at is None:
                    self.complete_at = now
                    self.complete.set()
            self.halt.wait(0.005)


# -- the daemon --------------------------------------------------------------------------

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


def write_config(folder: Path, sink_port: int, dns_port: int, connections: int | None) -> Path:
    outbound = f'url = "smtp://{LOOPBACK}:{sink_port}"\n'
    if connections:
        outbound += f"connections = {connections}\n"
    path = folder / "config.toml"
    path.write_text(
        "# Written by benchmarks/run.py for one trial.\n"
        f'[site]\ndomain = "{DOMAIN}"\nname = "Benchmark"\n\n'
        f'[database]\nurl = "sqlite:///{folder / "alliance.sqlite3"}"\n\n'
        f'[smtp]\nlisten = "{LOOPBACK}:0"\n\n'
        '[lmtp]\nlisten = ""\n\n'
        f"[outbound]\n{outbound}\n"
        f'[http]\nlisten = "{LOOPBACK}:0"\nbase_url = "http://{LOOPBACK}"\n\n'
        f'[dns]\nnameserver = "{LOOPBACK}:{dns_port}"\n',
        encoding="utf-8")
    return path


def make_list(config: Path, members: int, delivery: str = "regular") -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(HERE / "make_list.py"), "--config", str(config),
                           "--list", LIST, "--members", str(members), "--delivery", delivery],
                          env=child_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        log("make_list.py's last words:\n" + "\n".join(tail))
        raise HarnessError(f"make_list.py failed: {tail[-1] if tail else 'no output'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Daemon:
    """`alliance --config FILE serve`, its SMTP port read from the line it prints."""

    def __init__(self, folder: Path, config: Path) -> None:
        self.folder = folder
        self.config = config
        self.stdout = folder / "daemon.stdout"
        self.stderr = folder / "daemon.stderr"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.ready_at = 0.0   # monotonic time we read its "SMTP on port" line

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        cmd = [*alliance_command(), "--config", str(self.config), "serve"]
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = start_process(cmd, stdout=out, stderr=err, cwd=self.folder,
                                      env=child_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"SMTP on port (\d+)", self.stdout.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                self.ready_at = time.monotonic()
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.stderr.read_text(errors="replace").strip().splitlines()[-15:]
        log("the daemon's last words:\n" + "\n".join(tail))
        raise HarnessError(f"the daemon did not start (exit {self.proc.poll()}): "
                           + (tail[-1] if tail else "no output"))

    def stop(self) -> int | None:
        return stop_process(self.proc, grace=45)

    def error_lines(self) -> list[str]:
        try:
            text = self.stderr.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines()
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]


def database_counts(path: Path) -> dict[str, dict[str, int]]:
    """Rows by state, read with the stdlib after the daemon stopped."""
    found: dict[str, dict[str, int]] = {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            for table in ("deliveries", "work"):
                found[table] = dict(db.execute(
                    f"SELECT state, count(*) FROM {table} GROUP BY state").fetchall())
            found["outgoing"] = dict(db.execute(
                "SELECT kind, count(*) FROM outgoing GROUP BY kind").fetchall())
            found["messages"] = {"stored": db.execute(
                "SELECT count(*) FROM messages").fetchone()[0]}
            found["archive"] = {"posts": db.execute(
                "SELECT count(*) FROM archive").fetchone()[0]}
    except sqlite3.Error as error:
        found["error"] = {str(error): 1}
    return found


def read_database(path: Path, sql: str, limit: float = 15.0) -> list[tuple[Any, ...]]:
    """Rows of one query, read-only with the stdlib, also while the daemon writes (WAL)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                    timeout=5)) as db:
                return db.execute(sql).fetchall()
        except sqlite3.Error as error:
            if time.monotonic() > deadline:
                raise HarnessError(f"reading {path.name}: {error}") from None
            time.sleep(0.05)


@dataclass(frozen=True)
class Digest:
    """A digest the daemon queued, as stored in `outgoing`."""

    created_at: float        # wall clock: when the digests job stored it
    message_id: str
    size: int
    posts: int               # how many of the posts' Message-IDs it carries
    from_list: int           # enclosed posts whose From is the list's (DMARC)


def digests_queued(path: Path, post_ids: list[str]) -> list[Digest]:
    """Every digest in the database after the run, with what it carries."""
    found = []
    for created_at, data in read_database(
            path, "SELECT created_at, data FROM outgoing WHERE kind = 'digest' ORDER BY id"):
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        ids = re.findall(rb"(?im)^message-id:\s*(<[^>\r\n]*>)", head)
        found.append(Digest(
            created_at, ids[0].decode("ascii", "replace") if ids else "", len(data),
            sum(1 for post_id in post_ids if post_id.encode() in data),
            len(re.findall(rf"(?im)^from:[^\r\n]* via [^\r\n]*<{re.escape(LIST_ADDRESS)}>"
                           .encode(), data))))
    return found


# -- the poster --------------------------------------------------------------------------

class HarnessError(Exception):
    """The benchmark could not be run (not a finding about the daemon)."""


class SmtpError(Exception):
    def __init__(self, text: str, code: int = 0) -> None:
        super().__init__(text)
        self.code = code


# One message to post: (index, Message-ID, bytes, MAIL FROM, RCPT TO).
Post = tuple[int, str, bytes, str, str]


@dataclass
class Posted:
    index: int
    message_id: str
    code: int
    sent_at: float      # end of DATA written
    replied_at: float   # its reply read

    @property
    def latency(self) -> float:
        return self.replied_at - self.sent_at


@dataclass
class PostRun:
    posted: list[Posted] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed_421: int = 0   # sessions the server ended with 421; the post was sent again
    started: float = 0.0
    finished: float = 0.0


def make_post(index: int, run_id: str, scenario: str) -> tuple[str, bytes]:
    """A plain-text post of MESSAGE_SIZE bytes with a unique Message-ID."""
    message_id = f"<bench.{run_id}.{scenario}.{index}@members.test>"
    head = (f"From: <{POSTER}>\r\nTo: <{LIST_ADDRESS}>\r\n"
            f"Subject: benchmark {scenario} post {index}\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            f"Message-ID: {message_id}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    line = (f"{index} ".ljust(70, "x") + "\r\n").encode()
    room = max(MESSAGE_SIZE - len(head), len(line))
    body = (line * (room // len(line) + 1))[:room]
    body = body[:-2] + b"\r\n" if not body.endswith(b"\r\n") else body
    return message_id, head.encode() + body


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    for _ in range(100):  # bounded: no reply has more lines than that
        line = await asyncio.wait_for(reader.readline(), SMTP_STEP_TIMEOUT)
        if not line:
            raise SmtpError("connection closed by the server")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            break
    try:
        return int(lines[-1][:3]), b"".join(lines)
    except ValueError:
        raise SmtpError(f"not an SMTP reply: {lines[-1][:80]!r}") from None


async def _step(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                command: bytes, expect: int) -> None:
    writer.write(command + b"\r\n")
    await writer.drain()
    code, text = await _reply(reader)
    if code != expect:
        raise SmtpError(f"{command.split()[0].decode()}: "
                        f"{text.strip().decode(errors='replace')}", code)


async def _session(port: int, queue: collections.deque[Post],
                   run: PostRun, deadline: float) -> bool:
    """One SMTP session: posts from the queue until it is empty or time is up.

    Returns True when the server closed the session with 421 and the client should
    connect again: the post in hand goes back to the queue, as an MTA would send it again.
    """
    writer = None
    current: Post | None = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port),
                                                SMTP_STEP_TIMEOUT)
        code, text = await _reply(reader)
        if code != 220:
            raise SmtpError(f"greeting: {text!r}", code)
        await _step(reader, writer, b"EHLO bench-client.members.test", 250)
        while queue and time.monotonic() < deadline:
            current = queue.popleft()
            index, message_id, data, mail_from, rcpt_to = current
            try:
                await _step(reader, writer, f"MAIL FROM:<{mail_from}>".encode(), 250)
                await _step(reader, writer, f"RCPT TO:<{rcpt_to}>".encode(), 250)
                await _step(reader, writer, b"DATA", 354)
            except SmtpError as error:
                if error.code == 421:
                    raise
                run.errors.append(f"post {index}: {error}")
                current = None
                await _step(reader, writer, b"RSET", 250)
                continue
            writer.write(data + b".\r\n")
            await writer.drain()
            sent_at = time.monotonic()
            code, text = await _reply(reader)
            if code == 421:
                raise SmtpError(f"end of DATA: {text.strip().decode(errors='replace')}", 421)
            run.posted.append(Posted(index, message_id, code, sent_at, time.monotonic()))
            current = None
            if code != 250:
                run.errors.append(f"post {index}: {text.strip().decode(errors='replace')}")
        with contextlib.suppress(SmtpError, OSError, TimeoutError):
            await _step(reader, writer, b"QUIT", 221)
        return False
    except SmtpError as error:
        if error.code == 421 and current is not None:
            queue.appendleft(current)
            run.closed_421 += 1
            return True
        run.errors.append(f"session: {error}")
        return False
    except (OSError, TimeoutError) as error:
        run.errors.append(f"session: {type(error).__name__}: {error}")
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)


async def _client(port: int, queue: collections.deque[Post],
                  run: PostRun, deadline: float) -> None:
    for _ in range(1000):  # bounded number of sessions per client
        if not (queue and time.monotonic() < deadline):
            return
        if not await _session(port, queue, run, deadline):
            return


async def _post_all(port: int, posts: list[Post], clients: int,
                    limit: float) -> PostRun:
    run = PostRun()
    queue = collections.deque(posts)
    run.started = time.monotonic()
    deadline = run.started + limit
    await asyncio.gather(*(_client(port, queue, run, deadline)
                           for _ in range(max(1, min(clients, len(posts))))))
    run.finished = time.monotonic()
    if queue:
        run.errors.append(f"{len(queue)} post(s) not sent: time limit reached")
    return run


# -- profiling (optional) ----------------------------------------------------------------

def start_profiler(pid: int, out: Path) -> subprocess.Popen | None:
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


OUR_CODE = re.compile(r"\((mailer|lists|meetings)/")


def summarise_profile(path: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
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
    share = lambda counter: [(name, round(100 * n / total, 1))  # noqa: E731
                             for name, n in counter.most_common(top)]
    return {"samples": [("total", total)], "self": share(own), "inclusive": share(inclusive)}


# -- one trial ---------------------------------------------------------------------------

def threshold_kib(sizes: list[int]) -> int:
    """The `digest_max_kb` at which these posts, and not one fewer, fill a digest.

    lists/digests.py `backlog` cuts a digest at the first post that brings the waiting
    size to the threshold and sends it at once; so the threshold must lie above the size
    of all but the last post and at or below the size of all of them.
    """
    kib = sum(sizes) // 1024
    if kib < 1 or sum(sizes[:-1]) >= kib * 1024:
        raise HarnessError(f"no digest_max_kb makes posts of {sizes} bytes one digest")
    return kib


def arm_digest(folder: Path, config: Path, posts: int, limit: float) -> dict[str, Any]:
    """Wait until the posts are archived, then set the list's threshold to their size.

    The threshold is set with the owners' CLI (`alliance list set`), as an owner would.
    """
    database = folder / "alliance.sqlite3"
    deadline = time.monotonic() + limit
    while True:
        sizes = [size for (size,) in read_database(
            database, "SELECT length(data) FROM archive ORDER BY id")]
        if len(sizes) >= posts:
            break
        if time.monotonic() > deadline:
            raise HarnessError(f"{len(sizes)} of {posts} posts archived after {limit:.0f} s")
        time.sleep(0.02)
    kib = threshold_kib(sizes)
    done = subprocess.run([*alliance_command(), "--config", str(config), "list", "set", LIST,
                           "digest_max_kb", str(kib)], env=child_env(), cwd=folder,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise HarnessError("alliance list set failed: "
                           + (done.stderr or done.stdout).strip()[-300:])
    return {"archived_bytes": sum(sizes), "digest_max_kb": kib}


def run_scenario(sc: Scenario, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"alliance-bench-{sc.key}-"))
    result: dict[str, Any] = {"scenario": sc.key, "title": sc.title,
                              "members": sc.members, "posts": sc.posts,
                              "clients": sc.clients, "expected": sc.expected,
                              "digest": sc.digest}
    problems: list[str] = []
    sink = Sink(folder / "sink")
    dns = DnsServer(DMARC_ZONE, sc.timeout + 300)
    daemon = Daemon(folder, folder / "config.toml")
    profiler = None
    # Wall clock minus monotonic: the database's timestamps are wall-clock ones.
    wall_offset = time.time() - time.monotonic()
    try:
        sink.start()
        dns.start()
        write_config(folder, sink.port, dns.port, args.connections)
        made = make_list(daemon.config, sc.members, "digest" if sc.digest else "regular")
        result["list_setup_s"] = made["seconds"]
        result["mailer_package"] = made["mailer"]
        daemon.start()
        time.sleep(0.5)  # start-up work (migrations, first queue scans) out of the way
        rss_ready = proc_status(daemon.pid).get("VmRSS", 0)
        sampler = RssSampler(daemon.pid, sc.timeout + 120)
        sampler.start()
        if args.profile and (not args.profile_scenarios or sc.key in args.profile_scenarios):
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            profiler = start_profiler(daemon.pid, Path(args.profile) / f"{sc.key}.folded")
        watcher = Watcher(sink, sc.expected, sc.timeout + args.settle + 5)
        watcher.start()
        posts = [(i, *make_post(i, run_id, sc.key), POSTER, LIST_ADDRESS)
                 for i in range(sc.posts)]
        log(f"{sc.key}: {sc.title}: daemon pid {daemon.pid} on port {daemon.port}, "
            f"sink pid {sink.proc.pid} on port {sink.port}, "  # type: ignore[union-attr]
            f"DNS on port {dns.port}")
        if sc.digest:
            # The digests job ran as the daemon started; post shortly before its next run.
            start_at = daemon.ready_at + DIGEST_JOB_EVERY - DIGEST_LEAD
            log(f"{sc.key}: posting in {start_at - time.monotonic():.1f} s, "
                f"{DIGEST_LEAD:.0f} s before the daemon's digests job runs again")
            time.sleep(max(0.0, start_at - time.monotonic()))
        cpu_before = proc_cpu_seconds(daemon.pid) or 0.0
        posting = asyncio.run(_post_all(daemon.port, posts, sc.clients, sc.timeout))
        accepted = [p for p in posting.posted if p.code == 250]
        if posting.errors:
            problems.append(f"{len(posting.errors)} posting error(s), first: "
                            f"{posting.errors[0]}")
        if len(accepted) != sc.posts:
            problems.append(f"{len(accepted)} of {sc.posts} posts accepted")
            if not sc.digest:
                watcher.expected = sc.members * len(accepted)
        # From the (first) post's 250; for a digest, from the last post's.
        replies = [p.replied_at for p in accepted] or [posting.started]
        t0 = max(replies) if sc.digest else min(replies)
        if sc.digest and accepted:
            armed = arm_digest(folder, daemon.config, len(accepted), DIGEST_LEAD)
            result.update(armed)
            result["armed_after_s"] = round(time.monotonic() - t0, 3)
        remaining = sc.timeout - (time.monotonic() - posting.started)
        if accepted and not watcher.complete.wait(max(remaining, 0.0)):
            problems.append(f"timed out after {sc.timeout:.0f} s with "
                            f"{sink.poll()} of {watcher.expected} deliveries")
        cpu_busy = (proc_cpu_seconds(daemon.pid) or 0.0) - cpu_before
        time.sleep(args.settle)  # anything arriving now is a duplicate
        watcher.halt.set()
        watcher.join(5)
        if profiler is not None:
            stop_process(profiler, grace=30, sig=signal.SIGINT)
            profile = Path(args.profile) / f"{sc.key}.folded"
            result["profile"] = str(profile)
            result["profile_top"] = summarise_profile(profile)
        status = wind_down(daemon, sink, dns, sampler, problems)
        members = [MEMBER_FORMAT % n for n in range(1, sc.members + 1)]
        post_ids = [p.message_id for p in accepted]
        database_path = folder / "alliance.sqlite3"
        digests: list[Digest] = []
        if sc.digest:
            digests = digests_queued(database_path, post_ids)
            if len(digests) != 1:
                problems.append(f"{len(digests)} digests queued, not 1")
            for digest in digests:
                if digest.posts != len(post_ids):
                    problems.append(f"a digest carries {digest.posts} of "
                                    f"{len(post_ids)} posts")
            letters = [d.message_id for d in digests]
        else:
            letters = post_ids
        expected_pairs = {(letter, m) for letter in letters for m in members}
        counts = sink.analyse(expected_pairs,
                              tuple(i.encode() for i in post_ids) if sc.digest else ())
        if counts["duplicates"]:
            problems.append(f"{counts['duplicates']} duplicate deliveries")
        if counts["missing"]:
            problems.append(f"{counts['missing']} expected deliveries missing")
        if counts["unexpected"]:
            problems.append(f"{counts['unexpected']} unexpected deliveries")
        if not sc.digest and counts["from_list"] != counts["transactions"]:
            problems.append(f"{counts['transactions'] - counts['from_list']} of "
                            f"{counts['transactions']} list copies at the sink without "
                            f"the DMARC From (... via {LIST})")
        if sc.digest and digests and counts["holding_contents"] != counts["transactions"]:
            problems.append(f"{counts['transactions'] - counts['holding_contents']} digests "
                            "at the sink lack some of the posts")
        if sc.digest and any(d.from_list != len(post_ids) for d in digests):
            problems.append("posts in the digest without the DMARC From: "
                            f"{[d.from_list for d in digests]} of {len(post_ids)}")
        asked = sum(dns.asked.values())
        if accepted and not dns.asked.get(next(iter(DMARC_ZONE))):
            problems.append(f"the daemon never asked the benchmark's DNS server for "
                            f"{next(iter(DMARC_ZONE))} (asked: {dict(dns.asked)})")
        database = database_counts(database_path)
        if database.get("deliveries", {}) != {"done": len(expected_pairs)}:
            problems.append(f"database deliveries by state: {database.get('deliveries')}")
        done_at = watcher.complete_at
        latencies = sorted(p.latency for p in accepted)
        result.update({
            "accepted": len(accepted),
            "posting_s": round(posting.finished - posting.started, 4),
            "sessions_closed_421": posting.closed_421,
            "deliveries": counts["deliveries"],
            "duplicates": counts["duplicates"],
            "missing": counts["missing"],
            "unexpected": counts["unexpected"],
            "transactions": counts["transactions"],
            "from_list": counts["from_list"],
            "dns_queries": asked,
            "dns_asked": dict(dns.asked),
            "time_to_last_s": round(done_at - t0, 4) if done_at else None,
            "deliveries_per_s": (round(len(expected_pairs) / (done_at - t0), 1)
                                 if done_at and done_at > t0 else None),
            "first_delivery_s": round(watcher.first - t0, 4) if watcher.first else None,
            "delivery_phase_per_s": (
                round((len(expected_pairs) - 1) / (done_at - watcher.first), 1)
                if done_at and watcher.first and done_at > watcher.first else None),
            "daemon_cpu_s": round(cpu_busy, 2),
            "rss_ready_mib": round(rss_ready / 1024, 1),
            "rss_peak_mib": round(max(status.get("VmHWM", 0), sampler.peak_kib) / 1024, 1),
            "database": database,
        })
        if sc.digest and digests:
            # The digest run proper: from the moment the job stored the digest.
            queued = digests[0].created_at - wall_offset
            result.update({
                "digest_kib": round(digests[0].size / 1024, 1),
                "posts_in_digest": digests[0].posts,
                "digests_holding_every_post": counts["holding_contents"],
                "scheduler_wait_s": round(queued - t0, 3),
                "queued_to_first_s": (round(watcher.first - queued, 4)
                                      if watcher.first else None),
                "queued_to_last_s": round(done_at - queued, 4) if done_at else None,
                "digest_deliveries_per_s": (round(len(expected_pairs) / (done_at - queued), 1)
                                            if done_at and done_at > queued else None),
            })
        if sc.intake and accepted:
            last_reply = max(p.replied_at for p in accepted)
            result.update({
                "accepted_per_s": round(len(accepted) / (last_reply - posting.started), 1),
                "latency_p50_ms": round(1000 * statistics.median(latencies), 2),
                "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 2),
                "latency_max_ms": round(1000 * latencies[-1], 2),
                "drain_s": round(done_at - last_reply, 4) if done_at else None,
            })
    except HarnessError as error:
        problems.append(f"harness: {error}")
        result["harness_error"] = True
    finally:
        stop_process(profiler, grace=10, sig=signal.SIGINT)
        daemon.stop()
        sink.stop()
        dns.stop()
        if args.keep:
            result["folder"] = str(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    result["ok"] = not problems
    result["problems"] = problems
    return result


# -- scenario E: one meeting, its invitations and the replies ---------------------------

MEETING_BODY = "bench-forum"
DELEGATE_FORMAT = "d%06d@delegates.test"    # benchmarks/make_meeting.py's addresses
MEETING_TZ = "Europe/Berlin"
SAMPLE_CHECKS = 20                           # invitations taken apart in a full run
APPLIED = re.compile(r"rsvp: message \d+ for invitation \d+: (\w+) \(([^)]*)\)")


def make_meeting(config: Path, delegates: int) -> dict[str, Any]:
    """benchmarks/make_meeting.py: the custom body and its seated delegates."""
    done = subprocess.run([sys.executable, str(HERE / "make_meeting.py"), "--config",
                           str(config), "--body", MEETING_BODY, "--delegates", str(delegates)],
                          env=child_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        log("make_meeting.py's last words:\n" + "\n".join(tail))
        raise HarnessError(f"make_meeting.py failed: {tail[-1] if tail else 'no output'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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


def meeting_times(now: float) -> tuple[str, str, str]:
    """Start, end and send-at of the benchmark's meeting, as `meeting create` takes them.

    Half a year ahead, so that no reminder is due (14 and 3 days before), with a send-at
    time months away, so that the daemon's scheduler never sends the invitations itself:
    `alliance meeting invite` does, as a coordinator would.
    """
    day = datetime.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(MEETING_TZ)).date()
    start = day + datetime.timedelta(days=180)
    send_at = day + datetime.timedelta(days=120)
    return f"{start}T09:00", f"{start}T17:00", f"{send_at}T09:00"


class DbWatcher(threading.Thread):
    """Polls one query on the daemon's SQLite database, read-only, every `interval` s.

    `marks` name (column, minimum) pairs; `reached[name]` is the monotonic time the query
    first showed that column at or above that minimum. Stops when every mark is reached.
    """

    def __init__(self, path: Path, sql: str, marks: dict[str, tuple[int, int]],
                 limit: float, interval: float = 0.005) -> None:
        super().__init__(daemon=True, name="db-watcher")
        self.path = path
        self.sql = sql
        self.marks = marks
        self.limit = limit
        self.interval = interval
        self.reached: dict[str, float] = {}
        self.last: tuple[Any, ...] = ()
        self.done = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                                timeout=5)) as db:
            while not self.halt.is_set() and time.monotonic() < deadline:
                try:
                    row = db.execute(self.sql).fetchone() or ()
                except sqlite3.Error:
                    row = ()
                now = time.monotonic()
                if row:
                    self.last = tuple(row)
                for name, (column, minimum) in self.marks.items():
                    if name not in self.reached and row and (row[column] or 0) >= minimum:
                        self.reached[name] = now
                if len(self.reached) == len(self.marks):
                    self.done.set()
                    return
                self.halt.wait(self.interval)


def unfold(text: str) -> list[str]:
    """The content lines of an iCalendar text, unfolded (RFC 5545 §3.1)."""
    return [line for line in re.sub(r"\r?\n[ \t]", "", text).splitlines() if line]


def split_property(line: str) -> tuple[str, dict[str, str], str]:
    """NAME, its parameters (upper-cased names) and its value; quoted ':' and ';' kept."""
    parts, current, quoted, value = [], "", False, ""
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        if not quoted and char in ";:":
            parts.append(current)
            current = ""
            if char == ":":
                value = line[index + 1:]
                break
            continue
        current += char
    params = {}
    for part in parts[1:]:
        key, _, text = part.partition("=")
        params[key.upper()] = text.strip('"')
    return parts[0].upper() if parts else line.upper(), params, value


def components(lines: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(the VCALENDAR's own lines, the first VEVENT's own lines, the VTIMEZONE lines).

    The event's own lines leave out its sub-components (a VALARM's DESCRIPTION is not
    the event's); the VTIMEZONE lines are kept whole, BEGIN to END.
    """
    calendar: list[str] = []
    event: list[str] = []
    zone: list[str] = []
    stack: list[str] = []
    events = 0
    for line in lines:
        name, _, value = split_property(line)
        if name == "BEGIN":
            stack.append(value.upper())
            events += value.upper() == "VEVENT"
        if "VTIMEZONE" in stack:
            zone.append(line)
        elif stack == ["VCALENDAR"] and name not in ("BEGIN", "END"):
            calendar.append(line)
        elif stack == ["VCALENDAR", "VEVENT"] and events == 1 and name not in ("BEGIN",
                                                                                  "END"):
            event.append(line)
        if name == "END" and stack:
            stack.pop()
    return calendar, event, zone


@dataclass(frozen=True)
class Invited:
    """One transaction at the sink, read as an invitation."""

    recipients: tuple[str, ...]     # X-Rcpt-Args: the envelope recipients
    mail_from: str                  # X-Mail-Args: the envelope sender
    to: tuple[str, ...]             # the To: addresses
    sender: str                     # the From: address
    parts: tuple[str, ...]          # content types, depth first
    method_param: str               # the text/calendar part's method parameter
    calendar: str                   # that part, decoded

    def props(self, name: str) -> list[tuple[dict[str, str], str]]:
        """The VEVENT's own properties of that name: (parameters, value)."""
        return [(params, value) for key, params, value in
                map(split_property, components(unfold(self.calendar))[1]) if key == name]

    def prop(self, name: str) -> str:
        found = self.props(name)
        return found[0][1] if found else ""


def read_invited(record: bytes) -> Invited:
    """An smtp-sink transaction (its X- lines, then the message) as an invitation."""
    message = email.message_from_bytes(record)

    def envelope(name: str) -> list[str]:
        return [str(v).split(">", 1)[0].strip(" <").lower() for v in message.get_all(name, [])]

    def addresses(name: str) -> tuple[str, ...]:
        return tuple(a.lower() for _, a in email.utils.getaddresses(message.get_all(name, []))
                     if a)

    calendar, method, parts = "", "", []
    for part in message.walk():
        parts.append(part.get_content_type())
        if part.get_content_type() == "text/calendar" and not calendar:
            payload = part.get_payload(decode=True)
            calendar = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            method = str(part.get_param("method") or "")
    return Invited(tuple(envelope("X-Rcpt-Args")), (envelope("X-Mail-Args") or [""])[0],
                   addresses("To"), (addresses("From") or ("",))[0], tuple(parts), method,
                   calendar)


def check_invitation(invited: Invited, uid: str) -> list[str]:
    """What is wrong with one invitation taken apart (RFC 6047 §2.4, RFC 5546 §3.2.2)."""
    wrong = []
    [recipient] = invited.recipients[:1] or [""]
    if invited.to != (recipient,):
        wrong.append(f"To: {invited.to}, envelope {invited.recipients}")
    if invited.parts[:5] != ("multipart/mixed", "multipart/alternative", "text/plain",
                             "text/html", "text/calendar"):
        wrong.append(f"MIME parts {invited.parts}")
    if invited.method_param != "REQUEST":
        wrong.append(f"text/calendar method={invited.method_param!r}")
    calendar, _, _ = components(unfold(invited.calendar))
    if "METHOD:REQUEST" not in calendar:
        wrong.append(f"calendar METHOD lines {[c for c in calendar if 'METHOD' in c]}")
    attendees = [value.lower() for _, value in invited.props("ATTENDEE")]
    if attendees != [f"mailto:{recipient}"]:
        wrong.append(f"ATTENDEE {attendees}, not {recipient}")
    organizer = invited.prop("ORGANIZER").lower()
    if not (invited.sender.startswith("rsvp+") and organizer == f"mailto:{invited.sender}"
            == f"mailto:{invited.mail_from}"):
        wrong.append(f"ORGANIZER {organizer}, From {invited.sender}, "
                     f"MAIL FROM {invited.mail_from}")
    if invited.prop("UID") != uid or invited.prop("SEQUENCE") != "0":
        wrong.append(f"UID {invited.prop('UID')!r} SEQUENCE {invited.prop('SEQUENCE')!r}")
    return [f"{recipient}: {w}" for w in wrong]


def fold(line: str) -> str:
    """One content line folded at 75 octets (RFC 5545 §3.1), CRLF-terminated."""
    raw, out = line.encode(), list[bytes]()
    while len(raw) > 75:
        cut = 75 if not out else 74
        while cut and (raw[cut] & 0xC0) == 0x80:   # never inside a UTF-8 sequence
            cut -= 1
        out.append(raw[:cut])
        raw = raw[cut:]
    out.append(raw)
    return b"\r\n ".join(out).decode() + "\r\n"


def make_reply(invited: Invited, index: int, run_id: str) -> tuple[str, bytes]:
    """ACCEPTED, as Thunderbird sends it (tests/data/replies/thunderbird-reply-*.eml).

    From the invitee to the rsvp+TOKEN@ address the invitation came from; the UID, the
    SEQUENCE, DTSTART/DTEND, SUMMARY, LOCATION, ORGANIZER and the VTIMEZONE are those of
    the invitation, DTSTAMP is the time of the reply, and the invitation's own DTSTAMP
    and SEQUENCE are echoed in X-MOZ-RECEIVED-*, as Thunderbird does.
    """
    invitee = invited.recipients[0]
    rsvp = invited.sender
    _, event, zone = components(unfold(invited.calendar))
    own = {split_property(line)[0]: line for line in reversed(event)}
    attendee = invited.props("ATTENDEE")
    name = attendee[0][0].get("CN", "") if attendee else ""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    sequence = invited.prop("SEQUENCE") or "0"
    lines = ["BEGIN:VCALENDAR", "PRODID:-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN",
             "VERSION:2.0", "METHOD:REPLY", *zone, "BEGIN:VEVENT",
             f"CREATED:{stamp}", f"LAST-MODIFIED:{stamp}", f"DTSTAMP:{stamp}",
             f"UID:{invited.prop('UID')}", own.get("SUMMARY", "SUMMARY:"), own["ORGANIZER"],
             f"ATTENDEE;CN={name};PARTSTAT=ACCEPTED;ROLE=REQ-PARTICIPANT;CUTYPE=INDIVIDUAL:"
             f"mailto:{invitee}", own["DTSTART"], own["DTEND"], f"SEQUENCE:{sequence}",
             own.get("LOCATION", "LOCATION:"), "TRANSP:OPAQUE",
             f"X-MOZ-RECEIVED-SEQUENCE:{sequence}",
             f"X-MOZ-RECEIVED-DTSTAMP:{invited.prop('DTSTAMP')}", "X-MOZ-GENERATION:1",
             "END:VEVENT", "END:VCALENDAR"]
    calendar = "".join(fold(line) for line in lines).encode()
    summary = invited.prop("SUMMARY").replace("\\,", ",").replace("\\;", ";")
    message_id = f"<reply.{run_id}.{index}@delegates.test>"
    outer, inner = f"------------{index:012d}Mixed", f"------------{index:012d}Alter"
    attached = base64_lines(calendar)
    data = (f"Message-ID: {message_id}\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            "MIME-Version: 1.0\r\nUser-Agent: Mozilla Thunderbird\r\n"
            f"From: {name} <{invitee}>\r\nTo: {rsvp}\r\n"
            f"Subject: Accepted: {summary}\r\n"
            f'Content-Type: multipart/mixed; boundary="{outer}"\r\n\r\n'
            "This is a multi-part message in MIME format.\r\n"
            f"--{outer}\r\nContent-Type: multipart/alternative;\r\n boundary=\"{inner}\"\r\n\r\n"
            f"--{inner}\r\nContent-Type: text/plain; charset=UTF-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"{name} <{invitee}> has accepted your invitation.\r\n\r\n"
            f"--{inner}\r\nContent-Type: text/calendar; method=REPLY; charset=UTF-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + calendar + (
            f"\r\n--{inner}--\r\n--{outer}\r\n"
            'Content-Type: application/ics; name="invite.ics"\r\n'
            'Content-Disposition: attachment; filename="invite.ics"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + attached + (
            f"\r\n--{outer}--\r\n").encode()
    return message_id, data


def base64_lines(data: bytes) -> bytes:
    """Base64 in 76-column CRLF lines (RFC 2045 §6.8), without the last line break."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


def log_outcomes(daemon: Daemon) -> collections.Counter[str]:
    """The RSVP handler's log lines by outcome: `applied (ACCEPTED)`, `forward (...)`."""
    try:
        text = daemon.stderr.read_text(errors="replace")
    except OSError:
        return collections.Counter()
    return collections.Counter(f"{action} ({reason[:60]})"
                               for action, reason in APPLIED.findall(text))


def run_meeting(sc: Scenario, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """E: `alliance meeting invite` to N delegates, then N replies over SMTP (ACCEPTED)."""
    folder = Path(tempfile.mkdtemp(prefix=f"alliance-bench-{sc.key}-"))
    result: dict[str, Any] = {"scenario": sc.key, "title": sc.title, "meeting": True,
                              "delegates": sc.members, "replies": sc.posts,
                              "clients": sc.clients}
    problems: list[str] = []
    sink = Sink(folder / "sink")
    dns = DnsServer(DMARC_ZONE, sc.timeout + 300)
    daemon = Daemon(folder, folder / "config.toml")
    database = folder / "alliance.sqlite3"
    profiling = bool(args.profile) and (not args.profile_scenarios
                                        or sc.key in args.profile_scenarios)
    profiler = None
    watchers: list[Watcher | DbWatcher] = []
    started = time.monotonic()
    try:
        sink.start()
        dns.start()
        write_config(folder, sink.port, dns.port, args.connections)
        made = make_meeting(daemon.config, sc.members)
        result["setup_s"] = made["seconds"]
        result["meetings_package"] = made["meetings"]
        start, end, send_at = meeting_times(time.time())
        meeting_id = int(alliance(daemon.config, "meeting", "create", "--body", MEETING_BODY,
                                  "--title", "Benchmark Forum", "--start", start, "--end", end,
                                  "--tz", MEETING_TZ, "--location", "Rotes Rathaus, Berlin",
                                  "--send-at", send_at).strip())
        [(uid,)] = read_database(database, f"SELECT uid FROM meetings WHERE id = {meeting_id}")
        daemon.start()
        time.sleep(0.5)  # start-up work (migrations, first queue scans) out of the way
        rss_ready = proc_status(daemon.pid).get("VmRSS", 0)
        sampler = RssSampler(daemon.pid, sc.timeout + 120)
        sampler.start()
        log(f"{sc.key}: {sc.title}: meeting {meeting_id}, daemon pid {daemon.pid} on port "
            f"{daemon.port}, sink pid {sink.proc.pid} on port {sink.port}")  # type: ignore[union-attr]

        # E1: the coordinator's command, then every invitation to the sink.
        watcher = Watcher(sink, sc.members, sc.timeout + args.settle + 5)
        queue = DbWatcher(database, "SELECT count(*), sum(state <> 'pending') FROM deliveries",
                          {"committed": (0, 1), "leased": (1, 1)}, sc.timeout)
        watchers += [watcher, queue]
        if profiling:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            profiler = start_profiler(daemon.pid, Path(args.profile) / "E1.folded")
        spy = shutil.which("py-spy") if profiling else None
        cli_prefix: tuple[str, ...] = (
            (spy, "record", "--format", "raw", "--rate", "200", "--output",
             str(Path(args.profile) / "E1-cli.folded"), "--") if spy else ())
        watcher.start()
        queue.start()
        # The dispatcher looks for deliveries made by another process once a second; a
        # random pause puts the CLI's commit at a random point of that cycle, as in use
        # (otherwise the harness's own rhythm fixes the wait from run to run).
        time.sleep(random.random())
        cpu_before = proc_cpu_seconds(daemon.pid) or 0.0
        cli_started = time.monotonic()
        said = alliance(daemon.config, "meeting", "invite", str(meeting_id), prefix=cli_prefix)
        cli_returned = time.monotonic()
        if f"meeting {meeting_id}: {sc.members} invitation(s) queued" not in said.splitlines():
            problems.append(f"alliance meeting invite said {said.strip()!r}")
        if not watcher.complete.wait(max(sc.timeout - (time.monotonic() - started), 0.0)):
            problems.append(f"timed out with {sink.poll()} of {sc.members} invitations")
        cpu_invite = (proc_cpu_seconds(daemon.pid) or 0.0) - cpu_before
        time.sleep(args.settle)  # anything arriving now is a duplicate
        queue.halt.set()
        if profiler is not None:
            stop_process(profiler, grace=30, sig=signal.SIGINT)
            profiler = None
            result["profile_E1"] = summarise_profile(Path(args.profile) / "E1.folded")
            result["profile_E1_cli"] = summarise_profile(Path(args.profile) / "E1-cli.folded")
        rss_invited = proc_status(daemon.pid).get("VmRSS", 0)
        done_at = watcher.complete_at
        committed, leased = queue.reached.get("committed"), queue.reached.get("leased")
        result.update({
            "meeting_id": meeting_id,
            "cli_s": round(cli_returned - cli_started, 3),
            "cli_to_commit_seen_s": round(committed - cli_started, 3) if committed else None,
            # The daemon's dispatcher looks for due deliveries every `poll` (1 s) unless
            # woken in-process: the CLI's commit in another process waits for that look.
            "commit_to_lease_s": (round(leased - committed, 3)
                                  if leased and committed else None),
            "lease_to_first_s": (round(watcher.first - leased, 3)
                                 if watcher.first and leased else None),
            "return_to_first_s": (round(watcher.first - cli_returned, 3)
                                  if watcher.first else None),
            "return_to_last_s": round(done_at - cli_returned, 3) if done_at else None,
            "cli_start_to_last_s": round(done_at - cli_started, 3) if done_at else None,
            "invitation_phase_per_s": (round((sc.members - 1) / (done_at - watcher.first), 1)
                                       if done_at and watcher.first and done_at > watcher.first
                                       else None),
            "daemon_cpu_invite_s": round(cpu_invite, 2),
        })

        # The invitations as delivered: counts for all, a sample taken apart.
        delegates = {DELEGATE_FORMAT % n for n in range(1, sc.members + 1)}
        received = [read_invited(record) for record in sink.records()]
        per_recipient = collections.Counter(r for inv in received for r in inv.recipients)
        by_recipient = {inv.recipients[0]: inv for inv in received if inv.recipients}
        counts = {
            "transactions": len(received),
            "deliveries": sum(per_recipient.values()),
            "duplicates": sum(per_recipient.values()) - len(per_recipient),
            "missing": len(delegates - per_recipient.keys()),
            "unexpected": len(per_recipient.keys() - delegates),
            "one_recipient_each": sum(len(inv.recipients) == 1 for inv in received),
            "to_is_recipient": sum(inv.to == inv.recipients for inv in received),
            "distinct_rsvp": len({inv.sender for inv in received}),
        }
        result.update(counts)
        for key in ("duplicates", "missing", "unexpected"):
            if counts[key]:
                problems.append(f"{counts[key]} {key} invitation deliveries")
        for key in ("one_recipient_each", "to_is_recipient", "distinct_rsvp"):
            if counts[key] != sc.members:
                problems.append(f"{key}: {counts[key]} of {sc.members}")
        if not args.short and by_recipient:
            step = max(1, len(by_recipient) // SAMPLE_CHECKS)
            sample = sorted(by_recipient)[::step][:SAMPLE_CHECKS]
            wrong = [w for address in sample for w in check_invitation(by_recipient[address],
                                                                       uid)]
            result["sample_checked"] = len(sample)
            result["sample_wrong"] = len(wrong)
            if wrong:
                problems.append(f"{len(wrong)} problem(s) in {len(sample)} invitations taken "
                                f"apart, first: {wrong[0]}")

        # E2: every invitee accepts, over SMTP, from many clients at once.
        replies = [(i, *make_reply(by_recipient[address], i, run_id), address,
                    by_recipient[address].sender)
                   for i, address in enumerate(sorted(by_recipient)[:sc.posts])]
        if len(replies) != sc.posts:
            problems.append(f"only {len(replies)} invitations to reply to")
        accepted_sql = (f"SELECT count(*) FROM invitations WHERE meeting_id = {meeting_id} "
                        "AND partstat = 'ACCEPTED'")
        answers = DbWatcher(database, accepted_sql,
                            {"first": (0, 1), "all": (0, len(replies))}, sc.timeout,
                            interval=0.01)
        watchers.append(answers)
        if profiling:
            profiler = start_profiler(daemon.pid, Path(args.profile) / "E2.folded")
        answers.start()
        cpu_before = proc_cpu_seconds(daemon.pid) or 0.0
        workers_before = children_cpu_seconds(daemon.pid)
        harness_before = time.process_time()
        posting = asyncio.run(_post_all(daemon.port, replies, sc.clients, sc.timeout))
        harness_cpu = time.process_time() - harness_before
        accepted = [p for p in posting.posted if p.code == 250]
        if posting.errors:
            problems.append(f"{len(posting.errors)} reply error(s), first: {posting.errors[0]}")
        if len(accepted) != len(replies):
            problems.append(f"{len(accepted)} of {len(replies)} replies accepted")
        remaining = sc.timeout - (time.monotonic() - started)
        if not answers.done.wait(max(remaining, 0.0)):
            problems.append(f"timed out with {answers.last[:1]} of {len(replies)} ACCEPTED")
        cpu_replies = (proc_cpu_seconds(daemon.pid) or 0.0) - cpu_before
        cpu_workers = children_cpu_seconds(daemon.pid) - workers_before
        time.sleep(args.settle)  # anything the replies make would show now
        if profiler is not None:
            stop_process(profiler, grace=30, sig=signal.SIGINT)
            profiler = None
            result["profile_E2"] = summarise_profile(Path(args.profile) / "E2.folded")
        all_at = answers.reached.get("all")
        last_250 = max((p.replied_at for p in accepted), default=None)
        latencies = sorted(p.latency for p in accepted)
        result.update({
            "replies_accepted": len(accepted),
            "sessions_closed_421": posting.closed_421,
            "intake_accepted_per_s": (round(len(accepted) / (last_250 - posting.started), 1)
                                      if last_250 else None),
            "reply_latency_p50_ms": (round(1000 * statistics.median(latencies), 2)
                                     if latencies else None),
            "reply_latency_p99_ms": (round(1000 * percentile(latencies, 0.99), 2)
                                     if latencies else None),
            "first_send_to_all_accepted_s": (round(all_at - posting.started, 3)
                                             if all_at else None),
            "replies_per_s": (round(len(replies) / (all_at - posting.started), 1)
                              if all_at else None),
            "last_250_to_all_accepted_s": (round(all_at - last_250, 3)
                                           if all_at and last_250 else None),
            "daemon_cpu_replies_s": round(cpu_replies, 2),
            "workers_cpu_replies_s": round(cpu_workers, 2),
            "harness_cpu_replies_s": round(harness_cpu, 2),
        })

        watcher.halt.set()
        at_sink = sink.poll()
        status = wind_down(daemon, sink, dns, sampler, problems)
        outcomes = log_outcomes(daemon)
        result["reply_outcomes"] = dict(outcomes)
        if outcomes != {"applied (ACCEPTED)": len(replies)}:
            problems.append(f"reply outcomes in the daemon log: {dict(outcomes)}")
        if at_sink != sc.members:
            problems.append(f"{at_sink} deliveries at the sink, not {sc.members} "
                            "(the replies made mail)")
        found = database_counts(database)
        found["invitations"] = dict(read_database(
            database, "SELECT partstat, count(*) FROM invitations GROUP BY partstat"))
        found["rsvp_events"] = dict(read_database(
            database, "SELECT kind || ' ' || partstat, count(*) FROM rsvp_events GROUP BY 1"))
        result["database"] = found
        expected_db = {"deliveries": {"done": sc.members}, "work": {"done": len(replies)},
                       "invitations": {"ACCEPTED": len(replies)}
                       if len(replies) == sc.members
                       else {"ACCEPTED": len(replies), "NEEDS-ACTION": sc.members - len(replies)},
                       "rsvp_events": {"reply ACCEPTED": len(replies)}}
        for table_name, wanted in expected_db.items():
            if found.get(table_name) != wanted:
                problems.append(f"database {table_name}: {found.get(table_name)}, "
                                f"not {wanted}")
        result.update({
            "rss_ready_mib": round(rss_ready / 1024, 1),
            "rss_invited_mib": round(rss_invited / 1024, 1),
            "rss_peak_mib": round(max(status.get("VmHWM", 0), sampler.peak_kib) / 1024, 1),
        })
    except HarnessError as error:
        problems.append(f"harness: {error}")
        result["harness_error"] = True
    finally:
        for thread in watchers:
            thread.halt.set()
        stop_process(profiler, grace=10, sig=signal.SIGINT)
        daemon.stop()
        sink.stop()
        dns.stop()
        if args.keep:
            result["folder"] = str(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    result["ok"] = not problems
    result["problems"] = problems
    return result


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- Mailman beside us (optional) --------------------------------------------------------

def run_mailman(args: argparse.Namespace, scenarios: list[str]) -> list[dict[str, Any]]:
    """GNU Mailman 3 on A, B, C through shared/bench's own driver, if its venv exists."""
    venv = Path(args.mailman_venv)
    wanted = [s for s in scenarios if s in ("A", "B", "C")]
    if not (venv / "bin" / "mailman").exists():
        log(f"--with-mailman: no Mailman at {venv} (see {MAILMAN_BENCH.parent}/"
            "install_deps.sh); skipped")
        return []
    if not MAILMAN_BENCH.exists() or not wanted:
        log("--with-mailman: nothing to run (driver missing or no A/B/C scenario)")
        return []
    out = Path(tempfile.mkdtemp(prefix="alliance-bench-mailman-")) / "mailman.json"
    cmd = [sys.executable, str(MAILMAN_BENCH), "--venv", str(venv),
           "--work", args.mailman_work, "--scenarios", ",".join(wanted),
           "--variants", args.mailman_variants, "--runs", "1",
           "--lmtp-port", str(free_port()), "--sink-port", str(free_port()),
           "--rest-port", str(free_port()), "--json-out", str(out)]
    log("--with-mailman: " + " ".join(cmd))
    proc = start_process(cmd, stdout=sys.stderr)  # its progress and table; ours is stdout
    try:
        proc.wait(3600 * 2)
    except subprocess.TimeoutExpired:
        log("--with-mailman: over two hours; stopping it")
    finally:
        stop_process(proc, grace=120)
    try:
        trials = json.loads(out.read_text())["trials"]
    except (OSError, ValueError, KeyError):
        log("--with-mailman: the driver left no results")
        return []
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return [{"system": t.get("system"), "scenario": t.get("scenario"),
             "variant": t.get("variant"), "deliveries": t.get("expected"),
             "time_to_last_s": t.get("time_to_complete_s"),
             "deliveries_per_s": t.get("deliveries_per_s"),
             "first_delivery_s": t.get("first_delivery_s"),
             "duplicates": (t.get("sink") or {}).get("duplicate_deliveries"),
             "complete": t.get("complete")} for t in trials]


# -- output ------------------------------------------------------------------------------

def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def rewritten(result: dict[str, Any]) -> str:
    """How many list copies at the sink came From the list, of how many."""
    if result.get("transactions") is None:
        return "-"
    return f"{fmt(result.get('from_list'))} / {fmt(result.get('transactions'))}"


def profiles(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, summary) of each profile a scenario recorded."""
    found = []
    if result.get("profile_top"):
        found.append((f"{result['scenario']} ({result['profile']}, daemon, holding the GIL",
                      result["profile_top"]))
    for key, what in (("profile_E1", "daemon during E1, holding the GIL"),
                      ("profile_E1_cli", "`alliance meeting invite`, on CPU"),
                      ("profile_E2", "daemon during E2, holding the GIL")):
        if result.get(key):
            found.append((f"{key.removeprefix('profile_')} ({what}", result[key]))
    return found


def meeting_tables(results: list[dict[str, Any]]) -> list[str]:
    """Scenario E's two tables: the invitations (E1) and the replies (E2)."""
    lines = ["", "| scenario | delegates | CLI invite s | CLI commit -> daemon leases s "
             "(poll) | lease -> first at sink s | CLI return -> last invitation s "
             "(target <= 2) | CLI start -> last invitation s | invitations/s (delivery "
             "phase) | dupes | missing | sample taken apart | daemon CPU s | RSS ready / "
             "after MiB | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append("| " + " | ".join([
            f"E1: {fmt(r['delegates'])} invitations", fmt(r["delegates"]), fmt(r.get("cli_s")),
            fmt(r.get("commit_to_lease_s")), fmt(r.get("lease_to_first_s")),
            fmt(r.get("return_to_last_s")), fmt(r.get("cli_start_to_last_s")),
            fmt(r.get("invitation_phase_per_s")), fmt(r.get("duplicates")),
            fmt(r.get("missing")),
            f"{fmt(r.get('sample_checked'))}, {fmt(r.get('sample_wrong'))} wrong"
            if r.get("sample_checked") is not None else "- (counts only)",
            fmt(r.get("daemon_cpu_invite_s")),
            f"{fmt(r.get('rss_ready_mib'))} / {fmt(r.get('rss_invited_mib'))}",
            "yes" if r["ok"] else "**NO**"]) + " |")
    lines += ["", "| scenario | clients | replies accepted | intake accepted/s | "
              "end-of-DATA -> 250 p50 ms | p99 ms | first send -> all ACCEPTED s | "
              "replies/s (target >= 500) | last 250 -> all ACCEPTED s | outcomes | "
              "CPU s: daemon / its workers / clients | RSS peak MiB | ok |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append("| " + " | ".join([
            f"E2: {fmt(r['replies'])} replies (ACCEPTED)", fmt(r["clients"]),
            f"{fmt(r.get('replies_accepted'))} / {fmt(r['replies'])}",
            fmt(r.get("intake_accepted_per_s")), fmt(r.get("reply_latency_p50_ms")),
            fmt(r.get("reply_latency_p99_ms")), fmt(r.get("first_send_to_all_accepted_s")),
            fmt(r.get("replies_per_s")), fmt(r.get("last_250_to_all_accepted_s")),
            ", ".join(f"{k}: {v}" for k, v in (r.get("reply_outcomes") or {}).items()) or "-",
            " / ".join(fmt(r.get(f"{who}_cpu_replies_s"))
                       for who in ("daemon", "workers", "harness")),
            fmt(r.get("rss_peak_mib")),
            "yes" if r["ok"] else "**NO**"]) + " |")
    return lines


def table(results: list[dict[str, Any]], mailman: list[dict[str, Any]]) -> str:
    lines = []
    meeting = [r for r in results if r.get("meeting")]
    results = [r for r in results if not r.get("meeting")]
    fanout = [r for r in results if not r.get("clients", 1) > 1 and not r.get("digest")]
    intake = [r for r in results if r.get("clients", 1) > 1]
    digest = [r for r in results if r.get("digest")]
    if fanout:
        lines += ["| scenario | members x posts | deliveries | 250 -> last delivery s | "
                  "deliveries/s | 250 -> first delivery s | delivery phase /s | dupes | "
                  "missing | From rewritten (DMARC) | 421 reconnects | daemon CPU s | "
                  "RSS ready MiB | RSS peak MiB | ok |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in fanout:
            lines.append("| " + " | ".join([
                f"{r['scenario']}: {r['title']}", f"{fmt(r['members'])} x {fmt(r['posts'])}",
                fmt(r.get("deliveries")), fmt(r.get("time_to_last_s")),
                fmt(r.get("deliveries_per_s")), fmt(r.get("first_delivery_s")),
                fmt(r.get("delivery_phase_per_s")), fmt(r.get("duplicates")),
                fmt(r.get("missing")), rewritten(r), fmt(r.get("sessions_closed_421")),
                fmt(r.get("daemon_cpu_s")),
                fmt(r.get("rss_ready_mib")), fmt(r.get("rss_peak_mib")),
                "yes" if r["ok"] else "**NO**"]) + " |")
    if intake:
        lines += ["", "| scenario | clients | posts accepted | accepted/s | "
                  "end-of-DATA -> 250 p50 ms | p99 ms | max ms | deliveries | dupes | "
                  "last 250 -> last delivery s | From rewritten (DMARC) | 421 reconnects | "
                  "daemon CPU s | RSS peak MiB | ok |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in intake:
            lines.append("| " + " | ".join([
                f"{r['scenario']}: {r['title']}", fmt(r["clients"]),
                f"{fmt(r.get('accepted'))} / {fmt(r['posts'])}",
                fmt(r.get("accepted_per_s")), fmt(r.get("latency_p50_ms")),
                fmt(r.get("latency_p99_ms")), fmt(r.get("latency_max_ms")),
                fmt(r.get("deliveries")), fmt(r.get("duplicates")), fmt(r.get("drain_s")),
                rewritten(r), fmt(r.get("sessions_closed_421")), fmt(r.get("daemon_cpu_s")),
                fmt(r.get("rss_peak_mib")),
                "yes" if r["ok"] else "**NO**"]) + " |")
    if digest:
        lines += ["", "| scenario | members x posts | digest KiB | posts in it | deliveries | "
                  "last 250 -> digest queued s | queued -> first delivery s | "
                  "queued -> last delivery s | deliveries/s | last 250 -> last delivery s | "
                  "dupes | missing | daemon CPU s | RSS ready MiB | RSS peak MiB | ok |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in digest:
            lines.append("| " + " | ".join([
                f"{r['scenario']}: {r['title']}", f"{fmt(r['members'])} x {fmt(r['posts'])}",
                fmt(r.get("digest_kib")), fmt(r.get("posts_in_digest")),
                fmt(r.get("deliveries")), fmt(r.get("scheduler_wait_s")),
                fmt(r.get("queued_to_first_s")), fmt(r.get("queued_to_last_s")),
                fmt(r.get("digest_deliveries_per_s")), fmt(r.get("time_to_last_s")),
                fmt(r.get("duplicates")), fmt(r.get("missing")), fmt(r.get("daemon_cpu_s")),
                fmt(r.get("rss_ready_mib")), fmt(r.get("rss_peak_mib")),
                "yes" if r["ok"] else "**NO**"]) + " |")
    if meeting:
        lines += meeting_tables(meeting)
    if mailman:
        lines += ["", "| system | scenario | variant | deliveries | "
                  "time to complete s (from before the post) | deliveries/s | "
                  "first delivery s (from before the post) | dupes | complete |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in mailman:
            lines.append("| " + " | ".join(fmt(r.get(k)) for k in (
                "system", "scenario", "variant", "deliveries", "time_to_last_s",
                "deliveries_per_s", "first_delivery_s", "duplicates", "complete")) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    loop = subprocess.run([sys.executable, "-c", "import uvloop; print(uvloop.__version__)"],
                          capture_output=True, text=True, timeout=60)
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(),
            "event_loop": f"uvloop {loop.stdout.strip()}" if loop.returncode == 0
            else "asyncio", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Alliance Mail benchmark against Postfix's smtp-sink "
                    "(see benchmarks/README.md).")
    parser.add_argument("--short", action="store_true",
                        help="small sizes; checks counts only (for CI)")
    parser.add_argument("--scenarios", default="A,B,C,D,E,F", help="default A,B,C,D,E,F")
    parser.add_argument("--json-out", help="write every figure as JSON to this file")
    parser.add_argument("--connections", type=int, default=None,
                        help="outbound.connections for the daemon (default: its own)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait after the last delivery for duplicates "
                             "(default 2, short 1)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each trial's folder (config, database, logs, dump)")
    parser.add_argument("--profile", metavar="DIR",
                        help="record the daemon with py-spy into DIR/<scenario>.folded "
                             "and print its top functions")
    parser.add_argument("--profile-scenarios", default="",
                        help="with --profile: only these scenarios (default all)")
    parser.add_argument("--with-mailman", action="store_true",
                        help="also run shared/bench's GNU Mailman 3 driver on A, B, C "
                             "(full sizes; only if its venv exists)")
    parser.add_argument("--mailman-venv", default=os.environ.get("MM_VENV", "/tmp/mmvenv"))
    parser.add_argument("--mailman-variants", default="bulk,verp",
                        help="Mailman variants (bulk, personal, verp; default bulk,verp)")
    parser.add_argument("--mailman-work", default="/tmp/mmbench")
    args = parser.parse_args(argv)
    if args.settle is None:
        args.settle = 1.0 if args.short else 2.0
    catalogue = SHORT if args.short else FULL
    keys = [k.strip().upper() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in keys if k not in catalogue]
    if unknown or not keys:
        parser.error(f"unknown scenario(s) {unknown}; choose from {','.join(catalogue)}")
    args.profile_scenarios = {k.strip().upper() for k in args.profile_scenarios.split(",")
                              if k.strip()}

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally: runs
    run_id = f"{int(time.time())}.{os.getpid()}"
    results: list[dict[str, Any]] = []
    mailman: list[dict[str, Any]] = []
    try:
        for key in keys:
            scenario = catalogue[key]
            result = (run_meeting(scenario, args, run_id) if scenario.meeting
                      else run_scenario(scenario, args, run_id))
            results.append(result)
            log(f"{key}: {'ok' if result['ok'] else 'FAILED: ' + '; '.join(result['problems'])}")
        if args.with_mailman and args.short:
            log("--with-mailman: Mailman's driver has full sizes only; skipped in --short")
        elif args.with_mailman:
            mailman = run_mailman(args, keys)
    except (KeyboardInterrupt, SystemExit):
        print("benchmark FAILED: interrupted; every process it started is stopped",
              flush=True)
        raise
    finally:
        stop_everything()
    print(table(results, mailman))
    for result in results:
        for label, top in profiles(result):
            print(f"\nprofile {label}, {top['samples'][0][1]} samples): top functions by "
                  "own time / our functions by inclusive time")
            for (own, own_share), (inc, inc_share) in zip(top["self"], top["inclusive"],
                                                              strict=False):
                print(f"  {own_share:5.1f}%  {own[:70]:70}  {inc_share:5.1f}%  {inc[:70]}")
    if args.json_out:
        document = {"machine": machine(), "mode": "short" if args.short else "full",
                    "scenarios": {k: asdict(catalogue[k]) for k in keys},
                    "results": results, "mailman": mailman}
        Path(args.json_out).write_text(json.dumps(document, indent=2, default=str))
    failed = [r for r in results if not r["ok"]]
    for result in failed:
        print(f"FAIL {result['scenario']}: {'; '.join(result['problems'])}")
    if failed:
        print(f"benchmark FAILED: {len(failed)} of {len(results)} scenario(s) "
              f"({', '.join(str(r['scenario']) for r in failed)})")
        return 1
    print(f"benchmark OK: {len(results)} scenario(s), every post accepted, every delivery "
          "made exactly once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
