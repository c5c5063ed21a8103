"""The meetings side of the `alliance` command line (DESIGN §6).

Groups `party`, `body`, `delegate`, `meeting` and `coordination`, and the command
`cadence`; `mailer.cli` adds them to the main group. Each command runs in one
transaction; mail it causes is queued there and sent by the running daemon. Mistakes get
one line and exit code 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click
from sqlalchemy.orm import Session

from lists.models import LANGUAGES
from lists.service import ListError
from mailer.console import Context, emit, pass_context, when
from meetings import organisation, schedule
from meetings.models import BY_HAND, REGIONS, Meeting
from meetings.organisation import MeetingError

if TYPE_CHECKING:
    from meetings.meeting_site import MeetingSite

# The modules that make or read mail (invitations, reports, the feed, coordination,
# cadence: Jinja and icalendar) are imported by the commands that use them, so that a
# listing command loads none of them (issue 11, item 10: start-up).

T = TypeVar("T")


def _site(context: Context) -> MeetingSite:
    from meetings.meeting_site import MeetingSite

    return MeetingSite.from_config(context.config, context.secret, context.templates)


def run(context: Context, fn: Callable[..., T], *args: Any) -> T:
    """fn(session, *args) in one transaction; a MeetingError becomes one line."""
    return context.transaction(fn, *args, mistakes=(MeetingError, ListError))


def _when(stamp: float | None) -> str:
    return when(stamp, seconds=False)


# -- parties --------------------------------------------------------------------------

@click.group("party")
def party_group() -> None:
    """Member parties."""


@party_group.command("add")
@click.argument("name")
@click.option("--country", required=True, help="ISO 3166-1 two-letter code, such as KE")
@click.option("--region", required=True, type=click.Choice(REGIONS, case_sensitive=False))
@pass_context
def party_add(context: Context, name: str, country: str, region: str) -> None:
    """Add the member party NAME."""
    made = run(context, lambda s: organisation.add_party(s, name, country=country,
                                                        region=region).name)
    click.echo(f"added party {made}")


@party_group.command("rename")
@click.argument("old")
@click.argument("new")
@pass_context
def party_rename(context: Context, old: str, new: str) -> None:
    """Call the party OLD by the name NEW from now on (its seats stay)."""
    made = run(context, lambda s: organisation.rename_party(s, old, new).name)
    click.echo(f"party {old} is now called {made}")


@party_group.command("remove")
@click.argument("name")
@pass_context
def party_remove(context: Context, name: str) -> None:
    """Remove the party NAME; refused while it has seats or a record of meetings."""
    gone = run(context, lambda s: organisation.remove_party(s, name))
    click.echo(f"removed party {gone}")


@party_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def party_list(context: Context, as_json: bool) -> None:
    """Show the member parties."""
    rows = run(context, lambda s: [{"name": p.name, "country": p.country, "region": p.region}
                                   for p in organisation.parties(s)])
    emit(rows, as_json, ["name", "country", "region"])


# -- bodies ---------------------------------------------------------------------------

LANGUAGE = click.Choice(LANGUAGES, case_sensitive=False)


@click.group("body")
def body_group() -> None:
    """Bodies that meet: board, steering, conference, and custom ones."""


@body_group.command("add")
@click.argument("slug")
@click.option("--name", required=True, help="the name shown in invitations")
@click.option("--subscription", default="closed", show_default=True,
              type=click.Choice(["confirm", "moderate", "closed"], case_sensitive=False),
              help="how others may join the body's list")
@pass_context
def body_add(context: Context, slug: str, name: str, subscription: str) -> None:
    """Add a custom body SLUG (a seminar, campaign or regional network) and its list."""
    made = run(context, lambda s: organisation.add_body(s, slug, name,
                                                       subscription=subscription).slug)
    click.echo(f"added body {made} with the list {made}@{context.config.site.domain}")


@body_group.command("name")
@click.argument("slug")
@click.argument("language", type=LANGUAGE)
@click.argument("name")
@pass_context
def body_name(context: Context, slug: str, language: str, name: str) -> None:
    """Name the body SLUG in LANGUAGE, as invitations in that language will call it
    ("en" is its main name; an empty NAME drops a translation)."""
    said = run(context, lambda s: organisation.name_body(s, slug, language, name))
    click.echo(f"body {slug.strip().lower()} in {language.lower()}: {said}")


@body_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def body_list(context: Context, as_json: bool) -> None:
    """Show the bodies, their charter rules and their names in other languages."""
    rows = run(context, lambda s: [
        {"slug": b.slug, "name": b.name, "max_parties": b.max_parties or "",
         "one_per_party": b.one_delegate_per_party, "per_year": b.meetings_per_year,
         "names": "; ".join(f"{code} {text}" for code, text in sorted((b.names or {}).items()))}
        for b in organisation.bodies(s)])
    emit(rows, as_json, ["slug", "name", "max_parties", "one_per_party", "per_year",
                         "names"])


# -- delegates ------------------------------------------------------------------------

@click.group("delegate")
def delegate_group() -> None:
    """Delegates and their seats in bodies."""


@delegate_group.command("add")
@click.argument("address")
@click.option("--name", default="", help="needed for a new delegate; else the stored one")
@click.option("--party", required=True)
@click.option("--body", "body_slug", required=True)
@click.option("--language", type=LANGUAGE,
              help="for a new delegate (default en); else the stored one")
@click.option("--substitute", is_flag=True, help="the party's named substitute")
@pass_context
def delegate_add(context: Context, address: str, name: str, party: str, body_slug: str,
                 language: str | None, substitute: bool) -> None:
    """Seat ADDRESS in a body: subscribed to its list, invited to its meetings."""
    from meetings import coordinating

    site = _site(context)

    def add(session: Session) -> tuple[str, int]:
        given = coordinating.give_seat(session, site, body_slug, party, address=address,
                                       name=name, language=language or "",
                                       substitute=substitute)
        return f"{given.seat.role} of {party} in {given.body}", given.invited

    seated, invited = run(context, add)
    click.echo(f"{address}: {seated}" + (f"; invited to {invited} meeting(s)"
                                         if invited else ""))


@delegate_group.command("remove")
@click.argument("address")
@click.option("--body", "body_slug", required=True)
@pass_context
def delegate_remove(context: Context, address: str, body_slug: str) -> None:
    """Take ADDRESS's seat in a body; invitations already sent are cancelled."""
    from meetings import coordinating

    site = _site(context)

    def remove(session: Session) -> tuple[str, int]:
        taken = coordinating.take_seat(session, site, body_slug, address)
        unseated = taken.unseated
        listed = (f"; off the {taken.body} list" if unseated.left_list else
                  f"; stays on the {taken.body} list (joined it on their own)"
                  if unseated.stays else "")
        return listed, taken.cancelled

    listed, cancelled = run(context, remove)
    click.echo(f"{address} has no seat in {body_slug} any more{listed}"
               + (f"; {cancelled} invitation(s) cancelled" if cancelled else ""))


@delegate_group.command("set")
@click.argument("address")
@click.option("--name", default="", help="the person's new name")
@click.option("--language", type=LANGUAGE, help="the person's new language")
@pass_context
def delegate_set(context: Context, address: str, name: str, language: str | None) -> None:
    """Change ADDRESS's name or language, in every body they sit in."""
    shown = run(context, lambda s: (lambda d: f"{d.address}: {d.name}, {d.language}")(
        organisation.set_delegate(s, address, name=name, language=language or "")))
    click.echo(shown)


@delegate_group.command("list")
@click.option("--body", "body_slug", default="", help="one body (default: every body)")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def delegate_list(context: Context, body_slug: str, as_json: bool) -> None:
    """Show the seats of a body, or of every body."""
    def rows(session: Session) -> list[dict[str, Any]]:
        body = organisation.find_body(session, body_slug) if body_slug else None
        slugs = {b.id: b.slug for b in organisation.bodies(session)}
        return [{"body": slugs[seat.body_id], "address": d.address, "name": d.name,
                 "party": p.name, "seat": seat.role, "language": d.language}
                for seat, d, p in organisation.seats(session, body)]

    emit(run(context, rows), as_json, ["body", "address", "name", "party", "seat",
                                       "language"])


@delegate_group.command("import")
@click.argument("source", type=click.File("r", encoding="utf-8-sig"))
@pass_context
def delegate_import(context: Context, source: TextIO) -> None:
    """Seat the delegates of a CSV file (address,name,party,body,language): every row is
    checked first; if any is bad, each bad row is named and nothing is applied."""
    from meetings import invitations, seating

    site = _site(context)

    def apply(session: Session) -> tuple[seating.Imported, int]:
        done = seating.import_seats(session, seating.read_rows(source))
        return done, sum(invitations.seat_added(session, site, body) for body in done.bodies)

    try:
        done, invited = context.db.transaction(apply)
    except seating.SeatsRefused as refused:
        for problem in refused.problems:
            click.echo(problem, err=True)
        raise click.ClickException(str(refused)) from None
    except (MeetingError, ListError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"seated {done.seated}, already seated {done.already}"
               + (f"; {invited} invitation(s) queued" if invited else ""))


# -- meetings -------------------------------------------------------------------------

@click.group("meeting")
def meeting_group() -> None:
    """Meetings and their invitations."""


@meeting_group.command("create")
@click.option("--body", "body_slug", required=True)
@click.option("--title", required=True)
@click.option("--start", required=True, help="local date and time, 2027-03-14T09:00")
@click.option("--end", required=True, help="local date and time")
@click.option("--tz", required=True, help="IANA time zone, such as Africa/Nairobi")
@click.option("--location", default="")
@click.option("--host", default="", help="the host party")
@click.option("--alongside", default="", help="the event the meeting is held alongside")
@click.option("--description", default="")
@click.option("--agenda-url", default="")
@click.option("--send-at", default="",
              help="local time (or now) when the invitations go out; default: a draft, "
                   "sent by `meeting invite`")
@pass_context
def meeting_create(context: Context, body_slug: str, title: str, start: str, end: str,
                   tz: str, location: str, host: str, alongside: str, description: str,
                   agenda_url: str, send_at: str) -> None:
    """Plan a meeting: a draft, or scheduled with --send-at (the scheduler sends then)."""
    from meetings import invitations

    site = _site(context)
    plan = schedule.Plan(body=body_slug, title=title, start=start, end=end, tz=tz,
                         location=location, host=host, alongside=alongside,
                         description=description, agenda_url=agenda_url, send_at=send_at)

    def create(session: Session) -> tuple[int, float | None, int]:
        made = schedule.create(session, site, plan)
        return made.id, made.send_at, len(invitations.invitees(session, made))

    made, at, count = run(context, create)
    if at is None:
        click.echo(f"meeting {made} created as a draft: nothing is sent. Check it with "
                   f"`alliance meeting show {made}`, then send the invitations with "
                   f"`alliance meeting invite {made}` (--dry-run to preview them)")
        return
    click.echo(f"meeting {made} created: invitations to {count} "
               f"delegate{'' if count == 1 else 's'} at {_when(at)} UTC "
               f"(`alliance meeting show {made}` shows it all)")


def _meeting_action(context: Context, meeting_id: int,
                    action: Callable[[Session, MeetingSite, Meeting], T]) -> T:
    site = _site(context)
    return run(context, lambda s: action(s, site, schedule.find(s, meeting_id)))


@meeting_group.command("invite")
@click.argument("meeting_id", type=int)
@click.option("--dry-run", is_flag=True, help="show what would be sent to whom; send nothing")
@pass_context
def meeting_invite(context: Context, meeting_id: int, dry_run: bool) -> None:
    """Send the invitations now (only to invitees who have had none)."""
    from meetings import invitations

    if dry_run:
        _preview(context, meeting_id)
        return
    count = _meeting_action(context, meeting_id, invitations.invite)
    click.echo(f"meeting {meeting_id}: {count} invitation(s) queued")


def _preview(context: Context, meeting_id: int) -> None:
    from meetings import invitations

    letters = _meeting_action(context, meeting_id, invitations.preview)
    click.echo(f"meeting {meeting_id}: a dry run, nothing is sent; `alliance meeting invite "
               f"{meeting_id}` would queue {len(letters)} invitation(s):")
    emit([{"to": f"{p.name} <{p.address}>", "language": p.language, "subject": p.subject}
          for p in letters], False, ["to", "language", "subject"])
    shown: set[str] = set()
    for letter in letters:
        if letter.language not in shown:
            shown.add(letter.language)
            click.echo(f"\n--- the text to {letter.address} ({letter.language}) ---")
            click.echo(letter.text.replace("\r\n", "\n").rstrip())


@meeting_group.command("show")
@click.argument("meeting_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def meeting_show(context: Context, meeting_id: int, as_json: bool) -> None:
    """Everything about a meeting: its state, times, place, and who is (to be) invited."""
    from meetings import reports

    shown = run(context, lambda s: reports.details(s, schedule.find(s, meeting_id)))
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    people = shown.pop("invited", None)
    waiting = shown.pop("will_be_invited", None)
    click.echo(f"meeting {shown['id']}: {shown['title']} ({shown['state']})")
    for key in SHOWN:
        click.echo(f"  {key.replace('_', ' ') + ':':12} {shown[key]}".rstrip())
    if shown["state"] == "draft":
        click.echo(f"  (a draft: `alliance meeting invite {meeting_id}` sends the invitations)")
    if people is not None:
        click.echo(f"invited ({len(people)}):")
        emit(people, False, ["name", "party", "address", "partstat", "answered", "comment"])
    else:
        click.echo(f"will be invited ({len(waiting)}):")
        emit(waiting, False, ["name", "party", "address", "language"])


SHOWN = ("body", "state", "status", "sequence", "start", "start_utc", "end", "end_utc",
         "location", "host", "alongside", "agenda_url", "send_at", "uid", "description")


@meeting_group.command("delete")
@click.argument("meeting_id", type=int)
@pass_context
def meeting_delete(context: Context, meeting_id: int) -> None:
    """Delete a meeting whose invitations have not gone out (else: `meeting cancel`)."""
    from meetings import invitations

    title = _meeting_action(context, meeting_id, lambda s, _, m: invitations.delete(s, m))
    click.echo(f"meeting {meeting_id} ({title}) deleted; nothing had been sent")


@meeting_group.command("reschedule")
@click.argument("meeting_id", type=int)
@click.option("--start", required=True)
@click.option("--end", required=True)
@click.option("--tz", default="", help="a new time zone (default: the meeting's)")
@pass_context
def meeting_reschedule(context: Context, meeting_id: int, start: str, end: str,
                       tz: str) -> None:
    """Move the meeting: SEQUENCE+1, answers reset, updates sent."""
    from meetings import coordinating

    count = _meeting_action(context, meeting_id, lambda s, site, m: coordinating.reschedule(
        s, site, m, start, end, tz))
    if count is None:
        click.echo(f"meeting {meeting_id}: nothing changed (the same times); no updates")
        return
    click.echo(f"meeting {meeting_id} rescheduled; {count} update(s) queued")


@meeting_group.command("update")
@click.argument("meeting_id", type=int)
@click.option("--title")
@click.option("--description")
@click.option("--location")
@click.option("--agenda-url")
@click.option("--alongside")
@click.option("--status", type=click.Choice(list(schedule.STATUSES), case_sensitive=False))
@click.option("--host", help="the host party (\"\" for none)")
@click.option("--send-at", help="before anything is sent: local time or now (\"\": a draft)")
@pass_context
def meeting_update(context: Context, meeting_id: int, title: str | None,
                   description: str | None, location: str | None, agenda_url: str | None,
                   alongside: str | None, status: str | None, host: str | None,
                   send_at: str | None) -> None:
    """Change details; location and status count as major changes (SEQUENCE+1)."""
    from meetings import invitations

    changes = schedule.Changes(title=title, description=description, location=location,
                               agenda_url=agenda_url, alongside=alongside, status=status,
                               host=host, send_at=send_at)
    count = _meeting_action(context, meeting_id,
                            lambda s, site, m: invitations.update(s, site, m, changes))
    click.echo(f"meeting {meeting_id} updated; {count} update(s) queued")


@meeting_group.command("cancel")
@click.argument("meeting_id", type=int)
@click.option("--reason", default="", help="why, told to every invitee")
@pass_context
def meeting_cancel(context: Context, meeting_id: int, reason: str) -> None:
    """Cancel the meeting: METHOD:CANCEL to every invitee, with the reason if given."""
    from meetings import coordinating

    count = _meeting_action(context, meeting_id,
                            lambda s, site, m: coordinating.cancel(s, site, m, reason))
    click.echo(f"meeting {meeting_id} cancelled; {count} cancellation(s) queued")


@meeting_group.command("delegate")
@click.argument("meeting_id", type=int)
@click.argument("from_address")
@click.argument("to_address")
@click.option("--name", default="", help="the substitute's name")
@pass_context
def meeting_delegate(context: Context, meeting_id: int, from_address: str, to_address: str,
                     name: str) -> None:
    """FROM_ADDRESS sends TO_ADDRESS in their place; the substitute is invited."""
    from meetings import invitations

    def send(session: Session, site: MeetingSite, meeting: Meeting) -> str:
        origin = invitations.find_invitation(session, meeting, from_address)
        return invitations.delegate(session, site, meeting, origin, to_address, name).address

    substitute = _meeting_action(context, meeting_id, send)
    click.echo(f"meeting {meeting_id}: {substitute} invited in place of {from_address}")


@meeting_group.command("answer")
@click.argument("meeting_id", type=int)
@click.argument("address")
@click.argument("answer", type=click.Choice([p.lower() for p in BY_HAND],
                                            case_sensitive=False))
@click.option("--comment", default="", help="what they said, shown beside the answer")
@pass_context
def meeting_answer(context: Context, meeting_id: int, address: str, answer: str,
                   comment: str) -> None:
    """Record ADDRESS's answer, given by phone or in words: shown as by hand."""
    from meetings import invitations

    def record(session: Session, site: MeetingSite, meeting: Meeting) -> str:
        return invitations.answer_by_hand(session, site, meeting, address, answer.upper(),
                                          comment).address

    invitee = _meeting_action(context, meeting_id, record)
    click.echo(f"meeting {meeting_id}: {invitee} {answer.upper()}, recorded by hand")


@meeting_group.command("attendance")
@click.argument("meeting_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@pass_context
def meeting_attendance(context: Context, meeting_id: int, as_json: bool, as_csv: bool) -> None:
    """Who is invited and what they answered; the totals and the meeting's state last."""
    from meetings import invitations, reports

    def read(session: Session) -> tuple[list[dict[str, Any]], str]:
        meeting = schedule.find(session, meeting_id)
        state = schedule.state(meeting, invitations.was_sent(session, meeting))
        return reports.attendance(session, meeting), f"meeting {meeting_id}: {state}"

    rows, state = run(context, read)
    if as_csv:
        click.echo(reports.attendance_csv(rows), nl=False)
        return
    emit(rows, as_json, reports.COLUMNS)
    if not as_json:
        click.echo(f"{state}; {reports.totals(rows)}")


@meeting_group.command("list")
@click.option("--body", "body_slug", default="")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def meeting_list(context: Context, body_slug: str, as_json: bool) -> None:
    """Show meetings (of one body), soonest first."""
    def rows(session: Session) -> list[dict[str, Any]]:
        from sqlalchemy import select

        query = select(Meeting).order_by(Meeting.starts_at)
        if body_slug:
            query = query.where(Meeting.body_id == organisation.find_body(session,
                                                                          body_slug).id)
        found = list(session.scalars(query))
        sent = schedule.sent_meetings(session, [m.id for m in found])
        return [{"id": m.id, "start": m.start_local[:16].replace("T", " "), "zone": m.tz,
                 "title": m.title, "place": m.location,
                 "state": schedule.state(m, m.id in sent), "status": m.status,
                 "sequence": m.sequence, "send_at": _when(m.send_at)} for m in found]

    emit(run(context, rows), as_json, ["id", "start", "zone", "title", "place", "state",
                                       "status", "sequence", "send_at"])


@meeting_group.command("feed")
@click.argument("body_slug")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="file to write (default: standard output)")
@pass_context
def meeting_feed(context: Context, body_slug: str, output: Path | None) -> None:
    """Write the public iCalendar feed (METHOD:PUBLISH) of a body's meetings."""
    from meetings import feed

    site = _site(context)
    data = run(context, lambda s: feed.feed(s, site, body_slug))
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)
        click.echo(f"wrote the {body_slug} feed to {output}")


# -- coordination and cadence ---------------------------------------------------------

@click.group("coordination")
def coordination_group() -> None:
    """Which party coordinates (and sends the invitations)."""


@coordination_group.command("handover")
@click.argument("party")
@click.option("--contact", "contacts", multiple=True,
              help="an address that coordination@ reaches (repeatable)")
@pass_context
def coordination_handover(context: Context, party: str, contacts: tuple[str, ...]) -> None:
    """PARTY coordinates from now on: the organizer of every invitation sent from now."""
    from meetings import coordination

    term = run(context, lambda s: coordination.handover(s, party, list(contacts),
                                                        time.time()).contact)
    click.echo(f"{party} coordinates from now on"
               + (f"; coordination@ reaches {term.replace(',', ', ')}" if term else ""))


@coordination_group.command("show")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def coordination_show(context: Context, as_json: bool) -> None:
    """The coordination terms, oldest first."""
    from meetings import coordination

    rows = run(context, lambda s: [
        {"party": p.name, "from": _when(t.started_at), "until": _when(t.ended_at),
         "contact": t.contact} for t, p in coordination.terms(s)])
    emit(rows, as_json, ["party", "from", "until", "contact"])


@click.command("cadence")
@click.argument("year", type=int, required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def cadence_command(context: Context, year: int | None, as_json: bool) -> None:
    """Each body's meetings in YEAR (default: this year) against the charter: held,
    planned (announced, to come) and drafts (counted as neither)."""
    from meetings import cadence

    year = year or time.gmtime().tm_year
    rows = run(context, lambda s: [
        {"body": r.body, "year": r.year, "held": r.held, "planned": r.planned,
         "drafts": r.drafts, "required": r.required, "status": r.verdict}
        for r in cadence.report(s, year, time.time())])
    emit(rows, as_json, ["body", "year", "held", "planned", "drafts", "required", "status"])


COMMANDS: tuple[click.Command, ...] = (party_group, body_group, delegate_group, meeting_group,
                                      coordination_group, cadence_command)
