"""The DMARC records: a small authoritative DNS server on the loopback, in a thread."""

from __future__ import annotations

import collections
import contextlib
import socket
import struct
import threading
import time

from .common import LOOPBACK

# The posters' domain publishes p=reject: every list copy goes out From the list
# (lists/dmarc.py), the expensive path. Any other name is NXDOMAIN.
DMARC_ZONE: dict[str, tuple[str, ...]] = {"_dmarc.members.test": ("v=DMARC1; p=reject",)}
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
        answers = [txt_record(text, ttl) for text in records]
    rcode = DNS_NXDOMAIN if records is None else 0
    # QR, the query's opcode and RD, AA: this server is the authority for what it says.
    header = struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7900) | 0x0400 | rcode,
                         1, len(answers), 0, 0)
    return header + query[12:end] + b"".join(answers)


def txt_record(text: str, ttl: int) -> bytes:
    """One TXT answer for the name in the question, its text in strings of 255 at most."""
    raw = text.encode()
    rdata = b"".join(bytes([len(raw[i:i + 255])]) + raw[i:i + 255]
                     for i in range(0, len(raw), 255))
    # 0xC00C: a pointer to the name in the question (RFC 1035 §4.1.4).
    return struct.pack("!HHHIH", 0xC00C, DNS_TXT, 1, ttl, len(rdata)) + rdata


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
        self.port: int = self.sock.getsockname()[1]

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
        """Stop answering and close the socket (also if the thread never started)."""
        self.halt.set()
        if self.is_alive():
            self.join(5)
        else:
            self.sock.close()
