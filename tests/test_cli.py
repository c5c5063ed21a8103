"""The `alliance` command line, run as an owner or operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import fresh_config, run


def test_a_fresh_config_creates_the_database_on_first_use(tmp_path: Path) -> None:
    config = fresh_config(tmp_path)
    assert run(config, "list", "create", "steering") == \
        (0, "created list steering@lists.example.org\n")
    assert (tmp_path / "state" / "alliance.sqlite3").exists()


def test_members_are_added_listed_and_removed(tmp_path: Path) -> None:
    config = fresh_config(tmp_path)
    run(config, "list", "create", "steering")
    assert run(config, "list", "add", "steering", "Ana@Example.org", "bo@example.org") == \
        (0, "added 2, already members 0\n")
    assert run(config, "list", "add", "steering", "ana@example.org") == \
        (0, "added 0, already members 1\n")
    code, output = run(config, "list", "members", "steering", "--json")
    assert code == 0
    assert [m["address"] for m in json.loads(output)] == ["ana@example.org", "bo@example.org"]
    assert run(config, "list", "remove", "steering", "bo@example.org")[0] == 0
    code, output = run(config, "list", "members", "steering")
    assert "bo@example.org" not in output and "ana@example.org" in output


def test_user_mistakes_get_one_line_and_a_failing_exit(tmp_path: Path) -> None:
    config = fresh_config(tmp_path)
    run(config, "list", "create", "steering")
    cases = [
        (("list", "members", "nosuch"), "Error: no list named 'nosuch'"),
        (("list", "create", "steering"), "Error: list 'steering' already exists"),
        (("list", "create", "news-join"),
         "Error: cannot create list 'news-join': a list name may not end in '-join'"),
        (("list", "create", "rsvp"), "Error: cannot create list 'rsvp': 'rsvp' is a reserved"
                                     " address"),
        (("list", "add", "steering", "not-an-address"),
         "Error: not an address: 'not-an-address'"),
        (("list", "remove", "steering", "x@example.org"),
         "Error: x@example.org is not a member of steering"),
        (("quarantine", "replay", "99"), "Error: no quarantined work with id 99"),
    ]
    for args, message in cases:
        code, output = run(config, *args)
        assert (code, output.strip()) == (1, message), args


def test_queue_reports_counts_as_json(tmp_path: Path) -> None:
    config = fresh_config(tmp_path)
    code, output = run(config, "queue", "--json")
    assert code == 0
    assert json.loads(output) == {"deliveries": {}, "work": {}, "next_attempt": "",
                                  "oldest_waiting": "", "deferred": [],
                                  "recent_failures": []}


def test_the_console_script_is_installed_and_upgrades_the_database(tmp_path: Path) -> None:
    config = fresh_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "mailer", "--config", str(config),
                             "db", "upgrade"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("database at the newest schema: sqlite:///")
