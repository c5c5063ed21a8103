#!/usr/bin/env python3
"""Crash safety of `alliance serve`: SIGKILL at random moments, a full disk, and a count.

    python3 tools/crash.py [--scenario intake|fanout|diskfull|all] [--kills N]
                           [--clients C] [--short] [--json-out FILE] [--seed S] [--keep]

  intake    C SMTP clients post numbered messages to a list of 3 members while the daemon
            is SIGKILLed at random moments (from its start: some kills land during
            start-up) and started again, N times (default 1,000; --short 50). A client
            sends again what got no answer or a 4xx, as an MTA would.
  fanout    one post to a list of 10,000 members (--short 1,000); once its deliveries are
            queued, the daemon is SIGKILLed at random moments and restarted until N kills
            (default 20; --short 5) landed while deliveries were still pending.
  diskfull  the database on a small tmpfs the harness mounts; a filler file takes every
            free byte for 60 s (--short 5 s) during a fan-out and while clients post.
            Skipped, saying why, where a tmpfs cannot be mounted (not root).

Then the daemon is started once more and the queue left to empty, and the checks: every
message answered 250 reached every member at Postfix's smtp-sink (0 undelivered), nothing
quarantined (`alliance quarantine list --json`), no delivery failed, every work unit and
delivery done; duplicates are counted and held against the deliveries that were leased
(in flight) at the kills; while the disk was full intake answered only 250 or
`452 4.3.1`, and did answer `452 4.3.1`. The last line is `crash OK` or `crash FAILED:
...`; the exit code 0 or 1.

Everything talks to 127.0.0.1; every loop is bounded in count and time; only the
processes started here are signalled, by PID (benchmarks/harness/processes.py), also on
an error, ^C or SIGTERM; the tmpfs is unmounted and the folder removed (unless --keep).
The pieces of the benchmark harness are reused: benchmarks/harness/ (smtp-sink, the DNS
server, the config, the posting session) and benchmarks/make_list.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder (crash_harness) and benchmarks/ (harness), whether run from any folder or
# imported: a script's folder is sys.path[0], an import's need not be.
HERE = Path(__file__).resolve().parent
for _folder in (str(HERE), str(HERE.parent / "benchmarks")):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

from crash_harness.cli import main  # noqa: E402 (after the path above)

if __name__ == "__main__":
    sys.exit(main())
