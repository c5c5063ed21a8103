"""The daemon's log: one line per event, as text or as one JSON object a line.

A message event is logged with its fields in `extra` (`event`, `message_id`, `list`,
`meeting`, `outcome`, ...): the text format shows them as `key=value` after the message,
the JSON format as keys of the object (issue 11, item 8).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*?)[ \t]*$", re.I | re.M)

# What every LogRecord has; anything else on a record came in `extra` (but uvicorn's
# `color_message`, the same words with terminal colours, which no log file wants).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}


def message_id(raw: bytes) -> str:
    """The Message-ID field of a message's header, read from the bytes ("" if none).

    >>> message_id(b"Subject: x\\r\\nMessage-ID: <a@b>\\r\\n\\r\\nMessage-ID: <in-text@b>")
    '<a@b>'
    """
    end = raw.find(b"\r\n\r\n", 0, 262_144)
    found = _MESSAGE_ID.search(raw, 0, end if end >= 0 else min(len(raw), 262_144))
    return found[1].decode("ascii", "replace").strip()[:300] if found else ""


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a log call gave in `extra`."""
    return {key: value for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")}


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{key}={value}" for key, value in fields(record).items())
        head, newline, rest = line.partition("\n")
        return f"{head} {extra}{newline}{rest}" if extra else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name,
            "message": record.getMessage()}
        entry.update(fields(record))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str, log_format: str = "text") -> None:
    """Send the log to stderr at `level`, as text or JSON lines (like basicConfig, left
    alone where a handler is already set, as in a test's own process)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    # aiosmtpd logs every command at INFO; keep the operator's log to what matters.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
