"""Who is at the web pages: sign-in by a link mailed to the address, no password.

A visitor asks for a link (`/sign-in`, one address field). If the address is someone to
the site (the `Directory` the domain packages give: a member, a list owner, a coordinator,
the site admin), a link good once for `LINK_SECONDS` is mailed to it; the page says the
same whatever the address, so that nobody learns who is known. Requests are counted per
address and per client in the database (`SignIn` rows), so that the limits hold across
every daemon of the site. Opening the link shows one button (a mail scanner's GET signs
nobody in); pressing it sets the session cookie and goes on to the page asked for.

The session is a cookie, signed with the site secret (HMAC-SHA256): the address, a random
session id and an expiry; `Secure`, `HttpOnly`, `SameSite=Lax`. Every form of a signed-in
page carries a CSRF token derived from the session id (`Visitor.csrf`); a POST without the
right one changes nothing. What a visitor may do is worked out per request from what they
are now (`SiteUser.roles`), so a coordinator whose term ended loses the pages at once.
Every change made on the web is logged with who made it (`audit`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer import outbox, robot_mail, templates
from mailer.addresses import AddressError, normalize
from mailer.models import SignIn
from mailer.tokens import Signer
from mailer.web import Page, Request, Response, Store, render_page

log = logging.getLogger(__name__)
audit_log = logging.getLogger("alliance.audit")

COOKIE = "alliance_session"
LINK_SECONDS = 15 * 60
SESSION_SECONDS = 12 * 3600
WINDOW = 15 * 60
PER_ADDRESS = 3          # links mailed to one address per WINDOW
PER_CLIENT = 10          # sign-in requests from one client address per WINDOW


@dataclass(frozen=True)
class SiteUser:
    """Who an address is to the site, now: its language and its roles.

    Roles are words: "admin" (site.admin), "coordinator" (a coordination contact),
    "owner:LIST", "moderator:LIST", "member:LIST", "delegate".
    """

    address: str
    name: str
    language: str
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        return role in self.roles

    def lists(self, *kinds: str) -> list[str]:
        """The lists on which the person holds one of these roles ("owner", ...)."""
        return sorted({role.split(":", 1)[1] for role in self.roles
                       if ":" in role and role.split(":", 1)[0] in kinds})

    @property
    def staff(self) -> bool:
        """Someone the coordinator's pages are for: admin, coordinator, owner, moderator."""
        return bool({"admin", "coordinator"} & self.roles) or bool(
            self.lists("owner", "moderator"))


# What each domain package knows of an address (lists: memberships and ownership;
# meetings: coordination and seats); the site admin is added here.
Directory = Callable[[Session, str], SiteUser | None]


def merge(people: Sequence[SiteUser | None], address: str) -> SiteUser | None:
    """One person from what each package knows, the first name and language given."""
    found = [p for p in people if p is not None]
    if not found:
        return None
    return SiteUser(address, next((p.name for p in found if p.name), ""),
                  next((p.language for p in found if p.language), ""),
                  frozenset().union(*(p.roles for p in found)))


@dataclass(frozen=True)
class Visitor:
    """A signed-in visitor: their address, their session id and its CSRF token."""

    address: str
    session_id: str
    csrf: str


class Auth:
    """Session cookies and CSRF tokens, signed with the site secret."""

    def __init__(self, secret: bytes, *, secure: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = hmac.new(secret, b"web-session", hashlib.sha256).digest()
        self._csrf = hmac.new(secret, b"web-csrf", hashlib.sha256).digest()
        self.links = Signer(secret, "sign-in")
        self.secure = secure
        self.clock = clock

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def cookie(self, address: str) -> str:
        """The Set-Cookie value that signs `address` in for SESSION_SECONDS."""
        payload = base64.urlsafe_b64encode(json.dumps(
            {"a": address, "s": secrets.token_hex(16),
             "e": int(self.clock() + SESSION_SECONDS)}).encode()).decode().rstrip("=")
        value = f"{payload}.{self._mac(payload.encode())}"
        return self._set(value, SESSION_SECONDS)

    def clear(self) -> str:
        """The Set-Cookie value that signs the visitor out."""
        return self._set("", 0)

    def _set(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.secure else ""
        return f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"

    def visitor(self, request: Request) -> Visitor | None:
        """The signed-in visitor of a request, if its cookie is ours and not expired."""
        value = cookies(request).get(COOKIE, "")
        payload, _, mac = value.partition(".")
        if not payload or not hmac.compare_digest(mac, self._mac(payload.encode())):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            address, session_id, expires = str(data["a"]), str(data["s"]), float(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < self.clock():
            return None
        token = hmac.new(self._csrf, session_id.encode(), hashlib.sha256).hexdigest()[:32]
        return Visitor(address, session_id, token)

    @staticmethod
    def csrf_ok(visitor: Visitor, form: dict[str, list[str]]) -> bool:
        """Whether a form carries the visitor's CSRF token."""
        given = (form.get("csrf") or [""])[0]
        return hmac.compare_digest(given.encode(), visitor.csrf.encode())


def cookies(request: Request) -> dict[str, str]:
    """The request's cookies (RFC 6265 §5.4: "name=value; name=value")."""
    found: dict[str, str] = {}
    for part in request.headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in found:
            found[name] = value
    return found


def local_path(text: str) -> str:
    """Where to go after signing in: a path on this site, never another site.

    >>> local_path("/dashboard/meetings?x=1"), local_path("//evil.example/"), local_path("")
    ('/dashboard/meetings?x=1', '/', '/')
    >>> local_path("https://evil.example/"), local_path("/\\\\evil.example")
    ('/', '/')
    """
    parts = urlsplit(text)
    if (not text.startswith("/") or text.startswith("//") or "\\" in text or parts.scheme
            or parts.netloc or len(text) > 300 or any(ord(c) < 33 for c in text)):
        return "/"
    return text


def audit(person: SiteUser | Visitor, action: str, **detail: Any) -> None:
    """One log line for a change made on the web, naming who made it."""
    said = " ".join(f"{key}={value!r}" for key, value in detail.items())
    audit_log.info("web: %s %s %s", person.address, action, said,
                   extra={"who": person.address, "action": action, **detail})


@dataclass(frozen=True)
class SignInSite:
    """What the sign-in pages need of the site: its name, domain and public URL."""

    name: str
    domain: str
    base_url: str
    templates: jinja2.Environment


Handler = Callable[[Request, re.Match[str], Visitor, SiteUser], Awaitable[Response]]


class Access:
    """Puts signed-in pages behind the session, the roles and the CSRF token."""

    def __init__(self, auth: Auth, directory: Directory, store: Store,
                 env: jinja2.Environment, admin: str = "") -> None:
        self.auth = auth
        self.directory = directory
        self.store = store
        self.env = env
        self.admin = admin.lower()

    async def person(self, visitor: Visitor) -> SiteUser | None:
        return await self.store.read(lambda s: self.who(s, visitor.address))

    def who(self, session: Session, address: str) -> SiteUser | None:
        """Who the address is now (the directory's roles, plus admin for site.admin)."""
        known = self.directory(session, address)
        if self.admin and address.lower() == self.admin:
            admin = SiteUser(address, "", "", frozenset({"admin"}))
            return merge([known, admin], address)
        return known

    def page(self, methods: tuple[str, ...], pattern: str, handler: Handler,
             allowed: Callable[[SiteUser, re.Match[str]], bool] = lambda p, m: p.staff) -> Page:
        """A page for signed-in visitors whom `allowed` lets in (staff, by default); any
        POST must carry the visitor's CSRF token."""

        async def gated(request: Request, match: re.Match[str]) -> Response:
            visitor = self.auth.visitor(request)
            if visitor is None:
                target = request.path + (f"?{request.raw_query}" if request.raw_query else "")
                return redirect(f"/sign-in?next={quote(target, safe='')}")
            person = await self.person(visitor)
            if person is None or not allowed(person, match):
                return render_page(self.env, "forbidden", request.language(), 403,
                                   address=visitor.address, csrf=visitor.csrf)
            if request.method == "POST" and not self.auth.csrf_ok(visitor, request.form()):
                return render_page(self.env, "forbidden", request.language(), 403,
                                   address=visitor.address, csrf=visitor.csrf,
                                   stale_form=True)
            return await handler(request, match, visitor, person)

        return Page(methods, re.compile(pattern), gated)


def redirect(location: str, *headers: tuple[str, str]) -> Response:
    """303 See Other: after a POST, the browser GETs the next page."""
    return Response(303, b"", "text/plain; charset=utf-8", (("location", location), *headers))


def _count(session: Session, column: Any, value: str, since: float) -> int:
    return int(session.scalar(select(func.count()).select_from(SignIn).where(
        column == value, SignIn.created_at >= since)) or 0)


def request_link(session: Session, gate: Access, site: SignInSite, address: str,
                 client: str, next_path: str, now: float) -> str:
    """Mail a sign-in link to `address` if it is someone to the site and no limit is
    reached; what the visitor is told ("sent", "limited") never says whether it is."""
    if _count(session, SignIn.client, client, now - WINDOW) >= PER_CLIENT:
        return "limited"
    person = gate.who(session, address)
    if person is None or _count(session, SignIn.address, address, now - WINDOW) >= PER_ADDRESS:
        # Counted against the client all the same, and never usable.
        session.add(SignIn(address="", client=client, created_at=now, expires_at=now,
                           used_at=now, next_path="/"))
        return "sent"
    row = SignIn(address=address, client=client, created_at=now,
                 expires_at=now + LINK_SECONDS, used_at=None, next_path=next_path)
    session.add(row)
    session.flush()
    link = f"{site.base_url}/sign-in/{gate.auth.links.sign(row.id)}"
    language = templates.language_of(person.language)
    subject, body = templates.render(site.templates, "sign_in", language,
                                     {"site_name": site.name, "link": link,
                                      "minutes": LINK_SECONDS // 60, "address": address})
    # From the site, with the null envelope sender: a link that cannot be delivered is
    # asked for again, not bounced to anyone (RFC 3834 automatic mail).
    own = f"postmaster@{site.domain}"      # a reply reaches the site admin
    data = robot_mail.robot_message(sender=(site.name, own), to=address, subject=subject,
                                    body=body, domain=site.domain, auto="auto-generated")
    outbox.enqueue(session, sender="", recipients=[(address, None)], data=data,
                   kind="sign-in")
    log.info("sign-in link mailed to %s", address)
    return "sent"


def open_link(session: Session, gate: Access, token: str, now: float,
              use: bool) -> SignIn | None:
    """The sign-in a link names if it is genuine, unused and in time; `use` spends it."""
    ident = gate.auth.links.verify(token)
    row = session.get(SignIn, ident) if ident is not None else None
    if row is None or row.used_at is not None or row.expires_at < now or not row.address:
        return None
    if use:
        row.used_at = now
    return row


def pages(gate: Access, site: SignInSite) -> tuple[Page, ...]:
    """/sign-in (ask for a link), /sign-in/TOKEN (use it), /sign-out."""
    env, store, auth = site.templates, gate.store, gate.auth

    async def ask(request: Request, match: re.Match[str]) -> Response:
        wanted = local_path((request.query.get("next") or ["/"])[0])
        if request.method == "GET":
            return render_page(env, "sign_in", request.language(), next_path=wanted,
                               state="ask", address="")
        form = request.form()
        wanted = local_path((form.get("next") or ["/"])[0])
        try:
            address = normalize((form.get("address") or [""])[0].strip())
        except AddressError:
            return render_page(env, "sign_in", request.language(), 400, next_path=wanted,
                               state="bad_address", address="")
        now = auth.clock()
        state = await store.write(lambda s: request_link(
            s, gate, site, address, request.peer[:64], wanted, now))
        return render_page(env, "sign_in", request.language(),
                           429 if state == "limited" else 200, next_path=wanted,
                           state=state, address=address)

    async def use(request: Request, match: re.Match[str]) -> Response:
        token, now = match["token"], auth.clock()
        if request.method == "GET":
            row = await store.read(lambda s: open_link(s, gate, token, now, use=False))
            if row is None:
                return render_page(env, "sign_in_expired", request.language(), 404)
            return render_page(env, "sign_in_link", request.language(), address=row.address)
        used = await store.write(lambda s: _spend(s, gate, token, now))
        if used is None:
            return render_page(env, "sign_in_expired", request.language(), 404)
        address, wanted = used
        log.info("web: %s signed in", address)
        return redirect(wanted, ("set-cookie", auth.cookie(address)))

    async def leave(request: Request, match: re.Match[str]) -> Response:
        visitor = auth.visitor(request)
        if visitor is not None and not auth.csrf_ok(visitor, request.form()):
            return render_page(env, "forbidden", request.language(), 403,
                               address=visitor.address, csrf=visitor.csrf, stale_form=True)
        return redirect("/sign-in", ("set-cookie", auth.clear()))

    return (Page(("GET", "POST"), re.compile("/sign-in"), ask),
            Page(("GET", "POST"), re.compile(r"/sign-in/(?P<token>[0-9a-z-]{1,64})"), use),
            Page(("POST",), re.compile("/sign-out"), leave))


def _spend(session: Session, gate: Access, token: str, now: float) -> tuple[str, str] | None:
    """Spend the link: (its address, where to go: the page asked for, else the dashboard
    for staff and the member's own page for everyone else)."""
    row = open_link(session, gate, token, now, use=True)
    if row is None:
        return None
    wanted = local_path(row.next_path)
    if wanted == "/":
        user = gate.who(session, row.address)
        wanted = "/dashboard" if user is not None and user.staff else "/me"
    return row.address, wanted
