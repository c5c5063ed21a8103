#!/usr/bin/env python3
"""Create a benchmark list with N members, fast: one transaction, no CLI per address.

    python3 benchmarks/make_list.py --config CONFIG --list bench --members 10000 \
        [--delivery digest]

Members are m000001@members.test ... mNNNNNN@members.test (the same addresses as the
reference harness in shared/bench). The list's posting policy is `anyone`; every other
setting keeps its default (subject prefix, footer, DMARC by policy, daily digests).
`--delivery digest` puts every member on digests (scenario F) with one UPDATE after they
are added. Prints one JSON line: the list, the member count in the database, how many of
them take each delivery mode, the seconds it took and which `mailer` package was used (so
a run shows which checkout it measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# The checkout this file lives in, ahead of any installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEMBER_FORMAT = "m%06d@members.test"
CHUNK = 2000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--list", default="bench")
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--delivery", choices=("regular", "digest"), default="regular",
                        help="how every member takes the list (default regular)")
    args = parser.parse_args(argv)

    from sqlalchemy import func, select, update

    import mailer
    from lists import service, settings
    from lists.models import Member
    from mailer.config import load
    from mailer.db import Database

    started = time.monotonic()
    config = load(args.config)
    db = Database(config.database.url, config.base_dir)
    try:
        db.upgrade()
        db.transaction(lambda s: service.create(s, args.list, posting="anyone",
                                                subscription="closed"))
        # One sender posts thousands of times an hour here (scenarios C and D): lift the
        # per-sender rate that would rightly hold such a storm on a real list.
        db.transaction(lambda s: settings.change(service.find(s, args.list),
                                                 "member_posts_per_hour", "0"))
        addresses = [MEMBER_FORMAT % n for n in range(1, args.members + 1)]
        for start in range(0, len(addresses), CHUNK):
            chunk = addresses[start:start + CHUNK]
            db.transaction(lambda s, c=chunk: service.add_members(
                s, service.find(s, args.list), c))
        if args.delivery != "regular":
            db.transaction(lambda s: s.execute(
                update(Member).where(Member.list_id == service.find(s, args.list).id)
                .values(delivery=args.delivery)))
        modes = dict(db.query(lambda s: s.execute(
            select(Member.delivery, func.count())
            .where(Member.list_id == service.find(s, args.list).id)
            .group_by(Member.delivery)).all()))
        count = sum(modes.values())
    finally:
        db.close()
    print(json.dumps({"list": args.list, "members": count, "delivery": modes,
                      "seconds": round(time.monotonic() - started, 3),
                      "mailer": str(Path(mailer.__file__).resolve().parent)}))
    return 0 if modes == {args.delivery: args.members} else 1


if __name__ == "__main__":
    sys.exit(main())
