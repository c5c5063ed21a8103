"""The README's promises that a test can hold it to."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_block(readme: str) -> list[str]:
    """The lines of the README's "Two commands" block."""
    return readme.split("## Two commands", 1)[1].split("```sh\n", 1)[1].split("```")[0] \
        .splitlines()


def test_ci_runs_the_readme_test_command_as_written_there() -> None:
    readme = (ROOT / "README.md").read_text()
    lines = readme_block(readme)
    command = lines[lines.index("# 2. Run the whole test suite") + 1]
    ci = (ROOT / ".ci" / "run").read_text()
    found = subprocess.run(["awk", "/^# 2\\. Run the whole test suite/ { getline; print; exit }",
                            "README.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == command
    assert "/^# 2\\. Run the whole test suite/" in ci and 'bash -c "$test_command"' in ci
    # Its own virtual environment (Debian 12's Python is externally managed, PEP 668).
    assert command.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert command.endswith(".venv/bin/python -m pytest")


# The programs the tests and the try-it block run, and the Debian package of each.
PACKAGES = {"swaks": "swaks", "smtp-sink": "postfix", "postfix": "postfix",
            "node": "nodejs", "npm": "npm",
            "chromium": "chromium", "nginx": "nginx-light"}


def test_every_program_the_tests_run_is_named_in_the_apt_line() -> None:
    tests = "\n".join(path.read_text() for path in (ROOT / "tests").glob("*.py"))
    optional = {"mutt", "script", "systemd-analyze"}
    used = set(re.findall(r'which\("([a-z-]+)"\)', tests)) - optional
    assert used, "the scan finds the programs"
    assert used <= set(PACKAGES), f"a program without its package here: {used - set(PACKAGES)}"
    apt = next(line for line in readme_block((ROOT / "README.md").read_text())
               if "apt-get install" in line)
    named = set(apt.split("install", 1)[1].split())
    assert {"python3-venv", *(PACKAGES[program] for program in used | {"npm"})} <= named


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
