"""Reading mail commands (`subscribe`, `set digest`, `confirm TOKEN`, ...) from a message.

Commands come from the Subject and then the body's first text part. Quoted lines (`>`),
signatures (after `-- `), and everything after `end` are ignored; a run of lines that are
not commands ends the reading, so that a chatty message does not earn a long error list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage

COMMANDS = ("subscribe", "join", "unsubscribe", "leave", "help", "confirm", "set", "who",
            "end", "approve", "reject", "discard")
ALIASES = {"join": "subscribe", "leave": "unsubscribe", "stop": "end", "thanks": "end",
           "--": "end"}
MAX_LINES = 30
MAX_STRANGERS = 5
# Reply and forward prefixes as mail clients write them in our languages and a few more;
# Outlook in Brazilian Portuguese writes "RES:" (resposta) and "ENC:" (encaminhada).
_PREFIX = re.compile(r"^\s*((re|res|aw|sv|fwd?|enc|tr|wg|rv|r)\s*(\[\d+\])?\s*:\s*)+",
                     re.IGNORECASE)


@dataclass(frozen=True)
class Command:
    """One command line: the verb (aliases folded) and its arguments."""

    verb: str
    args: tuple[str, ...]
    line: str

    @property
    def known(self) -> bool:
        return self.verb in COMMANDS


def parse_line(line: str) -> Command | None:
    """The command on a line, or None for a blank line.

    >>> parse_line("  Set  digest ")
    Command(verb='set', args=('digest',), line='Set  digest')
    >>> parse_line("leave").verb
    'unsubscribe'
    >>> parse_line("") is None
    True
    """
    words = line.strip().split()
    if not words:
        return None
    verb = words[0].lower().rstrip(":")
    return Command(ALIASES.get(verb, verb), tuple(words[1:]), line.strip())


def subject_command(subject: str) -> Command | None:
    """The Subject as a command, once reply and forward prefixes are gone.

    >>> subject_command("Re: confirm 12-abc").args
    ('12-abc',)
    >>> subject_command("RES: ENC: confirm 12-abc").args
    ('12-abc',)
    >>> subject_command("Hello everyone") is None
    True
    """
    command = parse_line(_PREFIX.sub("", subject))
    return command if command and command.known else None


def body_lines(message: EmailMessage) -> list[str]:
    """The lines of the first text/plain part that may hold commands."""
    part = message.get_body(preferencelist=("plain",))
    if part is None:
        return []
    try:
        text = part.get_content()
    except (LookupError, ValueError):
        return []
    lines = []
    for line in str(text).splitlines()[: MAX_LINES * 4]:
        if line.rstrip() == "--" or line.startswith("-- "):
            break  # a signature follows (RFC 3676 §4.3)
        if line.lstrip().startswith(">"):
            continue
        lines.append(line)
    return lines


def read(message: EmailMessage) -> list[Command]:
    """Every command in the message, in order; reading stops at `end` or a run of prose."""
    found: list[Command] = []
    subject = subject_command(str(message.get("subject", "")))
    if subject is not None:
        found.append(subject)
    strangers = 0
    for line in body_lines(message):
        command = parse_line(line)
        if command is None:
            continue
        if command.verb == "end":
            break
        if not command.known:
            strangers += 1
            if strangers >= MAX_STRANGERS or found:
                # Prose after commands is the rest of a letter, not more commands.
                break
        found.append(command)
        if len(found) >= MAX_LINES:
            break
    return found


def first_command(message: EmailMessage) -> list[str]:
    """The words of the body's first non-blank line, lower-cased verb first.

    A reply to one of our notices repeats our Subject, so only the body counts here.
    """
    for line in body_lines(message):
        command = parse_line(line)
        if command is not None:
            return [command.verb, *command.args]
    return []
