"""TLS both ways (issue 12, item 3): STARTTLS on the SMTP listener with a certificate the
test makes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import smtplib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from mailer.config import ConfigError, from_dict
from mailer.models import Message
from tests.helpers import (
    DOMAIN,
    Sink,
    invoke,
    mail,
    make_config,
    make_list,
    running,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"


# -- certificates the test makes ---------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    """A private CA and a certificate it signed for localhost and 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(folder: Path) -> Pki:
    """A CA, and a server certificate it signed (cryptography's x509 builder)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Alliance test CA"))
          .issuer_name(_name("Alliance test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


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
])
def test_tls_settings_are_checked_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_dict(data)
    assert str(error.value) == message
