"""Start-up of the command line (issue 11, item 10): what a command imports, never how long.

`alliance --help` imports none of SQLAlchemy, Alembic, icalendar or Jinja (the domain
packages' commands are loaded when one runs), a command on a database already at the
newest schema does not import Alembic, and a listing command imports nothing that makes
mail or serves it. `tools/cli_startup.py` measures the times.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from mailer.cli import DOMAIN_COMMANDS, main
from mailer.db import MIGRATIONS, heads
from tests.helpers import cli, organisation_cli

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("sqlalchemy", "alembic", "icalendar", "jinja2", "aiosmtpd", "aiosmtplib")
# What a listing command has no use for: the packages that make, send, receive or sign
# mail, and our own modules that make mail or run the daemon.
NOT_FOR_LISTING = ("alembic", "icalendar", "jinja2", "babel", "aiosmtpd", "aiosmtplib",
                   "dns", "cryptography", "h11", "prometheus_client", "flufl",
                   "mailer.daemon", "mailer.delivery", "mailer.intake", "mailer.templates",
                   "lists.moderation", "lists.pipeline", "meetings.invitations",
                   "meetings.letters", "meetings.ical", "meetings.feed",
                   "meetings.coordination")
LISTING = (("queue",), ("quarantine", "list"), ("party", "list"), ("body", "list"),
           ("delegate", "list"), ("meeting", "list"), ("cadence",),
           ("list", "members", "press"), ("list", "held", "press"), ("list", "show", "press"))


def imported_by(*args: str) -> tuple[str, set[str]]:
    """Run `alliance ARGS` in a fresh interpreter: (its output, the heavy packages loaded)."""
    output, modules = modules_of(*args)
    return output, {name.split(".")[0] for name in modules} & set(HEAVY)


def modules_of(*args: str) -> tuple[str, set[str]]:
    """Run `alliance ARGS` in a fresh interpreter: (its output, every module loaded)."""
    probe = ("import sys\nfrom mailer.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as end:\n"
             "    assert end.code in (0, None), end.code\n"
             "print(sorted(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, text=True,
                          capture_output=True, check=True)
    output, _, loaded = done.stdout.rstrip().rpartition("\n")
    return output, set(ast.literal_eval(loaded))


def test_help_lists_every_command_and_imports_no_heavy_package() -> None:
    output, loaded = imported_by("--help")
    assert loaded == set()
    for name in ("serve", "queue", "list", "party", "meeting", "cadence", "coordination"):
        assert f"\n  {name} " in output, name


def test_the_help_listed_for_a_lazy_command_is_its_own() -> None:
    context = click.Context(main)
    for name, (_, shown) in DOMAIN_COMMANDS.items():
        command = main.get_command(context, name)
        assert command is not None and command.help is not None, name
        assert " ".join(command.help.split("\n\n")[0].split()) == shown, name


def test_a_command_on_a_database_at_the_newest_schema_skips_alembic(tmp_path: Path) -> None:
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    db.close()
    output, loaded = imported_by("--config", str(config), "party", "list")
    assert output == "(none)"
    assert "alembic" not in loaded and "sqlalchemy" in loaded


def test_a_listing_command_imports_nothing_that_makes_or_serves_mail(tmp_path: Path) -> None:
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    db.close()
    cli(config, "party", "add", "ODM", "--country", "KE", "--region", "africa")
    cli(config, "list", "create", "press")
    for args in LISTING:
        _, modules = modules_of("--config", str(config), *args)
        packages = {name.split(".")[0] for name in modules}
        found = sorted(name for name in NOT_FOR_LISTING if name in modules | packages)
        assert found == [], args


def test_a_command_closes_the_database_before_the_process_ends(tmp_path: Path) -> None:
    # The program's end leaves its objects to the process (gc.freeze, mailer.cli): the
    # command's context must close the database itself, or SQLite's write-ahead log stays.
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    db.close()
    subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), "party", "list"],
                   cwd=ROOT, check=True, capture_output=True)
    assert sorted(path.name for path in tmp_path.glob("a.sqlite3*")) == ["a.sqlite3"]


def test_the_heads_read_from_the_files_are_alembics() -> None:
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    assert heads() == set(ScriptDirectory.from_config(alembic).get_heads())
    assert len(heads()) == 1
