"""The `alliance` command line (DESIGN §6): the main group, the daemon and the queues.

The domain packages' command groups (lists.cli, meetings.cli) are added to the main
group here. User mistakes get one line and exit code 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists.cli import COMMANDS as LIST_COMMANDS
from mailer import router
from mailer.console import Context, emit, pass_context, when
from mailer.models import Delivery, Work
from meetings.cli import COMMANDS as MEETING_COMMANDS


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
        return {"deliveries": deliveries, "work": work, "next_attempt": when(next_try),
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
            for w in context.transaction(router.quarantined)]
    emit(rows, as_json, ["id", "message", "recipient", "attempts", "error"])


@quarantine.command("replay")
@click.argument("work_id", type=int)
@pass_context
def quarantine_replay(context: Context, work_id: int) -> None:
    """Queue quarantined work WORK_ID again (after fixing its cause)."""
    if not context.transaction(router.replay, work_id):
        raise click.ClickException(f"no quarantined work with id {work_id}")
    click.echo(f"work {work_id} queued again")


for _command in (*LIST_COMMANDS, *MEETING_COMMANDS):
    main.add_command(_command)
