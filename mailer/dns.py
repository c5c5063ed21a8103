"""DNS look-ups for the domain packages: TXT records, remembered for a while.

The DMARC rules (lists.dmarc) ask for TXT records through a small protocol; this is the
one implementation, with dnspython's asynchronous resolver. Answers are kept for
`cache_seconds`, failures for at most a minute, in a cache of bounded size.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable

import dns.asyncresolver
import dns.resolver

from mailer.config import ConfigError, parse_listen

log = logging.getLogger(__name__)

# A failed lookup is tried again sooner than an answer is, so a DNS outage delays each
# post by at most one timeout a minute per domain, and the outage is soon forgotten.
FAILURE_SECONDS = 60.0
CACHE_ENTRIES = 10_000

Records = tuple[str, ...]


def nameserver_address(nameserver: str) -> tuple[str, int]:
    """The IP address and port of `dns.nameserver` ("host", "host:port", "[v6]:port").

    >>> nameserver_address("127.0.0.1:5353"), nameserver_address("::1")
    (('127.0.0.1', 5353), ('::1', 53))
    """
    if nameserver.startswith("[") or nameserver.count(":") == 1:
        host, port = parse_listen(nameserver, "dns.nameserver")
    else:
        host, port = nameserver, 53
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]), port
    except OSError as error:
        raise ConfigError(f"dns.nameserver: cannot resolve {host!r} ({error})") from None


class TxtResolver:
    """TXT records over DNS, remembering answers for `cache_seconds`.

    `nameserver` is "" for the system's resolver, or "host[:port]". Look-ups never raise:
    a DNS failure is logged and answers None (a look-up must never lose a post).
    """

    def __init__(self, nameserver: str, timeout: float, cache_seconds: float,
                 clock: Callable[[], float] = time.monotonic, *,
                 cache_entries: int = CACHE_ENTRIES) -> None:
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.cache_entries = cache_entries
        self.clock = clock
        self.server = nameserver_address(nameserver) if nameserver else None
        self.cache: OrderedDict[str, tuple[float, Records | None]] = OrderedDict()
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def txt(self, name: str) -> Records | None:
        """The TXT strings at `name`, () when there are none, None on failure."""
        now = self.clock()
        cached = self.cache.get(name)
        if cached is not None and cached[0] > now:
            self.cache.move_to_end(name)
            return cached[1]
        records = await self._query(name)
        lasting = self.cache_seconds if records is not None else min(FAILURE_SECONDS,
                                                                      self.cache_seconds)
        self.cache[name] = (now + lasting, records)
        self.cache.move_to_end(name)
        while len(self.cache) > self.cache_entries:
            self.cache.popitem(last=False)
        return records

    async def _query(self, name: str) -> Records | None:
        try:
            answer = await self.resolver().resolve(name, "TXT", lifetime=self.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ()
        except Exception as error:  # a look-up must never lose the post (issue 4)
            log.warning("DNS look-up of %s TXT failed: %s", name,
                        error or type(error).__name__)
            return None
        return tuple(b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer)
    def resolver(self) -> dns.asyncresolver.Resolver:
        """The resolver, made on first use (reading resolv.conf for the system's)."""
        if self._resolver is None:
            self._resolver = make_resolver(self.server, self.timeout)
        return self._resolver


def make_resolver(server: tuple[str, int] | None, timeout: float) -> dns.asyncresolver.Resolver:
    """A resolver asking `server` (address, port), or the system's (resolv.conf) for None;
    `timeout` seconds a look-up, and no cache of its own."""
    if server is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.timeout = resolver.lifetime = timeout
    resolver.cache = None
    return resolver


