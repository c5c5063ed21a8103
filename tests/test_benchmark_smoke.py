"""The benchmark suite still works: its short mode, checked by counts (never by time)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
SINK = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink"
                                     if Path("/usr/sbin/smtp-sink").exists() else None)
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"

needs_sink = pytest.mark.skipif(
    SINK is None and not os.environ.get("CI"),
    reason="Postfix's smtp-sink is not installed (apt-get install postfix)")


def benchmark(*args: str) -> subprocess.CompletedProcess[str]:
    """benchmarks/run.py with these options."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), *args],
                          capture_output=True, text=True, timeout=600)


def postgres_or_skip() -> None:
    try:
        psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as error:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI needs PostgreSQL on 127.0.0.1:5432: {error}") from error
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({error})")


@needs_sink
def test_the_short_benchmark_delivers_every_post_exactly_once() -> None:
    result = benchmark("--short")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "benchmark OK" in result.stdout


@needs_sink
def test_two_daemons_on_postgresql_share_a_post_and_the_database_is_dropped(
        tmp_path: Path) -> None:
    postgres_or_skip()
    figures = tmp_path / "figures.json"
    result = benchmark("--short", "--scenarios", "B", "--members", "1500",
                       "--database", PG_SERVER, "--daemons", "2",
                       "--json-out", str(figures))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [found] = json.loads(figures.read_text())["results"]
    assert (found["engine"], found["daemons"], found["deliveries"]) == ("postgresql", 2, 1500)
    assert [d["daemon"] for d in found["per_daemon"]] == ["daemon", "daemon-2"]
    assert sum(d["delivered"] for d in found["per_daemon"]) == 1500
    assert all(d["rss_peak_mib"] > 0 for d in found["per_daemon"])
    name = found["database_url"].rsplit("/", 1)[1]
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        left = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                             (name,)).fetchone()
    assert left == (0,), f"{name} was not dropped"


def test_several_daemons_need_postgresql() -> None:
    result = benchmark("--short", "--scenarios", "B", "--daemons", "2")
    assert result.returncode == 2
    assert "--daemons: more than 1 only with --database postgresql://" in result.stderr


def test_the_pages_benchmark_serves_every_page_it_knows() -> None:
    """benchmarks/pages.py --short: every page answers 200 to the signed-in admin (or is
    not on this checkout), by count; its times are for the README, never asserted."""
    figures = ROOT / "artifacts" / "pages-short.json"
    figures.parent.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pages.py"), "--short",
                             "--json-out", str(figures)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pages = json.loads(figures.read_text())["pages"]
    served = {p["page"] for p in pages if p["status"] == 200}
    assert {"/dashboard", "/me"} <= served
    assert all(p["requests"] == 20 for p in pages if p["status"] == 200)
