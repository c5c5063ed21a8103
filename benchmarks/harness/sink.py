"""Postfix's smtp-sink as the smarthost, and the thread that watches its dump."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .common import DOMAIN, LOOPBACK, HarnessError
from .processes import free_port, start_process, stop_process, wait_port

# A list copy's From after the DMARC rewrite: "Name via bench <bench@bench.test>" (or
# another list of the benchmark's domain: scenario G's `busy`).
LIST_FROM = re.compile(rb"<[^<>@\s]+@" + re.escape(DOMAIN.encode()) + rb">")

SMTP_SINK = os.environ.get("SMTP_SINK", "/usr/sbin/smtp-sink")
RECORD_MARK = b"==ALLIANCE-BENCH-RECORD=="
RCPT_LINE = b"\nX-Rcpt-Args: "


class Sink:
    """Postfix smtp-sink on 127.0.0.1:<free port>, appending every transaction to a dump."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dump = folder / "dump"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.count = 0
        self._handle: IO[bytes] | None = None
        self._carry = b"\n"
        self._lock = threading.Lock()

    def start(self) -> Sink:
        """smtp-sink listening on a free port (tried five times), or HarnessError."""
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

    @property
    def pid(self) -> int | None:
        """The smtp-sink process's PID, once started."""
        return self.proc.pid if self.proc is not None else None

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
        """Stop smtp-sink (see processes.stop_process) and close the dump."""
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
            message_id, sender, recipients = read_head(record)
            if b" via " in sender and LIST_FROM.search(sender.lower()):
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


def read_head(record: bytes) -> tuple[str, bytes, list[str]]:
    """A transaction's (first) Message-ID, its (first) From and its envelope recipients.

    >>> read_head(b"X-Rcpt-Args: <A@x.test> NOTIFY=NEVER\\nMessage-ID: <1@x>\\n"
    ...           b"From: a <b@c>\\n\\nbody")
    ('<1@x>', b'a <b@c>', ['a@x.test'])
    """
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
    return message_id, sender, recipients


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


SINK_LINES = (b"X-Client-Addr:", b"X-Client-Proto:", b"X-Helo-Args:", b"X-Mail-Args:",
              b"X-Rcpt-Args:")


def sent_message(record: bytes) -> bytes:
    """A transaction's message as the daemon sent it: smtp-sink's X- lines left out, line
    ends CRLF again (the Received: field smtp-sink adds stays: no signature covers it).

    >>> sent_message(b"X-Rcpt-Args: <a@x.test>\\nSubject: s\\n\\nbody\\n")
    b'Subject: s\\r\\n\\r\\nbody\\r\\n'
    """
    lines = record.split(b"\n")
    start = 0
    while start < len(lines) and lines[start].startswith(SINK_LINES):
        start += 1
    return b"\r\n".join(lines[start:])


def dkim_check(records: Iterator[bytes], record: str, sample: int) -> dict[str, object]:
    """H: how many transactions carry our DKIM signature and an ARC set, and how many of
    an even sample of them dkimpy's verifiers accept against the DNS record `keygen`
    printed (DKIM, and ARC: `arc_verify` says pass)."""
    signed = sealed = total = 0
    messages = []
    for data in records:
        total += 1
        if b"\nDKIM-Signature: v=1; a=rsa-sha256;" in data:
            signed += 1
        if b"\nARC-Seal: i=1; cv=none; a=rsa-sha256;" in data:
            sealed += 1
        messages.append(data)
    picked = messages[::max(1, len(messages) // sample)][:sample]
    name, _, strings = record.partition(" IN TXT ")
    text = "".join(re.findall(r'"([^"]*)"', strings)).encode()
    try:
        import dkim
    except ImportError:   # dkimpy comes with the test extras: counts only without it
        return {"dkim_signed": signed, "dkim_transactions": total, "dkim_sample": 0,
                "dkim_verified": None, "arc_sealed": sealed, "arc_verified": None}
    zone = {(name + ".").encode(): text}
    verified = sum(1 for data in picked if dkim.verify(
        sent_message(data), dnsfunc=lambda qname, timeout=5: zone.get(qname)))
    arc_passed = sum(1 for data in picked if dkim.arc_verify(
        sent_message(data), dnsfunc=lambda qname, timeout=5: zone.get(qname))[0] == b"pass")
    return {"dkim_signed": signed, "dkim_transactions": total, "dkim_sample": len(picked),
            "dkim_verified": verified, "arc_sealed": sealed,
            "arc_verified": arc_passed if sealed else None}
