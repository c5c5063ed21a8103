"""Postfix in front (issue 12, item 4): the lines `alliance postfix` prints for Postfix.

Inbound, Postfix is the MX of the list domain: it relays the domain's mail to our LMTP
listener, and refuses at RCPT what our LMTP refuses at RCPT, by asking it (address
verification, Postfix's ADDRESS_VERIFICATION_README). Outbound, Postfix is our smarthost:
a submission service on a loopback port that takes our DKIM-signed copies over TLS and
changes nothing in them. Each line comes with a comment saying why it is there, since an
operator merges them into a Postfix that has its own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mailer.arc import configured_authserv_id
from mailer.config import Config, ConfigError, parse_listen, parse_smarthost

PARTS = ("main.cf", "master.cf", "transport")

# Where the daemon's smarthost listens when outbound.url does not already name a port of
# this machine: a loopback port no usual service takes (25, 465 and 587 face the world).
SUBMISSION = "127.0.0.1:10587"

# Debian's own certificate (package ssl-cert), which its main.cf names too.
DEBIAN_CERT = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
DEBIAN_KEY = "/etc/ssl/private/ssl-cert-snakeoil.key"


@dataclass(frozen=True)
class Setup:
    """What the Postfix lines are made of, read from the daemon's config."""

    domain: str
    lmtp: str                   # Postfix's name of our LMTP listener: inet:host:port
    max_message_size: int
    max_recipients: int
    submission: str             # host:port of the smarthost service for our outbound
    implicit_tls: bool          # outbound.url is smtps://: TLS from the first byte
    tls_cert: str
    tls_key: str
    arc_id: str = ""            # arc.authserv_id: results with it from outside are removed

    @property
    def outbound_url(self) -> str:
        """The outbound.url that sends the daemon's mail through this Postfix."""
        if self.implicit_tls:
            return f"smtps://{self.submission}"
        return f"smtp://{self.submission}?starttls=required"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _postfix_host(host: str) -> str:
    """A listener's host as Postfix connects to it: a wildcard is reached on loopback.

    >>> _postfix_host("0.0.0.0"), _postfix_host("::"), _postfix_host("127.0.0.1")
    ('127.0.0.1', '[::1]', '127.0.0.1')
    """
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def setup(config: Config, tls_cert: str = "", tls_key: str = "") -> Setup:
    """The Postfix side of this config; ConfigError when it has no LMTP listener."""
    if not config.lmtp.listen:
        raise ConfigError('lmtp.listen is off: Postfix in front hands its mail to the LMTP '
                          'listener; set [lmtp] listen = "127.0.0.1:8024"')
    host, port = parse_listen(config.lmtp.listen, "lmtp.listen")
    submission, implicit = SUBMISSION, False
    if config.outbound.url.partition(":")[0].lower() in ("smtp", "smtps"):
        url = parse_smarthost(config.outbound.url)
        if _loopback(url.host):
            submission = f"{_postfix_host(url.host)}:{url.port}"
            implicit = url.implicit_tls
    if not tls_cert and config.smtp.tls_cert:
        tls_cert = str(config.path(config.smtp.tls_cert))
        tls_key = tls_key or (str(config.path(config.smtp.tls_key)) if config.smtp.tls_key
                              else tls_cert)
    return Setup(domain=config.site.domain, lmtp=f"inet:{_postfix_host(host)}:{port}",
                 max_message_size=config.intake.max_message_size,
                 max_recipients=config.intake.max_recipients,
                 submission=submission, implicit_tls=implicit,
                 tls_cert=tls_cert or DEBIAN_CERT,
                 tls_key=tls_key or (tls_cert if tls_cert else DEBIAN_KEY),
                 arc_id=configured_authserv_id(config))


def main_cf(s: Setup) -> str:
    """Lines for main.cf: the list domain relayed to our LMTP, verified, TLS, outbound,
    and with [arc], forged results removed."""
    return _main_cf(s) + (_arc_lines(s.arc_id) if s.arc_id else "")


def _arc_lines(authserv_id: str) -> str:
    """header_checks that remove Authentication-Results with our authserv-id arriving from
    outside (RFC 8601 §5), so that the daemon may trust those on top (mailer.arc)."""
    escaped = authserv_id.replace(".", "\\.")     # a host name: letters, digits, - and .
    # main.cf expands $NAME: the regexp's end of line is written $$.
    rule = f"/^Authentication-Results:[[:space:]]*{escaped}([[:space:];]|$$)/ IGNORE"
    return f"""
# -- ARC (arc.authserv_id): the daemon trusts the Authentication-Results with this
# authserv-id on top of a post, which your milters (OpenDKIM, OpenDMARC, rspamd) write with
# AuthservID {authserv_id}. Fields with it that arrive from outside are removed here:
# header_checks see the message as received, not the fields milters add.
header_checks = regexp:{{{{{rule}}}}}
"""


def _main_cf(s: Setup) -> str:
    return f"""\
# Alliance Mail for {s.domain}, from `alliance postfix`:
# lines for /etc/postfix/main.cf.
# A parameter set twice takes its last value: where you have one of these already, merge.

# -- Inbound: Postfix is the MX of {s.domain} and hands its mail to our LMTP listener.
# The list domain is a domain Postfix relays for, not a local one (keep it out of
# mydestination): Postfix keeps no mailboxes for it.
relay_domains = {s.domain}
# Where its mail goes: our LMTP listener (lmtp.listen), as the transport file says.
transport_maps = hash:$config_directory/transport
# Refuse at RCPT time what our LMTP refuses at RCPT time (550 5.1.1 for an unknown address),
# so that Postfix never takes a message it would then have to bounce (backscatter). Our
# addresses carry tokens (steering-confirm+TOKEN@), so no list of them can be written out for
# relay_recipient_maps: Postfix asks our LMTP instead, with a probe that ends at RCPT, and
# remembers the answer (reject_unverified_recipient). Only the list domain is probed, and
# for any client, this machine's too; then the usual relay control.
smtpd_recipient_restrictions =
    check_recipient_access inline:{{ {s.domain}=reject_unverified_recipient }},
    permit_mynetworks,
    reject_unauth_destination
# Our 550 is certain, not a guess: say 550 as well (Postfix's default, 450, would have the
# sender retry for days). While our daemon is down the probe gets no answer: then Postfix
# says 450, and the sender retries.
unverified_recipient_reject_code = 550
# Our LMTP answers at once: a first message to an address waits 1 s for the probe, not 3 s.
address_verify_poll_delay = 1s
# A refused address is asked again after 10 minutes (Postfix's default: 3 days), so that a
# list created after someone tried its address takes mail soon after.
address_verify_negative_expire_time = 10m
address_verify_negative_refresh_time = 10m
# What Postfix takes, our intake takes (intake.max_message_size): Postfix counts its whole
# queue file, never less than what it hands to our LMTP, so nothing it accepts is refused
# by us (552) afterwards.
message_size_limit = {s.max_message_size}
# No more recipients in one LMTP transaction than our intake takes (intake.max_recipients;
# 452 above it, and Postfix would try the rest later).
lmtp_destination_recipient_limit = {s.max_recipients}

# -- TLS: STARTTLS for the MX (RFC 3207) and for the daemon's submission service below.
smtpd_tls_cert_file = {s.tls_cert}
smtpd_tls_key_file = {s.tls_key}
smtpd_tls_security_level = may
# Received: fields say which hops were encrypted, and how.
smtpd_tls_received_header = yes

# -- Outbound: Postfix is the daemon's smarthost (the master.cf service).
# Our copies leave DKIM-signed: converting their 8-bit text to quoted-printable for a server
# that does not announce 8BITMIME would break the signature's body hash (and nearly every
# server announces it).
disable_mime_output_conversion = yes
"""


def master_cf(s: Setup) -> str:
    """Lines for master.cf: the daemon's submission service and its own cleanup."""
    if s.implicit_tls:
        tls, why = "smtpd_tls_wrappermode=yes", "TLS from the first byte (smtps://)"
    else:
        tls, why = "smtpd_tls_security_level=encrypt", "nothing is taken before STARTTLS"
    return f"""\
# Alliance Mail for {s.domain}, from `alliance postfix`:
# lines for /etc/postfix/master.cf.
# The daemon's smarthost; its config.toml says
#     [outbound]
#     url = "{s.outbound_url}"
# and, unless the certificate of smtpd_tls_cert_file names {s.submission.rpartition(":")[0]},
#     tls_verify = false
#
# On loopback only, and {why}:
# our mail never crosses in clear. Only this machine may send through it (its own
# mynetworks, whatever main.cf's says), to anywhere: the daemon writes to members everywhere.
# Our copies are DKIM-signed: no address mapping (canonical, virtual, masquerading), no
# header or body checks and no milter may change them. A copy is bigger than the post it
# carries (headers, footer, signature), a digest holds many posts: no size limit here, the
# receiving server has its own. Its own cleanup service, for the same limit, rewrites no
# header either.
{s.submission} inet n - n - - smtpd
  -o syslog_name=postfix/alliance
  -o {tls}
  -o mynetworks=127.0.0.0/8,[::1]/128
  -o smtpd_client_restrictions=permit_mynetworks,reject
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o receive_override_options=no_address_mappings,no_header_body_checks,no_milters
  -o message_size_limit=0
  -o cleanup_service_name=alliance-cleanup
alliance-cleanup unix n - n - 0 cleanup
  -o syslog_name=postfix/alliance
  -o message_size_limit=0
  -o local_header_rewrite_clients=
"""


def transport(s: Setup) -> str:
    """The transport table: the list domain goes to our LMTP listener."""
    return f"""\
# Alliance Mail for {s.domain}, from `alliance postfix`:
# /etc/postfix/transport (then: postmap /etc/postfix/transport). Mail for the list domain
# goes to our LMTP listener (lmtp.listen), with Postfix's lmtp delivery agent.
{s.domain} lmtp:{s.lmtp}
"""


RENDER = {"main.cf": main_cf, "master.cf": master_cf, "transport": transport}


def render(s: Setup, part: str | None = None) -> str:
    """One part, or all three one after another."""
    return "\n".join(RENDER[name](s) for name in ((part,) if part else PARTS))
