"""Leases: time-bounded ownership that keys, locks and elections hang on.

A lease has a TTL and a deadline. Keep-alive moves the deadline to now + TTL; when the deadline
passes, the lease ends and takes with it the keys attached to it, the locks it holds or waits
for, and the elections it leads or campaigns in (the machine does that clean-up, see
`machine.py`; this table keeps the leases themselves).

Who decides expiry. Not the replicas' clocks: the leader. Renewals no longer go through the log:
the leader's lessor (`lessor.py`) keeps the deadlines that count in its memory and proposes
`ExpireLeaseIds` naming the leases whose deadline passed; applying it ends exactly those. Logs
written by older versions carry `LeaseKeepAlive` entries and `ExpireLeases`, which ends every
lease whose deadline here is <= the entry's time (the replicated clock the machine derives
from the leaders' stamps); both still apply as they did. Either way every replica ends the
same leases at the same log position, and a minority partition, which cannot commit
anything, can never revoke what it granted. The deadlines kept here are those of the grant,
of old keep-alive entries and of the refresh below; they are what TimeToLive answers with
until a new leader's lessor serves.

Full TTL after a leader change. Once the machine has applied an entry of a term higher than any
before, it calls `refresh(now)` at the first command stamped with a time (before running that
command): every deadline becomes max(deadline, now + TTL). The new
leader cannot know for how long clients were cut off from the cluster: while there was no
leader (or while the old one was partitioned away), their keep-alives had nowhere to go,
through no fault of theirs, and the time the election took may have eaten the rest of their
TTL. Expiring them the moment the new leader ticks would turn every leader change into a
mass revocation of healthy clients' locks. So each lease gets a full TTL from the new leader's
first command (etcd's lessor `Promote` does the same). A client that really died is still
expired, one TTL later. Safety does not depend on it: holders are fenced by tokens, not time.

Owners. A lease granted by a workload identity (`OwnedLeaseGrant`) records the workload's
namespace; the service checks it before a workload may keep the lease alive, revoke it, read
it or hang something on it. Snapshots from version 5 carry the owners after the sealing keys
(`write_owners`); older images have none, which is what they meant.

Ids. `id` 0 asks for an automatic id: one more than the highest id ever granted, so an
automatic id is never one an old client may still hold. Ids are 1..2**63-1.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from ._wire import Reader, Writer
from .errors import already_exists, exhausted, invalid
from .kv import check_id, lease_missing

MIN_TTL_MS = 1_000
MAX_TTL_MS = 24 * 60 * 60 * 1_000
MAX_LEASES = 1_000_000


@dataclass(slots=True)
class Lease:
    id: int
    ttl_ms: int
    """MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS, fixed at grant."""
    deadline_ms: int
    """Replicated time at which the lease ends unless kept alive; only moves forward
    (keep-alive and refresh both take a max)."""
    owner: str = ""
    """The Kubernetes namespace of the workload that granted it ("": a cluster client, which
    any cluster client may use). Fixed at grant."""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A read-side view of a lease (the `lease_ttl` query)."""

    id: int
    ttl_ms: int
    remaining_ms: int
    """deadline - now by the replicated clock, at least 0 (0: due at the next ExpireLeases)."""
    keys: tuple[bytes, ...]


class LeaseTable:
    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._max_id = 0
        """The highest id ever granted (automatic ids count up from it; never decreases)."""
        self._due: list[tuple[int, int]] = []
        """Min-heap of (deadline_ms, id); entries whose deadline no longer matches the lease's
        are stale and skipped. Derived state: rebuilt on restore, not in snapshots."""

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, lease_id: int) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise lease_missing(lease_id)
        return lease

    def ids(self) -> list[int]:
        return sorted(self._leases)

    def ttls(self) -> list[tuple[int, int]]:
        """(id, ttl_ms) of every lease, by id."""
        return [(i, self._leases[i].ttl_ms) for i in sorted(self._leases)]

    def owner(self, lease_id: int) -> str | None:
        """The lease's owner namespace ("" for a cluster client's), None if no such lease."""
        lease = self._leases.get(lease_id)
        return None if lease is None else lease.owner

    def grant(self, ttl_ms: int, lease_id: int, now_ms: int, owner: str = "") -> Lease:
        if not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
            raise invalid(
                f"lease TTL {ttl_ms} ms is outside {MIN_TTL_MS}..{MAX_TTL_MS} ms (1 s to 1 day)"
            )
        if lease_id == 0:
            lease_id = self._max_id + 1
        check_id(lease_id, "lease id")
        if lease_id in self._leases:
            raise already_exists(
                f"lease {lease_id} already exists; pass id 0 to get an unused id, or keep the "
                "existing lease alive"
            )
        if len(self._leases) >= MAX_LEASES:
            raise exhausted(
                f"the cluster holds {len(self._leases)} leases, the limit; revoke unused leases "
                "or share one lease among a client's keys and locks"
            )
        lease = Lease(lease_id, ttl_ms, now_ms + ttl_ms, owner)
        self._leases[lease_id] = lease
        self._max_id = max(self._max_id, lease_id)
        heapq.heappush(self._due, (lease.deadline_ms, lease_id))
        return lease

    def keep_alive(self, lease_id: int, now_ms: int) -> Lease:
        lease = self.get(lease_id)
        deadline = max(lease.deadline_ms, now_ms + lease.ttl_ms)
        if deadline != lease.deadline_ms:
            lease.deadline_ms = deadline
            heapq.heappush(self._due, (deadline, lease_id))
        return lease

    def remove(self, lease_id: int) -> Lease:
        """Forget the lease (the machine has already cleaned up what hung on it)."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise lease_missing(lease_id)
        return lease

    def due(self, now_ms: int) -> list[int]:
        """Ids of the leases with deadline <= now_ms, in (deadline, id) order. Does not remove
        them (the machine revokes each, which calls `remove`)."""
        out: list[int] = []
        while self._due and self._due[0][0] <= now_ms:
            deadline, lease_id = heapq.heappop(self._due)
            lease = self._leases.get(lease_id)
            if lease is not None and lease.deadline_ms == deadline:
                out.append(lease_id)
        if len(self._due) > 2 * len(self._leases) + 64:
            self._rebuild()
        return out

    def refresh(self, now_ms: int) -> None:
        """A new term began: every lease gets at least a full TTL from now (module docstring)."""
        for lease in self._leases.values():
            lease.deadline_ms = max(lease.deadline_ms, now_ms + lease.ttl_ms)
        self._rebuild()

    def _rebuild(self) -> None:
        self._due = [(lease.deadline_ms, lease.id) for lease in self._leases.values()]
        heapq.heapify(self._due)

    def write(self, w: Writer) -> None:
        w.u64(self._max_id)
        w.u32(len(self._leases))
        for lease_id in sorted(self._leases):
            lease = self._leases[lease_id]
            w.u64(lease.id)
            w.u64(lease.ttl_ms)
            w.i64(lease.deadline_ms)

    def write_owners(self, w: Writer) -> None:
        """The owners of owned leases (snapshot version 5 and later), by id."""
        owned = sorted((lid, lease.owner) for lid, lease in self._leases.items() if lease.owner)
        w.u32(len(owned))
        for lease_id, owner in owned:
            w.u64(lease_id)
            w.text(owner)

    def read_owners_into(self, r: Reader) -> None:
        for _ in range(r.count()):
            lease_id, owner = r.u64(), r.text()
            lease = self._leases.get(lease_id)
            if lease is None or not owner:
                raise r.fail(f"owner {owner!r} recorded for lease {lease_id}, which is unknown")
            lease.owner = owner

    def read_into(self, r: Reader) -> None:
        max_id = r.u64()
        leases: dict[int, Lease] = {}
        for _ in range(r.count()):
            lease = Lease(r.u64(), r.u64(), r.i64())
            if lease.id in leases or lease.id > max_id:
                raise r.fail(f"lease {lease.id} is duplicated or above the highest id {max_id}")
            leases[lease.id] = lease
        self._leases, self._max_id = leases, max_id
        self._rebuild()
