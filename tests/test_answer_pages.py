"""Answering an invitation on the web, as a delegate whose mail client shows no buttons.

The delegate reads the links in their invitation, opens one (as a link scanner would, which
must change nothing), presses the one button, and their calendar hears of the answer: a
REQUEST back to them alone with their PARTSTAT, read by icalendar and by ical.js.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select

from mailer.db import Database
from mailer.tokens import Signer
from meetings.models import Invitation, RsvpEvent
from tests.helpers import (
    ANA,
    DOMAIN,
    JORG,
    NEXT_YEAR,
    SECRET,
    Delivered,
    Sink,
    board_of_two,
    calendars,
    cli,
    config_file,
    create_meeting,
    event_of,
    http,
    icaljs,
    make_config,
    party,
    running,
    seat,
    wait_quiet,
)

# The site's address is http.base_url: the daemon's (https://lists.example.org), or, for
# mail that a command sends, that of the command's config.
LINK = re.compile(r"https?://[a-z0-9.:]+(/rsvp/[0-9]+-[a-z2-7]{26})/(accept|tentative|"
                  r"decline|substitute)")


def links(delivered: Delivered) -> dict[str, str]:
    """The answer links of an invitation's text part, by choice (paths on our site); the
    HTML part must carry the same."""
    message = delivered.message
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    found = {choice: f"{path}/{choice}" for path, choice in LINK.findall(text)}
    assert {f"{path}/{choice}" for path, choice in LINK.findall(html)} == set(found.values())
    return found


def form(**fields: Any) -> bytes:
    return urlencode(fields).encode()


def standing(db: Database) -> dict[str, tuple[str, str]]:
    """(PARTSTAT, comment) of each invitee."""
    return db.query(lambda s: {i.address: (i.partstat, i.comment)
                               for i in s.scalars(select(Invitation))})


def events(db: Database) -> list[tuple[str, str, str]]:
    return db.query(lambda s: [(e.kind, e.partstat, e.detail) for e in s.scalars(
        select(RsvpEvent).order_by(RsvpEvent.id))])


def own_attendee(delivered: Delivered) -> Any:
    """The ATTENDEE line of the message's recipient, as icalendar reads it."""
    _, event = event_of(calendars(delivered.message)[0])
    attendees = event["ATTENDEE"] if isinstance(event["ATTENDEE"], list) \
        else [event["ATTENDEE"]]
    [own] = [a for a in attendees if str(a) == f"mailto:{delivered.rcpt}"]
    return own


async def test_a_link_shows_a_button_and_the_button_answers_back_to_the_calendar(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    meeting_id = create_meeting(path, "board")
    async with running(config) as daemon:
        invited = {d.rcpt: d for d in await wait_quiet(sink, 2)}
        ana = links(invited[ANA])
        assert set(ana) == {"accept", "tentative", "decline", "substitute"}
        assert ana["accept"] != links(invited[JORG])["accept"], "each invitee has their own"
        rsvp_token = invited[ANA].mail_from.split("+")[1].split("@")[0]
        assert rsvp_token not in ana["accept"], "the web link is not the reply address"
        port = daemon.ports["http"]

        # A link scanner fetches every link: nothing is answered.
        for choice in ana:
            status, _, _ = await http(port, "GET", ana[choice])
            assert status == 200
        head, _, _ = await http(port, "HEAD", ana["decline"])
        status, headers, page = await http(port, "GET", ana["accept"], language="de")
        assert standing(daemon.db)[ANA] == ("NEEDS-ACTION", "")
        assert events(daemon.db) == []

        # The invitee presses the button, with a comment.
        answered, answered_headers, thanks = await http(
            port, "POST", ana["accept"], form(sequence=0, comment="Je serai là  à 10 h."),
            language="de")
        [back] = (await wait_quiet(sink, 3))[2:]
        assert standing(daemon.db)[ANA] == ("ACCEPTED", "Je serai là à 10 h.")
        assert standing(daemon.db)[JORG] == ("NEEDS-ACTION", "")
        assert events(daemon.db) == [("reply-web", "ACCEPTED", "Je serai là à 10 h.")]

        # The same answer again changes nothing and sends nothing.
        again, _, _ = await http(port, "POST", ana["accept"], form(sequence=0,
                                                                    comment="Je serai là à 10 h."))
        await wait_quiet(sink, 3)
        assert len(events(daemon.db)) == 1
        attendance = {row["address"]: row for row in json.loads(
            cli(path, "meeting", "attendance", str(meeting_id), "--json"))}

    # The page speaks the invitee's language (French), not the visitor's (German).
    assert status == 200 and headers["content-language"] == "fr" and head == 200
    assert '<form method="post">' in page and page.count("<button") == 1
    assert '<input type="hidden" name="sequence" value="0">' in page
    assert "Accepter" in page and "Board meeting" in page and "pas encore de réponse" in page
    assert answered == 200 and answered_headers["content-language"] == "fr"
    assert "Merci" in thanks and "accepté" in thanks and again == 200
    # Back to Ana's calendar only: a REQUEST at the same SEQUENCE with her answer.
    assert back.rcpt == ANA
    message = back.message
    assert message["Subject"].startswith("Votre réponse (accepté)")
    calendar, event = event_of(calendars(message)[0])
    assert calendar["METHOD"] == "REQUEST" and event["SEQUENCE"] == 0
    own = own_attendee(back)
    assert (own.params["PARTSTAT"], own.params["RSVP"]) == ("ACCEPTED", "FALSE")
    [seen] = icaljs(calendars(message)[0])["events"]
    assert seen["attendees"][0]["params"]["PARTSTAT"] == "ACCEPTED"
    assert links(back)["decline"] == ana["decline"], "she may still change her mind"
    assert (attendance[ANA]["partstat"], attendance[ANA]["answered"]) == \
        ("ACCEPTED", "on the web")
    assert attendance[JORG]["answered"] == ""


async def test_a_link_of_another_purpose_or_tampered_is_unknown(tmp_path: Path,
                                                                sqlite_url: str,
                                                                sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    create_meeting(path, "board")
    async with running(config) as daemon:
        invited = {d.rcpt: d for d in await wait_quiet(sink, 2)}
        accept = links(invited[ANA])["accept"]
        ident = int(accept.split("/")[2].split("-")[0])
        token = accept.split("/")[2]
        others = [Signer(SECRET, "attendee").sign(ident),       # the rsvp+TOKEN@ address
                  Signer(SECRET, "unsubscribe").sign(ident),
                  token[:-1] + ("a" if token[-1] != "a" else "b"),  # tampered
                  Signer(SECRET, "answer").sign(ident + 100)]     # no such invitation
        port = daemon.ports["http"]
        pages = [await http(port, method, f"/rsvp/{other}/accept", form(sequence=0),
                            language="es")
                 for other in others for method in ("GET", "POST")]
        await wait_quiet(sink, 2)
        assert standing(daemon.db)[ANA] == ("NEEDS-ACTION", "")
        assert events(daemon.db) == []
    for status, headers, page in pages:
        assert status == 404 and headers["content-language"] == "es"
        assert "Enlace desconocido" in page and "enlace de respuesta" in page


async def test_an_answer_to_a_cancelled_meeting_is_refused_with_a_clear_page(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    meeting_id = create_meeting(path, "board")
    async with running(config) as daemon:
        invited = {d.rcpt: d for d in await wait_quiet(sink, 2)}
        jorg = links(invited[JORG])
        cli(path, "meeting", "cancel", str(meeting_id))
        await wait_quiet(sink, 4)
        port = daemon.ports["http"]
        shown = await http(port, "GET", jorg["accept"])
        refused = await http(port, "POST", jorg["accept"], form(sequence=1))
        await wait_quiet(sink, 4)
        assert standing(daemon.db)[JORG] == ("NEEDS-ACTION", "")
        assert events(daemon.db) == []
    assert shown[0] == 200 and "<form" not in shown[2]
    assert "Diese Sitzung ist abgesagt" in shown[2]
    assert refused[0] == 409 and refused[1]["content-language"] == "de"
    assert "Antwort nicht gespeichert" in refused[2] and "abgesagt" in refused[2]


async def test_a_page_shown_before_a_new_time_asks_again(tmp_path: Path, sqlite_url: str,
                                                         sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    meeting_id = create_meeting(path, "board")
    async with running(config) as daemon:
        invited = {d.rcpt: d for d in await wait_quiet(sink, 2)}
        decline = links(invited[ANA])["decline"]
        port = daemon.ports["http"]
        _, _, before = await http(port, "GET", decline)
        cli(path, "meeting", "reschedule", str(meeting_id), "--start",
            f"{NEXT_YEAR}-03-15T09:00", "--end", f"{NEXT_YEAR}-03-15T17:00")
        updates = {d.rcpt: d for d in (await wait_quiet(sink, 4))[2:]}
        # Pressed after the change, on the page of the old time: the stale rule holds it.
        stale = await http(port, "POST", decline, form(sequence=0))
        unchanged = standing(daemon.db)[ANA]
        fresh = await http(port, "POST", decline, form(sequence=1))
        await wait_quiet(sink, 5)
        assert standing(daemon.db)[ANA] == ("DECLINED", "")
    assert 'name="sequence" value="0"' in before
    assert links(updates[ANA])["decline"] == decline, "the update carries the same links"
    assert stale[0] == 409 and unchanged == ("NEEDS-ACTION", "")
    assert "Cette réunion a changé" in stale[2]
    assert 'name="sequence" value="1"' in stale[2], "the page as it stands now, to answer"
    assert fresh[0] == 200


async def test_a_substitute_sent_on_the_web_follows_the_seating_rules(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    party(path, "ODM", "KE", "africa")
    party(path, "ANC", "ZA", "africa")
    seat(path, "ama@odm.example", "Ama Owino", "ODM", "steering")
    seat(path, "thabo@anc.example", "Thabo", "ANC", "steering")
    seat(path, "zuma@anc.example", "Zuma", "ANC", "board")
    create_meeting(path, "steering")
    async with running(config) as daemon:
        invited = {d.rcpt: d for d in await wait_quiet(sink, 2)}
        substitute = links(invited["ama@odm.example"])["substitute"]
        port = daemon.ports["http"]
        page = await http(port, "GET", substitute)
        missing = await http(port, "POST", substitute, form(sequence=0, substitute=" "))
        # One delegate per party in the Steering Committee: ANC's may not speak for ODM.
        other_party = await http(port, "POST", substitute,
                                 form(sequence=0, substitute="zuma@anc.example", name="Zuma"))
        already = await http(port, "POST", substitute,
                             form(sequence=0, substitute="thabo@anc.example"))
        assert standing(daemon.db)["ama@odm.example"] == ("NEEDS-ACTION", "")
        sent = await http(port, "POST", substitute,
                          form(sequence=0, substitute="Wanjiru@ODM.example", name="Wanjiru",
                               comment="Party congress"))
        delivered = {d.rcpt: d for d in (await wait_quiet(sink, 4))[2:]}
        taken = await http(port, "POST", links(invited["ama@odm.example"])["accept"],
                           form(sequence=0))
        rows = standing(daemon.db)
        recorded = events(daemon.db)
    assert page[0] == 200 and 'name="substitute"' in page[2] and 'name="name"' in page[2]
    assert missing[0] == 400 and "substitute’s address" in missing[2]
    assert other_party[0] == 409 and "Answer not recorded" in other_party[2]
    assert "zuma@anc.example is a delegate of ANC; a substitute speaks for ODM" in \
        other_party[2]
    assert already[0] == 409 and "already invited" in already[2]
    assert sent[0] == 200 and "wanjiru@odm.example" in sent[2]
    assert rows["ama@odm.example"][0] == "DELEGATED"
    assert rows["wanjiru@odm.example"] == ("NEEDS-ACTION", "")
    assert recorded == [("delegated-web", "DELEGATED", "wanjiru@odm.example")]
    # The substitute's REQUEST names whom they stand in for; the delegator's calendar
    # hears that they sent someone.
    assert set(delivered) == {"wanjiru@odm.example", "ama@odm.example"}
    assert own_attendee(delivered["wanjiru@odm.example"]).params["DELEGATED-FROM"] == \
        "mailto:ama@odm.example"
    ama = own_attendee(delivered["ama@odm.example"])
    assert (ama.params["PARTSTAT"], ama.params["DELEGATED-TO"]) == \
        ("DELEGATED", "mailto:wanjiru@odm.example")
    assert LINK.search(delivered["ama@odm.example"].message.get_body(("plain",))
                       .get_content()) is None, "a delegator's seat is for the coordinators"
    # Taking the seat back is for the coordinators, as it is by mail.
    assert taken[0] == 409 and "coordination@" + DOMAIN in taken[2]


# The answer page's button in each language (templates/<lang>/pages/answer_words.inc).
ACCEPT = {"en": "Accept", "fr": "Accepter", "es": "Aceptar", "de": "Zusagen", "pt": "Aceitar"}
UNKNOWN = {"en": "Unknown link", "fr": "Lien inconnu", "es": "Enlace desconocido",
           "de": "Unbekannter Link", "pt": "Link desconhecido"}


async def test_the_pages_speak_the_invitees_language_and_else_the_browsers(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    for number, language in enumerate(ACCEPT):
        party(path, f"Party {language}", "FR")
        seat(path, f"{language}@party.example", f"Delegate {number}", f"Party {language}",
             "board", language)
    create_meeting(path, "board")
    async with running(config) as daemon:
        invited = {d.rcpt: d for d in await wait_quiet(sink, len(ACCEPT))}
        port = daemon.ports["http"]
        # Each invitee's page in their own language, whatever the browser prefers.
        own = {language: await http(port, "GET",
                                    links(invited[f"{language}@party.example"])["accept"],
                                    language="de-AT, de;q=0.9" if language != "de" else "pt")
               for language in ACCEPT}
        # A link that names no invitation: the browser's language.
        unknown = {language: await http(port, "GET", f"/rsvp/1-{'a' * 26}/accept",
                                        language=f"{language}, en;q=0.1")
                   for language in ACCEPT}
    for language, (status, headers, page) in own.items():
        assert status == 200 and headers["content-language"] == language
        assert f'<html lang="{language}">' in page
        assert f'<button type="submit">{ACCEPT[language]}</button>' in page
    for language, (status, headers, page) in unknown.items():
        assert status == 404 and headers["content-language"] == language
        assert UNKNOWN[language] in page
