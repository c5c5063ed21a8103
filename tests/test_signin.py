"""Signing in to the web pages by a mailed link (mailer.webauth), over real HTTP against a
running daemon: one-time links, no account enumeration, limits, signed cookies, CSRF."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest

from mailer.web import Request
from mailer.webauth import COOKIE, SESSION_SECONDS, Auth
from tests.helpers import SECRET, Sink, http, make_config, make_list, running, wait_quiet

ADMIN = "admin@alliance.example"


def config_for(tmp_path: Path, url: str, sink: Sink):  # type: ignore[no-untyped-def]
    return make_config(tmp_path, url, smarthost_port=sink.port, site={"admin": ADMIN})


def link_in(text: str) -> str:
    found = re.search(r"https://lists\.example\.org(/sign-in/[0-9a-z-]+)", text)
    assert found is not None, text
    return found[1]


def session_cookie(headers: dict[str, str]) -> str:
    value = headers["set-cookie"]
    assert value.startswith(f"{COOKIE}="), value
    return value.split(";", 1)[0]


async def ask(port: int, address: str, next_path: str = "/dashboard") -> tuple[int, str]:
    status, _, page = await http(port, "POST", "/sign-in",
                                 f"address={quote(address)}&next={quote(next_path)}".encode())
    return status, page


async def test_the_site_admin_signs_in_by_a_link_that_works_once(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = config_for(tmp_path, sqlite_url, sink)
    async with running(config) as daemon:
        port = daemon.ports["http"]
        status, headers, _ = await http(port, "GET", "/dashboard")
        assert status == 303 and headers["location"] == "/sign-in?next=%2Fdashboard"
        status, page = await ask(port, ADMIN.upper())
        assert status == 200 and "a link is on its way" in page
        [mail] = await wait_quiet(sink, 1)
        assert mail.rcpt == ADMIN and mail.message["Auto-Submitted"] == "auto-generated"
        path = link_in(mail.message.get_content())

        # Opening the link (as a mail scanner does) signs nobody in and spends nothing.
        for _ in range(2):
            status, headers, page = await http(port, "GET", path)
            assert status == 200 and "set-cookie" not in headers
            assert "<form method=\"post\"><button type=\"submit\">Sign in</button>" in page
        status, headers, _ = await http(port, "POST", path)
        assert status == 303 and headers["location"] == "/dashboard"
        assert "; HttpOnly" in headers["set-cookie"]
        assert "; SameSite=Lax" in headers["set-cookie"]
        assert headers["set-cookie"].endswith("; Secure"), "the site is https"
        cookie = session_cookie(headers)

        status, _, home = await http(port, "GET", "/dashboard", headers={"Cookie": cookie})
        assert status == 200 and f"Signed in as {ADMIN}" in home
        assert 'href="/dashboard/queue"' in home, "the admin sees the delivery queue"
        # The link is spent: a second press is refused, and gives no session.
        status, headers, page = await http(port, "POST", path)
        assert status == 404 and "set-cookie" not in headers
        assert "This link no longer works" in page


async def test_nobody_learns_who_is_known_and_strangers_get_no_mail(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = config_for(tmp_path, sqlite_url, sink)
    make_list(config, "steering", ["ana@members.test"])
    async with running(config) as daemon:
        port = daemon.ports["http"]
        _, known = await ask(port, "ana@members.test")
        _, stranger = await ask(port, "nobody@elsewhere.test")
        await wait_quiet(sink, 1)
    assert known.replace("ana@members.test", "X") == stranger.replace("nobody@elsewhere.test",
                                                                        "X")
    assert [d.rcpt for d in sink.received] == ["ana@members.test"]


async def test_a_member_is_signed_in_but_not_let_into_the_dashboard(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = config_for(tmp_path, sqlite_url, sink)
    make_list(config, "steering", ["ana@members.test"])
    async with running(config) as daemon:
        port = daemon.ports["http"]
        await ask(port, "ana@members.test")
        [mail] = await wait_quiet(sink, 1)
        _, headers, _ = await http(port, "POST", link_in(mail.message.get_content()))
        status, _, page = await http(port, "GET", "/dashboard",
                                     headers={"Cookie": session_cookie(headers)})
    assert status == 403 and "ana@members.test, which may not use this page" in page


async def test_sign_in_requests_are_limited_per_address_and_per_client(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = config_for(tmp_path, sqlite_url, sink)
    async with running(config) as daemon:
        port = daemon.ports["http"]
        answers = [await ask(port, ADMIN) for _ in range(4)]
        await wait_quiet(sink, 3)          # three links to one address, not four
        more = [await ask(port, f"x{n}@elsewhere.test") for n in range(6)]
    assert [status for status, _ in answers] == [200] * 4
    assert [status for status, _ in more] == [200] * 6, "ten requests from one client"
    assert len(sink.received) == 3
    async with running(config) as daemon:   # the count is in the database: a restart
        status, page = await ask(daemon.ports["http"], "y@elsewhere.test")
    assert status == 429 and "Too many sign-in requests" in page


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/x",
                                    "/\\evil.example"])
async def test_a_link_never_sends_the_visitor_to_another_site(
        tmp_path: Path, sqlite_url: str, sink: Sink, target: str) -> None:
    config = config_for(tmp_path, sqlite_url, sink)
    async with running(config) as daemon:
        port = daemon.ports["http"]
        await ask(port, ADMIN, target)
        [mail] = await wait_quiet(sink, 1)
        status, headers, _ = await http(port, "POST", link_in(mail.message.get_content()))
    assert status == 303 and headers["location"] == "/dashboard", "here, not there"


async def test_a_post_without_the_sessions_csrf_token_changes_nothing(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = config_for(tmp_path, sqlite_url, sink)
    async with running(config) as daemon:
        port = daemon.ports["http"]
        await ask(port, ADMIN)
        [mail] = await wait_quiet(sink, 1)
        _, headers, _ = await http(port, "POST", link_in(mail.message.get_content()))
        cookie = session_cookie(headers)
        _, _, home = await http(port, "GET", "/dashboard", headers={"Cookie": cookie})
        csrf = re.search(r'name="csrf" value="([0-9a-f]{32})"', home)
        assert csrf is not None, home
        forged, _, page = await http(port, "POST", "/sign-out", b"csrf=" + b"0" * 32,
                                     headers={"Cookie": cookie})
        out, out_headers, _ = await http(port, "POST", "/sign-out",
                                         f"csrf={csrf[1]}".encode(),
                                         headers={"Cookie": cookie})
    assert forged == 403 and "The form was out of date" in page
    assert out == 303 and out_headers["set-cookie"].startswith(f"{COOKIE}=;")
    assert "; Max-Age=0;" in out_headers["set-cookie"]


def request_with(cookie: str) -> Request:
    return Request("GET", "/dashboard", {}, {"cookie": cookie}, b"")


def test_a_session_cookie_is_signed_and_ends() -> None:
    now = [1_000_000.0]
    auth = Auth(SECRET, clock=lambda: now[0])
    cookie = auth.cookie("ana@members.test").split(";", 1)[0]
    visitor = auth.visitor(request_with(cookie))
    assert visitor is not None and visitor.address == "ana@members.test"
    payload, mac = cookie.split("=", 1)[1].split(".")
    tampered = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    assert auth.visitor(request_with(f"{COOKIE}={payload}.{tampered}")) is None
    assert Auth(b"another secret", clock=lambda: now[0]).visitor(request_with(cookie)) is None
    now[0] += SESSION_SECONDS + 1
    assert auth.visitor(request_with(cookie)) is None, "expired"
