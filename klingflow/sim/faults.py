"""Seeded, reproducible fault decisions.

Each decision is a hash of (seed, fault kind, the request's identity, how many
times that identity was seen), never a shared random stream: the same seed gives
the same faults whatever the interleaving of concurrent clients.

Identities: a generation POST is its body hash; a poll is `task:<id>` and its
poll number; any other request is its method, path and query.

Semantics, per kind (rate = probability per request):
- `429`: a generation POST is refused as if every account were busy.
- `500`: generic 500. On a generation POST half of them come AFTER the task was
  created (the ledger has it; the client must recover it). Also on polls.
- `moderation`: a generation POST is refused with the moderation 500; with the
  same rate, a created task ends `failed` during generation.
- `reset`: the connection drops mid-response (POSTs: half of them after creating
  the task). Also on polls.
- `slow`: the response is delayed by `slow_seconds / speed`.
- `expire`: the video URL handed out by a poll answers 403 until the task is
  fetched again.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from klingflow.sim.config import Faults


def unit_hash(*parts: object) -> float:
    """A float in [0, 1) fixed by `parts`."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True, slots=True)
class Visit:
    """One request's identity and how many times it was seen before."""

    identity: str
    number: int


@dataclass(slots=True)
class FaultPlan:
    seed: int
    faults: Faults
    changed: set[str] | None = None  # identities visited since the store last wrote them
    seen: Counter[str] = field(default_factory=Counter)

    def visit(self, identity: str) -> Visit:
        number = self.seen[identity]
        self.seen[identity] += 1
        if self.changed is not None:
            self.changed.add(identity)
        return Visit(identity, number)

    def hits(self, kind: str, visit: Visit, *, rate_kind: str | None = None) -> bool:
        rate = self.faults.rate(rate_kind or kind)
        return rate > 0 and unit_hash(self.seed, kind, visit.identity, visit.number) < rate

    def after_creation(self, kind: str, visit: Visit) -> bool:
        """For a POST fault that hit: does it strike after the task was created?"""
        return unit_hash(self.seed, kind, "after", visit.identity, visit.number) < 0.5

    def pick(self, kind: str, visit: Visit, count: int) -> int:
        """A seeded choice among `count` options."""
        return int(unit_hash(self.seed, kind, visit.identity, visit.number) * count)
