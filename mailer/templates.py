"""Templates: one strict Jinja environment, and the language each reader gets.

One strict environment (`StrictUndefined`; autoescape for HTML only). A mail template lives
at `templates/<language>/<name>.txt`; it sets its subject with `{% set subject = ... %}`
and renders the body. Pages are `templates/<language>/pages/<name>.html`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
LANGUAGES = ("en", "fr", "es", "de")
DEFAULT_LANGUAGE = "en"


def environment(folder: Path = TEMPLATES) -> jinja2.Environment:
    """The one Jinja environment: strict about missing names, escaping only HTML."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(["html"]),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def language_of(*choices: str | None) -> str:
    """The first of the choices that we have templates for, else English.

    >>> language_of("", "pt", "fr")
    'fr'
    >>> language_of(None)
    'en'
    """
    for choice in choices:
        if choice and choice in LANGUAGES:
            return choice
    return DEFAULT_LANGUAGE


def render(env: jinja2.Environment, name: str, language: str,
           context: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) of template `name` in `language`."""
    module = render_module(env, name, language, context)
    return subject_of(module), str(module)


def render_module(env: jinja2.Environment, name: str, language: str,
                  context: dict[str, Any]) -> Any:
    """Template `name` in `language`, rendered: its text, and what it sets (`subject`)."""
    return env.get_template(f"{language_of(language)}/{name}.txt").make_module(context)


def subject_of(module: Any) -> str:
    """The `subject` a rendered template set, on one line."""
    return " ".join(str(getattr(module, "subject", "")).split())
