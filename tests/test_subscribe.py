"""Joining and leaving by mail, as a delegate's mail client would do it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from lists.models import Member, Pending
from tests.helpers import (
    DOMAIN,
    Clock,
    Sink,
    mail,
    make_config,
    make_list,
    make_role,
    members,
    reply_to,
    running,
    send,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"
JOIN = f"steering-join@{DOMAIN}"
LEAVE = f"steering-leave@{DOMAIN}"
REQUEST = f"steering-request@{DOMAIN}"
ANA = "ana@party.example"


def roster(daemon: object, role: str = "member") -> list[str]:
    db = daemon.db  # type: ignore[attr-defined]
    return db.query(lambda s: sorted(s.scalars(select(Member.address).where(
        Member.role == role))))


async def test_join_confirm_by_reply_welcome_then_post(tmp_path: Path, database_url: str,
                                                       sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    make_list(config, "steering", [], display_name="Steering Committee")
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ANA, [JOIN], mail(ANA, JOIN, subject="please add me"))
        [confirmation] = await wait_quiet(sink, 1)
        message = confirmation.message
        assert confirmation.rcpt == ANA
        assert message["From"] == f"Steering Committee <steering-request@{DOMAIN}>"
        assert message["Auto-Submitted"] == "auto-replied"
        assert message["Subject"].startswith("confirm ")
        token = message["Subject"].split()[1]
        assert message["Reply-To"] == f"steering-confirm+{token}@{DOMAIN}"
        assert f"confirm {token}" in message.get_content()
        assert roster(daemon) == [], "nobody is subscribed before confirming"

        target, data = reply_to(confirmation, ANA)
        await send(port, ANA, [target], data)
        welcome = (await wait_quiet(sink, 2))[1]
        assert (welcome.rcpt, welcome.message["Subject"]) == \
            (ANA, "Welcome to Steering Committee")
        assert roster(daemon) == [ANA]

        sink.received.clear()
        await send(port, ANA, [LIST], mail(ANA, LIST, subject="Hello all"))
        [post] = await wait_quiet(sink, 1)
    assert (post.rcpt, post.message["Subject"]) == (ANA, "[steering] Hello all")


async def test_confirm_command_to_the_request_address(tmp_path: Path, sqlite_url: str,
                                                      sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [])
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ANA, [REQUEST], mail(ANA, REQUEST, subject="subscribe"))
        [confirmation] = await wait_quiet(sink, 1)
        token = confirmation.message["Subject"].split()[1]
        await send(port, ANA, [REQUEST], mail(ANA, REQUEST, subject="hello",
                                              body=f"confirm {token}\n"))
        await wait_quiet(sink, 2)
        assert roster(daemon) == [ANA]


async def test_leave_needs_the_members_confirmation(tmp_path: Path, sqlite_url: str,
                                                   sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [ANA, "bo@party.example"])
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ANA, [LEAVE], mail(ANA, LEAVE, subject="bye"))
        [confirmation] = await wait_quiet(sink, 1)
        assert "leave" in confirmation.message["Subject"]
        assert roster(daemon) == [ANA, "bo@party.example"]
        target, data = reply_to(confirmation, ANA)
        await send(port, ANA, [target], data)
        goodbye = (await wait_quiet(sink, 2))[1]
        assert goodbye.message["Subject"] == "You have left steering"
        assert roster(daemon) == ["bo@party.example"]


async def test_a_closed_list_politely_refuses(tmp_path: Path, sqlite_url: str,
                                             sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "board", [], subscription="closed")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], ANA, [f"board-join@{DOMAIN}"],
                   mail(ANA, f"board-join@{DOMAIN}"))
        [refusal] = await wait_quiet(sink, 1)
        assert refusal.message["Subject"] == "About your request to join board"
        assert f"board-owner@{DOMAIN}" in refusal.message.get_content()
        assert roster(daemon) == []


async def test_moderated_subscription_waits_for_an_owner(tmp_path: Path, sqlite_url: str,
                                                        sink: Sink) -> None:
    owner = "chair@party.example"
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "board", [], subscription="moderate")
    make_role(config, "board", owner, "owner")
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ANA, [f"board-join@{DOMAIN}"], mail(ANA, f"board-join@{DOMAIN}"))
        [confirmation] = await wait_quiet(sink, 1)
        target, data = reply_to(confirmation, ANA)
        await send(port, ANA, [target], data)
        mails = await wait_quiet(sink, 3)
        by_rcpt = {d.rcpt: d for d in mails[1:]}
        assert set(by_rcpt) == {owner, ANA}
        assert "awaits approval" in by_rcpt[ANA].message["Subject"]
        approval = by_rcpt[owner]
        assert approval.message["From"] == f"board <board-owner@{DOMAIN}>"
        assert roster(daemon) == []
        target, data = reply_to(approval, owner)
        await send(port, owner, [target], data)
        welcome = (await wait_quiet(sink, 4))[3]
        assert (welcome.rcpt, welcome.message["Subject"]) == (ANA, "Welcome to board")
        assert roster(daemon) == [ANA]


async def test_an_owner_can_refuse_a_moderated_subscription(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    owner = "chair@party.example"
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "board", [], subscription="moderate")
    make_role(config, "board", owner, "owner")
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ANA, [f"board-join@{DOMAIN}"], mail(ANA, f"board-join@{DOMAIN}"))
        target, data = reply_to((await wait_quiet(sink, 1))[0], ANA)
        await send(port, ANA, [target], data)
        approval = next(d for d in await wait_quiet(sink, 3) if d.rcpt == owner)
        target, data = reply_to(approval, owner, body="reject")
        await send(port, owner, [target], data)
        refusal = (await wait_quiet(sink, 4))[3]
        assert (refusal.rcpt, refusal.message["Subject"]) == \
            (ANA, "Your request to join board")
        assert roster(daemon) == []


async def test_confirmation_tokens_expire(tmp_path: Path, sqlite_url: str,
                                          sink: Sink) -> None:
    clock = Clock()
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [])
    async with running(config, clock=clock) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ANA, [JOIN], mail(ANA, JOIN))
        [confirmation] = await wait_quiet(sink, 1)
        clock.advance(days=8)
        target, data = reply_to(confirmation, ANA)
        await send(port, ANA, [target], data)
        answer = (await wait_quiet(sink, 2))[1]
        assert "unknown or has expired" in answer.message.get_content()
        assert roster(daemon) == []
        states = daemon.db.query(lambda s: s.scalars(select(Pending.state)).all())
    assert states == ["expired"]


async def test_confirmations_to_one_address_are_limited_to_three_a_day(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    clock = Clock()
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [])
    victim = "victim@elsewhere.example"
    async with running(config, clock=clock) as daemon:
        port = daemon.ports["smtp"]
        for _ in range(5):
            await send(port, victim, [JOIN], mail(victim, JOIN))
        await wait_quiet(sink, 3, settle=0.6)
        clock.advance(days=1, seconds=1)
        await send(port, victim, [JOIN], mail(victim, JOIN))
        await wait_quiet(sink, 4)


async def test_confirmations_caused_by_one_sender_are_limited(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         lists={"confirmations_per_source": 2})
    make_list(config, "steering", [])
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        for n in range(4):  # one sender forging four victims' From
            address = f"target{n}@elsewhere.example"
            await send(port, "abuser@bad.example", [JOIN], mail(address, JOIN))
        await wait_quiet(sink, 2, settle=0.6)


async def test_automatic_mail_is_never_answered(tmp_path: Path, sqlite_url: str,
                                                sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [ANA])
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ANA, [REQUEST], mail(ANA, REQUEST, subject="Out of office",
                                              Auto_Submitted="auto-replied"))
        await send(port, ANA, [JOIN], mail(ANA, JOIN, Precedence="bulk"))
        await send(port, "", [REQUEST], mail("mailer-daemon@mx.example", REQUEST,
                                             subject="help"))
        await send(port, ANA, [REQUEST], mail(ANA, REQUEST, subject="help",
                                              List_Id="<other.lists.example>"))
        await send(port, ANA, [REQUEST], mail(ANA, REQUEST, subject="help",
                                              X_Loop=LIST))
        await send(port, ANA, [REQUEST], mail(ANA, REQUEST, subject="help"))
        [answer] = await wait_quiet(sink, 1, settle=0.6)
    assert answer.message["Subject"] == "Results of your commands to steering"


async def test_commands_in_the_body_skip_quotes_and_signatures(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [ANA])
    body = ("set digest\n"
            "> set nomail\n"
            "\n"
            "set language fr\n"
            "-- \n"
            "Ana Pérez\n"
            "set regular\n")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], ANA, [REQUEST], mail(ANA, REQUEST, subject="",
                                                              body=body))
        [answer] = await wait_quiet(sink, 1)
        member = daemon.db.query(lambda s: s.scalars(select(Member)).one())
    assert (member.delivery, member.language) == ("digest", "fr")
    text = answer.message.get_content()
    assert "> set digest" in text and "> set language fr" in text
    assert "set regular" not in text and "nomail" not in text.split("Commands")[0]


async def test_a_member_who_chose_portuguese_gets_the_robots_mail_in_portuguese(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [ANA])
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ANA, [REQUEST], mail(ANA, REQUEST, subject="set language pt"))
        [results] = await wait_quiet(sink, 1)
        sink.received.clear()
        await send(port, ANA, [REQUEST], mail(ANA, REQUEST, subject="RES: unsubscribe"))
        [confirmation] = await wait_quiet(sink, 1)
    assert results.message["Subject"] == "Resultados dos seus comandos para steering"
    assert 'Feito: a partir de agora, as mensagens do robô serão enviadas em "pt".' in \
        results.message.get_content()
    token = confirmation.message["Subject"].split()[1]
    assert confirmation.message["Subject"] == f"confirm {token} (saída de steering)"
    text = confirmation.message.get_content()
    assert text.startswith("Prezado(a),\n\nAlguém, provavelmente você, pediu o cancelamento")
    assert f"    confirm {token}\n" in text


async def test_an_unknown_command_gets_help(tmp_path: Path, sqlite_url: str,
                                            sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [])
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], ANA, [REQUEST],
                   mail(ANA, REQUEST, subject="Question", body="Could you add me please?\n"))
        [answer] = await wait_quiet(sink, 1)
    text = answer.message.get_content()
    assert "Unknown command" in text
    assert "subscribe            join the list" in text


async def test_who_is_for_owners_only(tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    owner = "chair@party.example"
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", members(3))
    make_role(config, "steering", owner, "owner")
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, ANA, [REQUEST], mail(ANA, REQUEST, subject="who"))
        await send(port, owner, [REQUEST], mail(owner, REQUEST, subject="who"))
        answers = {d.rcpt: d.message.get_content() for d in await wait_quiet(sink, 2)}
    assert "Only the owners" in answers[ANA] and "m00001" not in answers[ANA]
    assert all(address in answers[owner] for address in members(3))


async def test_behind_an_mta_the_source_is_the_client_it_names_not_loopback(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    """Over LMTP every message comes from 127.0.0.1; one abuser must not block everyone."""
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         lists={"confirmations_per_source": 2})
    make_list(config, "steering", [])
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        for n in range(3):  # the abuser, from one client, for three victims
            victim = f"victim{n}@elsewhere.example"
            await send(port, "abuser@bad.example", [JOIN], mail(
                victim, JOIN, Received="from bad (bad [198.51.100.7]) by mx.example"))
        await send(port, ANA, [JOIN], mail(
            ANA, JOIN, Received="from party (party [203.0.113.9]) by mx.example"))
        mails = await wait_quiet(sink, 3, settle=0.6)
    assert sorted(d.rcpt for d in mails) == [ANA, "victim0@elsewhere.example",
                                             "victim1@elsewhere.example"]
