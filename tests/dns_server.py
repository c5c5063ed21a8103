"""A real DNS server on loopback UDP for tests, answering TXT from a dict the test controls.

Built with dnslib and run in the test's own event loop, so the code under test talks DNS
over a socket exactly as it does in production; nothing in the resolver is patched.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord


@dataclass
class DnsServer:
    """Answers `txt[name]` (a list of records) for TXT queries; NXDOMAIN for other names.

    `silent` makes it read queries and answer none (a server that times out);
    `servfail` makes it answer SERVFAIL; `queries` counts the names asked.
    """

    txt: dict[str, list[str]] = field(default_factory=dict)
    silent: bool = False
    servfail: bool = False
    queries: Counter[str] = field(default_factory=Counter)
    port: int = 0
    transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dmarc(self, domain: str, record: str) -> None:
        """Publish `record` at `_dmarc.<domain>`."""
        self.txt[f"_dmarc.{domain}"] = [record]

    def answer(self, packet: bytes) -> bytes | None:
        request = DNSRecord.parse(packet)
        name = str(request.q.qname).rstrip(".").lower()
        self.queries[name] += 1
        if self.silent:
            return None
        reply = request.reply()
        if self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
        elif name not in self.txt:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for record in self.txt[name]:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(record), ttl=60))
        return bytes(reply.pack())

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=("127.0.0.1", self.port))
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
