"""config.toml: defaults, the shipped file, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mailer.config import Config, ConfigError, from_dict, load, sections
from tests.helpers import invoke

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_config_loads_with_the_documented_values() -> None:
    config = load(ROOT / "config.toml")
    assert config.database.url == "sqlite:///var/alliance.sqlite3"
    assert config.smtp.listen == "127.0.0.1:8025"
    assert config.lmtp.listen == "127.0.0.1:8024"
    assert config.outbound.url == "maildir:var/outbox"
    assert config.base_dir == ROOT


def test_every_key_has_a_default_and_a_readme_line() -> None:
    readme = (ROOT / "README.md").read_text()
    defaults = Config()
    for name, cls in sections():
        for key in dataclasses.fields(cls):
            assert key.metadata["help"], f"{name}.{key.name} has no help line"
            value = getattr(getattr(defaults, name), key.name)
            assert value is not None
            assert re.search(rf"`{name}\.{key.name}`", readme), \
                f"README does not document {name}.{key.name}"


@pytest.mark.parametrize(("data", "message"), [
    ({"smtp": {"listen": "127.0.0.1:8025", "lisen": "x"}}, "smtp.lisen: unknown key"),
    ({"smpt": {"listen": "x"}}, "smpt: unknown section"),
    ({"intake": {"max_recipients": "100"}}, "intake.max_recipients: expected int, got str"),
    ({"intake": {"max_recipients": True}}, "intake.max_recipients: expected int, got a boolean"),
    ({"site": {"domain": 7}}, "site.domain: expected str, got int"),
    ({"smtp": {"listen": "8025"}}, "smtp.listen: expected host:port, got '8025'"),
    ({"outbound": {"url": "ftp://x"}},
     "outbound.url: expected maildir:PATH, smtp://host:port or smtps://host:port"),
    ({"outbound": "smtp://x"}, "outbound: expected a table, got str"),
])
def test_a_bad_config_stops_with_one_line_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_dict(data)
    assert str(error.value) == message


def test_integers_are_accepted_where_seconds_are_floats() -> None:
    assert from_dict({"outbound": {"retry_initial": 5}}).outbound.retry_initial == 5.0


def test_the_cli_reports_a_config_error_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[outbound]\nconections = 4\n')
    result = invoke(path, "queue")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: config: outbound.conections: unknown key"


def test_a_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    result = invoke(tmp_path / "none.toml", "queue")
    assert result.exit_code == 1
    assert "no such config file" in result.output
    assert "Traceback" not in result.output
