"""Run it under systemd (issue 12, item 6): the unit in deploy/ is valid and agrees with the
daemon's graceful stop, and `systemctl reload` (SIGHUP) renews the listener's certificate."""

from __future__ import annotations

import asyncio
import configparser
import inspect
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from mailer import router, workers
from mailer.config import OutboundSection
from mailer.daemon import Daemon
from tests.helpers import DOMAIN, Pki, free_port, make_pki

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "alliance-mail.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_systemd_analyze_verify_finds_nothing_wrong(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: the systemd package)")
    # The unit names the production path of the program; here it is checked against one
    # that exists, since `verify` also checks that the program can be run.
    text = UNIT.read_text().replace("/opt/alliance-mail/.venv/bin/alliance", sys.executable)
    (tmp_path / UNIT.name).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / UNIT.name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_the_unit_runs_serve_as_its_user_and_waits_for_the_graceful_stop() -> None:
    service = unit()["Service"]
    assert service["User"] == "alliance"
    assert service["ExecStart"].endswith(" --config /etc/alliance-mail/config.toml serve")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["ReadWritePaths"] == service["WorkingDirectory"] == "/var/lib/alliance-mail"
    # What a stop may take at worst: the drain of intake, the router's grace, the
    # workers' end, and a reply from the smarthost to a message on the wire.
    drain = inspect.signature(Daemon.stop).parameters["grace"].default
    longest = drain + router.STOP_GRACE + workers.STOP_WAIT + OutboundSection().timeout
    assert longest < int(service["TimeoutStopSec"]) <= longest + 60


def served_certificate(port: int) -> bytes:
    """The certificate the SMTP listener shows after STARTTLS (DER)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=context)
        found = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert found is not None
    return found


def der(pki: Pki) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pki.cert.read_text())


async def line_with(stream: asyncio.StreamReader, text: str) -> str:
    while True:
        line = (await asyncio.wait_for(stream.readline(), 30)).decode()
        assert line, f"the daemon ended before saying {text!r}"
        if text in line:
            return line


async def test_sighup_renews_the_listener_certificate_and_keeps_it_when_the_new_is_bad(
        tmp_path: Path) -> None:
    for folder in ("a", "b", "live"):
        (tmp_path / folder).mkdir()
    first, second = make_pki(tmp_path / "a"), make_pki(tmp_path / "b")
    live = tmp_path / "live"
    shutil.copy(first.cert, live / "cert.pem")
    shutil.copy(first.key, live / "key.pem")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[site]\ndomain = "{DOMAIN}"\nadmin = "admin@site.test"\n'
                      '[database]\nurl = "sqlite:///alliance.sqlite3"\n'
                      f'[smtp]\nlisten = "127.0.0.1:{port}"\ntls_cert = "live/cert.pem"\n'
                      'tls_key = "live/key.pem"\n[lmtp]\nlisten = ""\n[http]\nlisten = ""\n'
                      '[router]\nprocesses = 0\n')
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailer", "--config", str(config), "serve",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert daemon.stdout is not None and daemon.stderr is not None
    try:
        await line_with(daemon.stdout, "serving")
        assert await asyncio.to_thread(served_certificate, port) == der(first)

        shutil.copy(second.cert, live / "cert.pem")     # the certificate was renewed
        shutil.copy(second.key, live / "key.pem")
        daemon.send_signal(signal.SIGHUP)
        await line_with(daemon.stderr, "reload: the SMTP listener's certificate was read")
        assert await asyncio.to_thread(served_certificate, port) == der(second)

        (live / "key.pem").write_text("not a key\n")     # a renewal gone wrong
        daemon.send_signal(signal.SIGHUP)
        error = await line_with(daemon.stderr, "reload: ")
        assert "ERROR" in error and "the certificate in use is kept" in error
        assert await asyncio.to_thread(served_certificate, port) == der(second)
    finally:
        daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), 60)
    assert daemon.returncode == 0
