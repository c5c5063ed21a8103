"""Messages a second from the delivery transport to a smarthost: in clear, over STARTTLS,
over STARTTLS with AUTH, and over smtps:// with AUTH (issue 12, item 3).

    python3 tools/tls_throughput.py [--messages 5000] [--connections 24] [--size 4096]
                                    [--rounds 3]

The smarthost is an aiosmtpd sink in a process of its own (its TLS work is not charged to
ours), with a CA and certificate made here (tests/helpers.py's make_pki). Our side is the
daemon's own SmtpTransport: a pool of `--connections` sessions, each made secure and
logged in once, then reused. Both sides run on uvloop when it is installed, as `alliance
serve` does. The modes take turns, `--rounds` times; each line gives the best round and
the median (the best is the one least disturbed by whatever else the machine runs), and
the sessions the sink saw in its last round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailer.tls import Credentials, Smarthost, smarthost_context  # noqa: E402
from mailer.transport import SmtpTransport  # noqa: E402

USER, PASSWORD = "alliance", "throughput"
MODES = ("clear", "starttls", "starttls+auth", "smtps+auth")


def runner() -> Any:
    try:
        import uvloop
        return uvloop.run
    except ImportError:
        return asyncio.run


# -- the sink, in its own process ----------------------------------------------------------

def sink(mode: str, cert: str, key: str) -> None:
    """Serve until stdin closes; print the port, then at the end the sessions and messages."""
    import ssl

    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    counts = {"sessions": 0, "messages": 0}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            counts["messages"] += len(envelope.rcpt_tos)
            return "250 OK"

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                     data: Any) -> AuthResult:
        return AuthResult(success=isinstance(data, LoginPassword)
                          and data.password.decode() == PASSWORD, handled=False)

    def session() -> SMTP:
        counts["sessions"] += 1
        auth = mode.endswith("+auth")
        return SMTP(Handler(), hostname="sink.test",
                    tls_context=context if mode.startswith("starttls") else None,
                    authenticator=authenticate if auth else None, auth_required=auth,
                    auth_require_tls=not mode.startswith("smtps"))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(session, "127.0.0.1", 0,
                                          ssl=context if mode.startswith("smtps") else None)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        print(counts["sessions"], counts["messages"], flush=True)

    import logging
    import warnings
    warnings.simplefilter("ignore")
    logging.getLogger("mail.log").setLevel(logging.ERROR)   # aiosmtpd's own notices
    runner()(serve())


# -- our side --------------------------------------------------------------------------------

async def send_all(hop: Smarthost, messages: int, connections: int, size: int) -> float:
    transport = SmtpTransport(hop, connections=connections, timeout=30,
                              local_hostname="lists.example.org")
    body = b"Subject: throughput\r\n\r\n" + (b"x" * 76 + b"\r\n") * max(size // 78, 1)
    started = time.perf_counter()
    replies = await asyncio.gather(*(transport.send("list-bounces@lists.example.org",
                                                    f"m{n}@members.test", body)
                                     for n in range(messages)))
    elapsed = time.perf_counter() - started
    await transport.close()
    failed = [reply for reply in replies if not reply.ok]
    assert not failed, failed[0]
    return elapsed


def measure(mode: str, pki: Any, args: argparse.Namespace) -> tuple[float, str]:
    process = subprocess.Popen([sys.executable, __file__, "--sink", mode, str(pki.cert),
                                str(pki.key)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None and process.stdin is not None
    port = int(process.stdout.readline())
    hop = Smarthost("localhost", port, implicit_tls=mode.startswith("smtps"),
                    require_starttls=mode.startswith("starttls"),
                    tls=smarthost_context(pki.ca, True),
                    credentials=Credentials(USER, PASSWORD) if "auth" in mode else None)
    elapsed = runner()(send_all(hop, args.messages, args.connections, args.size))
    process.stdin.close()
    seen = process.stdout.readline().split()
    process.wait(10)
    return elapsed, f"{seen[0]} sessions, {seen[1]} messages"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument("--size", type=int, default=4096, help="bytes a message")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sink", nargs=3, metavar=("MODE", "CERT", "KEY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink(*args.sink)
        return
    from tests.helpers import make_pki

    pki = make_pki(Path(tempfile.mkdtemp(prefix="alliance-tls-")))
    print(f"{args.messages} messages of {args.size} bytes, {args.connections} connections, "
          f"{os.cpu_count()} CPUs")
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    seen: dict[str, str] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            elapsed, seen[mode] = measure(mode, pki, args)
            rates[mode].append(args.messages / elapsed)
    for mode in MODES:
        print(f"{mode:14} best {max(rates[mode]):6.0f} messages/s, median "
              f"{statistics.median(rates[mode]):6.0f}  (the sink saw {seen[mode]})")


if __name__ == "__main__":
    main()
