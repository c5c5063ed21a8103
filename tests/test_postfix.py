"""Postfix in front (issue 12, item 4): `alliance postfix` prints the lines, and a private
Postfix instance made from them relays, verifies and smarthosts for a running daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import smtplib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from mailer.config import Config
from tests.helpers import (
    DOMAIN,
    Delivered,
    Sink,
    cli,
    cli_error,
    free_port,
    invoke,
    mail,
    make_config,
    make_list,
    make_pki,
    running,
)


def site(folder: Path, text: str) -> Path:
    """A config file for the command line: the site's domain, and `text`."""
    path = folder / "config.toml"
    path.write_text(f'[site]\ndomain = "{DOMAIN}"\n{text}')
    return path


def printed(config: Path, *args: str) -> str:
    """What `alliance ARGS` printed on stdout (notes go to stderr)."""
    result = invoke(config, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_lines_follow_the_config(tmp_path: Path) -> None:
    config = site(tmp_path, '[lmtp]\nlisten = "0.0.0.0:2424"\n'
                            '[intake]\nmax_message_size = 5000000\nmax_recipients = 40\n'
                            '[outbound]\nurl = "smtp://127.0.0.1:2587?starttls=required"\n')
    main = printed(config, "postfix", "--part", "main.cf")
    assert f"\nrelay_domains = {DOMAIN}\n" in main
    assert f"inline:{{ {DOMAIN}=reject_unverified_recipient }}" in main
    assert "\nunverified_recipient_reject_code = 550\n" in main
    assert "\nmessage_size_limit = 5000000\n" in main
    assert "\nlmtp_destination_recipient_limit = 40\n" in main
    assert "\nsmtpd_tls_cert_file = /etc/ssl/certs/ssl-cert-snakeoil.pem\n" in main
    # The listener on every address is reached on loopback.
    assert printed(config, "postfix", "--part", "transport").endswith(
        f"\n{DOMAIN} lmtp:inet:127.0.0.1:2424\n")
    master = printed(config, "postfix", "--part", "master.cf")
    transport = printed(config, "postfix", "--part", "transport")
    assert "\n127.0.0.1:2587 inet n - n - - smtpd\n" in master
    assert "\n  -o smtpd_tls_security_level=encrypt\n" in master
    # Only this machine sends through it, whoever else main.cf's mynetworks lets relay.
    assert "\n  -o mynetworks=127.0.0.0/8,[::1]/128\n" in master
    assert "\nmynetworks" not in main
    everything = printed(config, "postfix")
    assert everything == "\n".join((main, master, transport))


def test_smtps_asks_for_tls_from_the_first_byte_and_certificates_are_the_listeners(
        tmp_path: Path) -> None:
    config = site(tmp_path, '[smtp]\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n'
                            '[outbound]\nurl = "smtps://127.0.0.1:2465"\n')
    master = printed(config, "postfix", "--part", "master.cf")
    assert "\n127.0.0.1:2465 inet n - n - - smtpd\n" in master
    assert "\n  -o smtpd_tls_wrappermode=yes\n" in master
    main = printed(config, "postfix", "--part", "main.cf")
    assert f"\nsmtpd_tls_cert_file = {tmp_path}/tls/cert.pem\n" in main
    assert f"\nsmtpd_tls_key_file = {tmp_path}/tls/key.pem\n" in main


def test_a_smarthost_elsewhere_gets_a_loopback_port_and_a_note(tmp_path: Path) -> None:
    config = site(tmp_path, '[outbound]\nurl = "smtp://relay.example.net:587"\n')
    master = printed(config, "postfix", "--part", "master.cf")
    assert "\n127.0.0.1:10587 inet n - n - - smtpd\n" in master
    assert '#     url = "smtp://127.0.0.1:10587?starttls=required"\n' in master


def test_a_certificate_that_is_not_there_is_said(tmp_path: Path) -> None:
    config = site(tmp_path, '[outbound]\nurl = "smtp://127.0.0.1:10587?starttls=required"\n')
    result = invoke(config, "postfix", "--tls-cert", str(tmp_path / "cert.pem"))
    assert result.exit_code == 0
    assert result.stderr == (f"note: {tmp_path}/cert.pem not here: give --tls-cert and "
                             "--tls-key (for Debian's own: make-ssl-cert "
                             "generate-default-snakeoil)\n")
    (tmp_path / "cert.pem").write_text("a certificate and its key\n")
    assert invoke(config, "postfix", "--tls-cert", str(tmp_path / "cert.pem")).stderr == ""


def test_without_an_lmtp_listener_there_is_nothing_to_relay_to(tmp_path: Path) -> None:
    config = site(tmp_path, '[lmtp]\nlisten = ""\n')
    assert "lmtp.listen is off" in cli_error(config, "postfix")


# -- a private Postfix, made from `alliance postfix` -------------------------------------

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if os.access("/usr/sbin/postfix", os.X_OK) else None)
NO_POSTFIX = ("Postfix is not installed (apt-get install postfix; its own service need not "
              "run); CI installs it" if POSTFIX is None else
              "a private Postfix instance is started as root (postfix -c DIR start)"
              if os.geteuid() != 0 else "")

# Debian's main.cf as its postinst begins it (main.cf.debian, with main.cf.tls when there is
# a certificate), which an operator appends `alliance postfix`'s lines to.
DEBIAN_MAIN_CF = "".join(
    path.read_text() for path in (Path("/usr/share/postfix/main.cf.debian"),
                                  Path("/usr/share/postfix/main.cf.tls")) if path.exists()
) or "compatibility_level = 3.6\n"
# What our lines set again there, to another value: the certificate (Debian's is its
# snakeoil one); smtpd_tls_security_level is "may" in both.
OVERRIDDEN = {"smtpd_tls_cert_file", "smtpd_tls_key_file"} & {
    line.partition("=")[0].strip() for line in DEBIAN_MAIN_CF.splitlines()}

# Postfix's own services, as Debian's master.cf has them, out of any chroot (the instance
# lives in a temporary folder). The test's master.cf adds the MX's listener and what
# `alliance postfix` prints.
SERVICES = """\
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Instance:
    """A Postfix of its own: config, queue, data and log in one temporary folder, listening
    on loopback ports only; never the system's Postfix, never port 25."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc"
        self.spool = root / "spool"
        self.maillog = root / "maillog"

    def write(self, main_cf: str, master_cf: str, transport: str) -> None:
        for folder in (self.etc, self.spool):
            folder.mkdir(mode=0o755)
        written = time.time() - 60
        for name, text in (("main.cf", main_cf), ("master.cf", master_cf),
                           ("transport", transport)):
            (self.etc / name).write_text(text)
            # Postfix waits for a file changed within the last second to settle, reading
            # it again every 0.3 s: these are finished.
            os.utime(self.etc / name, (written, written))
        self.maillog.touch()

    def main_cf(self, smarthost_port: int) -> str:
        """Debian's stock main.cf, what makes the instance private, and the internet it
        delivers to: the sink."""
        return DEBIAN_MAIN_CF + f"""\
queue_directory = {self.spool}
data_directory = {self.root}/data
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mx.postfix.test
# As Debian's main.cf has it: an address's +extension is kept on its way to our LMTP.
recipient_delimiter = +
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
maillog_file = {self.maillog}
maillog_file_prefixes = {self.root}
# One client at a time here: never pause it for the queue manager to catch up.
in_flow_delay = 0
relayhost = [127.0.0.1]:{smarthost_port}
"""

    async def command(self, program: str, *args: str) -> str:
        assert POSTFIX is not None
        process = await asyncio.create_subprocess_exec(
            str(Path(POSTFIX).parent / program), "-c", str(self.etc), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, (program, args, output.decode(), self.log())
        return output.decode()

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def processes(self) -> set[int]:
        """The master and everything it started (read from /proc)."""
        pid_file = self.spool / "pid" / "master.pid"
        if not pid_file.exists():
            return set()
        found = {int(pid_file.read_text().split()[0])}
        parents = {}
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if entry.name.isdigit():
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
        while grown := {pid for pid, parent in parents.items()
                        if parent in found and pid not in found}:
            found |= grown
        return {pid for pid in found if Path(f"/proc/{pid}").exists()}

    async def queue(self) -> list[dict[str, object]]:
        """Postfix's queue, one entry a message (postqueue -j)."""
        output = await self.command("postqueue", "-j")
        return [json.loads(line) for line in output.splitlines() if line.startswith("{")]

    async def drained(self, timeout: float = 30.0) -> None:
        """Wait until Postfix's queue is empty: every message passed on."""
        for _ in range(int(timeout / 0.1)):
            if not await self.queue():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"Postfix's queue: {await self.queue()}\n{self.log()}")

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[Instance]:
        await self.command("postmap", str(self.etc / "transport"))
        await self.command("postfix", "check")
        await self.command("postfix", "start")
        try:
            yield self
        finally:
            children = self.processes()
            await self.command("postfix", "stop")
            await self.gone(children)

    async def gone(self, pids: set[int]) -> None:
        """Wait for the instance's processes to end; kill those that linger."""
        for _ in range(100):
            pids = {pid for pid in pids if Path(f"/proc/{pid}").exists()}
            if not pids:
                return
            await asyncio.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def instance() -> Iterator[Instance]:
    # Not under pytest's tmp_path: its folders are root's alone (0700), and Postfix's
    # processes run as the postfix user in the queue folder.
    root = Path(tempfile.mkdtemp(prefix="alliance-postfix-"))
    root.chmod(0o755)
    yield Instance(root)
    shutil.rmtree(root, ignore_errors=True)


LIST = f"steering@{DOMAIN}"
LIMIT = 20_000      # intake.max_message_size, and so Postfix's message_size_limit
ARC_ID = "mx.postfix.test"   # arc.authserv_id: the authserv-id this Postfix's milters would write
FORGED = f"Authentication-Results: {ARC_ID}; dkim=pass; dmarc=pass (forged)"


def dns_of(record: str) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy answering with the record `alliance dkim keygen` printed."""
    name, _, strings = record.partition(" IN TXT ")
    zone = {(name + ".").encode(): "".join(re.findall(r'"([^"]*)"', strings)).encode()}
    return lambda name, timeout=5: zone.get(name)


def rcpt_reply(port: int, sender: str, recipient: str) -> tuple[int, str]:
    """Postfix's answer to one RCPT TO, in a thread: the daemon answers the probe."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.party.example")
        client.mail(sender)
        code, text = client.rcpt(recipient)
    return code, text.decode()


def submit(port: int, sender: str, recipient: str, data: bytes) -> object:
    """Send one message over SMTP, in a thread: the daemon answers in the test's loop."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, [recipient], data)


def refusal_code(port: int, sender: str, recipient: str, data: bytes) -> int:
    """The code of the reply that ends a message's submission: 250, or the refusal's."""
    try:
        submit(port, sender, recipient, data)
    except smtplib.SMTPResponseException as error:
        return error.smtp_code
    return 250


def padded(sender: str, recipient: str, size: int) -> bytes:
    """A message of exactly `size` bytes, lines of 70 bytes with their CRLF."""
    head = len(mail(sender, recipient, "Minutes", "\n"))
    lines, rest = divmod(size - head, 70)
    data = mail(sender, recipient, "Minutes", ("x" * 68 + "\n") * lines + "y" * rest + "\n")
    assert len(data) == size
    return data


def clear_submission(port: int) -> tuple[int, str]:
    """MAIL FROM without STARTTLS at the daemon's smarthost port."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("somebody")
        code, text = client.mail("someone@party.example")
    return code, text.decode()


@dataclass
class Front:
    """A site with Postfix in front, as `alliance postfix` made it, not yet started."""

    config: Config
    postfix: Instance
    sink: Sink
    mx: int                 # Postfix's MX port
    submission: int         # Postfix's port for the daemon's mail
    record: str             # the DKIM record `alliance dkim keygen` printed
    people: list[str]


@pytest.fixture
async def front(tmp_path: Path, sqlite_url: str, sink: Sink, instance: Instance) -> Front:
    if NO_POSTFIX and not os.environ.get("CI"):
        pytest.skip(NO_POSTFIX)
    mx, lmtp, submission = free_port(), free_port(), free_port()
    pki = make_pki(tmp_path)
    site_file = site(tmp_path, f'[lmtp]\nlisten = "127.0.0.1:{lmtp}"\n[outbound]\n'
                               f'url = "smtp://127.0.0.1:{submission}?starttls=required"\n'
                               f'[intake]\nmax_message_size = {LIMIT}\n'
                               f'[arc]\nauthserv_id = "{ARC_ID}"\n')
    record = cli(site_file, "dkim", "keygen", "--selector", "2026p").strip().splitlines()[-1]
    config = make_config(tmp_path, sqlite_url, lmtp={"listen": f"127.0.0.1:{lmtp}"},
                         outbound={"url": f"smtp://127.0.0.1:{submission}?starttls=required",
                                   "tls_ca_file": str(pki.ca)},
                         dkim={"selector": "2026p"}, intake={"max_message_size": LIMIT},
                         arc={"authserv_id": ARC_ID})
    people = ["ana@party.example", "bo@union.example", "cy@ngo.example"]
    make_list(config, "steering", people)

    def lines(part: str) -> str:
        tls = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
        return printed(site_file, "postfix", "--part", part, *tls)

    instance.write(instance.main_cf(sink.port) + lines("main.cf"),
                   f"127.0.0.1:{mx} inet n - n - - smtpd\n{SERVICES}{lines('master.cf')}",
                   lines("transport"))
    return Front(config, instance, sink, mx, submission, record, people)


async def test_postfix_in_front_relays_to_our_lmtp_verifies_and_is_our_smarthost(
        front: Front) -> None:
    # Postfix knows every parameter printed, in main.cf and in master.cf's -o options, and
    # of Debian's main.cf our lines set only the certificate again.
    warnings = {line.partition(": warning: ")[2] for line in
                (await front.postfix.command("postconf", "-n")).splitlines()
                if ": warning: " in line}
    assert {re.sub(r"^.*overriding earlier entry: (\w+)=.*$", r"\1", warning)
            for warning in warnings} == OVERRIDDEN, warnings
    async with front.postfix.started() as postfix:
        async with running(front.config):
            await unknown_addresses_are_refused_at_rcpt(front)
            await nothing_is_taken_in_clear_at_the_smarthost_port(front)
            await a_post_goes_through_postfix_and_back(front)
            await the_largest_post_postfix_takes_is_distributed(front)
            await postfix.drained()
        await with_the_daemon_stopped_postfix_says_try_later(front)
    received = front.sink.received
    assert len(received) == 2 * len(front.people), "nothing else (no bounce) came out"
    copies, large = received[:len(front.people)], received[len(front.people):]
    for batch, subject in ((copies, "[steering] Agenda"), (large, "[steering] Minutes")):
        assert sorted(copy.rcpt for copy in batch) == sorted(front.people)
        for copy in batch:
            check_copy(copy, subject, front.record)
    assert all(len(copy.data) > LIMIT for copy in large)


async def unknown_addresses_are_refused_at_rcpt(front: Front) -> None:
    """An address our LMTP does not know is refused by Postfix, at RCPT, with our words."""
    code, text = await asyncio.to_thread(rcpt_reply, front.mx, front.people[0],
                                         f"nobody@{DOMAIN}")
    assert code == 550, text
    assert "Recipient address rejected: undeliverable address" in text
    assert "said: 550 5.1.1" in text


async def nothing_is_taken_in_clear_at_the_smarthost_port(front: Front) -> None:
    code, text = await asyncio.to_thread(clear_submission, front.submission)
    assert code == 530 and "STARTTLS" in text, text


async def a_post_goes_through_postfix_and_back(front: Front) -> None:
    """Postfix -> our LMTP -> fan-out -> Postfix over STARTTLS -> the sink; and the copies'
    envelope sender, where their bounces come back (steering-bounces+TOKEN@), is an address
    Postfix verifies whole against our LMTP, and takes. The post's forged results with
    Postfix's authserv-id are removed by Postfix (header_checks), so no ARC set vouches
    for them (no milter here writes real ones)."""
    sender = front.people[0]
    post = FORGED.encode() + b"\r\n" + mail(sender, LIST, "Agenda", "See you.\n")
    assert await asyncio.to_thread(submit, front.mx, sender, LIST, post) == {}
    [first, *_] = await front.sink.wait_for(len(front.people), timeout=60)
    assert await asyncio.to_thread(rcpt_reply, front.mx, "", first.mail_from) == (
        250, "2.1.5 Ok")


async def the_largest_post_postfix_takes_is_distributed(front: Front) -> None:
    """Both limits are LIMIT bytes, and Postfix counts more than it hands our LMTP. The
    copies, bigger still (our headers, footer, signature), pass the submission service,
    which has no limit."""
    sender, size = front.people[0], LIMIT + 1
    while (code := await asyncio.to_thread(refusal_code, front.mx, sender, LIST,
                                           padded(sender, LIST, size))) == 552:
        size -= 50
    assert code == 250 and LIMIT - 2000 < size <= LIMIT, (code, size)
    await front.sink.wait_for(2 * len(front.people), timeout=60)


async def with_the_daemon_stopped_postfix_says_try_later(front: Front) -> None:
    """No answer from our LMTP is no verdict: 450, and the sender tries again."""
    code, text = await asyncio.to_thread(rcpt_reply, front.mx, front.people[0],
                                         f"steering-join@{DOMAIN}")
    assert code == 450, text
    assert "unverified address: connect to 127.0.0.1" in text and "Connection refused" in text


def check_copy(copy: Delivered, subject: str, record: str) -> None:
    """A list copy as the world gets it from Postfix: our headers, a DKIM signature that
    verifies, and Postfix's word that we handed it over TLS."""
    message = copy.message
    assert message["Subject"] == subject
    assert message["List-Id"] and f"steering.{DOMAIN}" in message["List-Id"]
    assert message["List-Unsubscribe"].startswith("<https://")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert copy.mail_from.startswith("steering-bounces+")
    assert dkim.DKIM(copy.data).verify(dnsfunc=dns_of(record))
    assert b"(forged)" not in copy.data and b"ARC-Seal:" not in copy.data
    received = message.get_all("Received")
    # The newest first: Postfix took the copy from us over TLS; before it, our intake
    # took the post by LMTP from Postfix, which took it over SMTP from the poster.
    assert "by mx.postfix.test (Postfix) with ESMTPS" in received[0], received[0]
    assert "(using TLSv1.3 with cipher" in received[0], received[0]
    assert "with LMTP" in received[1], received[1]
    assert "by mx.postfix.test (Postfix) with ESMTP " in received[2], received[2]
