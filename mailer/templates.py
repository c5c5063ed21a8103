"""Templates: one strict Jinja environment, and the language each reader gets.

One strict environment (`StrictUndefined`; autoescape for HTML only). A mail template lives
at `templates/<language>/<name>.txt`; it sets its subject with `{% set subject = ... %}`
and renders the body. Pages are `templates/<language>/pages/<name>.html`, each extending
the one `templates/pages/layout.html` (its `lang` is the page's); a visitor gets the first
language of their Accept-Language header that we have (`accepted_language`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
LANGUAGES = ("en", "fr", "es", "de", "pt")
DEFAULT_LANGUAGE = "en"


def escaped(name: str | None) -> bool:
    """Whether a template's output is HTML-escaped: every `.html` file, and every file of
    the pages (`pages/…`, `<language>/pages/…`, whatever its ending: a page's `.inc` is
    HTML too); mail's text parts are not.

    >>> [escaped(n) for n in ("en/invitation.html", "en/pages/meeting.inc",
    ...                       "pages/desk/notes.inc", "en/meeting.inc", "en/welcome.txt")]
    [True, True, True, False, False]
    """
    if name is None:
        return False
    return name.endswith(".html") or name.startswith("pages/") or "/pages/" in name


def environment(folder: Path = TEMPLATES) -> jinja2.Environment:
    """The one Jinja environment: strict about missing names, escaping every HTML
    template (`escaped`)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        autoescape=escaped,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def language_of(*choices: str | None) -> str:
    """The first of the choices that we have templates for, else English.

    >>> language_of("", "it", "pt", "fr")
    'pt'
    >>> language_of(None)
    'en'
    """
    for choice in choices:
        if choice and choice in LANGUAGES:
            return choice
    return DEFAULT_LANGUAGE


def accepted_language(header: str | None) -> str | None:
    """The language we have that an Accept-Language header prefers, or None if it names none.

    Ranges are taken by quality, highest first, then in the order given (RFC 9110 §12.5.4);
    a range is matched by lookup, dropping subtags from the end (RFC 4647 §3.4). A `*`
    before any match, like no header, leaves the choice to us (None).

    >>> accepted_language("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5")
    'fr'
    >>> accepted_language("pt-BR, de;q=0.3, es-419;q=0.6")
    'pt'
    >>> accepted_language("it-IT, de;q=0.3, es-419;q=0.6")
    'es'
    >>> accepted_language("en;q=0, DE")
    'de'
    >>> accepted_language("it, *;q=0.9, fr;q=0.1") is None
    True
    >>> accepted_language("") is None
    True
    """
    ranges = []
    for order, item in enumerate((header or "").split(",")):
        tag, _, parameters = item.partition(";")
        quality = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.strip().partition("=")
            if name.lower() == "q":
                quality = _quality(value)
        if tag.strip() and quality > 0:
            ranges.append((-quality, order, tag.strip().lower()))
    for _, _, tag in sorted(ranges):
        if tag == "*":
            return None
        subtags = tag.split("-")
        for end in range(len(subtags), 0, -1):
            if "-".join(subtags[:end]) in LANGUAGES:
                return "-".join(subtags[:end])
    return None


def _quality(value: str) -> float:
    """A q-value (RFC 9110 §12.4.2); a malformed one counts as 0, not acceptable."""
    try:
        quality = float(value)
    except ValueError:
        return 0.0
    return quality if 0.0 <= quality <= 1.0 else 0.0


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
