"""Every robot-mail template renders in every language, strictly (no missing names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailer import compose

LIST = {"name": "steering", "display_name": "Steering Committee", "description": "Open list",
        "post": "steering@lists.example.org", "request": "steering-request@lists.example.org",
        "join": "steering-join@lists.example.org", "leave": "steering-leave@lists.example.org",
        "owner": "steering-owner@lists.example.org"}
COMMON: dict[str, Any] = {"list": LIST, "site_name": "Progressive Alliance"}

# The names each template uses beyond COMMON. A template missing here fails the test, so
# adding a template means adding its sample context.
SAMPLES: dict[str, dict[str, Any]] = {
}


def template_names() -> list[str]:
    names = {path.stem for path in (compose.TEMPLATES / "en").glob("*.txt")}
    return sorted(names)


def test_every_language_has_the_same_templates() -> None:
    expected = {path.name for path in (compose.TEMPLATES / "en").glob("*.txt")}
    for language in compose.LANGUAGES:
        found = {path.name for path in (compose.TEMPLATES / language).glob("*.txt")}
        assert found == expected, f"{language}: {sorted(found ^ expected)}"


@pytest.mark.parametrize("name", template_names())
@pytest.mark.parametrize("language", compose.LANGUAGES)
def test_template_renders_strictly(name: str, language: str) -> None:
    assert name in SAMPLES, f"add a sample context for {name} to SAMPLES"
    env = compose.environment()
    subject, body = compose.render(env, name, language, {**COMMON, **SAMPLES[name]})
    assert subject, f"{language}/{name} sets no subject"
    assert "\n" not in subject
    assert body.strip()
    if language != "en":
        english = compose.render(env, name, "en", {**COMMON, **SAMPLES[name]})
        assert (subject, body) != english, f"{language}/{name} is not translated"


def test_a_missing_name_is_an_error_not_an_empty_string(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "probe.txt").write_text("{% set subject = 'Hi' %}Hello {{ who }}\n")
    env = compose.environment(tmp_path)
    import jinja2
    with pytest.raises(jinja2.UndefinedError):
        compose.render(env, "probe", "en", {})
