"""TLS both ways (issue 12, item 3): STARTTLS on the SMTP listener with a certificate the
test makes, and the smarthost reached over STARTTLS or smtps:// with AUTH, its credentials
read from a file or the environment, never from the config."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import smtplib
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from sqlalchemy import func, select

from mailer.config import ConfigError, from_dict
from mailer.models import Delivery, Message
from mailer.tls import Credentials, credentials
from tests.helpers import (
    DOMAIN,
    Pki,
    Sink,
    invoke,
    mail,
    make_config,
    make_list,
    make_pki,
    members,
    running,
    send,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"
USER, PASSWORD = "alliance", "correct horse battery staple"


# -- certificates the test makes ---------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- a smarthost with TLS and AUTH -------------------------------------------------------

@dataclass
class SecureSink(Sink):
    """The recording smarthost, offering STARTTLS (or speaking TLS from the first byte)
    and, when `password` is set, taking mail only after AUTH over TLS."""

    tls: ssl.SSLContext | None = None
    implicit: bool = False
    password: str = ""
    sessions: int = 0                                  # connections the daemon opened
    encrypted: list[bool] = field(default_factory=list)   # per delivery: over TLS?
    logins: list[str] = field(default_factory=list)

    def authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str,
                     data: Any) -> AuthResult:
        good = (isinstance(data, LoginPassword) and data.login.decode() == USER
                and data.password.decode() == self.password)
        if good:
            self.logins.append(USER)
        return AuthResult(success=good, handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        assert server.transport is not None
        for _ in envelope.rcpt_tos:
            self.encrypted.append(server.transport.get_extra_info("sslcontext") is not None)
        return await super().handle_DATA(server, session, envelope)

    def session(self) -> SMTP:
        self.sessions += 1
        return SMTP(self, hostname="sink.test",
                    tls_context=None if self.implicit else self.tls,
                    authenticator=self.authenticate if self.password else None,
                    auth_required=bool(self.password),
                    # aiosmtpd sees no STARTTLS on an smtps:// session, which is TLS all along
                    auth_require_tls=not self.implicit)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self.session, "127.0.0.1", self.port,
            ssl=self.tls if self.implicit else None)
        self.port = self.server.sockets[0].getsockname()[1]


@pytest.fixture
async def secure_sink(pki: Pki) -> AsyncIterator[SecureSink]:
    smarthost = SecureSink(tls=pki.server_context(), password=PASSWORD)
    await smarthost.start()
    yield smarthost
    await smarthost.stop()


def auth_file(folder: Path, text: str = f"{USER}:{PASSWORD}\n", mode: int = 0o600) -> Path:
    path = folder / "smarthost.auth"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def no_credentials_in_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("ALLIANCE_SMARTHOST_USER", raising=False)
    monkeypatch.delenv("ALLIANCE_SMARTHOST_PASSWORD", raising=False)
    yield


async def wait_for_errors(daemon: Any, count: int, timeout: float = 15.0) -> list[str]:
    """The errors of `count` deliveries, once each has been tried and deferred."""
    deadline = time.monotonic() + timeout
    while True:
        rows = daemon.db.query(lambda s: s.execute(
            select(Delivery.state, Delivery.code, Delivery.error)).all())
        tried = [error for state, code, error in rows
                 if state in ("pending", "sending") and code == 451 and error]
        if len(tried) >= count:
            assert all(state != "failed" for state, _, _ in rows), rows
            return tried
        assert time.monotonic() < deadline, f"deliveries not deferred: {rows}"
        await asyncio.sleep(0.05)


# -- the listener ------------------------------------------------------------------------

def tls_config(tmp_path: Path, sqlite_url: str, pki: Pki, sink: Sink, **smtp: Any) -> Any:
    return make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                       smtp={"tls_cert": str(pki.cert), "tls_key": str(pki.key), **smtp})


def stored(daemon: Any) -> int:
    return int(daemon.db.query(lambda s: s.scalar(select(func.count()).select_from(Message))))


async def test_a_client_does_starttls_and_its_message_is_committed(
        tmp_path: Path, sqlite_url: str, pki: Pki, sink: Sink) -> None:
    config = tls_config(tmp_path, sqlite_url, pki, sink)
    make_list(config, "steering", ["bo@party.example"])
    async with running(config) as daemon:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.ports["smtp"],
                                   start_tls=True, tls_context=pki.client_context(),
                                   timeout=10) as client:
            assert client.get_transport_info("sslcontext") is not None
            _, reply = await client.sendmail("bo@party.example", [LIST],
                                             mail("bo@party.example", LIST, "Over TLS"))
        assert reply.startswith("2.0.0 Ok")
        assert stored(daemon) == 1
        [post] = await wait_quiet(sink, 1)
    assert post.message["Subject"] == "[steering] Over TLS"
    assert " with ESMTPS; " in str(post.message["Received"])     # RFC 3848


async def test_starttls_is_offered_but_optional_by_default(
        tmp_path: Path, sqlite_url: str, pki: Pki, sink: Sink) -> None:
    config = tls_config(tmp_path, sqlite_url, pki, sink)
    make_list(config, "steering", ["bo@party.example"])

    def in_clear(port: int) -> bool:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.party.example")
            client.sendmail("bo@party.example", [LIST], mail("bo@party.example", LIST))
            return client.has_extn("starttls")

    async with running(config) as daemon:
        assert await asyncio.to_thread(in_clear, daemon.ports["smtp"])
        assert stored(daemon) == 1


async def test_require_tls_refuses_mail_until_starttls(
        tmp_path: Path, sqlite_url: str, pki: Pki, sink: Sink) -> None:
    config = tls_config(tmp_path, sqlite_url, pki, sink, require_tls=True)
    make_list(config, "steering", ["bo@party.example"])
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                                   timeout=10) as client:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await client.sendmail("bo@party.example", [LIST], mail("bo@party.example",
                                                                       LIST))
        assert refused.value.code == 530
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                                   tls_context=pki.client_context(), timeout=10) as client:
            await client.sendmail("bo@party.example", [LIST], mail("bo@party.example", LIST))
        assert stored(daemon) == 1


async def test_starttls_sessions_count_once_against_the_per_client_cap(
        tmp_path: Path, sqlite_url: str, pki: Pki, sink: Sink) -> None:
    """A session that does STARTTLS is made again by aiosmtpd (RFC 3207 §4.2); it must not
    count as a second session of its client, or a busy client would be locked out."""
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         smtp={"tls_cert": str(pki.cert), "tls_key": str(pki.key)},
                         intake={"max_connections_per_client": 2})
    make_list(config, "steering", ["bo@party.example"])
    async with running(config) as daemon:
        for _ in range(5):
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.ports["smtp"],
                                       start_tls=True, tls_context=pki.client_context(),
                                       timeout=10) as client:
                await client.sendmail("bo@party.example", [LIST],
                                      mail("bo@party.example", LIST))
        await wait_quiet(sink, 5)
        assert stored(daemon) == 5
        assert not daemon.gate.sessions and not daemon.gate.clients


@pytest.mark.skipif(shutil.which("swaks") is None and not os.environ.get("CI"),
                    reason="swaks is not installed (apt-get install swaks); CI installs it")
async def test_swaks_with_tls(tmp_path: Path, sqlite_url: str, pki: Pki, sink: Sink) -> None:
    config = tls_config(tmp_path, sqlite_url, pki, sink, require_tls=True)
    make_list(config, "steering", ["bo@party.example"])
    async with running(config) as daemon:
        process = await asyncio.create_subprocess_exec(
            "swaks", "--server", f"127.0.0.1:{daemon.ports['smtp']}", "--tls",
            "--tls-verify", "--tls-ca-path", str(pki.ca), "--tls-sni", "localhost",
            "--from", "bo@party.example", "--to", LIST, "--helo", "client.party.example",
            "--header", "Subject: swaks over TLS",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        said = output.decode()
        assert process.returncode == 0, said
        assert "<-  220 Ready to start TLS" in said and "TLS started" in said
        assert "<~  250 2.0.0 Ok: queued" in said
        [post] = await wait_quiet(sink, 1)
    assert post.message["Subject"] == "[steering] swaks over TLS"


@pytest.mark.parametrize(("smtp", "message"), [
    ({"tls_cert": "missing.pem"}, "smtp.tls_cert: cannot read {folder}/missing.pem: "
                                  "No such file or directory"),
    ({"tls_cert": "{cert}", "tls_key": "missing-key.pem"},
     "smtp.tls_key: cannot read {folder}/missing-key.pem: No such file or directory"),
    ({"tls_cert": "{cert}", "tls_key": "{ca}"},
     "smtp.tls_cert: {cert} and {ca} are not a PEM certificate and its private key, "
     "without a passphrase"),
])
def test_a_certificate_that_cannot_be_used_stops_serve_in_one_line(
        tmp_path: Path, pki: Pki, smtp: dict[str, str], message: str) -> None:
    values = {key: value.format(cert=pki.cert, ca=pki.ca) for key, value in smtp.items()}
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "sqlite:///a.sqlite3"\n[lmtp]\nlisten = ""\n'
                      '[http]\nlisten = ""\n[smtp]\nlisten = "127.0.0.1:0"\n'
                      + "".join(f'{key} = "{value}"\n' for key, value in values.items()))
    result = invoke(config, "serve")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    expected = "Error: config: " + message.format(folder=tmp_path, cert=pki.cert, ca=pki.ca)
    assert lines[0].startswith(expected), lines[0]


@pytest.mark.parametrize(("data", "message"), [
    ({"smtp": {"tls_key": "key.pem"}},
     "smtp.tls_key: set smtp.tls_cert too (the certificate of that key)"),
    ({"smtp": {"require_tls": True}},
     "smtp.require_tls: set smtp.tls_cert and smtp.tls_key first"),
    ({"outbound": {"url": "smtp://alliance:s3cret@relay.example.org:587"}},
     "outbound.url: no user or password in the URL: put user:password in the file "
     "outbound.auth_file names (mode 600), or set $ALLIANCE_SMARTHOST_USER and "
     "$ALLIANCE_SMARTHOST_PASSWORD"),
    ({"outbound": {"url": "smtp://relay.example.org?starttls=yes"}},
     "outbound.url: expected smtp://host:port, optionally with ?starttls=required, or "
     "smtps://host:port; got 'smtp://relay.example.org?starttls=yes'"),
    ({"outbound": {"url": "smtps://relay.example.org?starttls=required"}},
     "outbound.url: expected smtp://host:port, optionally with ?starttls=required, or "
     "smtps://host:port; got 'smtps://relay.example.org?starttls=required'"),
])
def test_tls_settings_are_checked_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_dict(data)
    assert str(error.value) == message
    assert "s3cret" not in str(error.value)


# -- credentials -------------------------------------------------------------------------

def test_credentials_come_from_the_auth_file_or_the_environment(tmp_path: Path) -> None:
    assert credentials(None, {}) is None
    assert credentials(auth_file(tmp_path), {}) == Credentials(USER, PASSWORD)
    assert credentials(auth_file(tmp_path, "me@x.org:pa:ss\n", 0o640), {}) == \
        Credentials("me@x.org", "pa:ss")
    assert credentials(None, {"ALLIANCE_SMARTHOST_USER": USER,
                              "ALLIANCE_SMARTHOST_PASSWORD": PASSWORD}) == \
        Credentials(USER, PASSWORD)
    assert PASSWORD not in repr(Credentials(USER, PASSWORD))


@pytest.mark.parametrize(("text", "mode", "environ", "message"), [
    (f"{USER}:{PASSWORD}\n", 0o644, {},
     "outbound.auth_file: {path} is open to every user (mode 0644): chmod 600 {path}"),
    (PASSWORD, 0o600, {}, "outbound.auth_file: {path} must hold one line, user:password"),
    (f"{USER}:{PASSWORD}\n", 0o600, {"ALLIANCE_SMARTHOST_PASSWORD": PASSWORD},
     "outbound.auth_file: $ALLIANCE_SMARTHOST_USER or $ALLIANCE_SMARTHOST_PASSWORD is set "
     "too: keep one place for the credentials"),
    (None, 0, {"ALLIANCE_SMARTHOST_PASSWORD": PASSWORD},
     "$ALLIANCE_SMARTHOST_USER is not set: the smarthost's AUTH needs "
     "$ALLIANCE_SMARTHOST_USER and $ALLIANCE_SMARTHOST_PASSWORD both"),
], ids=["world-readable", "no-user", "file-and-environment", "half-in-environment"])
def test_credentials_that_cannot_be_used_are_one_line(
        tmp_path: Path, text: str | None, mode: int, environ: dict[str, str],
        message: str) -> None:
    path = auth_file(tmp_path, text, mode) if text is not None else None
    with pytest.raises(ConfigError) as error:
        credentials(path, environ)
    assert str(error.value) == message.format(path=path)
    assert PASSWORD not in str(error.value)


def test_a_world_readable_auth_file_stops_serve_in_one_line(tmp_path: Path) -> None:
    path = auth_file(tmp_path, mode=0o604)
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "sqlite:///a.sqlite3"\n[smtp]\nlisten = ""\n'
                      '[lmtp]\nlisten = ""\n[http]\nlisten = ""\n[outbound]\n'
                      'url = "smtp://127.0.0.1:25"\nauth_file = "smarthost.auth"\n')
    result = invoke(config, "serve")
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: config: outbound.auth_file: {path} is open to "
                                      f"every user (mode 0604): chmod 600 {path}")


# -- the smarthost -----------------------------------------------------------------------

def smarthost_config(tmp_path: Path, sqlite_url: str, pki: Pki, url: str,
                     **outbound: Any) -> Any:
    return make_config(tmp_path, sqlite_url, smtp={"listen": "127.0.0.1:0"},
                       outbound={"url": url, "tls_ca_file": str(pki.ca), **outbound})


@pytest.mark.usefixtures("no_credentials_in_environment")
async def test_mail_goes_out_over_starttls_with_auth_on_reused_connections(
        tmp_path: Path, sqlite_url: str, pki: Pki, secure_sink: SecureSink) -> None:
    config = smarthost_config(tmp_path, sqlite_url, pki,
                              f"smtp://localhost:{secure_sink.port}?starttls=required",
                              auth_file=str(auth_file(tmp_path)))
    people = members(40)
    make_list(config, "steering", people)
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], people[0], [LIST], mail(people[0], LIST))
        await wait_quiet(secure_sink, 40)
        # A second post goes out on the connections the first one opened.
        await send(daemon.ports["smtp"], people[1], [LIST], mail(people[1], LIST))
        await wait_quiet(secure_sink, 80)
    assert secure_sink.encrypted == [True] * 80
    connections = config.outbound.connections
    assert secure_sink.sessions <= connections
    assert secure_sink.logins == [USER] * secure_sink.sessions


async def test_credentials_from_the_environment(
        tmp_path: Path, sqlite_url: str, pki: Pki, secure_sink: SecureSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLIANCE_SMARTHOST_USER", USER)
    monkeypatch.setenv("ALLIANCE_SMARTHOST_PASSWORD", PASSWORD)
    config = smarthost_config(tmp_path, sqlite_url, pki, f"smtp://127.0.0.1:{secure_sink.port}")
    make_list(config, "steering", ["bo@party.example"])
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "bo@party.example", [LIST],
                   mail("bo@party.example", LIST))
        await wait_quiet(secure_sink, 1)
    assert secure_sink.encrypted == [True] and secure_sink.logins == [USER]


@pytest.mark.usefixtures("no_credentials_in_environment")
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_mail_goes_out_over_smtps(tmp_path: Path, sqlite_url: str, pki: Pki) -> None:
    smarthost = SecureSink(tls=pki.server_context(), implicit=True, password=PASSWORD)
    await smarthost.start()
    try:
        config = smarthost_config(tmp_path, sqlite_url, pki,
                                  f"smtps://localhost:{smarthost.port}",
                                  auth_file=str(auth_file(tmp_path)))
        make_list(config, "steering", members(5))
        async with running(config) as daemon:
            await send(daemon.ports["smtp"], members(1)[0], [LIST], mail(members(1)[0], LIST))
            await wait_quiet(smarthost, 5)
    finally:
        await smarthost.stop()
    assert smarthost.encrypted == [True] * 5
    assert smarthost.logins == [USER] * smarthost.sessions


@pytest.mark.usefixtures("no_credentials_in_environment")
async def test_required_starttls_against_a_smarthost_without_it_defers(
        tmp_path: Path, sqlite_url: str, pki: Pki, sink: Sink,
        caplog: pytest.LogCaptureFixture) -> None:
    config = smarthost_config(tmp_path, sqlite_url, pki,
                              f"smtp://127.0.0.1:{sink.port}?starttls=required")
    make_list(config, "steering", members(3))
    caplog.set_level(logging.WARNING, logger="mailer.transport")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], members(1)[0], [LIST], mail(members(1)[0], LIST))
        errors = await wait_for_errors(daemon, 3)
    assert sink.received == []
    said = (f"smarthost 127.0.0.1:{sink.port} offers no STARTTLS and the URL says "
            "starttls=required: nothing is sent in clear")
    assert set(errors) == {said}
    assert [r.getMessage() for r in caplog.records
            if r.name == "mailer.transport"] == [f"{said}; deliveries are deferred"]


@pytest.mark.usefixtures("no_credentials_in_environment")
async def test_a_wrong_password_defers_with_a_clear_line(
        tmp_path: Path, sqlite_url: str, pki: Pki, secure_sink: SecureSink,
        caplog: pytest.LogCaptureFixture) -> None:
    config = smarthost_config(tmp_path, sqlite_url, pki, f"smtp://localhost:{secure_sink.port}",
                              auth_file=str(auth_file(tmp_path, f"{USER}:wrong\n")))
    make_list(config, "steering", members(3))
    caplog.set_level(logging.WARNING, logger="mailer.transport")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], members(1)[0], [LIST], mail(members(1)[0], LIST))
        errors = await wait_for_errors(daemon, 3)
    assert secure_sink.received == [] and secure_sink.logins == []
    said = (f"smarthost localhost:{secure_sink.port} refused AUTH as 'alliance' (535 5.7.8 "
            "Authentication credentials invalid): check the credentials")
    assert set(errors) == {said}
    assert [r.getMessage() for r in caplog.records
            if r.name == "mailer.transport"] == [f"{said}; deliveries are deferred"]


@pytest.mark.usefixtures("no_credentials_in_environment")
async def test_a_password_is_never_sent_in_clear(
        tmp_path: Path, sqlite_url: str, pki: Pki, sink: Sink) -> None:
    config = smarthost_config(tmp_path, sqlite_url, pki, f"smtp://127.0.0.1:{sink.port}",
                              auth_file=str(auth_file(tmp_path)))
    make_list(config, "steering", members(2))
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], members(1)[0], [LIST], mail(members(1)[0], LIST))
        errors = await wait_for_errors(daemon, 2)
    assert sink.received == []
    assert set(errors) == {f"smarthost 127.0.0.1:{sink.port} offers no STARTTLS: the AUTH "
                           "password is not sent in clear"}


@pytest.mark.usefixtures("no_credentials_in_environment")
async def test_a_certificate_that_does_not_check_defers(
        tmp_path: Path, sqlite_url: str, pki: Pki) -> None:
    """Opportunistic STARTTLS still checks the certificate: without our CA it fails, and
    nothing is sent (in clear or otherwise); tls_verify = false encrypts without checking."""
    smarthost = SecureSink(tls=pki.server_context())
    await smarthost.start()
    try:
        config = make_config(tmp_path, sqlite_url, smarthost_port=smarthost.port)
        make_list(config, "steering", members(2))
        async with running(config) as daemon:
            await send(daemon.ports["smtp"], members(1)[0], [LIST], mail(members(1)[0], LIST))
            errors = await wait_for_errors(daemon, 2)
        assert smarthost.received == []
        assert "failed the TLS certificate check" in errors[0]
        assert "give its CA in outbound.tls_ca_file" in errors[0]
        unchecked = make_config(tmp_path, sqlite_url, smarthost_port=smarthost.port,
                                outbound={"tls_verify": False})
        async with running(unchecked):
            await wait_quiet(smarthost, 2)
    finally:
        await smarthost.stop()
    assert smarthost.encrypted == [True, True]


@pytest.mark.usefixtures("no_credentials_in_environment")
async def test_a_smarthost_that_refuses_the_session_defers_rather_than_bounces(
        tmp_path: Path, sqlite_url: str, pki: Pki) -> None:
    """A 554 greeting is about the connection, not the recipient (RFC 5321 §3.1)."""
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.3.2 relay.test not accepting mail now\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = smarthost_config(tmp_path, sqlite_url, pki, f"smtp://127.0.0.1:{port}")
        make_list(config, "steering", members(2))
        async with running(config) as daemon:
            await send(daemon.ports["smtp"], members(1)[0], [LIST], mail(members(1)[0], LIST))
            errors = await wait_for_errors(daemon, 2)
    finally:
        server.close()
    assert set(errors) == {f"smarthost 127.0.0.1:{port} refused the session: 554 5.3.2 "
                           "relay.test not accepting mail now"}
