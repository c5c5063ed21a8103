"""Posting policies and held posts: notices, decisions by mail and CLI, expiry."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from lists.models import Held
from tests.helpers import (
    DOMAIN,
    Clock,
    Sink,
    config_file,
    invoke,
    mail,
    make_config,
    make_list,
    make_role,
    members,
    reply_to,
    running,
    send,
    set_option,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"
MODERATOR = "mod@party.example"
STRANGER = "stranger@elsewhere.example"


def setup(tmp_path: Path, url: str, sink: Sink, **list_options: str) -> object:
    config = make_config(tmp_path, url, smarthost_port=sink.port)
    make_list(config, "steering", members(3), **list_options)
    make_role(config, "steering", MODERATOR, "moderator")
    return config


async def held_notice(sink: Sink, count: int) -> tuple[object, object]:
    """The moderator's notice and the poster's notice of one held post."""
    mails = {d.rcpt: d for d in await wait_quiet(sink, count)}
    return mails[MODERATOR], mails[STRANGER]


async def test_a_moderator_approves_a_held_post_by_replying(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = setup(tmp_path, database_url, sink)
    async with running(config) as daemon:  # type: ignore[arg-type]
        port = daemon.ports["smtp"]
        await send(port, STRANGER, [LIST], mail(STRANGER, LIST, subject="Invitation"))
        notice, poster = await held_notice(sink, 2)
        assert notice.message["Subject"] == \
            "Post to steering awaits your decision: Invitation"
        assert "the sender is not a member of the list" in notice.message.get_content()
        assert poster.message["Subject"] == "Your message to steering awaits approval"
        target, data = reply_to(notice, MODERATOR, body="approve")  # type: ignore[arg-type]
        await send(port, MODERATOR, [target], data)
        posts = (await wait_quiet(sink, 5))[2:]
        state = daemon.db.query(lambda s: s.scalars(select(Held.state)).one())
    assert sorted(d.rcpt for d in posts) == members(3)
    assert {d.message["Subject"] for d in posts} == {"[steering] Invitation"}
    assert state == "approved"


async def test_a_moderator_rejects_with_a_reason(tmp_path: Path, sqlite_url: str,
                                                 sink: Sink) -> None:
    config = setup(tmp_path, sqlite_url, sink)
    async with running(config) as daemon:  # type: ignore[arg-type]
        port = daemon.ports["smtp"]
        await send(port, STRANGER, [LIST], mail(STRANGER, LIST, subject="Spam"))
        notice, _ = await held_notice(sink, 2)
        target, data = reply_to(notice, MODERATOR,  # type: ignore[arg-type]
                                body="reject off topic for this list")
        await send(port, MODERATOR, [target], data)
        rejection = (await wait_quiet(sink, 3))[2]
    assert rejection.rcpt == STRANGER
    assert rejection.message["Subject"] == "Your message to steering was not distributed"
    assert "off topic for this list" in rejection.message.get_content()


async def test_a_reply_without_a_decision_gets_help_and_changes_nothing(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = setup(tmp_path, sqlite_url, sink)
    async with running(config) as daemon:  # type: ignore[arg-type]
        port = daemon.ports["smtp"]
        await send(port, STRANGER, [LIST], mail(STRANGER, LIST, subject="Hi"))
        notice, _ = await held_notice(sink, 2)
        target, data = reply_to(notice, MODERATOR, body="Who is this?")  # type: ignore
        await send(port, MODERATOR, [target], data)
        answer = (await wait_quiet(sink, 3))[2]
        state = daemon.db.query(lambda s: s.scalars(select(Held.state)).one())
    assert "approve, reject" in answer.message.get_content()
    assert state == "held"


async def test_the_cli_moderates_and_lists_held_posts(tmp_path: Path, sqlite_url: str,
                                                      sink: Sink) -> None:
    config = setup(tmp_path, sqlite_url, sink)
    cli = str(config_file(config, tmp_path))  # type: ignore[arg-type]
    async with running(config) as daemon:  # type: ignore[arg-type]
        port = daemon.ports["smtp"]
        await send(port, STRANGER, [LIST], mail(STRANGER, LIST, subject="One"))
        await send(port, STRANGER, [LIST], mail(STRANGER, LIST, subject="Two"))
        await wait_quiet(sink, 4)
        listing = invoke(cli, "list", "held", "steering")
        assert "One" in listing.output and "Two" in listing.output
        ids = daemon.db.query(lambda s: s.scalars(select(Held.id).order_by(Held.id)).all())
        result = invoke(cli, "list", "moderate", "steering", str(ids[0]), "discard")
        assert result.output == f"post {ids[0]} on steering: discard\n"
        result = invoke(cli, "list", "moderate", "steering", str(ids[1]), "approve")
        assert result.exit_code == 0, result.output
        daemon.dispatcher.wake()
        posts = (await wait_quiet(sink, 7))[4:]
        again = invoke(cli, "list", "moderate", "steering", str(ids[1]), "reject")
    assert {d.message["Subject"] for d in posts} == {"[steering] Two"}
    assert (again.exit_code, again.output.strip()) == \
        (1, f"Error: post {ids[1]} was already approved")


async def test_unanswered_holds_expire_with_a_notice(tmp_path: Path, sqlite_url: str,
                                                     sink: Sink) -> None:
    clock = Clock()
    config = setup(tmp_path, sqlite_url, sink)
    async with running(config, clock=clock) as daemon:  # type: ignore[arg-type]
        await send(daemon.ports["smtp"], STRANGER, [LIST], mail(STRANGER, LIST, "Late"))
        await held_notice(sink, 2)
        clock.advance(days=15)
        daemon.scheduler.wake()
        expired = (await wait_quiet(sink, 3))[2]
        state = daemon.db.query(lambda s: s.scalars(select(Held.state)).one())
    assert (expired.rcpt, expired.message["Subject"]) == \
        (STRANGER, "Your message to steering expired")
    assert state == "expired"


async def test_nonmember_action_reject_and_discard(tmp_path: Path, sqlite_url: str,
                                                   sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "open", members(2))
    make_list(config, "quiet", members(2))
    set_option(config, "open", "nonmember_action", "reject")
    set_option(config, "quiet", "nonmember_action", "discard")
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, STRANGER, [f"open@{DOMAIN}"], mail(STRANGER, f"open@{DOMAIN}"))
        await send(port, STRANGER, [f"quiet@{DOMAIN}"], mail(STRANGER, f"quiet@{DOMAIN}"))
        [rejection] = await wait_quiet(sink, 1, settle=0.6)
        held = daemon.db.query(lambda s: s.scalars(select(Held)).all())
    assert rejection.rcpt == STRANGER
    assert "not a member" in rejection.message.get_content()
    assert held == []


async def test_moderated_and_announce_lists(tmp_path: Path, sqlite_url: str,
                                            sink: Sink) -> None:
    poster = "press@party.example"
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "news", members(2), posting="announce")
    make_list(config, "calm", members(2), posting="moderated")
    make_role(config, "news", poster, "poster")
    make_role(config, "calm", MODERATOR, "moderator")
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        member = members(1)[0]
        await send(port, poster, [f"news@{DOMAIN}"], mail(poster, f"news@{DOMAIN}", "News"))
        await send(port, member, [f"news@{DOMAIN}"], mail(member, f"news@{DOMAIN}", "Mine"))
        await send(port, member, [f"calm@{DOMAIN}"], mail(member, f"calm@{DOMAIN}", "Q"))
        await send(port, MODERATOR, [f"calm@{DOMAIN}"],
                   mail(MODERATOR, f"calm@{DOMAIN}", "Mod"))
        mails = await wait_quiet(sink, 7, settle=0.6)  # 2 + 2 posts, 3 notices
        held = daemon.db.query(lambda s: sorted(s.scalars(select(Held.subject)).all()))
    subjects = sorted(str(d.message["Subject"]) for d in mails)
    assert held == ["Mine", "Q"]
    assert subjects.count("[news] News") == 2 and subjects.count("[calm] Mod") == 2
    assert "[news] Mine" not in subjects and "[calm] Q" not in subjects


async def test_the_reason_a_post_waits_is_told_in_the_posters_language(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = setup(tmp_path, sqlite_url, sink)
    set_option(config, "steering", "language", "fr")
    async with running(config) as daemon:  # type: ignore[arg-type]
        await send(daemon.ports["smtp"], STRANGER, [LIST], mail(STRANGER, LIST, "Bonjour"))
        _, poster = await held_notice(sink, 2)
    text = poster.message.get_content()  # type: ignore[attr-defined]
    assert "l'expéditeur n'est pas abonné à la liste" in text
    assert "not a member" not in text
