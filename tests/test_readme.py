"""The README's promises that a test can hold it to."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    command = ci_lines[-1]
    assert command.startswith("python3 -m pip install") and "pytest" in command
    assert f"\n{command}\n" in readme


def test_the_try_it_commands_work_on_a_fresh_install(tmp_path: Path) -> None:
    """Each `alliance` line of the README's try-it block, as a newcomer types it, against
    the shipped config.toml (its database moved to a fresh folder)."""
    import shlex

    from click.testing import CliRunner

    from mailer.cli import main

    readme = (ROOT / "README.md").read_text()
    block = readme.split("Try it from a second\nterminal:", 1)[1].split("```sh\n", 1)[1]
    block = block.split("```", 1)[0]
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines()
                if line.startswith("alliance ")]
    assert len(commands) >= 2
    config = (ROOT / "config.toml").read_text()
    assert 'url = "sqlite:///var/alliance.sqlite3"' in config
    (tmp_path / "config.toml").write_text(config)
    # What `alliance serve`, started first, has done by the time the newcomer types.
    from mailer.config import load
    from mailer.db import Database
    from meetings.organisation import ensure_charter
    db = Database(load(tmp_path / "config.toml").database.url, tmp_path)
    db.upgrade()
    db.transaction(ensure_charter)
    db.close()
    for command in commands:
        result = CliRunner().invoke(main, ["--config", str(tmp_path / "config.toml"),
                                           *command[1:]])
        assert result.exit_code == 0, (command, result.output)
