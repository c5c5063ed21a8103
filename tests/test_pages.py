"""Every page the daemon serves is a template, in the visitor's language, escaped by Jinja.

A visitor asks over a real socket, with or without Accept-Language, and reads the page:
its language, its words, and the hostile subject a poster chose, shown as text.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lists.models import Member
from mailer import templates
from mailer.config import Config
from mailer.db import Database
from mailer.tokens import Signer
from mailer.web import ERRORS, render_error, render_page
from tests.helpers import (
    DOMAIN,
    SECRET,
    Sink,
    http,
    mail,
    make_config,
    make_list,
    members,
    running,
    send,
    wait_quiet,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mailer", "lists", "meetings")
LIST = f"steering@{DOMAIN}"
HOSTILE = "<script>alert(1)</script>"

# Markup in Python source: an HTML tag, opening or closing, or a doctype (a regular
# expression's named group, `(?P<body>`, is not one).
TAG = re.compile(r"(?<!\?P)<(!doctype|/?(html|head|body|title|meta|link|style|script|h[1-6]|p|div|"
                 r"span|a|ul|ol|li|pre|code|form|input|button|table|tr|td|th|br|hr|em|"
                 r"strong|b|i|img))(\s[^<>]*)?/?>", re.IGNORECASE)

# What the answer pages see (meetings/answer_pages.py), beside their choice and problem.
ANSWER: dict[str, Any] = {
    "meeting": {"title": "Steering Committee, Nairobi", "body": "Steering Committee",
                "when": "Sunday, 14 March 2027, 09:00–17:00",
                "zone": "Africa/Nairobi, East Africa Time",
                "utc": "Sunday, 14 March 2027, 06:00–14:00 UTC", "location": "KICC, Nairobi",
                "host": "ODM", "alongside": "World Social Forum",
                "agenda_url": "https://example.org/a.pdf", "description": "Budget."},
    "invitee": {"name": "Ana Silva", "address": "ana@party.test"},
    "current": {"partstat": "DELEGATED", "comment": "Late, after 11:00",
                "delegated_to": "kofi@party.test"},
    "choice": "accept", "sequence": 2, "closed": "", "problem": "",
    "coordination": "coordination@lists.example.org"}

ARCHIVE = {"list_name": "Steering Committee", "list_slug": "steering"}   # the archive's pages

# What each page template sees, as its handler passes it (lists/list_pages.py, mailer/web.py).
SAMPLES: dict[str, dict[str, Any]] = {
    "unsubscribe": {"address": "ana@members.test", "list_name": "Steering Committee"},
    "unsubscribed": {"address": "ana@members.test", "list_name": "Steering Committee"},
    **{f"unknown_link/{link}": {"link": link} for link in ("unsubscribe", "confirm", "answer")},
    **{f"confirm/{action}": {"action": action, "address": "ana@members.test",
                             "list_name": "Steering Committee"}
       for action in ("subscribe", "unsubscribe")},
    **{f"confirmed/{outcome}": {"outcome": outcome, "address": "ana@members.test",
                                "list_name": "Steering Committee"}
       for outcome in ("subscribed", "awaiting_approval", "unsubscribed", "not_member",
                       "already_member")},
    **{f"answer/{choice}{closed}{problem}": {**ANSWER, "choice": choice, "closed": closed,
                                             "problem": problem}
       for choice in ("accept", "tentative", "decline", "substitute")
       for closed, problem in (("", ""), ("cancelled", ""), ("delegated", ""),
                               ("", "changed"), ("", "no_substitute"))},
    **{f"answered/{partstat}": {**ANSWER, "current": {**ANSWER["current"],
                                                      "partstat": partstat}}
       for partstat in ("ACCEPTED", "TENTATIVE", "DECLINED", "DELEGATED")},
    **{f"answer_refused/{problem}": {**ANSWER, "problem": problem, "detail": "a reason"}
       for problem in ("cancelled", "removed", "delegated", "substitute")},
    "archive_index": {**ARCHIVE, "posts": [
        {"id": 7, "date": "2027-03-01", "subject": "[steering] Agenda for Nairobi"},
        {"id": 6, "date": "2027-02-27", "subject": ""}],
        "months": [{"key": "2027-03", "name": "March 2027", "count": 12}]},
    "archive_month": {**ARCHIVE, "month_name": "March 2027", "page": 2, "more": True,
                      "threads": [{"id": 6, "subject": "Agenda", "count": 3,
                                   "date": "2027-03-02"}]},
    "archive_thread": {**ARCHIVE, "subject": "Agenda", "page": 1, "more": False, "posts": [
        {"id": 6, "date": "2027-03-01", "subject": "Agenda", "sender": "ana at party.test",
         "text": "Dear all,\nthe agenda.\n", "cut": True},
        {"id": 7, "date": "2027-03-02", "subject": "", "sender": "kofi at party.test",
         "text": "", "cut": False}]},
    "archive_search": {**ARCHIVE, "query": "agenda & minutes", "page": 1, "more": True,
                       "results": [{"id": 6, "date": "2027-03-01", "subject": "Agenda",
                                    "sender": "ana at party.test"}]},
    "archived_post": {**ARCHIVE, "subject": "Agenda for Nairobi",
                      "senders": ["Ana Silva", ""], "date": "2027-03-01 09:30 UTC",
                      "thread": 6, "month": "2027-03",
                      "text": "Dear all,\nthe agenda is below.\n"},
    "bodies": {"site_name": "Progressive Alliance", "bodies": [
        {"slug": "board", "name": "Board", "count": 1},
        {"slug": "steering", "name": "Steering Committee", "count": 0}]},
    "body": {"site_name": "Progressive Alliance", "body_name": "Board", "slug": "board",
             "feed": "https://lists.example.org/feeds/board.ics",
             "webcal": "webcal://lists.example.org/feeds/board.ics",
             "archive": "/lists/board/", "meetings": [
                 {"id": 3, "title": "Board meeting",
                  "when": "Monday, 1 March 2027, 09:00–17:00",
                  "zone": "Europe/Paris, Central European Standard Time",
                  "utc": "Monday, 1 March 2027, 08:00–16:00 UTC", "location": "Paris",
                  "alongside": "the PES congress"}]},
    **{f"error/{problem}": {"problem": problem} for problem in ERRORS},
    **{f"sign_in/{state}": {"state": state, "next_path": "/dashboard",
                            "address": "ana@members.test"}
       for state in ("ask", "bad_address", "sent", "limited")},
    "sign_in_link": {"address": "ana@members.test"},
    "sign_in_expired": {},
    "forbidden": {"address": "ana@members.test", "csrf": "c" * 32},
    "forbidden/stale": {"address": "ana@members.test", "csrf": "c" * 32, "stale_form": True},
    "dashboard": {"visitor": "ana@members.test", "csrf": "c" * 32,
                  "sections": ["meetings", "organisation", "lists", "queue"],
                  "roles": ["admin"]},
    "dashboard/none": {"visitor": "ana@members.test", "csrf": "c" * 32, "sections": [],
                       "roles": []},
    **{f"me/{done or 'plain'}": {
        "address": "ana@members.test", "csrf": "c" * 32, "staff": done == "saved",
        "done": done, "languages": ["en", "fr", "es", "de", "pt"],
        "mode_order": ["regular", "digest", "nomail"],
        "lists": [{"list": "steering", "name": "Steering Committee", "delivery": "digest",
                   "language": "fr", "enabled": True},
                  {"list": "board", "name": "Board", "delivery": "regular",
                   "language": "en", "enabled": False}]}
       for done in ("", "saved", "left", "unchanged")},
    "me/empty": {"address": "ana@members.test", "csrf": "c" * 32, "staff": False, "done": "",
                 "languages": ["en"], "mode_order": ["regular"], "lists": []},
    "me_erase": {"address": "ana@members.test", "csrf": "c" * 32},
    "me_erased": {"address": "ana@members.test", "seated": []},
    "me_erased/seated": {"address": "ana@members.test", "seated": ["board", "steering"]},
}


# The dashboard's list and queue pages (lists/roster_pages.py, lists/held_pages.py,
# mailer/queue_pages.py), as their handlers pass them.
DESK: dict[str, Any] = {"visitor": "owner@party.test", "csrf": "c" * 32,
                        "sections": ["lists", "queue"], "notice": {"key": "", "count": 0}}
DESK_LIST = {"name": "steering", "display_name": "Steering <Committee>", "members": 10000,
             "held": 2}
SAMPLES.update({
    **{f"staff_lists/{case}": {**DESK, "lists": lists, "notice": {"key": key, "count": 0}}
       for case, lists, key in (("some", [DESK_LIST, {**DESK_LIST, "held": 0}], ""),
                                ("none", [], ""))},
    **{f"staff_list/{case}": {
        **DESK, "list": DESK_LIST, "notice": {"key": key, "count": 3}, "query": "ana",
        "after": "a@x.test", "following": "m@x.test" if manages else "",
        "members": [{"address": "ana@party.test", "name": "Ana <b>", "delivery": "digest",
                     "enabled": False}] if manages else [],
        "settings": [{"key": "footer", "value": "yes", "choices": ("yes", "no"),
                      "help": "add a footer"},
                     {"key": "subject_prefix", "value": "[steering]", "choices": (),
                      "help": "put before each subject"}],
        "manages": manages, "sets": manages,
        "problem": {"form": form, "text": "no setting 'x'" if form else ""},
        "entered": {"addresses": "ana@", "key": "subject_prefix", "value": "[s]"}}
       for case, manages, key, form in (("owner", True, "added", ""),
                                        ("owner-removed", True, "removed", "settings"),
                                        ("owner-add", True, "set", "add"),
                                        ("moderator", False, "", ""))},
    **{f"staff_list_held/{case}": {
        **DESK, "list": DESK_LIST, "notice": {"key": key, "count": 0}, "total": total,
        "posts": [{"id": 4, "sender": "kofi@party.test", "subject": subject,
                   "reason": "post from a non-member", "held_at": "Monday, 1 March 2027",
                   "text": "Hello <script>", "cut": True}][:total],
        "problem": {"id": problem, "text": "post 4 was already approved" if problem else ""}}
       for case, total, key, subject, problem in (
           ("one", 1, "approved", "Budget", 0), ("many", 70, "rejected", "", 4),
           ("none", 0, "discarded", "", 9))},
    **{f"staff_queue/{case}": {
        **DESK, "notice": {"key": key, "count": 7}, "problem": problem,
        "deliveries": {"pending": 3, "done": 10} if full else {},
        "work": {"quarantined": 1} if full else {}, "waited": 12 if full else None,
        "next_attempt": "Monday, 1 March 2027, 09:00 UTC" if full else "",
        "deferred": [{"recipient": "ana@party.test", "attempts": 2, "due": "09:05",
                      "code": 451, "error": "try later"}] if full else [],
        "failures": [{"recipient": "bo@party.test", "code": 550, "error": "no such user"}]
        if full else [],
        "quarantine": [{"id": 7, "recipient": "steering@lists.example.org", "attempts": 3,
                        "error": "ValueError: x"}] if full else []}
       for case, full, key, problem in (("full", True, "replayed", ""),
                                        ("empty", False, "", "no quarantined work with id 9"))},
})

def page_names(language: str) -> set[str]:
    return {path.stem for path in (templates.TEMPLATES / language / "pages").glob("*.html")}


def lang_of(page: str) -> str:
    """The page's lang attribute, to compare with what a test expects."""
    found = re.search(r'<html lang="([a-z]+)">', page)
    assert found is not None, page
    return found[1]


# The coordinator's meeting and organisation pages (meetings/meeting_pages.py,
# meetings/organisation_pages.py), as their handlers pass them.
STAFF_FRAME: dict[str, Any] = {"visitor": "coordination@ps.example", "csrf": "c" * 32,
                               "sections": ["meetings", "organisation"],
                               "notice": {"key": "", "count": 0}}
NO_PROBLEM = {"form": "", "text": ""}
STAFF_MEETING: dict[str, Any] = {
    **ANSWER["meeting"], "id": 4, "tz": "Africa/Nairobi", "state": "sent", "sent": True,
    "send_at": "Monday, 1 March 2027, 09:00 UTC", "status": "CONFIRMED", "sequence": 1,
    "start_local": "2027-03-14T09:00", "end_local": "2027-03-14T17:00"}
ROW = {"name": "Ana Silva", "party": "ODM", "address": "ana@party.test",
       "partstat": "ACCEPTED", "answered": "by hand", "comment": "=1+1",
       "replied_at": "2027-03-02T10:00:00Z", "delivery": "", "region": "africa",
       "replied": "Tuesday, 2 March 2027, 10:00 UTC"}
COUNTS = {"ACCEPTED": 1, "TENTATIVE": 0, "DECLINED": 0, "NEEDS-ACTION": 2, "DELEGATED": 0}
SAMPLES.update({
    **{f"staff_meetings/{key or 'plain'}": {
        **STAFF_FRAME, "notice": {"key": key, "count": 3}, "year": 2027,
        "upcoming": [{"id": 4, "title": "Steering Committee", "body": "Steering Committee",
                      "when": "Sunday, 14 March 2027, 09:00–17:00", "zone": "Africa/Nairobi",
                      "location": "KICC", "state": state, "sent": 12,
                      "send_at": "Monday, 1 March 2027, 09:00 UTC"}
                     for state in ("draft", "scheduled", "sent", "cancelled")],
        "past": [], "cadence": [
            {"body": "Board", "required": 1, "held": 1, "planned": 0, "drafts": 0, "short": 0},
            {"body": "Steering Committee", "required": 2, "held": 0, "planned": 2,
             "drafts": 1, "short": 0},
            {"body": "Conference", "required": 1, "held": 0, "planned": 0, "drafts": 0,
             "short": 1}]}
       for key in ("", "created", "updated", "same_times", "rescheduled", "invited",
                   "cancelled", "deleted")},
    **{f"staff_meeting_new/{problem['form'] or 'plain'}": {
        **STAFF_FRAME, "problem": problem, "bodies": {"board": "Board", "steering": "CoPil"},
        "parties": ["ODM", "SPD"], "zones": ("UTC", "Africa/Nairobi"),
        "entered": {"body": "steering", "title": "<b>Nairobi</b>", "start": "2027-03-14T09:00",
                    "end": "2027-03-14T17:00", "zone": "Africa/Nairobi", "zone_other": "",
                    "location": "", "host": "ODM", "alongside": "", "agenda_url": "",
                    "description": "", "send_at": ""}}
       for problem in (NO_PROBLEM, {"form": "create", "text": "unknown time zone 'x'"})},
    **{f"staff_meeting/{state}{'-' + problem['form'] if problem['form'] else ''}": {
        **STAFF_FRAME, "meeting": {**STAFF_MEETING, "state": state, "sent": sent},
        "people": {"count": 3 if sent else 2,
                   "counts": COUNTS if sent else {"fr": 1, "de": 1}},
        "statuses": ("CONFIRMED", "TENTATIVE"), "parties": ["ODM", "SPD"],
        "problem": problem, "forms": {
            "update": {"title": "Steering", "location": "KICC", "alongside": "",
                       "agenda_url": "", "description": "", "status": "TENTATIVE",
                       "host": "ODM", "send_at": "2027-03-01T09:00"},
            "reschedule": {"start": "2027-03-14T09:00", "end": "2027-03-14T17:00",
                           "zone": "Africa/Nairobi"},
            "cancel": {"reason": "no quorum"}}}
       for state, sent in (("draft", False), ("scheduled", False), ("sent", True),
                           ("cancelled", True))
       for problem in (NO_PROBLEM, {"form": "reschedule", "text": "the start is in the past"})},
    **{f"staff_meeting_preview/{case}": {
        **STAFF_FRAME, "meeting": STAFF_MEETING, "problem": problem,
        "recipients": recipients, "letters": [
            {"language": "fr", "address": "ana@party.test", "subject": "Invitation : CoPil",
             "text": "Bonjour Ana,\n", "html": "<p>Bonjour</p>", "html_text": "Bonjour"}]}
       for case, problem, recipients in (
           ("letters", "", [{"name": "Ana", "address": "ana@party.test", "language": "fr",
                             "subject": "Invitation : CoPil"}]),
           ("nobody", "", []), ("refused", "meeting 4 is over", []))},
    **{f"staff_meeting_attendance/{case}": {
        **STAFF_FRAME, "meeting": STAFF_MEETING, "rows": rows, "totals": COUNTS,
        "count": 250, "page": 2, "pages": 3,
        "by_party": [{"name": "ODM", "counts": COUNTS}],
        "by_region": [{"name": "africa", "counts": COUNTS}, {"name": "", "counts": COUNTS}],
        "answers": ["accepted", "tentative", "declined"], "problem": problem,
        "entered": {"address": "ana@party.test", "answer": "declined", "comment": "ill"}}
       for case, rows, problem in (
           ("rows", [ROW], NO_PROBLEM), ("none", [], NO_PROBLEM),
           ("refused", [ROW], {"form": "answer", "text": "meeting 4 is cancelled"}))},
    **{f"staff_organisation/{form or 'plain'}": {
        **STAFF_FRAME, "notice": {"key": "seated", "count": 2},
        "problem": {"form": form, "text": "refused"} if form else NO_PROBLEM,
        "parties": [{"name": "ODM", "country": "KE", "region": "africa", "seats": 2}],
        "bodies": [{"slug": "board", "name": "Board", "names": {"fr": "Conseil"}},
                   {"slug": "steering", "name": "Steering", "names": {}}],
        "seats": {"body": "board", "name": "Conseil", "count": 250 if form else 0,
                  "query": "ana", "page": 2, "pages": 3, "rows": [
                      {"address": "ana@party.test", "name": "Ana", "party": "ODM",
                       "role": "substitute", "language": "pt"}] if form else []},
        "names_of_bodies": {"board": "Conseil", "steering": "Steering"},
        "regions": ("africa", "europe"), "languages": ("en", "fr", "es", "de", "pt"),
        "forms": {"party-add": {"name": "", "country": "", "region": "europe"},
                  "party-rename": {"old": "ODM", "new": "O.D.M."},
                  "party-remove": {"name": ""},
                  "seat": {"address": "", "name": "", "party": "ODM", "body": "board",
                           "language": "en", "substitute": "yes"},
                  "unseat": {"body": "", "address": ""},
                  "delegate": {"address": "", "name": "", "language": ""},
                  "body-name": {"body": "board", "language": "fr", "name": ""}}}
       for form in ("", "party-add", "party-rename", "seat", "unseat", "delegate",
                    "body-name")},
})


# -- no HTML in Python ------------------------------------------------------------------

def markup_in_python() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if TAG.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_python_source_writes_html() -> None:
    assert markup_in_python() == [], "pages belong in templates/<language>/pages/"


def test_the_scan_would_see_html_written_in_python() -> None:
    for line in ('f"<p>{text}</p>"', "'<!doctype html><html>'", '"<form method=post>"',
                 "'</ul>'", '"<a href=x>"', '"<br/>"'):
        assert TAG.search(line), line
    for line in ('"<steering@lists.example.org>"', "'{list}-confirm+{token}@'", "x < p > y",
                 '"<https://lists.example.org/lists/steering/>"', 'r"/feeds/(?P<body>[a-z]+)"'):
        assert not TAG.search(line), line


def test_pages_use_the_one_environment_and_never_mark_text_safe() -> None:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            assert "Markup(" not in source, path
            if path != ROOT / "mailer" / "templates.py":
                assert "Environment(" not in source, path


# -- every page, every language ---------------------------------------------------------

def test_every_language_has_the_same_pages() -> None:
    expected = {name.split("/")[0] for name in SAMPLES}
    for language in templates.LANGUAGES:
        assert page_names(language) == expected, language


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("language", templates.LANGUAGES)
def test_page_renders_strictly_in_every_language(name: str, language: str) -> None:
    env = templates.environment()
    response = render_page(env, name.split("/")[0], language, **SAMPLES[name])
    page = response.body.decode()
    assert page.startswith("<!doctype html>\n")
    assert lang_of(page) == language
    assert '<meta charset="utf-8">' in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    title = re.search(r"<title>(.*)</title>", page)
    assert title is not None and title[1].strip(), "every page has a title"
    assert ("content-language", language) in response.headers
    if language != "en":
        english = render_page(env, name.split("/")[0], "en", **SAMPLES[name])
        assert page.replace(f'lang="{language}"', 'lang="en"') != english.body.decode(), \
            f"{language}/pages/{name} is not translated"


def test_a_page_missing_a_name_or_given_an_unknown_problem_is_an_error() -> None:
    import jinja2
    env = templates.environment()
    with pytest.raises(jinja2.UndefinedError):
        render_page(env, "unsubscribed", "fr", address="ana@members.test")
    with pytest.raises(jinja2.UndefinedError):
        render_page(env, "error", "de", 404, problem="no_such_problem")


def test_an_error_page_has_its_status_and_todays_english_words() -> None:
    env = templates.environment()
    words = {"bad_request": "Bad request", "not_found": "Not found",
             "method_not_allowed": "Method not allowed", "temporary_problem": "Temporary problem",
             "no_archive": "no public archive", "no_post": "no such post",
             "no_calendar": "no such calendar", "too_large": "Request too large",
             "timeout": "Request timeout"}
    for problem, status in ERRORS.items():
        response = render_error(env, problem, None)
        assert response.status == status
        assert words[problem] in response.body.decode(), problem


# -- over the wire ----------------------------------------------------------------------

def set_languages(config: Config, languages: dict[str, str]) -> dict[str, str]:
    """Give members their own language; returns each one's unsubscribe path."""
    db = Database(config.database.url, config.base_dir)
    signer = Signer(SECRET, "unsubscribe")

    def change(session: Session) -> dict[str, str]:
        paths = {}
        for member in session.scalars(select(Member)):
            member.language = languages.get(member.address, "")
            paths[member.address] = f"/unsubscribe/{signer.sign(member.id)}"
        return paths
    try:
        return db.transaction(change)
    finally:
        db.close()


async def test_the_unsubscribe_page_speaks_the_members_language_then_the_visitors_then_the_lists(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    french, unset = members(2)
    make_list(config, "steering", [french, unset], display_name="Comité <directeur>",
              language="de")
    paths = set_languages(config, {french: "fr"})
    async with running(config) as daemon:
        port = daemon.ports["http"]
        status, headers, page = await http(port, "GET", paths[french], language="es, en;q=0.5")
        _, _, visitor = await http(port, "GET", paths[unset], language="pt-BR, es-MX;q=0.8")
        _, _, nobody = await http(port, "GET", paths[unset], language="*")
        left, left_headers, done = await http(port, "POST", paths[french],
                                              b"List-Unsubscribe=One-Click", language="en")
        unknown, _, gone = await http(port, "POST", paths[french],
                                      b"List-Unsubscribe=One-Click", language="de-AT")

    assert status == 200 and headers["content-language"] == "fr"
    assert lang_of(page) == "fr" and "Quitter la liste" in page
    assert f"L’adresse {french} ne recevra plus" in page
    assert "Comité &lt;directeur&gt;" in page and "<directeur>" not in page
    assert "<form method='post'><input type='hidden' name='List-Unsubscribe' " \
           "value='One-Click'>" in page
    assert lang_of(visitor) == "pt" and "Cancelar minha inscrição" in visitor, "pt-BR is pt"
    assert lang_of(nobody) == "de" and "verlassen?" in nobody
    assert left == 200 and left_headers["content-language"] == "fr"
    assert f"{french} a quitté la liste" in done
    assert unknown == 404 and "Unbekannter Link" in gone


async def test_the_archive_follows_accept_language_and_escapes_a_hostile_subject(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(1)
    make_list(config, "steering", people, display_name="Steering Committee")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], people[0], [LIST],
                   mail(people[0], LIST, subject=HOSTILE, body=f"Look: {HOSTILE}\n"))
        await wait_quiet(sink, 1)
        port = daemon.ports["http"]
        status, headers, index = await http(port, "GET", "/lists/steering/",
                                            language="de-DE, en;q=0.5")
        link = index.split("href='", 1)[1].split("'", 1)[0]
        post_status, _, post = await http(port, "GET", f"/lists/steering/{link}", language="de")
        english_status, _, english = await http(port, "GET", "/lists/steering/")

    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert status == 200 and headers["content-language"] == "de"
    assert lang_of(index) == "de" and "Archiv von Steering Committee" in index
    assert escaped in index and "<script>" not in index
    assert post_status == 200 and lang_of(post) == "de"
    assert "Archiv von Steering Committee" in post and "Der ganze Thread" in post
    # Dates in the page's language, with the weekday (German: "Fr., 4. Dez. 2026").
    assert re.search(r'<li><span class="meta">[A-Z][a-z]\., \d{1,2}\. \w+\.? \d{4}</span> '
                     r"<a href=", index), index
    assert re.search(r"(Montag|Dienstag|Mittwoch|Donnerstag|Freitag|Samstag|Sonntag), "
                     r"\d{1,2}\. \w+ \d{4}, \d\d:\d\d UTC</p>", post), post
    assert f"<h1>[steering] {escaped}</h1>" in post and f"Look: {escaped}" in post
    assert "<script>" not in post
    assert english_status == 200 and "Archive of Steering Committee" in english, \
        "no Accept-Language: the list's language"


async def test_the_http_error_pages_follow_accept_language(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "board", members(1), subscription="closed")
    async with running(config) as daemon:
        port = daemon.ports["http"]
        french = await http(port, "GET", "/nothing-here", language="fr-CH, fr;q=0.9, en;q=0.8")
        spanish = await http(port, "GET", "/nothing-here", language="it, es;q=0.5")
        portuguese = await http(port, "GET", "/nothing-here", language="pt-BR, en;q=0.5")
        english = await http(port, "GET", "/nothing-here")
        german = await http(port, "POST", "/lists/board/", language="de")
        closed = await http(port, "GET", "/lists/board/", language="fr")
        feed = await http(port, "GET", "/feeds/senate.ics", language="es")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NONSENSE\r\n\r\n")
        garbled = await asyncio.wait_for(reader.read(), 10)
        writer.close()

    assert french[0] == 404 and french[1]["content-language"] == "fr"
    assert lang_of(french[2]) == "fr" and "Page introuvable" in french[2]
    assert spanish[0] == 404 and "Página no encontrada" in spanish[2]
    assert portuguese[0] == 404 and portuguese[1]["content-language"] == "pt"
    assert lang_of(portuguese[2]) == "pt" and "Página não encontrada" in portuguese[2]
    assert english[0] == 404 and "Not found" in english[2]
    assert english[1]["content-language"] == "en"
    assert german[0] == 405 and "Methode nicht erlaubt" in german[2]
    assert closed[0] == 404 and "Pas d’archives publiques" in closed[2]
    assert feed[0] == 404 and "Calendario no encontrado" in feed[2]
    # Not HTTP at all: uvicorn's own one-line 400, before any page is involved.
    assert garbled.startswith(b"HTTP/1.1 400 ") and garbled.endswith(
        b"\r\n\r\nInvalid HTTP request received.")


def test_a_page_escapes_what_its_included_parts_print() -> None:
    """A page's `.inc` parts are HTML too: a meeting's title in the answer page's
    meeting.inc and a refusal in the desk's problem line come out escaped."""
    env = templates.environment()
    hostile = "<script>alert(1)</script>"
    answer = render_page(env, "answer", "en", **{
        **SAMPLES["answer/accept"], "meeting": {**ANSWER["meeting"], "title": hostile}})
    notes = env.get_template("pages/desk/notes.inc").module
    line = str(notes.problem_line(hostile))     # type: ignore[attr-defined]
    assert hostile not in answer.body.decode() and "&lt;script&gt;" in answer.body.decode()
    assert line == '<p class="notice bad" role="alert">&lt;script&gt;alert(1)&lt;/script&gt;</p>'
