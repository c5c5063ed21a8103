"""The `alliance` command line (DESIGN §6): the main group, the daemon and the queues.

The domain packages' command groups (lists.cli, meetings.cli) are added to the main
group here. User mistakes get one line and exit code 1.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mailer.console import Context, emit, pass_context, when

if TYPE_CHECKING:
    from mailer.config import Config

# The domain packages' commands and their help, as `alliance --help` lists them. Their
# modules are imported only when one of their commands runs: they bring SQLAlchemy,
# icalendar and Jinja, which the help and the core's own commands do not need (issue 11,
# item 10: start-up). tests/test_cli_startup.py holds each help to the command's own.
DOMAIN_COMMANDS = {
    "list": ("lists", "Distribution lists."),
    "party": ("meetings", "Member parties."),
    "body": ("meetings", "Bodies that meet: board, steering, conference, and custom ones."),
    "delegate": ("meetings", "Delegates and their seats in bodies."),
    "meeting": ("meetings", "Meetings and their invitations."),
    "coordination": ("meetings", "Which party coordinates (and sends the invitations)."),
    "cadence": ("meetings", "Each body's meetings in YEAR (default: this year) against the "
                            "charter: held, planned (announced, to come) and drafts "
                            "(counted as neither)."),
}


class Main(click.Group):
    """The main group: the core's commands, and each domain package's, loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *DOMAIN_COMMANDS})

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run the program; its end skips the interpreter's last garbage collections."""
        # At exit Python collects every object left, and with SQLAlchemy loaded that took
        # a sixth of a listing command's time (issue 11, item 10). The process ends anyway:
        # the command's context closes the database before, and gc.freeze() only leaves
        # the objects to the process's end. Registered once, however often main runs.
        atexit.unregister(gc.freeze)
        atexit.register(gc.freeze)
        return super().main(*args, **kwargs)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in DOMAIN_COMMANDS and cmd_name not in self.commands:
            self.load(DOMAIN_COMMANDS[cmd_name][0])
        return super().get_command(ctx, cmd_name)

    def load(self, package: str) -> None:
        """Add a domain package's command group (lists or meetings)."""
        commands: tuple[click.Command, ...]
        if package == "lists":
            from lists.cli import COMMANDS as commands
        else:
            from meetings.cli import COMMANDS as commands
        for command in commands:
            self.add_command(command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of --help, with no domain package imported for it."""
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
            elif command is None:
                rows.append((name, click.utils.make_default_short_help(
                    DOMAIN_COMMANDS[name][1], limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=Main)
@click.option("--config", "config_path", envvar="ALLIANCE_CONFIG", default=None,
              help="config file (default ./config.toml, or $ALLIANCE_CONFIG)")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Alliance Mail: distribution lists and meeting invitations."""
    ctx.obj = Context(config_path)
    ctx.call_on_close(ctx.obj.close)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@main.command()
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(LOG_LEVELS, case_sensitive=False))
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(("text", "json"), case_sensitive=False),
              help="json: one object a line (time, level, logger, message, and the "
                   "message's fields)")
@pass_context
def serve(context: Context, log_level: str, log_format: str) -> None:
    """Run the daemon: listeners, router, delivery."""
    import asyncio

    from mailer.backup import BackupError
    from mailer.config import ConfigError
    from mailer.daemon import build
    from mailer.db import DatabaseUnavailable
    from mailer.logs import configure

    configure(log_level.upper(), log_format.lower())
    try:
        import uvloop
        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    config = context.config
    if not config.site.admin and sys.stdin.isatty():
        config = ask_site_contact(context)

    async def run() -> None:
        daemon = build(config)
        if not config.site.admin:
            # A warning, not a refusal: a daemon that refused to start would lose the
            # mail it should be taking; what the admin would get waits in the quarantine.
            logging.getLogger("mailer.daemon").warning(
                "site.admin is not set: mail to postmaster@ and abuse@, and mail with no "
                "other person, waits in the quarantine; set [site] admin = "
                "\"you@example.org\" in the config")
        await daemon.serve()

    try:
        runner(run())
    except (DatabaseUnavailable, BackupError) as error:
        raise click.ClickException(str(error)) from None
    except ConfigError as error:       # what only start-up finds (a DNS name that is none)
        raise click.ClickException(f"config: {error}") from None
    except OSError as error:
        raise click.ClickException(f"cannot start: {error.strerror or error}") from None


def ask_site_contact(context: Context) -> Config:
    """The first run on a terminal asks for `site.admin` and writes it to the config."""
    from mailer.config import ConfigError, check_admin, load, with_site_admin

    path = Path(context.config_path or "config.toml")

    def checked(value: str) -> str:
        try:
            return check_admin(value.strip())
        except ConfigError as error:
            raise click.BadParameter(str(error)) from None

    address = click.prompt(
        "Who reads mail to postmaster@ and abuse@, and mail no one else is there for yet "
        "(site.admin)? Your address", value_proc=checked, err=True)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        path.write_text(with_site_admin(text, address), encoding="utf-8")
        config = load(path)
    except (OSError, ConfigError) as error:
        raise click.ClickException(f"config: {error}") from None
    click.echo(f"site.admin = {address} written to {path}", err=True)
    return config


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--check", is_flag=True,
              help="change nothing: exit 0 when the schema is the code's newest, else 1 with "
                   "one line (for scripts)")
@pass_context
def db_upgrade(context: Context, check: bool) -> None:
    """Apply every pending migration (back up first: `alliance backup FILE`)."""
    from sqlalchemy.exc import SQLAlchemyError

    from mailer.db import Database, known_revisions, unavailable

    url = context.config.database.url
    try:
        database = Database(url, context.config.base_dir)
        try:
            before, behind = database.revisions(), database.behind()
            if behind and (check or before - known_revisions()):
                raise click.ClickException(behind)
            if not check:
                database.upgrade()
            after = database.revisions()
        finally:
            database.close()
    except (OSError, SQLAlchemyError, ValueError, TypeError) as error:
        raise click.ClickException(unavailable(url, error)) from None
    newest = ", ".join(sorted(after))
    change = newest if before == after else f"{', '.join(sorted(before)) or 'none'} -> {newest}"
    click.echo(f"database at the newest schema: {database.writer.url.render_as_string()} "
               f"({change})")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="write over FILE if it exists")
@pass_context
def backup(context: Context, file: Path, force: bool) -> None:
    """Copy the SQLite database to FILE, consistent, while the daemon serves (the site
    secret is in it); PostgreSQL: pg_dump, as the README says."""
    from mailer import backup as backups

    config = context.config
    source = backups.sqlite_file(config.database.url, config.base_dir)
    if source is None:
        raise click.ClickException("database.url is PostgreSQL: back it up with pg_dump "
                                   "(the README's Operating part gives the steps)")
    try:
        summary = backups.backup(source, file, force=force)
    except backups.BackupError as error:
        raise click.ClickException(str(error)) from None
    secret = ("the site secret is in it" if summary.secret and not config.site.secret else
              "site.secret is set in the config: keep the config file with it")
    click.echo(f"backup of {source} written to {file}: {summary.messages} messages, "
               f"schema {summary.schema}; {secret}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True,
              help="put the backup in place of an existing database (its content is lost)")
@pass_context
def restore(context: Context, file: Path, force: bool) -> None:
    """Put the backup FILE in place of the SQLite database (the daemon stopped)."""
    from mailer import backup as backups

    config = context.config
    target = backups.sqlite_file(config.database.url, config.base_dir)
    if target is None:
        raise click.ClickException("database.url is PostgreSQL: restore with pg_restore "
                                   "(the README's Operating part gives the steps)")
    try:
        summary = backups.restore(file, target, force=force)
    except backups.BackupError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{file} restored to {target}: {summary.messages} messages, schema "
               f"{summary.schema}; start the daemon")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_context
def queue(context: Context, as_json: bool) -> None:
    """Outbound and inbound queue state: counts by state, deferred deliveries, failures."""
    from mailer import queues

    found = context.transaction(queues.state)    # the dashboard's queue page's call too
    report = {"deliveries": found.deliveries, "work": found.work,
              "next_attempt": when(found.next_attempt),
              "oldest_waiting": when(found.oldest_waiting),
              "deferred": [{"id": d.id, "recipient": d.recipient, "attempts": d.attempts,
                            "due": when(d.due_at), "code": d.code, "error": d.error}
                           for d in found.deferred],
              "recent_failures": [{"recipient": f.recipient, "code": f.code, "error": f.error}
                                  for f in found.recent_failures]}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for title, counts in (("deliveries", found.deliveries), ("inbound", found.work)):
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"
        click.echo(f"{title}: {shown}")
    if found.oldest_waiting is not None:
        click.echo(f"oldest waiting since: {report['oldest_waiting']} UTC")
    if found.next_attempt is not None:
        click.echo(f"next attempt: {report['next_attempt']} UTC")
    for deferred in found.deferred:
        click.echo(f"deferred {deferred.recipient} until {when(deferred.due_at)} UTC after "
                   f"{deferred.attempts} tries: {deferred.code or ''} {deferred.error}")
    for failure in found.recent_failures:
        click.echo(f"failed {failure.recipient}: {failure.code} {failure.error}")


@main.group()
def quarantine() -> None:
    """Messages that could not be processed after several tries."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def quarantine_list(context: Context, as_json: bool) -> None:
    """Show quarantined work with its error."""
    from mailer import router

    rows = [{"id": w.id, "message": w.message_id, "recipient": w.recipient,
             "attempts": w.attempts, "error": w.error or ""}
            for w in context.transaction(router.quarantined)]
    emit(rows, as_json, ["id", "message", "recipient", "attempts", "error"])


@quarantine.command("replay")
@click.argument("work_id", type=int)
@pass_context
def quarantine_replay(context: Context, work_id: int) -> None:
    """Queue quarantined work WORK_ID again (after fixing its cause)."""
    from mailer import router

    if not context.transaction(router.replay, work_id):
        raise click.ClickException(f"no quarantined work with id {work_id}")
    click.echo(f"work {work_id} queued again")


@main.group()
def dkim() -> None:
    """DKIM signing keys and their DNS records (the README's DKIM part)."""


@dkim.command("keygen")
@click.option("--selector", help="name of the key in DNS (default: dkim.selector, or "
                                 "dkim.ed25519_selector with --ed25519, else YYYYMM)")
@click.option("--ed25519", "ed25519_key", is_flag=True,
              help="an Ed25519 key for a second signature (RFC 8463), not RSA-2048")
@pass_context
def dkim_keygen(context: Context, selector: str | None, ed25519_key: bool) -> None:
    """Write a new private key (mode 0600, never over a file) and print its DNS record."""
    import time

    from mailer import domainkeys

    section = context.config.dkim
    configured = section.ed25519_selector if ed25519_key else section.selector
    selector = selector or configured or time.strftime("%Y%m") + ("e" if ed25519_key else "")
    if not domainkeys.SELECTOR.fullmatch(selector):
        raise click.ClickException(f"--selector: expected a DNS label such as 2026a, "
                                   f"got {selector!r}")
    key_file = section.ed25519_key_file if ed25519_key else section.key_file
    path = domainkeys.key_path(context.config, selector,
                               key_file if selector == configured else "")
    try:
        private = domainkeys.generate(path, ed25519_key=ed25519_key)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; a key is never overwritten (to rotate, "
                                   "make one with a new --selector)") from None
    except OSError as error:
        raise click.ClickException(f"cannot write {path}: {error.strerror or error}") \
            from None
    click.echo(f"wrote {path}; publish this record, then set [dkim] "
               f"{'ed25519_selector' if ed25519_key else 'selector'} = \"{selector}\"",
               err=True)
    click.echo(domainkeys.record(selector, section.domain or context.config.site.domain,
                                 private))


@dkim.command("record")
@click.option("--selector", "selectors", multiple=True,
              help="the key of var/dkim/SELECTOR.pem (default: the configured ones)")
@pass_context
def dkim_record(context: Context, selectors: tuple[str, ...]) -> None:
    """Print the DNS TXT record of each signing key, as it must be published."""
    from mailer import domainkeys
    from mailer.config import ConfigError

    config = context.config
    domain = config.dkim.domain or config.site.domain
    try:
        if selectors:
            keys = [domainkeys.load_key(domainkeys.key_path(config, selector, ""), selector,
                                        domain, "any", "--selector")
                    for selector in selectors]
        else:
            signer = domainkeys.signer(config)
            keys = list(signer.keys) if signer else []
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if not keys:
        raise click.ClickException("DKIM is off: [dkim] selector is not set in the config")
    for key in keys:
        click.echo(key.record())


@main.command("postfix")
@click.option("--part", type=click.Choice(("main.cf", "master.cf", "transport"),
                                          case_sensitive=False),
              help="print only this part (default: all three, one after another)")
@click.option("--tls-cert", default="", help="certificate Postfix offers STARTTLS with "
              "(default: smtp.tls_cert, else Debian's snakeoil certificate)")
@click.option("--tls-key", default="", help="its private key (default: smtp.tls_key, or the "
              "--tls-cert file)")
@pass_context
def postfix_lines(context: Context, part: str | None, tls_cert: str, tls_key: str) -> None:
    """Print the main.cf, master.cf and transport lines that put Postfix in front: MX of the
    list domain relaying to our LMTP, refusing unknown addresses at RCPT, and the daemon's
    smarthost over TLS (the README's "Postfix in front")."""
    from mailer import postfix
    from mailer.config import ConfigError

    config = context.config
    try:
        setup = postfix.setup(config, tls_cert, tls_key)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    click.echo(postfix.render(setup, part), nl=False)
    missing = [path for path in dict.fromkeys((setup.tls_cert, setup.tls_key))
               if not Path(path).exists()]
    if missing:
        click.echo(f"note: {' and '.join(missing)} not here: give --tls-cert and --tls-key "
                   "(for Debian's own: make-ssl-cert generate-default-snakeoil)", err=True)
    if config.outbound.url != setup.outbound_url:
        click.echo(f"note: outbound.url is {config.outbound.url!r}: set it to "
                   f"{setup.outbound_url!r} to send through this Postfix", err=True)



@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="seconds each check may take")
@pass_context
def check(context: Context, as_json: bool, timeout: float) -> None:
    """Check the config, database, smarthost, DNS (MX, SPF, DKIM, DMARC) and what Gmail
    and Yahoo ask of bulk senders: one line each, ok, warn or fail, with how to fix it.
    Exit code 1 when any check fails."""
    import asyncio
    import os
    from pathlib import Path

    from mailer import check as checks
    from mailer.config import ConfigError, load

    chosen = context.config_path or os.environ.get("ALLIANCE_CONFIG")
    origin = Path(chosen or "config.toml")
    try:
        config = load(chosen)
    except ConfigError as error:
        findings = [checks.Finding("config", "fail", str(error), f"correct it in {origin}")]
    else:
        probe = checks.Probe(config, origin=origin if origin.exists() else None,
                             timeout=timeout, sending_address=checks.outward_address)
        findings = asyncio.run(checks.run(probe))
    if as_json:
        click.echo(json.dumps({"status": checks.worst(findings),
                               "checks": [vars(finding) for finding in findings]}, indent=2))
    else:
        for finding in findings:
            click.echo(finding.line())
    sys.exit(1 if checks.worst(findings) == "fail" else 0)
