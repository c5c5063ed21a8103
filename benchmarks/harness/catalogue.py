"""The scenarios, in their full and their short (`--short`, CI) sizes."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Scenario:
    """One scenario's sizes and time limit (written to the JSON as they are)."""

    key: str
    title: str
    members: int
    posts: int
    clients: int = 1          # concurrent SMTP sessions posting
    intake: bool = False      # D: the figures that matter are the poster's
    digest: bool = False      # F: members take digests; one digest each is expected
    meeting: bool = False     # E: `members` delegates invited, `posts` replies sent
    timeout: float = 300.0    # whole trial, seconds
    busy_posts: int = 0       # G: posts to the list `busy` fanning out during the intake
    busy_members: int = 0     # G: that list's members
    busy_size: int = 0        # G: bytes per busy post
    dkim: bool = False        # H: [dkim] on, a key from `alliance dkim keygen`
    arc: bool = False         # H: [arc] on too; posts come over LMTP with our MTA's results

    @property
    def expected(self) -> int:
        """Deliveries at the sink: one per member and post, one digest or invitation each."""
        if self.digest or self.meeting:
            return self.members
        return self.members * self.posts + self.busy_posts * self.busy_members


FULL = {
    "A": Scenario("A", "1 post -> 1,000 members", 1000, 1, timeout=300),
    "B": Scenario("B", "1 post -> 10,000 members", 10000, 1, timeout=900),
    "C": Scenario("C", "100 posts -> 100 members", 100, 100, timeout=600),
    "D": Scenario("D", "intake: 50 clients, 5,000 x 2 KB -> list of 1", 1, 5000,
                  clients=50, intake=True, timeout=600),
    "E": Scenario("E", "meeting: 1,000 invitations, 1,000 replies", 1000, 1000, clients=50,
                  meeting=True, timeout=600),
    "F": Scenario("F", "digest of 10 posts -> 10,000 members", 10000, 10, digest=True,
                  timeout=900),
    "G": Scenario("G", "intake as D while 10 posts of 20 KB fan out to 5,000 members each",
                  1, 5000, clients=50, intake=True, timeout=900,
                  busy_posts=10, busy_members=5000, busy_size=20480),
    "H": Scenario("H", "1 post -> 10,000 members, each copy DKIM-signed, with ARC", 10000,
                  1, timeout=900, dkim=True, arc=True),
}
SHORT = {
    "A": Scenario("A", "1 post -> 50 members", 50, 1, timeout=60),
    "B": Scenario("B", "1 post -> 200 members", 200, 1, timeout=60),
    "C": Scenario("C", "5 posts -> 20 members", 20, 5, timeout=60),
    "D": Scenario("D", "intake: 50 clients, 200 x 2 KB -> list of 1", 1, 200,
                  clients=50, intake=True, timeout=60),
    "E": Scenario("E", "meeting: 50 invitations, 50 replies", 50, 50, clients=50,
                  meeting=True, timeout=90),
    "F": Scenario("F", "digest of 2 posts -> 200 members", 200, 2, digest=True,
                  timeout=150),
    "G": Scenario("G", "intake as D while 10 posts of 20 KB fan out to 200 members each",
                  1, 200, clients=50, intake=True, timeout=90,
                  busy_posts=10, busy_members=200, busy_size=20480),
    "H": Scenario("H", "1 post -> 200 members, each copy DKIM-signed, with ARC", 200, 1,
                  timeout=60, dkim=True, arc=True),
}

# The scenarios whose size is the member count of one list (`--members` sets it).
SIZED_BY_MEMBERS = ("A", "B", "H")


def with_members(sc: Scenario, members: int) -> Scenario:
    """`sc` with `members` members (`--members`), its title and time limit to match.

    >>> sized = with_members(FULL["B"], 100000)
    >>> sized.title, sized.members, sized.timeout
    ('1 post -> 100,000 members', 100000, 9000.0)
    """
    if sc.key not in SIZED_BY_MEMBERS or members == sc.members:
        return sc
    title = sc.title.replace(f"{sc.members:,}", f"{members:,}", 1)
    timeout = max(sc.timeout, sc.timeout * members / sc.members)
    return replace(sc, title=title, members=members, timeout=timeout)
