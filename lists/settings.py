"""The settings an owner can see and change on a list (`alliance list show` and `set`).

One table of typed settings, each with its choices or bounds and a help line; `show`
and `change` are driven by it, so a new setting is one row here and one column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lists import models
from lists.models import MailingList
from mailer import rawmail


class SettingError(ValueError):
    """A value an owner gave that the setting does not take."""


@dataclass(frozen=True)
class ListSetting:
    key: str
    kind: type
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


SETTINGS: tuple[ListSetting, ...] = (
    ListSetting("display_name", str, "name shown in List-Id, robot mail and the DMARC From"),
    ListSetting("description", str, "one paragraph about the list, shown in help and welcome"),
    ListSetting("language", str, "language of robot mail for members who chose none",
                models.LANGUAGES),
    ListSetting("subscription_policy", str, "confirm: double opt-in; moderate: confirm, then an "
                "owner approves; closed: only owners add members", models.SUBSCRIPTION_POLICIES),
    ListSetting("posting_policy", str, "members, anyone, moderated (every post held) or "
                "announce (owners and named posters only)", models.POSTING_POLICIES),
    ListSetting("nonmember_action", str, "what happens to a post from a non-member",
                models.NONMEMBER_ACTIONS),
    ListSetting("subject_prefix", str, "put before each subject, e.g. [steering]; empty: none"),
    ListSetting("reply_to", str, "where replies go: the poster, or the list", models.REPLY_TO),
    ListSetting("footer", bool, "add a footer with the way to unsubscribe"),
    ListSetting("dmarc_mode", str, "rewrite From: always, never, or when the poster's domain "
                "publishes p=reject or p=quarantine", models.DMARC_MODES),
    ListSetting("dmarc_poster_in", str, "where the poster goes when From is rewritten",
                models.DMARC_POSTER_IN),
    ListSetting("hold_days", int, "days a held post waits for a moderator before it expires",
                minimum=1),
    ListSetting("confirm_days", int, "days a confirmation token stays valid", minimum=1),
    ListSetting("bounce_threshold", float, "bounce score at which delivery is disabled",
                minimum=1),
    ListSetting("bounce_decay_days", int, "days after which an old bounce score is forgotten",
                minimum=1),
    ListSetting("digest_period", str, "how often digests are sent", models.DIGEST_PERIODS),
    ListSetting("digest_max_kb", int, "a digest is sent early when it grows past this size",
                minimum=1),
    ListSetting("automatic_action", str, "what happens to a post a machine sent "
                "(Auto-Submitted, Precedence: bulk, a bounce)", models.AUTOMATIC_ACTIONS),
    ListSetting("public_archive", bool, "show the archive on the web (by month, thread and "
                "search) and point each copy at its page (Archived-At)"),
    ListSetting("member_posts_per_hour", int, "posts one sender may have distributed in an "
                "hour before the next is held; 0: no limit", minimum=0),
)
BY_KEY = {setting.key: setting for setting in SETTINGS}
IN_HEADERS = frozenset({"display_name", "subject_prefix"})   # reach From, List-Id, Subject


def show(mailing_list: MailingList) -> dict[str, Any]:
    """Every setting of the list with its current value."""
    return {setting.key: getattr(mailing_list, setting.key) for setting in SETTINGS}


def parse(setting: ListSetting, text: str) -> Any:
    """Turn an owner's text into the setting's value, or SettingError.

    >>> parse(BY_KEY["footer"], "no")
    False
    >>> parse(BY_KEY["hold_days"], "0")
    Traceback (most recent call last):
    ...
    lists.settings.SettingError: hold_days must be at least 1
    """
    if setting.kind is bool:
        lowered = text.strip().lower()
        if lowered not in ("yes", "no", "true", "false", "on", "off", "1", "0"):
            raise SettingError(f"{setting.key} takes yes or no")
        return lowered in ("yes", "true", "on", "1")
    if setting.kind in (int, float):
        try:
            value = setting.kind(text)
        except ValueError:
            raise SettingError(f"{setting.key} takes a number") from None
        if setting.minimum is not None and value < setting.minimum:
            raise SettingError(f"{setting.key} must be at least {setting.minimum:g}")
        return value
    if setting.choices:
        chosen = text.strip().lower()  # every choice is lower case: `language FR` is fr
        if chosen not in setting.choices:
            raise SettingError(f"{setting.key} takes one of: {', '.join(setting.choices)}")
        return chosen
    if "\n" in text or "\r" in text or len(text) > 2000:
        raise SettingError(f"{setting.key} takes one line of at most 2000 characters")
    return text


def change(mailing_list: MailingList, key: str, text: str) -> Any:
    """Set one setting from text; returns the new value."""
    setting = BY_KEY.get(key)
    if setting is None:
        raise SettingError(f"no setting {key!r}; settings are: "
                           + ", ".join(s.key for s in SETTINGS))
    value = parse(setting, text)
    problem = rawmail.header_unsafe(value) if key in IN_HEADERS else None
    if problem is not None:
        raise SettingError(f"{key} cannot be set to that: {problem}")
    setattr(mailing_list, key, value)
    return value
