"""The `alliance` command line (DESIGN §6). User mistakes get one line and exit code 1."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import archive, roster, service, settings
from lists.models import Held, Member
from lists.service import ListError
from mailer import router as router_module
from mailer.config import Config, ConfigError, load
from mailer.db import Database
from mailer.models import Delivery, Work

T = TypeVar("T")


class Context:
    """What every command needs: the config, and the database opened on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._db: Database | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load(self.config_path)
            except ConfigError as error:
                raise click.ClickException(f"config: {error}") from None
        return self._config

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.config.database.url, self.config.base_dir)
            self._db.upgrade()
        return self._db

    def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return self.db.transaction(fn, *args)
        except ListError as error:
            raise click.ClickException(str(error)) from None


pass_context = click.make_pass_decorator(Context)


def emit(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    """Print rows as JSON, or as an aligned table."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(w)
                             for c, w in zip(columns, widths, strict=True)).rstrip())


@click.group()
@click.option("--config", "config_path", envvar="ALLIANCE_CONFIG", default=None,
              help="config file (default ./config.toml, or $ALLIANCE_CONFIG)")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Alliance Mail: distribution lists and meeting invitations."""
    ctx.obj = Context(config_path)


@main.command()
@click.option("--log-level", default="INFO", show_default=True)
@pass_context
def serve(context: Context, log_level: str) -> None:
    """Run the daemon: listeners, router, delivery."""
    from mailer.daemon import build

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiosmtpd logs every command at INFO; keep the operator's log to what matters.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.root.level))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
    try:
        import uvloop
        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    config = context.config

    async def run() -> None:
        daemon = build(config)
        await daemon.serve()

    try:
        runner(run())
    except OSError as error:
        raise click.ClickException(f"cannot start: {error.strerror or error}") from None


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_context
def db_upgrade(context: Context) -> None:
    """Apply every pending migration."""
    context.db.upgrade()
    click.echo(f"database at the newest schema: {context.db.writer.url.render_as_string()}")


@main.group("list")
def list_group() -> None:
    """Distribution lists."""


@list_group.command("create")
@click.argument("name")
@click.option("--display-name", default="", help="name shown in List-Id and robot mail")
@click.option("--subscription", default="confirm", show_default=True,
              type=click.Choice(["confirm", "moderate", "closed"]))
@click.option("--posting", default="members", show_default=True,
              type=click.Choice(["members", "anyone", "moderated", "announce"]))
@pass_context
def list_create(context: Context, name: str, display_name: str, subscription: str,
                posting: str) -> None:
    """Create the list NAME (NAME@domain, NAME-join@, NAME-leave@, ...)."""
    def create(session: Session) -> str:
        made = service.create(session, name, display_name=display_name,
                              subscription=subscription, posting=posting)
        return made.name

    made = context.transaction(create)
    click.echo(f"created list {made}@{context.config.site.domain}")


ROLE = click.option("--role", default="member", show_default=True,
                    type=click.Choice(["member", "owner", "moderator", "poster"]),
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
        return service.add_members(session, service.find(session, name), addresses, role=role)

    added, existing = context.transaction(add)
    noun = "members" if role == "member" else f"{role}s"
    click.echo(f"added {len(added)}, already {noun} {len(existing)}")


@list_group.command("remove")
@click.argument("name")
@click.argument("address")
@ROLE
@pass_context
def list_remove(context: Context, name: str, address: str, role: str) -> None:
    """Take ADDRESS off the list NAME (or take away its role)."""
    context.transaction(lambda s: service.remove_member(s, service.find(s, name), address,
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

    def run(session: Session) -> roster.ImportReport:
        mailing_list = service.find(session, name)
        if not sys.stderr.isatty():
            return roster.import_rows(session, mailing_list, rows)
        with click.progressbar(length=len(rows), label="importing", file=sys.stderr) as bar:
            return roster.import_rows(session, mailing_list, rows, bar.update)

    report = context.transaction(run)
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
    context.transaction(lambda s: roster.export_rows(s, service.find(s, name), output))


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

    shown = context.transaction(read)
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

    click.echo(f"{name}: {key} = {context.transaction(change)}")


@list_group.command("moderate")
@click.argument("name")
@click.argument("held_id", type=int)
@click.argument("decision", type=click.Choice(["approve", "reject", "discard"]))
@click.option("--reason", default="", help="told to the poster when rejecting")
@pass_context
def list_moderate(context: Context, name: str, held_id: int, decision: str,
                  reason: str) -> None:
    """Approve, reject or discard the held post HELD_ID of NAME."""
    from lists import moderation
    from mailer.daemon import make_site
    site = make_site(context.config, context.db)

    def decide(session: Session) -> None:
        mailing_list = service.find(session, name)
        held = session.get(Held, held_id)
        if held is None or held.list_id != mailing_list.id:
            raise ListError(f"no held post {held_id} on {name}")
        moderation.decide(session, site, mailing_list, held, decision, reason=reason,
                          actor="command line")

    context.transaction(decide)
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

    emit(context.transaction(rows), as_json, ["address", "name", "language", "delivery"])


@list_group.command("held")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def list_held(context: Context, name: str, as_json: bool) -> None:
    """Show the posts to NAME held for a moderator."""
    def rows(session: Session) -> list[dict[str, Any]]:
        return [{"id": h.id, "sender": h.sender, "subject": h.subject, "reason": h.reason,
                 "held_at": _when(h.held_at)}
                for h in service.held(session, service.find(session, name))]

    emit(context.transaction(rows), as_json, ["id", "held_at", "sender", "subject", "reason"])


@list_group.command("archive")
@click.argument("name")
@click.option("--mbox", "path", required=True,
              type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="new mbox file to write the archive to")
@pass_context
def list_archive(context: Context, name: str, path: Path) -> None:
    """Export every post distributed on NAME to a new mbox file (for mutt, mailbox)."""
    try:
        count = context.db.query(lambda s: archive.export_mbox(s, service.find(s, name), path))
    except ListError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {count} posts of {name} to {path}")


def _when(stamp: float | None) -> str:
    return "" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_context
def queue(context: Context, as_json: bool) -> None:
    """Outbound and inbound queue state: counts by state, failures, quarantine."""
    def state(session: Session) -> dict[str, Any]:
        deliveries = dict(session.execute(select(Delivery.state, func.count())
                                          .group_by(Delivery.state)).all())
        work = dict(session.execute(select(Work.state, func.count())
                                    .group_by(Work.state)).all())
        next_try = session.scalar(select(func.min(Delivery.due_at))
                                  .where(Delivery.state == "pending"))
        failed = session.execute(select(Delivery.recipient, Delivery.code, Delivery.error)
                                 .where(Delivery.state == "failed")
                                 .order_by(Delivery.id.desc()).limit(20)).all()
        return {"deliveries": deliveries, "work": work, "next_attempt": _when(next_try),
                "recent_failures": [{"recipient": r, "code": c, "error": e}
                                    for r, c, e in failed]}

    report = context.transaction(state)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for title, counts in (("deliveries", report["deliveries"]), ("inbound", report["work"])):
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"
        click.echo(f"{title}: {shown}")
    if report["next_attempt"]:
        click.echo(f"next attempt: {report['next_attempt']} UTC")
    for failure in report["recent_failures"]:
        click.echo(f"failed {failure['recipient']}: {failure['code']} {failure['error']}")


@main.group()
def quarantine() -> None:
    """Messages that could not be processed after several tries."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def quarantine_list(context: Context, as_json: bool) -> None:
    """Show quarantined work with its error."""
    rows = [{"id": w.id, "message": w.message_id, "recipient": w.recipient,
             "attempts": w.attempts, "error": w.error or ""}
            for w in context.transaction(router_module.quarantined)]
    emit(rows, as_json, ["id", "message", "recipient", "attempts", "error"])


@quarantine.command("replay")
@click.argument("work_id", type=int)
@pass_context
def quarantine_replay(context: Context, work_id: int) -> None:
    """Queue quarantined work WORK_ID again (after fixing its cause)."""
    if not context.transaction(router_module.replay, work_id):
        raise click.ClickException(f"no quarantined work with id {work_id}")
    click.echo(f"work {work_id} queued again")


# The meetings side's groups (party, body, delegate, meeting, coordination, cadence). The
# import comes last because meetings.cli builds on Context and emit above.
from meetings.cli import COMMANDS as MEETING_COMMANDS  # noqa: E402

for _command in MEETING_COMMANDS:
    main.add_command(_command)
