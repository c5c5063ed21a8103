"""Run and watch it (issue 12, item 6): /healthz and /metrics, asked over real HTTP of a
running daemon."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from mailer import health, templates
from mailer.config import ConfigError, HealthSection, from_dict
from mailer.db import Database
from mailer.http_server import WebServer
from mailer.metrics import Metrics
from mailer.models import Delivery, Outgoing
from tests.helpers import (
    DOMAIN,
    PG_ADMIN,
    Sink,
    fixture,
    http,
    mail,
    make_config,
    make_list,
    organise,
    postgres_database,
    quiet,
    running,
    send,
)

FIELDS = {"status", "failing", "database", "queue_depth", "oldest_delivery_age",
          "last_delivery", "last_delivery_age", "work_depth", "oldest_work_age", "quarantined"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics page as {(sample name, labels): value}."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_healthz_answers_json_with_every_field(tmp_path: Path, database_url: str,
                                                     sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port,
                         site={"admin": "admin@site.test"})
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "a@example.com", [f"postmaster@{DOMAIN}"],
                   mail("a@example.com", f"postmaster@{DOMAIN}"))
        await sink.wait_for(1)
        await quiet(daemon)
        status, headers, body = await http(daemon.ports["http"], "GET", "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    report = json.loads(body)
    assert set(report) == FIELDS
    assert report["status"] == "ok" and report["failing"] == []
    assert report["database"] == "ok"
    assert report["queue_depth"] == 0 and report["oldest_delivery_age"] is None
    assert report["last_delivery"].endswith("Z") and report["last_delivery_age"] >= 0


def stale_delivery(session: Session, age: float) -> None:
    """A delivery that has waited `age` seconds and is not due for another hour (the
    smarthost said 4xx again and again)."""
    now = time.time()
    outgoing = Outgoing(created_at=now - age, kind="robot", sender=f"x@{DOMAIN}",
                        data=b"Subject: x\r\n\r\nx\r\n")
    session.add(outgoing)
    session.flush()
    session.add(Delivery(outgoing_id=outgoing.id, recipient="late@example.com",
                         state="pending", due_at=now + 3600, created_at=now - age,
                         attempts=5))


async def test_a_stale_queue_answers_503_naming_the_check(tmp_path: Path, sqlite_url: str,
                                                          sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         health={"max_delivery_age": 1800})
    async with running(config) as daemon:
        status, _, body = await http(daemon.ports["http"], "GET", "/healthz")
        assert status == 200, body
        await daemon.db.write(stale_delivery, 7200.0)
        status, _, body = await http(daemon.ports["http"], "GET", "/healthz")
    assert status == 503
    report = json.loads(body)
    assert report["status"] == "unhealthy" and report["failing"] == ["oldest_delivery"]
    assert report["queue_depth"] == 1 and report["oldest_delivery_age"] >= 7200


async def test_a_database_that_does_not_answer_is_503_naming_it(tmp_path: Path) -> None:
    # A listener like the daemon's over a PostgreSQL server that is not there (port 1).
    db = Database("postgresql://postgres@127.0.0.1:1/alliance", tmp_path)
    web = WebServer(health.pages(db, HealthSection(), Metrics(), ["127.0.0.1/32"]),
                    templates=templates.environment())
    server = await web.listen("127.0.0.1", 0)
    try:
        status, _, body = await http(server.sockets[0].getsockname()[1], "GET", "/healthz")
    finally:
        server.close()
        await server.wait_closed()
        db.close()
    assert status == 503
    report = json.loads(body)
    assert report["failing"] == ["database"]
    assert report["database"].startswith("unavailable: ")


class Hanging:
    """A database that never answers (a server behind a dropped route)."""

    def __init__(self) -> None:
        self.questions = 0
        self.never = asyncio.Event()

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.questions += 1
        await self.never.wait()

    async def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise AssertionError("a health check writes nothing")


async def test_a_database_that_hangs_is_503_and_asked_once_however_often_healthz_is_asked(
        ) -> None:
    database = Hanging()
    checker = health.Checker(database, HealthSection(), timeout=0.05)
    first, second = await checker.check(), await checker.check()
    assert first.status == second.status == 503
    assert first.report["database"] == "unavailable: no answer within 0.05 s"
    assert database.questions == 1


def refuse_connections(url: str, refuse: bool) -> None:
    """Make the PostgreSQL database refuse new connections and end those it has (as a
    server going away does), or take them again."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not refuse).lower()}')
        if refuse:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


async def test_a_running_daemon_whose_database_goes_away_answers_503_then_200_again(
        tmp_path: Path, sink: Sink) -> None:
    with postgres_database() as url:
        config = make_config(tmp_path, url, smarthost_port=sink.port)
        async with running(config) as daemon:
            port = daemon.ports["http"]
            assert (await http(port, "GET", "/healthz"))[0] == 200
            refuse_connections(url, True)
            try:
                status, _, body = await http(port, "GET", "/healthz")
            finally:
                refuse_connections(url, False)
            back, _, _ = await http(port, "GET", "/healthz")
    assert status == 503
    report = json.loads(body)
    assert report["failing"] == ["database"]
    assert report["database"].startswith("unavailable: ")
    assert back == 200


async def test_metrics_count_what_was_received_distributed_delivered_and_applied(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", ["m1@example.com", "m2@example.com", "m3@example.com"])
    async with running(config) as daemon:
        port = daemon.ports["http"]
        status, headers, before = await http(port, "GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        world = await daemon.db.write(organise)
        await send(daemon.ports["smtp"], "m1@example.com", [f"steering@{DOMAIN}"],
                   mail("m1@example.com", f"steering@{DOMAIN}", subject="Agenda"))
        await send(daemon.ports["smtp"], "ana@party.test", [world.rsvp("ana@party.test")],
                   fixture("outlook-reply-accepted.eml", world))
        await sink.wait_for(3)
        await quiet(daemon)
        _, _, after = await http(port, "GET", "/metrics")
    old, new = samples(before), samples(after)
    assert old[("alliance_messages_received_total", ())] == 0
    assert new[("alliance_messages_received_total", ())] == 2
    assert old[("alliance_posts_total", (("outcome", "distributed"),))] == 0
    assert new[("alliance_posts_total", (("outcome", "distributed"),))] == 1
    assert new[("alliance_deliveries_total", (("outcome", "delivered"),))] >= 3
    assert new[("alliance_deliveries_total", (("outcome", "failed"),))] == 0
    assert new[("alliance_rsvps_total", (("outcome", "applied"),))] == 1
    assert old[("alliance_intake_latency_seconds_count", ())] == 0
    assert new[("alliance_intake_latency_seconds_count", ())] == 2


async def test_a_refused_delivery_is_counted_failed_and_bounced_a_retried_one_deferred(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", ["m1@example.com", "gone@example.com"])
    sink.refuse["gone@example.com"] = "550 5.1.1 no such user"
    sink.tempfail_data = 1        # m1's copy is deferred once, then delivered
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "m1@example.com", [f"steering@{DOMAIN}"],
                   mail("m1@example.com", f"steering@{DOMAIN}"))
        await sink.wait_for(1)
        await quiet(daemon)
        _, _, text = await http(daemon.ports["http"], "GET", "/metrics")
    found = samples(text)
    assert found[("alliance_deliveries_total", (("outcome", "failed"),))] == 1
    assert found[("alliance_deliveries_total", (("outcome", "deferred"),))] == 1
    assert found[("alliance_deliveries_total", (("outcome", "delivered"),))] == 1
    assert found[("alliance_bounces_total", ())] == 1


async def test_metrics_are_only_for_the_allowed_networks_and_never_through_a_proxy(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    async with running(config) as daemon:
        port = daemon.ports["http"]
        assert (await http(port, "GET", "/metrics"))[0] == 200
        proxied = await http(port, "GET", "/metrics", headers={"X-Forwarded-For": "192.0.2.7"})
        healthz = await http(port, "GET", "/healthz", headers={"X-Forwarded-For": "192.0.2.7"})
    assert proxied[0] == 404 and "alliance_" not in proxied[2]
    assert healthz[0] == 200
    elsewhere = make_config(tmp_path, sqlite_url, http={"metrics_allow": ["192.0.2.0/24"]})
    async with running(elsewhere) as daemon:
        assert (await http(daemon.ports["http"], "GET", "/metrics"))[0] == 404


async def test_each_daemon_counts_its_own(tmp_path: Path, sqlite_url: str) -> None:
    first = make_config(tmp_path / "a", f"sqlite:///{tmp_path}/a.sqlite3")
    second = make_config(tmp_path / "b", f"sqlite:///{tmp_path}/b.sqlite3")
    async with running(first) as one, running(second) as two:
        await send(one.ports["smtp"], "a@example.com", [f"postmaster@{DOMAIN}"],
                   mail("a@example.com", f"postmaster@{DOMAIN}"))
        _, _, text_one = await http(one.ports["http"], "GET", "/metrics")
        _, _, text_two = await http(two.ports["http"], "GET", "/metrics")
    assert samples(text_one)[("alliance_messages_received_total", ())] == 1
    assert samples(text_two)[("alliance_messages_received_total", ())] == 0


def test_metrics_allow_takes_networks_only() -> None:
    assert from_dict({}).http.metrics_allow == ("127.0.0.1/32", "::1/128")
    assert from_dict({"http": {"metrics_allow": ["10.0.0.0/8"]}}).http.metrics_allow == \
        ("10.0.0.0/8",)
    for value, message in (
            (["10.0.0.0/33"], "http.metrics_allow: '10.0.0.0/33' is no network, such as "
                              "127.0.0.1/32 or 10.0.0.0/8"),
            ("10.0.0.0/8", 'http.metrics_allow: expected a list of strings, such as '
                           '["127.0.0.1/32"]')):
        with pytest.raises(ConfigError) as error:
            from_dict({"http": {"metrics_allow": value}})
        assert str(error.value) == message
