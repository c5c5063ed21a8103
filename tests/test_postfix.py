"""Postfix in front (issue 12, item 4): `alliance postfix` prints the lines, and a private
Postfix instance made from them relays, verifies and smarthosts for a running daemon."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import DOMAIN, cli, cli_error


def site(folder: Path, text: str) -> Path:
    path = folder / "config.toml"
    path.write_text(f'[site]\ndomain = "{DOMAIN}"\n{text}')
    return path


def test_the_lines_follow_the_config(tmp_path: Path) -> None:
    config = site(tmp_path, '[lmtp]\nlisten = "0.0.0.0:2424"\n'
                            '[intake]\nmax_message_size = 5000000\nmax_recipients = 40\n'
                            '[outbound]\nurl = "smtp://127.0.0.1:2587?starttls=required"\n')
    main = cli(config, "postfix", "--part", "main.cf")
    assert f"\nrelay_domains = {DOMAIN}\n" in main
    assert f"inline:{{ {DOMAIN}=reject_unverified_recipient }}" in main
    assert "\nunverified_recipient_reject_code = 550\n" in main
    assert "\nmessage_size_limit = 5000000\n" in main
    assert "\nlmtp_destination_recipient_limit = 40\n" in main
    assert "\nsmtpd_tls_cert_file = /etc/ssl/certs/ssl-cert-snakeoil.pem\n" in main
    # The listener on every address is reached on loopback.
    assert cli(config, "postfix", "--part", "transport").endswith(
        f"\n{DOMAIN} lmtp:inet:127.0.0.1:2424\n")
    master = cli(config, "postfix", "--part", "master.cf")
    assert "\n127.0.0.1:2587 inet n - n - - smtpd\n" in master
    assert "\n  -o smtpd_tls_security_level=encrypt\n" in master
    everything = cli(config, "postfix")
    assert everything == "\n".join((main, master, cli(config, "postfix", "--part", "transport")))


def test_smtps_asks_for_tls_from_the_first_byte_and_certificates_are_the_listeners(
        tmp_path: Path) -> None:
    config = site(tmp_path, '[smtp]\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n'
                            '[outbound]\nurl = "smtps://127.0.0.1:2465"\n')
    master = cli(config, "postfix", "--part", "master.cf")
    assert "\n127.0.0.1:2465 inet n - n - - smtpd\n" in master
    assert "\n  -o smtpd_tls_wrappermode=yes\n" in master
    main = cli(config, "postfix", "--part", "main.cf")
    assert f"\nsmtpd_tls_cert_file = {tmp_path}/tls/cert.pem\n" in main
    assert f"\nsmtpd_tls_key_file = {tmp_path}/tls/key.pem\n" in main


def test_a_smarthost_elsewhere_gets_a_loopback_port_and_a_note(tmp_path: Path) -> None:
    config = site(tmp_path, '[outbound]\nurl = "smtp://relay.example.net:587"\n')
    master = cli(config, "postfix", "--part", "master.cf")
    assert "\n127.0.0.1:10587 inet n - n - - smtpd\n" in master
    assert '#     url = "smtp://127.0.0.1:10587?starttls=required"\n' in master


def test_without_an_lmtp_listener_there_is_nothing_to_relay_to(tmp_path: Path) -> None:
    config = site(tmp_path, '[lmtp]\nlisten = ""\n')
    assert "lmtp.listen is off" in cli_error(config, "postfix")
