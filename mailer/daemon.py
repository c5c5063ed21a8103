"""The composition root: `build(config)` wires every part; `Daemon` starts and stops them.

One asyncio process runs the listeners, the router and the delivery engine (DESIGN §2).
Nothing here is global: each part is handed its collaborators.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import jinja2
from sqlalchemy import update
from sqlalchemy.orm import Session

from lists import wiring as list_side
from mailer import dashboard, health, queue_pages, templates, webauth
from mailer.addresses import Role
from mailer.admin import AdminHandler, SiteContact
from mailer.arc import sealer as arc_sealer
from mailer.backup import serving, sqlite_file
from mailer.config import Config, ConfigError, parse_listen
from mailer.db import Database, open_database
from mailer.delivery import Dispatcher, Personaliser
from mailer.dns import TxtResolver
from mailer.domainkeys import CopySigning, DkimSigner, sign_batch
from mailer.domainkeys import signer as dkim_signer
from mailer.http_server import Listening, WebServer
from mailer.intake import Arrivals, Gate, Handler, Inbox, Listener, LmtpListener
from mailer.metrics import Metrics
from mailer.models import Delivery, Work
from mailer.router import Router
from mailer.scheduler import Scheduler
from mailer.tls import listener_context
from mailer.transport import Transport, from_config
from mailer.workers import Workers
from meetings import wiring as meeting_side

log = logging.getLogger(__name__)


@dataclass
class Daemon:
    config: Config
    db: Database
    transport: Transport
    inbox: Inbox
    router: Router
    dispatcher: Dispatcher
    scheduler: Scheduler
    web: WebServer
    gate: Gate
    workers: Workers
    metrics: Metrics
    listener_tls: ssl.SSLContext | None = None    # STARTTLS on the SMTP listener
    servers: dict[str, asyncio.Server | Listening] = field(default_factory=dict)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def ports(self) -> dict[str, int]:
        """The port each listener is bound to (useful when the config asks for port 0)."""
        return {name: server.sockets[0].getsockname()[1]
                for name, server in self.servers.items()}

    async def start(self) -> None:
        """Start the workers, then open the listeners."""
        database = sqlite_file(self.db.url, self.config.base_dir)
        if database is not None:
            self.held.enter_context(serving(database))    # no restore over it meanwhile
        if self.db.is_sqlite:
            # A SQLite file belongs to one daemon, so whatever is leased was leased by a
            # previous run of this one that died: take it back now, not when leases end.
            await self.db.write(recover_leases, time.time())
        self.workers.start()
        self.inbox.start()
        self.router.start()
        self.dispatcher.start()
        self.scheduler.start()
        hostname = self.config.intake.hostname or self.config.site.domain
        for name, listener_class, listen in (("smtp", Listener, self.config.smtp.listen),
                                             ("lmtp", LmtpListener, self.config.lmtp.listen)):
            if not listen:
                continue
            host, port = parse_listen(listen, f"{name}.listen")
            handler = Handler(protocol=name, domain=self.config.site.domain,
                              limits=self.config.intake, inbox=self.inbox,
                              accepts=self.router.accepts, gate=self.gate,
                              latency=self.metrics.intake_latency.observe)
            self.servers[name] = await asyncio.get_running_loop().create_server(
                functools.partial(self._session, name, listener_class, handler, hostname),
                host, port, backlog=self.config.intake.backlog)
            log.info("%s listening on %s:%d", name.upper(), host, self.ports[name])
        if self.config.http.listen:
            host, port = parse_listen(self.config.http.listen, "http.listen")
            self.servers["http"] = await self.web.listen(host, port)

    def _session(self, name: str, listener_class: type[Listener], handler: Handler,
                 hostname: str) -> Listener:
        """A new SMTP or LMTP session, with the certificate as it is now (SIGHUP renews it)."""
        tls = self.listener_tls if name == "smtp" else None   # LMTP: a local MTA
        return listener_class(handler, self.config.intake, hostname, tls=tls,
                              require_tls=tls is not None and self.config.smtp.require_tls)

    def reload(self) -> None:
        """SIGHUP: read again what is renewed under a running daemon, the SMTP listener's
        certificate and key; the sessions that start after it use them. A certificate that
        cannot be used is logged, and the one in use kept. Other config changes need a
        restart."""
        if self.listener_tls is None:
            log.info("reload: no certificate to read again (smtp.tls_cert is not set)")
            return
        try:
            self.listener_tls = listener_context(self.config)
        except ConfigError as error:
            log.error("reload: %s; the certificate in use is kept", error)
            return
        log.info("reload: the SMTP listener's certificate was read again from %s",
                 self.config.path(self.config.smtp.tls_cert))

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM: new sessions get 421, messages being stored finish, queues stay safe."""
        await self.gate.drain(grace)
        for server in self.servers.values():
            server.close()
        if isinstance(web := self.servers.get("http"), Listening):
            await web.wait_closed()
        await self.inbox.stop()
        await self.scheduler.stop()
        await self.router.stop()
        await asyncio.to_thread(self.workers.stop)
        await self.dispatcher.stop()
        await asyncio.to_thread(self.db.close)
        self.held.close()
        self.stopped.set()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        print(f"alliance: serving {self.config.site.domain}: "
              + ", ".join(f"{name.upper()} on port {port}"
                          for name, port in self.ports.items())
              + f"; outbound {self.config.outbound.url}", flush=True)
        await stop_requested.wait()
        log.info("stopping")
        await self.stop()


def recover_leases(session: Session, now: float) -> None:
    """End now the leases a dead process held. Work stays `working`, so that the router
    knows it was in flight at the crash (and charges it if it was being handled alone);
    deliveries go back to the queue."""
    session.execute(update(Work).where(Work.state == "working").values(due_at=now))
    session.execute(update(Delivery).where(Delivery.state == "sending")
                    .values(state="pending", due_at=now))


def copy_signing(dkim: DkimSigner | None, workers: Workers) -> CopySigning | None:
    """DKIM for the delivery engine, the signatures made in the worker processes (RSA
    takes 0.3 ms a copy: a 10,000-member post would hold the event loop 3 s)."""
    if dkim is None:
        return None
    keys = dkim.key_texts
    return CopySigning(dkim, lambda batch: workers.run(sign_batch, keys, batch))


def web_access(config: Config, secret: bytes, db: Database, pages: jinja2.Environment,
               clock: Callable[[], float]) -> webauth.Access:
    """Who may use the signed-in pages: the people the two domain packages know, and the
    site admin. The session cookie is `Secure` unless the site is plain HTTP on loopback
    (a developer's machine), where a browser would not send it back."""
    base = urlsplit(config.base_url)
    secure = base.scheme == "https" or base.hostname not in ("127.0.0.1", "localhost", "::1")

    def directory(session: Session, address: str) -> webauth.SiteUser | None:
        return webauth.merge([list_side.person(session, address),
                              meeting_side.person(session, address)], address)

    return webauth.Access(webauth.Auth(secret, secure=secure, clock=clock), directory, db,
                          pages, admin=config.site.admin)


def build(config: Config, transport: Transport | None = None, *, poll: float = 1.0,
          clock: Callable[[], float] = time.time) -> Daemon:
    """Make every part of the daemon from the config, migrating the database first.

    `transport` replaces the one `outbound.url` names; `poll` is how often idle workers
    look for work that another process made due; `clock` is the scheduler's time.
    """
    # Certificates and credentials first: a mistake in them stops start-up in one line,
    # before anything is opened.
    hostname = config.intake.hostname or config.site.domain
    listener_tls = listener_context(config) if config.smtp.listen else None
    transport = transport or from_config(config, local_hostname=hostname)
    dkim = dkim_signer(config)   # a missing key stops start-up before the database opens
    db = open_database(config.database.url, config.base_dir,
                       migrate=config.database.migrate == "auto")
    metrics = Metrics()
    metrics.watch(db.write_session)
    secret = db.secret(config.site.secret)
    pages = templates.environment(config.templates_folder or templates.TEMPLATES)
    dns = TxtResolver(config.dns.nameserver, config.dns.timeout, config.dns.cache_seconds)
    meeting_site = meeting_side.site(config, secret, pages, clock=clock)
    list_site = list_side.site(config, secret, pages, dns, clock=clock,
                               on_leave=meeting_side.on_leave(meeting_site),
                               arc=arc_sealer(config, dkim, dns))
    workers = Workers(config.router.processes,
                      preload=list_side.WORKER_MODULES + meeting_side.WORKER_MODULES
                      + (("mailer.domainkeys",) if dkim else ()),
                      memory=config.router.worker_memory_mb * 1024 * 1024)
    arrivals = Arrivals()
    dispatcher = Dispatcher(db, transport, Personaliser(list_site.member_tokens,
                                                        list_site.unsubscribe_tokens),
                            config.outbound, poll=poll,
                            on_refused=list_side.on_refused(list_site),
                            intake_busy=arrivals.busy,
                            signing=copy_signing(dkim, workers))
    admin = AdminHandler(SiteContact(config.site.admin, config.site.domain))
    router = Router(db, {**list_side.handlers(list_site, workers),
                         **meeting_side.handlers(meeting_site, workers), Role.ADMIN: admin},
                    max_attempts=config.router.max_attempts, on_outgoing=dispatcher.wake,
                    poll=poll, settle=config.router.crash_settle)
    inbox = Inbox(db, config.site.domain, hostname, on_stored=router.wake, arrivals=arrivals)
    scheduler = Scheduler(db, list_side.jobs(list_site) + meeting_side.jobs(meeting_site),
                          on_outgoing=dispatcher.wake, clock=clock, tick=poll)
    access = web_access(config, secret, db, pages, clock)
    web = WebServer(list_side.pages(list_site, db)
                    + meeting_side.pages(meeting_site, db, access)
                    + health.pages(db, config.health, metrics, config.http.metrics_allow)
                    + webauth.pages(access, webauth.SignInSite(
                        config.site.name, config.site.domain, config.base_url, pages))
                    + dashboard.pages(access, pages)
                    + list_side.dashboard_pages(list_site, access)
                    + queue_pages.pages(access, pages, clock, router.wake)
                    + list_side.member_pages(list_site, db, access,
                                             meeting_side.personal_export,
                                             meeting_side.personal_erase),
                    templates=pages)
    return Daemon(config, db, transport, inbox, router, dispatcher, scheduler, web, Gate(),
                  workers, metrics, listener_tls=listener_tls)
