"""Leader election on the lock machinery: campaign, leader, proclaim, resign, observe.

An election is a mutex (`locks.FifoTable` with max_holders 1) whose holder also publishes a
value (typically its address). So everything the locks guarantee holds here: candidates queue
FIFO; the leader is identified by its lease and loses leadership when the lease ends; every
leadership gets a fencing token (the revision at which it was won) that strictly increases
across the election's leaders, so a deposed leader's writes can be refused downstream. (A
`Txn` LOCK_TOKEN compare reads locks only: elections and locks are separate namespaces. A
leader that wants guarded writes to Concord itself holds a lock as well.) No lock-delay: an
election hands over immediately.

Observe. Every change is an event in the watch history under the election's name:
ELECTION_LEADER when someone wins (value, lease, token) or the leader proclaims a new value,
ELECTION_VACANT when the leader resigns or its lease ends (followed by ELECTION_LEADER for the
next candidate, if any, at a later revision). Watching those events from the revision returned
by `leader()` is etcd's Observe.

Campaigning again with a lease that already leads (or already waits) changes nothing and
returns the current state: a retried campaign is harmless. To change the value, Proclaim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .errors import failed_precondition, not_found
from .kv import EventKind, History, check_name, check_value
from .locks import Acquired, FifoTable, Grant


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """The `election_leader` query: who leads, with what value, since which revision."""

    lease: int
    value: bytes
    token: int
    """The revision at which this leader won: the leadership's fencing token."""
    revision: int
    """The revision of the latest change (the win, or the latest proclaim)."""


class ElectionTable(FifoTable):
    def __init__(self, history: History, lease_exists: Callable[[int], bool]) -> None:
        super().__init__(
            history,
            lease_exists,
            noun="election",
            granted=EventKind.ELECTION_LEADER,
            released=EventKind.ELECTION_VACANT,
        )

    def leader(self, name: str) -> LeaderInfo | None:
        holders = self.holders(name)
        if not holders:
            return None
        h = holders[0]
        return LeaderInfo(h.lease, h.value, h.token, h.revision)

    def campaign(self, name: str, lease: int, value: bytes, now_ms: int) -> Acquired:
        check_value(value)
        return self.acquire(name, lease, now_ms, value=value)

    def proclaim(self, name: str, lease: int, value: bytes) -> int:
        """The leader publishes `value`; returns the revision of the change."""
        check_name(name, "election")
        check_value(value)
        holder = self._holder(name, lease)
        if holder is None:
            current = self.leader(name)
            who = f"lease {current.lease} leads it" if current else "it has no leader"
            raise failed_precondition(
                f"lease {lease} is not the leader of election {name!r} ({who}); only the "
                "leader may proclaim: campaign first"
            )
        revision = self._history.record(
            EventKind.ELECTION_LEADER, name.encode(), value=value, lease=lease, number=holder.token
        )
        self._set_holder(name, replace(holder, value=value, revision=revision))
        return revision

    def resign(self, name: str, lease: int, now_ms: int) -> tuple[bool, list[Grant]]:
        """Step down (held=True; the next candidate wins) or withdraw a campaign (False)."""
        check_name(name, "election")
        if lease not in {h.lease for h in self.holders(name)} | {
            w.lease for w in self.waiters(name)
        }:
            raise not_found(
                f"lease {lease} neither leads nor campaigns in election {name!r}: it already "
                "resigned, or its lease ended"
            )
        return self.release(name, lease, now_ms)
