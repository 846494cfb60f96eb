"""Safety checkers the simulator runs at every step where a property could break.

Each Raft safety property (Raft paper, Figure 3) is checked at the moment the state it
talks about changes, which is equivalent to checking it after every step but costs
O(change) instead of O(cluster state):

- Election safety: at most one leader per term (checked when a node becomes leader).
- Leader append-only: a leader never overwrites its own entries (checked on each persist).
- Log matching: two entries with the same index and term hold the same data and follow
  entries of the same term; by induction the logs are identical up to there (on persist).
- Leader completeness: a new leader of term L holds every entry committed in a term before
  L (at election), so no committed entry is ever lost. The commit term of an entry is
  bounded above by the term of any member at the moment it applied the entry; only entries
  whose bound is below L are required (a candidate whose votes were delayed may legitimately
  win an old term after a later term committed entries it lacks).
- State machine safety: no two members apply different entries at one index, and each
  member applies indices in order without gaps (on apply and snapshot restore); and two
  members that snapshot their state machine at one index write the same image (the machine
  is deterministic and its image canonical, so any difference is a divergence).

`invariant()` raises `Violation`; it is a function, not `assert`, so `python -O` keeps it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from coordinator.raft import Entry, SnapshotMeta


class Violation(Exception):
    """A safety property broke; the message names it and the evidence."""


def invariant(condition: bool, message: str) -> None:
    if not condition:
        raise Violation(message)


class SafetyChecker:
    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}
        self.applied: dict[int, Entry] = {}
        """The oracle: the one entry every member applied at each index."""
        self.entry_ids: dict[tuple[int, int], tuple[int | None, bytes]] = {}
        self.leader_last: dict[tuple[int, int], int] = {}
        self.commit_term_bound: dict[int, int] = {}
        """Per index: a term no earlier than the one in which the entry was committed."""
        self.node_applied: dict[int, int] = {}
        self.images: dict[int, tuple[int, bytes]] = {}
        """Per index: the first member to snapshot there, and its image's digest."""
        self.checks = 0

    def on_leader(
        self, node: int, term: int, term_at: Callable[[int], int], first_index: int
    ) -> None:
        self.checks += 1
        prior = self.leader_of_term.setdefault(term, node)
        invariant(prior == node, f"election safety: nodes {prior} and {node} both lead term {term}")
        for index in sorted(self.applied):
            if index < first_index - 1 or self.commit_term_bound[index] >= term:
                continue
            want = self.applied[index].term
            got = term_at(index)
            invariant(
                got == want,
                f"leader completeness: node {node}, leader of term {term}, has term {got} at "
                f"index {index} where term {want} was committed and applied",
            )

    def on_persist(
        self,
        node: int,
        entries: Sequence[Entry],
        term_at: Callable[[int], int],
        leader_term: int | None,
    ) -> None:
        if not entries:
            return
        self.checks += 1
        if leader_term is not None:
            key = (node, leader_term)
            last = self.leader_last.get(key, 0)
            invariant(
                entries[0].index > last,
                f"leader append-only: node {node} (leader of term {leader_term}) rewrote "
                f"index {entries[0].index} after persisting up to {last}",
            )
            self.leader_last[key] = entries[-1].index
        prev_term: int | None = term_at(entries[0].index - 1) if entries[0].index > 1 else 0
        for e in entries:
            ident = (e.index, e.term)
            seen = self.entry_ids.get(ident)
            if seen is None:
                self.entry_ids[ident] = (prev_term or None, e.data)
            else:
                seen_prev, seen_data = seen
                invariant(
                    seen_data == e.data,
                    f"log matching: two different entries at index {e.index} term {e.term}",
                )
                invariant(
                    seen_prev is None or not prev_term or seen_prev == prev_term,
                    f"log matching: entry {e.index}/{e.term} follows term {prev_term} on node "
                    f"{node} but term {seen_prev} elsewhere",
                )
            prev_term = e.term

    def on_apply(self, node: int, entry: Entry, node_term: int) -> None:
        self.checks += 1
        bound = self.commit_term_bound.get(entry.index, node_term)
        self.commit_term_bound[entry.index] = min(bound, node_term)
        last = self.node_applied.get(node, 0)
        invariant(
            entry.index == last + 1,
            f"state machine safety: node {node} applied index {entry.index} after {last}",
        )
        self.node_applied[node] = entry.index
        prior = self.applied.setdefault(entry.index, entry)
        invariant(
            prior == entry,
            f"state machine safety: index {entry.index} applied as term {prior.term} "
            f"elsewhere but as term {entry.term} on node {node}",
        )

    def on_restore(self, node: int, meta: SnapshotMeta) -> None:
        self.checks += 1
        prior = self.applied.get(meta.index)
        invariant(
            prior is None or prior.term == meta.term,
            f"state machine safety: node {node} restored a snapshot at {meta.index}/{meta.term} "
            f"but term {prior.term if prior else 0} was applied there",
        )
        invariant(
            meta.index >= self.node_applied.get(node, 0),
            f"state machine safety: node {node} restored an older snapshot "
            f"({meta.index} < applied {self.node_applied.get(node, 0)})",
        )
        self.node_applied[node] = meta.index

    def on_snapshot(self, node: int, index: int, image: bytes | memoryview) -> None:
        self.checks += 1
        digest = hashlib.blake2b(image, digest_size=16).digest()
        first, seen = self.images.setdefault(index, (node, digest))
        invariant(
            seen == digest,
            f"state machine safety: nodes {first} and {node} hold different states at index "
            f"{index} (their snapshot images differ)",
        )

    def on_restart(self, node: int, snapshot_index: int) -> None:
        self.node_applied[node] = snapshot_index
