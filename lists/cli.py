"""The list side of the `alliance` command line (DESIGN §6): the `list` group.

Each command runs in one transaction; mail it causes is queued there and sent by the
running daemon. Mistakes get one line and exit code 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import roster, service, settings
from lists.models import Held, Member
from lists.service import ListError
from mailer.console import Context, emit, pass_context, when

# Moderation (which sends mail: Jinja, the pipeline) and the archive are imported by
# their commands, so that a listing command loads neither (issue 11, item 10: start-up).

T = TypeVar("T")


def run(context: Context, fn: Callable[..., T], *args: Any) -> T:
    """fn(session, *args) in one transaction; a ListError becomes one line."""
    return context.transaction(fn, *args, mistakes=(ListError,))


@click.group("list")
def list_group() -> None:
    """Distribution lists."""


@list_group.command("create")
@click.argument("name")
@click.option("--display-name", default="", help="name shown in List-Id and robot mail")
@click.option("--subscription", default="confirm", show_default=True,
              type=click.Choice(["confirm", "moderate", "closed"], case_sensitive=False))
@click.option("--posting", default="members", show_default=True,
              type=click.Choice(["members", "anyone", "moderated", "announce"],
                                 case_sensitive=False))
@pass_context
def list_create(context: Context, name: str, display_name: str, subscription: str,
                posting: str) -> None:
    """Create the list NAME (NAME@domain, NAME-join@, NAME-leave@, ...)."""
    def create(session: Session) -> str:
        made = service.create(session, name, display_name=display_name,
                              subscription=subscription, posting=posting)
        return made.name

    made = run(context, create)
    click.echo(f"created list {made}@{context.config.site.domain}")


ROLE = click.option("--role", default="member", show_default=True,
                    type=click.Choice(["member", "owner", "moderator", "poster"],
                                     case_sensitive=False),
                    help="owners and moderators get notices; posters may post to "
                         "announce lists")


@list_group.command("add")
@click.argument("name")
@click.argument("addresses", nargs=-1, required=True)
@ROLE
@pass_context
def list_add(context: Context, name: str, addresses: tuple[str, ...], role: str) -> None:
    """Give ADDRESSES a role on NAME (members: no confirmation, the owner vouches)."""
    def add(session: Session) -> tuple[list[str], list[str]]:
        return service.add_members(session, service.find(session, name), addresses, role=role,
                                   own_domain=context.config.site.domain)

    added, existing = run(context, add)
    noun = "members" if role == "member" else f"{role}s"
    click.echo(f"added {len(added)}, already {noun} {len(existing)}")


@list_group.command("remove")
@click.argument("name")
@click.argument("address")
@ROLE
@pass_context
def list_remove(context: Context, name: str, address: str, role: str) -> None:
    """Take ADDRESS off the list NAME (or take away its role)."""
    run(context, lambda s: service.remove_member(s, service.find(s, name), address,
                                                        role=role))
    click.echo(f"removed {address} from {name}" if role == "member"
               else f"{address} is no longer {role} of {name}")


@list_group.command("import")
@click.argument("name")
@click.argument("source", type=click.File("r", encoding="utf-8-sig"))
@pass_context
def list_import(context: Context, name: str, source: Any) -> None:
    """Add members from a CSV (address,name,language) or one address a line ("-": stdin)."""
    rows = list(roster.read_rows(source))

    def import_all(session: Session) -> roster.ImportReport:
        mailing_list = service.find(session, name)
        if not sys.stderr.isatty():
            return roster.import_rows(session, mailing_list, rows)
        with click.progressbar(length=len(rows), label="importing", file=sys.stderr) as bar:
            return roster.import_rows(session, mailing_list, rows, bar.update)

    report = run(context, import_all)
    click.echo(f"added {report.added}, already there {report.existing}, "
               f"invalid {len(report.invalid)}")
    for line, problem in report.invalid:
        click.echo(f"line {line}: {problem}", err=True)


@list_group.command("export")
@click.argument("name")
@click.option("--output", type=click.File("w", encoding="utf-8"), default="-",
              help="file to write (default: standard output)")
@pass_context
def list_export(context: Context, name: str, output: Any) -> None:
    """Write the members of NAME as CSV (address,name,language,delivery)."""
    run(context, lambda s: roster.export_rows(s, service.find(s, name), output))


@list_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def list_show(context: Context, name: str, as_json: bool) -> None:
    """Print the settings of NAME."""
    def read(session: Session) -> dict[str, Any]:
        mailing_list = service.find(session, name)
        counts = dict(session.execute(select(Member.role, func.count())
                                      .where(Member.list_id == mailing_list.id)
                                      .group_by(Member.role)).all())
        return {"name": mailing_list.name, **settings.show(mailing_list),
                "members": counts.get("member", 0),
                "owners": service.moderators(session, mailing_list.id)}

    shown = run(context, read)
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    width = max(len(key) for key in shown)
    for key, value in shown.items():
        click.echo(f"{key.ljust(width)}  {value}")


@list_group.command("set")
@click.argument("name")
@click.argument("key")
@click.argument("value")
@pass_context
def list_set(context: Context, name: str, key: str, value: str) -> None:
    """Change one setting of NAME (see `alliance list show NAME`)."""
    def change(session: Session) -> Any:
        try:
            return settings.change(service.find(session, name), key, value)
        except settings.SettingError as error:
            raise ListError(str(error)) from None

    click.echo(f"{name}: {key} = {run(context, change)}")


@list_group.command("moderate")
@click.argument("name")
@click.argument("held_id", type=int)
@click.argument("decision", type=click.Choice(["approve", "reject", "discard"],
                                              case_sensitive=False))
@click.option("--reason", default="", help="told to the poster when rejecting")
@pass_context
def list_moderate(context: Context, name: str, held_id: int, decision: str,
                  reason: str) -> None:
    """Approve, reject or discard the held post HELD_ID of NAME."""
    from lists import moderation
    from lists.list_site import ListSite

    site = ListSite.from_config(context.config, context.secret, context.templates)

    def decide(session: Session) -> None:
        mailing_list = service.find(session, name)
        held = session.get(Held, held_id)
        if held is None or held.list_id != mailing_list.id:
            raise ListError(f"no held post {held_id} on {name}")
        moderation.decide(session, site, mailing_list, held, decision, reason=reason,
                          actor="command line")

    run(context, decide)
    click.echo(f"post {held_id} on {name}: {decision}")


@list_group.command("members")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def list_members(context: Context, name: str, as_json: bool) -> None:
    """Show the members of the list NAME."""
    def rows(session: Session) -> list[dict[str, Any]]:
        return [{"address": m.address, "name": m.display_name, "language": m.language,
                 "delivery": m.delivery}
                for m in service.members(session, service.find(session, name))]

    emit(run(context, rows), as_json, ["address", "name", "language", "delivery"])


@list_group.command("held")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def list_held(context: Context, name: str, as_json: bool) -> None:
    """Show the posts to NAME held for a moderator."""
    def rows(session: Session) -> list[dict[str, Any]]:
        return [{"id": h.id, "sender": h.sender, "subject": h.subject, "reason": h.reason,
                 "held_at": when(h.held_at)}
                for h in service.held(session, service.find(session, name))]

    emit(run(context, rows), as_json, ["id", "held_at", "sender", "subject", "reason"])


@list_group.command("archive")
@click.argument("name")
@click.option("--mbox", "path", required=True,
              type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="new mbox file to write the archive to")
@pass_context
def list_archive(context: Context, name: str, path: Path) -> None:
    """Export every post distributed on NAME to a new mbox file (for mutt, mailbox)."""
    from lists import archive

    try:
        count = context.db.query(lambda s: archive.export_mbox(s, service.find(s, name), path))
    except ListError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {count} posts of {name} to {path}")


COMMANDS = (list_group,)
