#!/usr/bin/env python3
"""How fast the web pages answer with a full site (issue 13, item 6).

    python3 benchmarks/pages.py [--members 10000] [--delegates 1000] [--requests 200]
                                [--short] [--json-out FILE]

A fresh SQLite site: the list `bench` with N members (benchmarks/make_list.py) and a
public archive, a custom
body with M delegates seated across 50 parties (benchmarks/make_meeting.py), one meeting
of that body sent to all of them; then `alliance serve` as a subprocess, a signed-in
session for the site admin (its cookie made with the site's own secret, as the sign-in
link would set it), and each page below fetched `--requests` times, one request at a
time over a kept-alive connection, after five unmeasured ones. Prints the median and p95
per page (end of request → last byte of the answer) and the daemon's peak RSS. A page
that answers other than 200, or with a page of another kind, fails the run (exit 1);
times are reported, never asserted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from harness.common import DOMAIN, LIST, log, percentile  # noqa: E402
from harness.daemon import Daemon, alliance, child_env, run_helper  # noqa: E402
from harness.processes import stop_everything  # noqa: E402

ADMIN = "admin@bench.test"
BODY = "bench-forum"
# The pages a coordinator and a member use most; a page that does not exist (yet) on this
# checkout is skipped with a note, so the tool runs on any revision.
PAGES = ("/dashboard", "/dashboard/meetings", "/dashboard/meetings/1",
         "/dashboard/meetings/1/attendance", "/dashboard/organisation",
         f"/dashboard/lists/{LIST}", f"/dashboard/lists/{LIST}?q=m0099",
         f"/dashboard/lists/{LIST}/held", "/dashboard/queue", "/me",
         f"/lists/{LIST}/", f"/lists/{LIST}/search?q=agenda", "/bodies/", f"/bodies/{BODY}/")


def write_config(folder: Path) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f'[site]\ndomain = "{DOMAIN}"\nname = "Benchmark"\nadmin = "{ADMIN}"\n\n'
        f'[database]\nurl = "sqlite:///{folder / "alliance.sqlite3"}"\n\n'
        '[smtp]\nlisten = "127.0.0.1:0"\n\n[lmtp]\nlisten = ""\n\n'
        '[outbound]\nurl = "maildir:outbox"\n\n'
        '[http]\nlisten = "127.0.0.1:0"\nbase_url = "http://127.0.0.1"\n\n'
        '[dns]\nnameserver = "127.0.0.1:9"\ntimeout = 0.05\n', encoding="utf-8")
    return path


def admin_cookie(config: Path) -> str:
    """The session cookie the admin's sign-in link would set (mailer.webauth)."""
    code = ("import sys; from mailer.config import load; from mailer.db import Database; "
            "from mailer.webauth import Auth; c = load(sys.argv[1]); "
            "db = Database(c.database.url, c.base_dir); "
            f"print(Auth(db.secret(c.site.secret), secure=False).cookie('{ADMIN}')"
            ".split(';')[0]); db.close()")
    done = subprocess.run([sys.executable, "-c", code, str(config)], env=child_env(),
                          capture_output=True, text=True, check=True, timeout=120)
    return done.stdout.strip()


def http_port(daemon: Daemon) -> int:
    found = re.search(r"HTTP on port (\d+)", daemon.stdout.read_text(errors="replace"))
    if found is None:
        raise SystemExit("the daemon printed no HTTP port")
    return int(found[1])


def peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def measure(port: int, cookie: str, path: str, count: int) -> dict[str, Any]:
    """`count` GETs of one page over one kept-alive connection, after five warm-ups."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times: list[float] = []
    status, size = 0, 0
    for n in range(count + 5):
        started = time.perf_counter()
        connection.request("GET", path, headers={"Cookie": cookie})
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        status, size = response.status, len(body)
        if status != 200:
            break
        if n >= 5:
            times.append(elapsed)
    connection.close()
    if status != 200:
        return {"page": path, "status": status}
    times.sort()
    return {"page": path, "status": status, "bytes": size, "requests": len(times),
            "median_ms": round(percentile(times, 0.5) * 1000, 2),
            "p95_ms": round(percentile(times, 0.95) * 1000, 2),
            "max_ms": round(times[-1] * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--delegates", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--short", action="store_true",
                        help="200 members, 50 delegates, 20 requests a page (for CI)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    if args.short:
        args.members, args.delegates, args.requests = 200, 50, 20
    folder = Path(tempfile.mkdtemp(prefix="alliance-pages-"))
    config = write_config(folder)
    results: list[dict[str, Any]] = []
    try:
        log(f"pages: {args.members} members, {args.delegates} delegates in {folder}")
        run_helper("make_list.py", "--config", str(config), "--list", LIST,
                   "--members", str(args.members))
        run_helper("make_meeting.py", "--config", str(config), "--body", BODY,
                   "--delegates", str(args.delegates))
        alliance(config, "list", "set", LIST, "public_archive", "yes")
        alliance(config, "meeting", "create", "--body", BODY, "--title", "Forum",
                 "--tz", "Europe/Brussels", "--start", "2030-03-14T09:00",
                 "--end", "2030-03-14T17:00", "--send-at", "now")
        cookie = admin_cookie(config)
        daemon = Daemon(folder, config)
        daemon.start()
        try:
            port = http_port(daemon)
            time.sleep(2.0)        # the scheduler sends the invitations first
            for path in PAGES:
                found = measure(port, cookie, path, args.requests)
                results.append(found)
                log(f"{path}: {found}")
            rss = peak_rss_mib(daemon.pid)
        finally:
            daemon.stop()
    finally:
        stop_everything()
    served = [r for r in results if r["status"] == 200]
    missing = [r["page"] for r in results if r["status"] == 404]
    wrong = [r for r in results if r["status"] not in (200, 404)]
    print(f"{'page':44} {'median ms':>10} {'p95 ms':>8} {'bytes':>8}")
    for r in served:
        print(f"{r['page']:44} {r['median_ms']:>10} {r['p95_ms']:>8} {r['bytes']:>8}")
    for page in missing:
        print(f"{page:44} (not on this checkout)")
    print(f"daemon peak RSS {rss} MiB; {args.members} members, {args.delegates} delegates")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"members": args.members, "delegates": args.delegates, "rss_peak_mib": rss,
             "pages": results}, indent=2))
    if wrong or not served:
        print(f"pages FAILED: {wrong or 'no page answered'}")
        return 1
    print("pages OK")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
