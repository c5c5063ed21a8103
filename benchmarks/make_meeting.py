#!/usr/bin/env python3
"""Create a benchmark body with N delegates, fast: a few transactions, no CLI per delegate.

    python3 benchmarks/make_meeting.py --config CONFIG --body bench-forum --delegates 1000 \
        [--parties 50]

The body is a custom one (`meetings.organisation.add_body`): custom bodies have neither
the Board's limit of 30 parties nor the Steering Committee's one delegate per party, so
N delegates need no N parties. Parties are "Bench Party 001" ...; delegates are
d000001@delegates.test ... ("Delegate 000001"), dealt round the parties and round the four
languages (en, fr, es, de), each seated through `organisation.seat` (which also subscribes
them to the body's list), as `alliance delegate add` does. The meeting itself is made with
`alliance meeting create` by the harness. Prints one JSON line: the body, the seat count
in the database, the count per language, the seconds it took and which `meetings` package
was used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# The checkout this file lives in, ahead of any installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DELEGATE_FORMAT = "d%06d@delegates.test"
LANGUAGES = ("en", "fr", "es", "de")
CHUNK = 250


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--body", default="bench-forum")
    parser.add_argument("--delegates", type=int, required=True)
    parser.add_argument("--parties", type=int, default=50)
    args = parser.parse_args(argv)

    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    import meetings
    from mailer.config import load
    from mailer.db import Database
    from meetings import organisation
    from meetings.models import Delegate, Seat

    started = time.monotonic()
    config = load(args.config)
    db = Database(config.database.url, config.base_dir)
    try:
        db.upgrade()
        party_names = [f"Bench Party {n:03d}" for n in range(1, args.parties + 1)]

        def setup(session: Session) -> None:
            organisation.add_body(session, args.body, "Benchmark Forum")
            for name in party_names:
                organisation.add_party(session, name, country="FR", region="europe")

        db.transaction(setup)
        for start in range(1, args.delegates + 1, CHUNK):
            numbers = range(start, min(start + CHUNK, args.delegates + 1))

            def seat_chunk(session: Session, numbers: range = numbers) -> None:
                body = organisation.find_body(session, args.body)
                parties = {p.name: p for p in organisation.parties(session)}
                for n in numbers:
                    organisation.seat(session, body,
                                      parties[party_names[(n - 1) % len(party_names)]],
                                      address=DELEGATE_FORMAT % n, name=f"Delegate {n:06d}",
                                      language=LANGUAGES[(n - 1) % len(LANGUAGES)])

            db.transaction(seat_chunk)
        languages = dict(db.query(lambda s: s.execute(
            select(Delegate.language, func.count()).join(Seat, Seat.delegate_id == Delegate.id)
            .where(Seat.body_id == organisation.find_body(s, args.body).id)
            .group_by(Delegate.language)).all()))
        count = sum(languages.values())
    finally:
        db.close()
    print(json.dumps({"body": args.body, "delegates": count, "languages": languages,
                      "parties": args.parties,
                      "seconds": round(time.monotonic() - started, 3),
                      "meetings": str(Path(meetings.__file__).resolve().parent)}))
    return 0 if count == args.delegates else 1


if __name__ == "__main__":
    sys.exit(main())
