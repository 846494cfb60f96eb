"""Locks and semaphores on leases: FIFO waiters, fencing tokens, lock-delay.

Model. A lock `name` has up to `max_holders` holders (1: a mutex; N: a semaphore) and a FIFO
queue of waiters. Holders and waiters are identified by their lease: one lease holds or awaits
a given lock at most once, and when the lease ends it lets go of everything (see `end_lease`).
Acquiring again with a lease that already holds returns the existing grant, unchanged; with a
lease that already waits, it keeps its place (and the newest `waiter_id`, so the server wakes
the newest request). A waiter is granted only from the head of the queue, so nobody overtakes:
a newcomer queues behind existing waiters even when a slot is free during a lock-delay.

Fencing tokens. Every grant takes a fresh revision of the global KV revision (one revision per
grant, never shared, even when one release or expiry grants several semaphore waiters at
once), and that revision is the grant's token. Revisions only grow, so the tokens of one name
strictly increase across all its grants, through releases, expiries, leader changes and
snapshots, and a token also orders a grant against every KV write. A resource guarded by the
lock remembers the highest token it has seen and refuses smaller ones; or the holder guards
its writes to Concord itself with a `Txn` comparing LOCK_TOKEN; or anyone asks `check_fence`
whether a token is still current (Chubby's CheckSequencer).

Lock-delay (Chubby §2.4). A holder whose lease *expires* may be alive but cut off, still
acting on its belief that it holds the lock. If the acquirer asked for `lock_delay_ms`, then
when its lease expires while it holds the lock, nobody else is granted that lock until the
delay is over (by the replicated clock). An explicit release, or an explicit revoke of the
lease, says the holder is done, so no delay follows. The delay ends at the first command
applied at or after its end: the leader proposes an expiry entry (`ExpireLeaseIds`, even
naming no lease) at every lease check while a delay is pending, so there is one (`ExpireLeases`
did it in logs of older versions).

Elections (`elections.py`) are the same table with max_holders 1, a value per holder, no
lock-delay and their own event kinds and wording.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ._wire import Reader, Writer
from .errors import exhausted, failed_precondition, invalid, not_found
from .kv import EventKind, History, check_name, lease_missing

MAX_HOLDERS_MAX = 10_000
MAX_WAITERS_PER_LOCK = 10_000
MAX_LOCK_DELAY_MS = 60_000


@dataclass(frozen=True, slots=True)
class Holder:
    lease: int
    waiter_id: int
    token: int
    """The revision of the grant: unique, and strictly increasing across a name's grants."""
    acquired_ms: int
    """Replicated time of the grant."""
    lock_delay_ms: int
    """Applied to the lock if this holder's lease expires while holding."""
    value: bytes = b""
    """Elections: the leader's proclaimed value. Locks: empty."""
    revision: int = 0
    """The revision of this holder's latest change (grant, or an election's proclaim)."""


@dataclass(frozen=True, slots=True)
class Waiter:
    lease: int
    waiter_id: int
    lock_delay_ms: int
    value: bytes
    enqueued_ms: int


@dataclass(frozen=True, slots=True)
class Grant:
    """A waiter granted by something other than its own request: the server wakes it."""

    name: str
    lease: int
    waiter_id: int
    token: int


@dataclass(frozen=True, slots=True)
class Acquired:
    granted: bool
    token: int
    """The grant's token if granted, else 0."""
    waiting_ahead: int
    """Waiters ahead of this one, if queued."""
    others: tuple[Grant, ...]
    """Grants to other waiters this request happened to trigger (a lock-delay that ended)."""


@dataclass(slots=True)
class _Semaphore:
    max_holders: int
    """1 <= max_holders <= MAX_HOLDERS_MAX; len(holders) <= max_holders."""
    holders: dict[int, Holder]
    """lease -> holder, in grant order (ascending tokens)."""
    waiters: dict[int, Waiter]
    """lease -> waiter, FIFO. Invariant: no lease both holds and waits; the queue is non-empty
    only while the semaphore is full or a lock-delay runs."""
    delay_until_ms: int = 0
    """No grants while now < delay_until_ms (0: no delay)."""


class FifoTable:
    """name -> semaphore, for locks (here) and elections (`elections.py`)."""

    def __init__(
        self,
        history: History,
        lease_exists: Callable[[int], bool],
        *,
        noun: str,
        granted: EventKind,
        released: EventKind,
    ) -> None:
        self._history = history
        self._lease_exists = lease_exists
        self._noun = noun
        self._granted_kind = granted
        self._released_kind = released
        self._table: dict[str, _Semaphore] = {}
        """Only names with a holder, a waiter or a running delay."""
        self._by_lease: dict[int, set[str]] = {}
        """lease -> names it holds or awaits. Derived (rebuilt on restore)."""
        self._delayed: set[str] = set()
        """Names with delay_until_ms > 0. Derived."""

    # --- queries -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._table)

    def holders(self, name: str) -> tuple[Holder, ...]:
        sem = self._table.get(name)
        return tuple(sem.holders.values()) if sem else ()

    def waiters(self, name: str) -> tuple[Waiter, ...]:
        sem = self._table.get(name)
        return tuple(sem.waiters.values()) if sem else ()

    def tokens(self, name: str) -> tuple[int, ...]:
        return tuple(h.token for h in self.holders(name))

    def check_fence(self, name: str, token: int) -> bool:
        """Is `token` the token of one of the current holders of `name`?"""
        return token in self.tokens(name)

    def delay_until_ms(self, name: str) -> int:
        sem = self._table.get(name)
        return sem.delay_until_ms if sem else 0

    # --- commands ----------------------------------------------------------------------------

    def acquire(
        self,
        name: str,
        lease: int,
        now_ms: int,
        *,
        waiter_id: int = 0,
        max_holders: int = 1,
        lock_delay_ms: int = 0,
        value: bytes = b"",
    ) -> Acquired:
        check_name(name, self._noun)
        self._check_lease(lease)
        if not 1 <= max_holders <= MAX_HOLDERS_MAX:
            raise invalid(f"max_holders must be between 1 and {MAX_HOLDERS_MAX}, got {max_holders}")
        if not 0 <= lock_delay_ms <= MAX_LOCK_DELAY_MS:
            raise invalid(
                f"lock_delay_ms must be between 0 and {MAX_LOCK_DELAY_MS}, got {lock_delay_ms}"
            )
        sem = self._table.get(name)
        if sem is not None:
            if (sem.holders or sem.waiters) and sem.max_holders != max_holders:
                raise failed_precondition(
                    f"{self._noun} {name!r} is in use with max_holders={sem.max_holders}; "
                    f"acquire it with max_holders={sem.max_holders}, or use another name"
                )
            held = sem.holders.get(lease)
            if held is not None:
                return Acquired(True, held.token, 0, ())
            waiting = sem.waiters.get(lease)
            if waiting is not None:
                sem.waiters[lease] = replace(waiting, waiter_id=waiter_id)
                return Acquired(False, 0, list(sem.waiters).index(lease), ())
            if len(sem.waiters) >= MAX_WAITERS_PER_LOCK:
                raise exhausted(
                    f"{self._noun} {name!r} already has {len(sem.waiters)} waiters, the limit; "
                    "retry later"
                )
            sem.max_holders = max_holders
        else:
            sem = self._table[name] = _Semaphore(max_holders, {}, {})
        sem.waiters[lease] = Waiter(lease, waiter_id, lock_delay_ms, value, now_ms)
        self._by_lease.setdefault(lease, set()).add(name)
        grants = self._grant(name, sem, now_ms)
        mine = next((g for g in grants if g.lease == lease), None)
        others = tuple(g for g in grants if g.lease != lease)
        if mine is not None:
            return Acquired(True, mine.token, 0, others)
        return Acquired(False, 0, list(sem.waiters).index(lease), others)

    def release(self, name: str, lease: int, now_ms: int) -> tuple[bool, list[Grant]]:
        """Release (held=True) or leave the queue (held=False); returns the grants it caused."""
        check_name(name, self._noun)
        sem = self._table.get(name)
        if sem is None or (lease not in sem.holders and lease not in sem.waiters):
            raise not_found(
                f"{self._noun} {name!r} is neither held nor awaited by lease {lease}: it was "
                "already released, or the lease ended"
            )
        held = lease in sem.holders
        self._drop(name, sem, lease, now_ms, expired=False)
        grants = self._grant(name, sem, now_ms)
        self._cleanup(name, sem, now_ms)
        return held, grants

    def end_lease(self, lease: int, now_ms: int, *, expired: bool) -> list[Grant]:
        """The lease ended: release what it holds, leave every queue it is in."""
        grants: list[Grant] = []
        for name in sorted(self._by_lease.get(lease, ())):
            sem = self._table[name]
            self._drop(name, sem, lease, now_ms, expired=expired)
            grants += self._grant(name, sem, now_ms)
            self._cleanup(name, sem, now_ms)
        return grants

    def leave_queues(self, lease: int, now_ms: int) -> None:
        """Withdraw `lease` from every queue it waits in (not from what it holds). Removing a
        waiter never frees a slot, so this grants nothing. An expiry does this for every
        expiring lease first, so that one tick never grants a lock to a lease it then ends."""
        for name in sorted(self._by_lease.get(lease, ())):
            sem = self._table[name]
            if lease in sem.waiters:
                del sem.waiters[lease]
                names = self._by_lease[lease]
                names.discard(name)
                if not names:
                    del self._by_lease[lease]
                self._cleanup(name, sem, now_ms)

    def delays_pending(self) -> bool:
        """Whether some lock waits for its lock-delay to end (a `tick` is then due)."""
        return bool(self._delayed)

    def tick(self, now_ms: int) -> list[Grant]:
        """Grant where a lock-delay is over (the leader's expiry entries drive this)."""
        grants: list[Grant] = []
        for name in sorted(self._delayed):
            sem = self._table[name]
            if sem.delay_until_ms <= now_ms:
                grants += self._grant(name, sem, now_ms)
                self._cleanup(name, sem, now_ms)
        return grants

    # --- internals ---------------------------------------------------------------------------

    def _check_lease(self, lease: int) -> None:
        if lease == 0:
            article = "an" if self._noun[0] in "aeiou" else "a"
            raise invalid(f"{article} {self._noun} needs a lease: grant one and pass its id")
        if not self._lease_exists(lease):
            raise lease_missing(lease)

    def _drop(self, name: str, sem: _Semaphore, lease: int, now_ms: int, *, expired: bool) -> None:
        holder = sem.holders.pop(lease, None)
        if holder is not None:
            self._history.record(
                self._released_kind, name.encode(), lease=lease, number=holder.token
            )
            if expired and holder.lock_delay_ms:
                sem.delay_until_ms = max(sem.delay_until_ms, now_ms + holder.lock_delay_ms)
                self._delayed.add(name)
        else:
            del sem.waiters[lease]
        names = self._by_lease[lease]
        names.discard(name)
        if not names:
            del self._by_lease[lease]

    def _grant(self, name: str, sem: _Semaphore, now_ms: int) -> list[Grant]:
        if sem.delay_until_ms > now_ms:
            return []
        if sem.delay_until_ms:
            sem.delay_until_ms = 0
            self._delayed.discard(name)
        grants: list[Grant] = []
        while sem.waiters and len(sem.holders) < sem.max_holders:
            lease = next(iter(sem.waiters))
            w = sem.waiters.pop(lease)
            token = self._history.record(
                self._granted_kind,
                name.encode(),
                value=w.value,
                lease=lease,
                number=self._history.revision + 1,
            )
            sem.holders[lease] = Holder(
                lease, w.waiter_id, token, now_ms, w.lock_delay_ms, w.value, token
            )
            grants.append(Grant(name, lease, w.waiter_id, token))
        return grants

    def _cleanup(self, name: str, sem: _Semaphore, now_ms: int) -> None:
        if not sem.holders and not sem.waiters and sem.delay_until_ms <= now_ms:
            del self._table[name]
            self._delayed.discard(name)

    def _holder(self, name: str, lease: int) -> Holder | None:
        sem = self._table.get(name)
        return sem.holders.get(lease) if sem else None

    def _set_holder(self, name: str, holder: Holder) -> None:
        self._table[name].holders[holder.lease] = holder

    # --- snapshots ---------------------------------------------------------------------------

    def write(self, w: Writer) -> None:
        w.u32(len(self._table))
        for name in sorted(self._table):
            sem = self._table[name]
            w.text(name)
            w.u32(sem.max_holders)
            w.i64(sem.delay_until_ms)
            w.u32(len(sem.holders))
            for h in sem.holders.values():
                w.u64(h.lease)
                w.u64(h.waiter_id)
                w.u64(h.token)
                w.i64(h.acquired_ms)
                w.u64(h.lock_delay_ms)
                w.blob(h.value)
                w.u64(h.revision)
            w.u32(len(sem.waiters))
            for wt in sem.waiters.values():
                w.u64(wt.lease)
                w.u64(wt.waiter_id)
                w.u64(wt.lock_delay_ms)
                w.blob(wt.value)
                w.i64(wt.enqueued_ms)

    def read_into(self, r: Reader) -> None:
        table: dict[str, _Semaphore] = {}
        by_lease: dict[int, set[str]] = {}
        for _ in range(r.count()):
            name = r.text()
            sem = _Semaphore(r.u32(), {}, {}, r.i64())
            for _ in range(r.count()):
                h = Holder(r.u64(), r.u64(), r.u64(), r.i64(), r.u64(), r.blob(), r.u64())
                sem.holders[h.lease] = h
            for _ in range(r.count()):
                wt = Waiter(r.u64(), r.u64(), r.u64(), r.blob(), r.i64())
                sem.waiters[wt.lease] = wt
            tokens = [h.token for h in sem.holders.values()]
            if name in table or len(sem.holders) > sem.max_holders or tokens != sorted(tokens):
                raise r.fail(f"{self._noun} {name!r} is inconsistent")
            for lease in [*sem.holders, *sem.waiters]:
                by_lease.setdefault(lease, set()).add(name)
            table[name] = sem
        self._table = table
        self._by_lease = by_lease
        self._delayed = {name for name, sem in table.items() if sem.delay_until_ms}


class LockTable(FifoTable):
    """Locks and semaphores (see the module docstring)."""

    def __init__(self, history: History, lease_exists: Callable[[int], bool]) -> None:
        super().__init__(
            history,
            lease_exists,
            noun="lock",
            granted=EventKind.LOCK_GRANTED,
            released=EventKind.LOCK_RELEASED,
        )
