"""One line for every mistake (issue 11, item 7): database and URL mistakes are one line
that says what and what to do, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from mailer.config import ConfigError, from_dict
from mailer.db import Database
from meetings import organisation
from tests.helpers import cli, free_port, invoke, postgres_database


def config_with(folder: Path, url: str) -> Path:
    path = folder / "config.toml"
    path.write_text(f'[database]\nurl = "{url}"\n')
    return path


def one_line(result_output: str) -> str:
    lines = result_output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result_output
    return lines[0]


def test_a_database_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    config = config_with(tmp_path, "sqlite:///file/state/alliance.sqlite3")
    result = invoke(config, "queue")
    assert result.exit_code == 1
    line = one_line(result.output)
    assert "cannot open it" in line and "check database.url" in line


def test_a_stopped_postgresql_is_one_line(tmp_path: Path) -> None:
    config = config_with(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/alliance")
    for command in (["queue"], ["serve"]):
        result = invoke(config, *command)
        assert result.exit_code == 1, result.output
        line = one_line(result.output)
        assert "cannot open it" in line and "the server runs" in line
        assert "127.0.0.1" in line


def test_postgres_is_the_alias_of_postgresql(tmp_path: Path) -> None:
    with postgres_database() as url:
        alias = url.replace("postgresql+psycopg://", "postgres://").replace(
            "postgresql://", "postgres://")
        assert alias.startswith("postgres://")
        assert "deliveries: empty" in cli(config_with(tmp_path, alias), "queue")


@pytest.mark.parametrize(("data", "message"), [
    ({"http": {"base_url": "lists.example.org"}},
     "http.base_url: expected http://host[:port] or https://host, got 'lists.example.org'"),
    ({"http": {"base_url": "ftp://lists.example.org"}},
     "http.base_url: expected http://host[:port] or https://host, "
     "got 'ftp://lists.example.org'"),
    ({"http": {"base_url": "https://"}},
     "http.base_url: expected http://host[:port] or https://host, got 'https://'"),
    ({"outbound": {"url": "smtp://:25"}},
     "outbound.url: expected smtp://host:port or smtps://host:port, got 'smtp://:25'"),
    ({"outbound": {"url": "smtp://relay:port"}},
     "outbound.url: expected smtp://host:port or smtps://host:port, got 'smtp://relay:port'"),
    ({"database": {"url": "mysql://u@h/db"}},
     "database.url: expected sqlite:///PATH or postgresql://user@host/db, "
     "got 'mysql://u@h/db'"),
    ({"database": {"url": "postgresql://u@h:port/db"}},
     "database.url: expected sqlite:///PATH or postgresql://user@host/db, "
     "got 'postgresql://u@h:port/db'"),
    ({"dns": {"nameserver": "127.0.0.1:domain"}},
     "dns.nameserver: expected host:port, got '127.0.0.1:domain'"),
    ({"site": {"admin": "nobody"}},
     "site.admin: expected an address such as admin@example.org, got 'nobody'"),
])
def test_url_like_values_are_checked_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_dict(data)
    assert str(error.value) == message


def test_good_urls_pass() -> None:
    config = from_dict({"http": {"base_url": "https://lists.example.org/"},
                        "outbound": {"url": "smtp://127.0.0.1:25"},
                        "database": {"url": "postgres://u@h/db"}})
    assert config.base_url == "https://lists.example.org"


def test_a_log_level_not_known_is_a_usage_line_not_a_traceback(tmp_path: Path) -> None:
    result = invoke(config_with(tmp_path, "sqlite:///a.sqlite3"), "serve",
                    "--log-level", "verbose")
    assert result.exit_code == 2
    assert "Invalid value for '--log-level': 'verbose' is not one of" in result.output
    assert "Traceback" not in result.output


def test_a_dns_server_that_is_no_name_stops_serve_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "sqlite:///a.sqlite3"\n[smtp]\nlisten = ""\n'
                      '[lmtp]\nlisten = ""\n[http]\nlisten = ""\n'
                      '[dns]\nnameserver = "no-such-host.invalid"\n')
    result = invoke(config, "serve")
    assert result.exit_code == 1
    assert one_line(result.output).startswith(
        "Error: config: dns.nameserver: cannot resolve 'no-such-host.invalid'")


def test_two_party_adds_at_once_are_one_line_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another command takes the name between this one's check and its commit (on
    PostgreSQL, where two commands write at once): the unique key refuses it, and the
    command tries again and says why, in one line."""
    with postgres_database() as url:
        config = config_with(tmp_path, url)
        cli(config, "party", "list")              # the schema, made
        other = Database(url)
        check = organisation._new_name
        raced: list[str] = []

        def racing(session: Session, model: type, name: str, noun: str, **keep: int) -> None:
            check(session, model, name, noun, **keep)
            if not raced:                          # the other command, in the window
                raced.append(name)
                other.transaction(lambda s: organisation.add_party(
                    s, "spö", country="AT", region="europe"))

        monkeypatch.setattr(organisation, "_new_name", racing)
        try:
            result = invoke(config, "party", "add", "SPÖ", "--country", "AT",
                            "--region", "europe")
        finally:
            other.close()
        assert raced == ["SPÖ"], "the other command came in between"
        assert result.exit_code == 1 and one_line(result.output) == \
            "Error: party 'spö' already exists"
