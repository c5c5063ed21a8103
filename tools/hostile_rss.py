#!/usr/bin/env python3
"""The daemon's memory under hostile messages (issue 10, item 1), measured on loopback.

    python3 tools/hostile_rss.py [--short] [--json-out FILE]

Starts `alliance serve` on a fresh SQLite database with a list of one member, then:
  1. sends each hostile message of the catalogue alone (100,000 encoded words in a
     Subject, a display-name flood, an RFC 2231 flood, 200,000 MIME parts, 1,000-deep
     nesting, a 150 KB header block) and reads the daemon's peak RSS after each
     (the peak is reset between messages through /proc/PID/clear_refs);
  2. sends 20 messages of 9.9 MB at once (short: 5), waits until every copy is
     delivered, and reads the peak again.
A run passes when every hostile message got its 5xx, every large one its 250 and its
delivery, and the peaks stay within 200 MB (one message) and 500 MB (the 20). The
exit code is 0 when it passes. Only processes started here are stopped.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = "steering@lists.example.org"
SINGLE_LIMIT_MB = 200.0
CONCURRENT_LIMIT_MB = 500.0


def hostile() -> list[tuple[str, bytes]]:
    """The single messages that broke the daemon before issue 10, as they were sent."""
    head = b"From: x@stranger.test\r\nTo: " + LIST.encode() + b"\r\n"

    def folded(name: bytes, words: list[bytes]) -> bytes:
        lines, line = [], name + b":"
        for word in words:
            if len(line) + len(word) > 900:
                lines.append(line)
                line = b""
            line += b" " + word
        return b"\r\n".join([*lines, line]) + b"\r\n"

    parts = b"".join(b"--p\r\n\r\nx\r\n" for _ in range(200_000))
    deep = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (n, n + 1)
                    for n in range(1000))
    return [
        ("subject: 100,000 encoded words",
         head + folded(b"Subject", [b"=?utf-8?q?a?="] * 100_000) + b"\r\nx\r\n"),
        ("display-name flood",
         head + folded(b"Reply-To", [b"=?utf-8?q?n%d?= <n%d@x.test>," % (n, n)
                                     for n in range(20_000)]) + b"\r\nx\r\n"),
        ("RFC 2231 parameter flood",
         head + folded(b"Content-Disposition", [b"attachment;"] + [
             b"filename*%d*=a;" % n for n in range(50_000)]) + b"\r\nx\r\n"),
        ("200,000 MIME parts",
         head + b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + parts + b"--p--\r\n"),
        ("1,000-deep nesting",
         head + b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + deep + b"x\r\n"),
        ("150 KB header block",
         head + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"a" * 900) for n in range(170))
         + b"\r\nx\r\n"),
    ]


def large(n: int) -> bytes:
    """A well-formed 9.9 MB post (a text part and a base64 attachment)."""
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    attachment = line * (9_800_000 // len(line))
    return (b"From: member@party.test\r\nTo: " + LIST.encode() + b"\r\nSubject: large %d\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n"
            b"--z\r\nContent-Type: text/plain\r\n\r\nThe minutes.\r\n"
            b"--z\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=minutes.pdf\r\n\r\n" % n
            + attachment + b"--z--\r\n")


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def send(port: int, sender: str, data: bytes) -> str:
    """One message; the reply to its end of data, as 'code text'."""
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.ehlo("client.test")
        client.mail(sender)
        client.rcpt(LIST)
        code, text = client.data(data)
        return f"{code} {text.decode(errors='replace')}"


def busy(database: Path) -> int:
    """Work and deliveries not finished yet."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        work = db.execute("SELECT count(*) FROM work WHERE state IN "
                          "('pending','working')").fetchone()[0]
        sends = db.execute("SELECT count(*) FROM deliveries WHERE state IN "
                           "('pending','sending')").fetchone()[0]
    return int(work) + int(sends)


def settle(database: Path, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while busy(database) and time.monotonic() < deadline:
        time.sleep(0.2)


def setup(folder: Path) -> tuple[Path, Path]:
    config = folder / "config.toml"
    config.write_text('[site]\ndomain = "lists.example.org"\n'
                      '[database]\nurl = "sqlite:///alliance.sqlite3"\n'
                      '[smtp]\nlisten = "127.0.0.1:0"\n[lmtp]\nlisten = ""\n'
                      '[http]\nlisten = ""\n[outbound]\nurl = "maildir:outbox"\n'
                      '[dns]\nnameserver = "127.0.0.1:9"\ntimeout = 0.05\n')
    alliance = [sys.executable, "-c", "import sys; from mailer.cli import main; sys.exit(main())",
                "--config", str(config)]
    subprocess.run([*alliance, "list", "create", "steering", "--posting", "anyone"],
                   check=True, capture_output=True)
    subprocess.run([*alliance, "list", "add", "steering", "member@party.test"], check=True,
                   capture_output=True)
    return config, folder / "alliance.sqlite3"


def start(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mailer.cli import main; sys.exit(main())",
         "--config", str(config), "serve"], stdout=subprocess.PIPE, stderr=log.open("wb"),
        cwd=config.parent)
    assert process.stdout is not None
    banner = process.stdout.readline().decode()     # "... SMTP on port N; outbound ..."
    port = int(banner.split("SMTP on port ")[1].split(";")[0].split(",")[0])
    return process, port


def run(short: bool) -> dict[str, object]:
    results: dict[str, object] = {"single": [], "concurrent": {}}
    with tempfile.TemporaryDirectory() as folder:
        config, database = setup(Path(folder))
        process, port = start(config, Path(folder) / "daemon.log")
        try:
            time.sleep(1.0)       # the worker process starts
            for name, data in hostile():
                reset_peak(process.pid)
                reply = send(port, "x@stranger.test", data)
                settle(database)
                results["single"].append(  # type: ignore[union-attr]
                    {"message": name, "size_kb": len(data) // 1024, "reply": reply[:60],
                     "peak_mb": round(peak_mb(process.pid), 1)})
            count = 5 if short else 20
            reset_peak(process.pid)
            replies: list[str] = []
            threads = [threading.Thread(target=lambda n=n: replies.append(
                send(port, "member@party.test", large(n)))) for n in range(count)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
            settle(database)
            delivered = len(list((Path(folder) / "outbox" / "new").iterdir()))
            results["concurrent"] = {"messages": count, "accepted": sum(
                r.startswith("250") for r in replies), "delivered": delivered,
                "seconds": round(time.monotonic() - started, 1),
                "peak_mb": round(peak_mb(process.pid), 1)}
        finally:
            process.terminate()
            process.wait(60)
    return results


def verdict(results: dict[str, object]) -> list[str]:
    problems = []
    for single in results["single"]:  # type: ignore[attr-defined]
        if not single["reply"].startswith("5"):
            problems.append(f"{single['message']}: {single['reply']}")
        if single["peak_mb"] > SINGLE_LIMIT_MB:
            problems.append(f"{single['message']}: peak {single['peak_mb']} MB")
    concurrent = results["concurrent"]
    assert isinstance(concurrent, dict)
    if not concurrent["accepted"] == concurrent["delivered"] == concurrent["messages"]:
        problems.append(f"large messages: {concurrent}")
    if concurrent["peak_mb"] > CONCURRENT_LIMIT_MB:
        problems.append(f"large messages: peak {concurrent['peak_mb']} MB")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="5 large messages, not 20")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    results = run(args.short)
    print("| message | KB | reply | daemon peak RSS MB |\n|---|---|---|---|")
    for single in results["single"]:  # type: ignore[attr-defined]
        print(f"| {single['message']} | {single['size_kb']:,} | {single['reply']} | "
              f"{single['peak_mb']} |")
    concurrent = results["concurrent"]
    print(f"\n{concurrent}")
    problems = verdict(results)
    if args.json_out:
        args.json_out.write_text(json.dumps({**results, "problems": problems}, indent=2))
    for problem in problems:
        print(f"FAILED: {problem}")
    print("hostile RSS OK" if not problems else "hostile RSS FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
