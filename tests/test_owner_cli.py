"""The owners' command line: import, export, show, set."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tests.helpers import fresh_config, invoke, run


def test_import_thousands_with_a_summary_of_what_was_not_added(tmp_path: Path) -> None:
    config = fresh_config(tmp_path)
    run(config, "list", "create", "steering")
    run(config, "list", "add", "steering", "m00002@members.test")
    lines = ["address,name,language"]
    lines += [f"m{n:05d}@members.test,Member {n},fr" for n in range(1, 3001)]
    lines += ["not an address,Nobody,en", "m00001@members.test,Again,fr",
              "ok@members.test,Bad language,xx", "", "# a comment"]
    source = tmp_path / "members.csv"
    source.write_text("\n".join(lines) + "\n")
    result = invoke(config, "list", "import", "steering", str(source))
    assert result.exit_code == 0, result.output
    assert "added 2999, already there 2, invalid 2" in result.output
    assert "line 3002: not an address: 'not an address'" in result.output
    assert "line 3004: unknown language 'xx'" in result.output
    code, output = run(config, "list", "members", "steering", "--json")
    listed = json.loads(output)
    assert len(listed) == 3000
    assert listed[0] == {"address": "m00001@members.test", "name": "Member 1",
                         "language": "fr", "delivery": "regular"}


def test_import_one_address_a_line_from_standard_input(tmp_path: Path) -> None:
    config = fresh_config(tmp_path)
    run(config, "list", "create", "steering")
    result = invoke(config, "list", "import", "steering", "-",
                    input="a@example.org\nB@Example.org\n")
    assert result.output.startswith("added 2, already there 0, invalid 0")


def test_export_writes_the_import_format(tmp_path: Path) -> None:
    config = fresh_config(tmp_path)
    run(config, "list", "create", "steering")
    run(config, "list", "add", "steering", "b@example.org", "a@example.org")
    code, output = run(config, "list", "export", "steering")
    assert code == 0
    rows = list(csv.reader(io.StringIO(output)))
    assert rows == [["address", "name", "language", "delivery"],
                    ["a@example.org", "", "", "regular"], ["b@example.org", "", "", "regular"]]
    (tmp_path / "other").mkdir()
    again = fresh_config(tmp_path / "other")
    run(again, "list", "create", "copy")
    exported = tmp_path / "export.csv"
    exported.write_text(output)
    assert run(again, "list", "import", "copy", str(exported))[1].startswith("added 2,")


def test_show_and_set_settings(tmp_path: Path) -> None:
    config = fresh_config(tmp_path)
    run(config, "list", "create", "steering", "--display-name", "Steering Committee")
    run(config, "list", "add", "steering", "chair@example.org", "--role", "owner")
    assert run(config, "list", "set", "steering", "reply_to", "list") == \
        (0, "steering: reply_to = list\n")
    assert run(config, "list", "set", "steering", "footer", "no") == \
        (0, "steering: footer = False\n")
    code, output = run(config, "list", "show", "steering", "--json")
    shown = json.loads(output)
    assert shown["display_name"] == "Steering Committee"
    assert (shown["reply_to"], shown["footer"], shown["subject_prefix"]) == \
        ("list", False, "[steering]")
    assert shown["owners"] == ["chair@example.org"] and shown["members"] == 0
    for args, message in [
        (("reply_to", "everyone"), "Error: reply_to takes one of: poster, list"),
        (("hold_days", "0"), "Error: hold_days must be at least 1"),
        (("colour", "red"), "Error: no setting 'colour'; settings are: display_name,"),
    ]:
        code, output = run(config, "list", "set", "steering", *args)
        assert code == 1 and output.startswith(message), output
