"""Every robot-mail template renders in every language, strictly (no missing names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailer import templates
from tests.helpers import INVITE

LIST = {"name": "steering", "display_name": "Steering Committee", "description": "Open list",
        "post": "steering@lists.example.org", "request": "steering-request@lists.example.org",
        "join": "steering-join@lists.example.org", "leave": "steering-leave@lists.example.org",
        "owner": "steering-owner@lists.example.org"}
COMMON: dict[str, Any] = {"list": LIST, "site_name": "Progressive Alliance"}

# The names each template uses beyond COMMON. A template missing here fails the test, so
# adding a template means adding its sample context.
SAMPLES: dict[str, dict[str, Any]] = {
    "footer": {},
    "sign_in": {"link": "https://lists.example.org/sign-in/12-abcdefghijklmnopqrstuvwxyz",
                "minutes": 15, "address": "ana@members.test"},
    "confirm_subscribe": {"token": "12-abcdefghijklmnopqrstuvwxyz", "address": "ana@members.test",
                          "confirm_address":
                              "steering-confirm+12-abcdefghijklmnopqrstuvwxyz@lists.example.org",
                          "days": 7,
                          "confirm_url": "https://lists.example.org/confirm/steering/12-abcdefghijklmnopqrstuvwxyz"},
    "confirm_unsubscribe": {"token": "13-abcdefghijklmnopqrstuvwxyz",
                            "address": "ana@members.test",
                            "confirm_address":
                                "steering-confirm+13-abcdefghijklmnopqrstuvwxyz@lists.example.org",
                            "days": 7,
                            "confirm_url": "https://lists.example.org/confirm/steering/13-abcdefghijklmnopqrstuvwxyz"},
    "welcome": {"address": "ana@members.test"},
    "goodbye": {"address": "ana@members.test"},
    "subscription_refused": {},
    "subscription_awaiting_approval": {},
    "subscription_approval": {"address": "ana@members.test",
                              "token": "14-abcdefghijklmnopqrstuvwxyz",
                              "confirm_address":
                                  "steering-confirm+14-abcdefghijklmnopqrstuvwxyz@lists.example.org"},
    "subscription_rejected": {},
    "command_results": {"help": True, "results": [
        {"command": "subscribe", "code": "already_member", "detail": ""},
        {"command": "unsubscribe", "code": "not_member", "detail": "kofi@party.test"},
        {"command": "set digest", "code": "delivery_set", "detail": "digest"},
        {"command": "set language fr", "code": "language_set", "detail": "fr"},
        {"command": "set colour blue", "code": "bad_set", "detail": "colour blue"},
        {"command": "who", "code": "who", "detail": "ana@members.test\nkofi@party.test"},
        {"command": "who", "code": "who_refused", "detail": ""},
        {"command": "confirm 9-zzz", "code": "bad_token", "detail": "9-zzz"},
        {"command": "confirm", "code": "moderation_help", "detail": ""},
        {"command": "confirm", "code": "already_decided", "detail": "expired"},
        {"command": "confirm", "code": "moderated", "detail": "approve"},
        {"command": "confirm", "code": "join_rejected", "detail": "kofi@party.test"},
        {"command": "help", "code": "help", "detail": ""},
        {"command": "dance", "code": "unknown", "detail": "dance"}]},
    "held_moderator": {"sender": "kofi@party.test", "post_subject": "Agenda for Nairobi",
                       "reason": "the sender is not a member of the list",
                       "reason_code": "not_member",
                       "token": "h3-abcdefghijklmnopqrstuvwxyz",
                       "confirm_address":
                           "steering-confirm+h3-abcdefghijklmnopqrstuvwxyz@lists.example.org",
                       "id": 3, "days": 14},
    "held_poster": {"sender": "kofi@party.test", "post_subject": "Agenda for Nairobi",
                    "reason": "the sender is not a member of the list",
                    "reason_code": "not_member",
                    "token": "h3-abcdefghijklmnopqrstuvwxyz",
                    "confirm_address":
                        "steering-confirm+h3-abcdefghijklmnopqrstuvwxyz@lists.example.org",
                    "id": 3, "days": 14},
    "post_rejected": {"post_subject": "Agenda for Nairobi",
                      "reason": "the sender is not a member of the list",
                      "reason_code": "not_member"},
    "hold_expired": {"post_subject": "Agenda for Nairobi", "days": 14},
    "bounce_disabled": {"address": "ana@members.test", "token": "12-abcdefghijklmnopqrstuvwxyz",
                        "confirm_address":
                            "steering-confirm+12-abcdefghijklmnopqrstuvwxyz@lists.example.org",
                        "days": 7},
    "bounce_owner_notice": {"address": "ana@members.test", "score": 5.0, "threshold": 5.0},
    "digest_header": {"volume": 1, "issue": 7, "topics": [
        {"number": 1, "subject": "Agenda for Nairobi", "author": "Ana Silva"},
        {"number": 2, "subject": "Re: Agenda for Nairobi", "author": "kofi@party.test"}]},
    "digest_footer": {"volume": 1, "issue": 7},
    "counter_summary": {"title": "Steering Committee, Nairobi", "meeting_id": 4,
                        "name": "Ana Silva", "address": "ana@party.test",
                        "current_start": "2027-03-14 09:00", "current_end": "2027-03-14 17:00",
                        "tz": "Africa/Nairobi", "current_location": "KICC, Nairobi",
                        "proposed_start": "2027-03-15 09:00",
                        "proposed_end": "2027-03-15 17:00", "proposed_location": "",
                        "comment": "The 14th is our party congress.", "outdated": True},
    "invitation": INVITE,
    "invitation_update": INVITE,
    "invitation_cancel": {**INVITE, "whole": False},
    "reminder": INVITE,
    "invitation_answered": INVITE,
    "rsvp_summary": {"count": 2, "events": [
        {"meeting": "Board, Berlin", "date": "2027-03-14 09:00", "meeting_id": 4,
         "name": "Ana Silva", "address": "ana@party.test", "kind": "reply",
         "partstat": "ACCEPTED", "detail": "See you there", "at": "2027-02-01T10:00:00Z"},
        {"meeting": "Board, Berlin", "date": "2027-03-14 09:00", "meeting_id": 4,
         "name": "Kofi Mensah", "address": "kofi@party.test", "kind": "delegated",
         "partstat": "DELEGATED", "detail": "ama@party.test", "at": "2027-02-01T11:00:00Z"}]},
    "rsvp_note": {"sender": "ana@party.test", "title": "Board, Berlin", "meeting_id": 4,
                  "when": "2027-03-14 09:00–17:00 (Europe/Berlin)", "name": "Ana Silva",
                  "address": "ana@party.test", "partstat": "ACCEPTED", "answered": "by hand",
                  "replied_at": "2027-02-01T10:00:00Z", "comment": "Late, after 11:00",
                  "delivery": "a message failed: 5.7.1 on 2027-02-02: 550 5.7.1 refused"},
    "cadence_warning": {"shortfalls": [{"body": "Steering Committee", "year": 2027,
                                        "held": 1, "required": 2}]},
    "delegate_left_list": {"address": "ana@party.test", "name": "Ana Silva",
                           "party": "Parti Socialiste", "body": "Board", "slug": "board",
                           "role": "delegate", "list_address": "board@lists.example.org"},
}


def template_names() -> list[str]:
    names = {path.stem for path in (templates.TEMPLATES / "en").glob("*.txt")}
    return sorted(names)


def test_every_language_has_the_same_templates() -> None:
    expected = {path.name for path in (templates.TEMPLATES / "en").glob("*.txt")}
    for language in templates.LANGUAGES:
        found = {path.name for path in (templates.TEMPLATES / language).glob("*.txt")}
        assert found == expected, f"{language}: {sorted(found ^ expected)}"


@pytest.mark.parametrize("name", template_names())
@pytest.mark.parametrize("language", templates.LANGUAGES)
def test_template_renders_strictly(name: str, language: str) -> None:
    assert name in SAMPLES, f"add a sample context for {name} to SAMPLES"
    env = templates.environment()
    subject, body = templates.render(env, name, language, {**COMMON, **SAMPLES[name]})
    assert subject, f"{language}/{name} sets no subject"
    assert "\n" not in subject
    assert body.strip()
    if language != "en":
        english = templates.render(env, name, "en", {**COMMON, **SAMPLES[name]})
        assert (subject, body) != english, f"{language}/{name} is not translated"


def test_a_missing_name_is_an_error_not_an_empty_string(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "probe.txt").write_text("{% set subject = 'Hi' %}Hello {{ who }}\n")
    env = templates.environment(tmp_path)
    import jinja2
    with pytest.raises(jinja2.UndefinedError):
        templates.render(env, "probe", "en", {})


@pytest.mark.parametrize("language", templates.LANGUAGES)
@pytest.mark.parametrize(("title", "heading"), [
    ("Steering Committee meeting", "Steering Committee meeting"),   # the body named once
    ("Annual meeting", "Annual meeting (Steering Committee)")])
def test_a_meeting_is_named_with_its_body_once(language: str, title: str,
                                               heading: str) -> None:
    environment = templates.environment(templates.TEMPLATES)
    context = {**INVITE, "meeting": {**INVITE["meeting"], "title": title},
               "site_name": "Progressive Alliance", "mailing": "invitation", "subject": "x"}
    text = environment.get_template(f"{language}/invitation.txt").render(context)
    html = environment.get_template(f"{language}/invitation.html").render(context)
    assert f"  {heading}\n" in text and f">{heading}</th>" in html


@pytest.mark.parametrize("language", templates.LANGUAGES)
def test_the_summary_and_the_note_say_when_an_answer_came_on_the_web(language: str) -> None:
    env = templates.environment()
    events = [{**event, "kind": kind} for event, kind in zip(
        SAMPLES["rsvp_summary"]["events"], ("reply-web", "delegated-web"), strict=True)]
    _, summary = templates.render(env, "rsvp_summary", language,
                                  {**COMMON, "count": 2, "events": events})
    _, note = templates.render(env, "rsvp_note", language,
                               {**COMMON, **SAMPLES["rsvp_note"], "answered": "on the web"})
    words = {"en": "on the web", "fr": "sur le web", "es": "en la web", "de": "im Web",
             "pt": "pela web"}[language]
    assert summary.count(words) == 2 and "-web" not in summary
    assert f"({words}, " in note
