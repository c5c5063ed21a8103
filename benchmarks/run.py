#!/usr/bin/env python3
"""Alliance Mail benchmark: list fan-out and SMTP intake against Postfix's smtp-sink.

    python3 benchmarks/run.py [--short] [--scenarios A,B,C,D,E,F,G,H] [--json-out FILE]
        [--database postgresql://USER@HOST:PORT] [--daemons N] [--members N]

For each scenario: a fresh temporary folder with a SQLite database and a config, Postfix's
`smtp-sink` on a free loopback port as the smarthost (every transaction appended to a dump
file, one `X-Rcpt-Args:` line per delivered recipient), a DNS server on a free loopback
port that publishes `_dmarc.members.test TXT "v=DMARC1; p=reject"` (so every list copy
has its From rewritten, and no outside DNS is asked), the list `bench@bench.test` with N
members m000001@members.test ..., then `alliance --config FILE serve` as a subprocess,
posts over SMTP, and a watcher that polls the dump every 5 ms.

  A  one post to 1,000 members          (short: 50)
  B  one post to 10,000 members         (short: 200)
  C  100 posts to 100 members           (short: 5 posts to 20 members)
  D  intake: 50 concurrent SMTP clients post 5,000 2 KB messages to a list with one
     member (short: 200 messages)
  E  meeting: `alliance meeting invite` to 1,000 delegates of one body, then each replies
     ACCEPTED over SMTP, 50 clients at once (short: 50 delegates); see
     harness/scenario_meeting.py
  F  digest: 10 posts archived, then one MIME digest to 10,000 digest members
     (short: 2 posts, 200 members)
  G  intake under load: D's 5,000 posts while 10 posts of 20 KB to a second list of
     5,000 members fan out (short: 200 posts, 10 x 200 members); its p99 is compared
     with D's from the same run (issue 10: within 2x)
  H  B with DKIM on (`[dkim]`, a key from `alliance dkim keygen`) and ARC (`[arc]`: the
     post comes over LMTP with our MTA's Authentication-Results on top): every copy
     signed and carrying the post's ARC set, an even sample of 200 verified by dkimpy's
     verify and arc_verify (short: 200 members)

`--database postgresql://...` runs each trial on a PostgreSQL database of its own,
created with a unique name before the trial and dropped after it (also on errors;
`--keep` keeps it). `--daemons N` (PostgreSQL only: SQLite is one daemon per file) starts
N `alliance serve` processes on the trial's one config, posts to the first, and reports
what each delivered (its /metrics) and its peak RSS (VmHWM, and a 50 ms sampler).
`--members N` sets the member count of A, B and H.

A scenario passes when every expected (Message-ID, recipient) pair reached the sink exactly
once, nothing else did, every post got 250, the database shows every delivery done, every
list copy at the sink came From the list ("... via bench", DMARC), with several daemons
what their /metrics counted adds up to the deliveries made, the digest carried
every post, each delegate got one invitation and every reply was applied (E), and the
daemons stopped cleanly with no ERROR in their logs. The exit code is 0 if
every scenario passed, 1 otherwise (also when the harness itself could not run). Timings
are reported, never asserted. Everything talks to 127.0.0.1 only; every loop is bounded in
count and time; only the processes started here are stopped, by PID, also on errors and on
SIGTERM.

The harness is the package benchmarks/harness/ beside this file (its parts: see its
__init__); this file only finds it and runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The package beside this file, whether it runs as `python3 benchmarks/run.py` from any
# folder or is imported: a script's folder is sys.path[0], an import's need not be.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from harness.cli import main  # noqa: E402 (after the path above)

if __name__ == "__main__":
    sys.exit(main())
