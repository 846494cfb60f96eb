"""The simulator's clients: one kind per primitive of the state machine, each a sequential
process that decides its next request and records what the answers told it.

The simulator (`sim.py`) owns delivery: it sends a client's request to a member, retries it
with the same session sequence number after a timeout or a redirect, and hands the first
answer back through `done`. A client only says what to ask next (`next`: a request, or how
long to think first) and keeps the history its checker needs (`Histories`); what is never
answered stays out of the histories, except the KV's, whose checker treats it as unknown.

- `KvClient`: put, get (a ReadIndex read) and compare-and-swap (a `Txn`) on a few keys: a
  linearizable register per key (`linearizability.py`).
- `SequenceClient`: creates the sequence, then takes blocks of 1-4 values.
- `HoldClient`: a lock, or an election, through a lease: grant a lease, acquire (or
  campaign), keep the lease alive, release (or resign) after a while. Now and then it stalls
  past its TTL, as a paused process does, so leases expire with locks held and waiters
  queued; after an expiry it sometimes goes on with the dead lease once (a zombie whose
  keep-alive task died unnoticed), which the service must refuse.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from coordinator.fsm import (
    AcquireResult,
    Campaign,
    Command,
    Compare,
    CompareOp,
    CompareTarget,
    ErrorCode,
    FsmError,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseResult,
    LockAcquire,
    LockRelease,
    Put,
    ReleaseResult,
    Resign,
    SequenceBlock,
    SequenceCreate,
    SequenceNext,
    Txn,
    TxnResult,
)
from coordinator.raft import NONE

from . import linearizability as lin
from .checkers import Violation
from .kv_model import KvInput
from .primitive_checks import Block, Hold

MS = 1000
SEQUENCE = "seq"
LOCK = "lock"
ELECTION = "elect"


@dataclass(frozen=True, slots=True)
class Read:
    """A linearizable read of one key: ReadIndex on the member asked, then its own state."""

    key: str


Request = Read | Command
"""A `LeaseKeepAlive` is not proposed: the member renews through its leader's lessor, as the
server's KeepAlive stream does."""


@dataclass
class Histories:
    """Everything the clients of one seed saw, for the checkers at the end."""

    kv: list[lin.Operation[KvInput, object]] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    safe_until_us: dict[int, int] = field(default_factory=dict)
    """Lease -> until when it certainly lived (see `primitive_checks`)."""
    gone_seen_us: dict[int, int] = field(default_factory=dict)
    """Lease -> when an acknowledged answer first said it was gone."""
    expired_us: dict[int, int] = field(default_factory=dict)
    """Lease -> when a member first applied its expiry."""
    ops: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("kv", "seq", "lock", "lease", "elect"), 0)
    )
    """Acknowledged operations per primitive."""


class SimClient:
    """A sequential client: at most one request outstanding, retried until answered."""

    def __init__(self, client_id: int, hist: Histories) -> None:
        self.id = client_id
        self.hist = hist
        self.seq = 0
        self.request: Request | None = None
        self.kind = ""
        """The primitive the outstanding request counts for."""
        self.call_us = 0
        self.attempt = 0
        self.leader_hint = NONE

    def next(self, now_us: int, rng: random.Random) -> Request | int:
        """The next request, or how long to wait before asking again."""
        raise NotImplementedError

    def done(self, now_us: int, output: object, rng: random.Random) -> None:
        """The answer to the outstanding request (a `Result`, an `FsmError`, or a read's
        value)."""
        raise NotImplementedError

    def begin(self, now_us: int, request: Request, kind: str) -> Request:
        self.kind = kind
        self.call_us = now_us
        return request

    def unexpected(self, output: object) -> Violation:
        return Violation(f"client {self.id}: unexpected answer {output!r} to {self.request!r}")


class KvClient(SimClient):
    def __init__(
        self, client_id: int, hist: Histories, keys: int, get_p: float, cas_p: float
    ) -> None:
        super().__init__(client_id, hist)
        self.keys, self.get_p, self.cas_p = keys, get_p, cas_p
        self.inp: KvInput | None = None
        self.last_seen: dict[str, str | None] = {}

    def next(self, now_us: int, rng: random.Random) -> Request | int:
        key = f"k{rng.randrange(self.keys)}"
        value = f"{self.id}.{self.seq + 1}"
        x = rng.random()
        request: Request
        if x < self.get_p:
            self.inp = KvInput("get", key)
            request = Read(key)
        elif x < self.get_p + self.cas_p:
            expected = self.last_seen.get(key)
            self.inp = KvInput("cas", key, value, expected)
            # Nothing deletes a key, so version 0 means "absent".
            guard = (
                Compare(key.encode(), CompareTarget.VERSION, CompareOp.EQUAL, 0)
                if expected is None
                else Compare(key.encode(), CompareTarget.VALUE, CompareOp.EQUAL, expected.encode())
            )
            request = Txn((guard,), (Put(key.encode(), value.encode()),))
        else:
            self.inp = KvInput("put", key, value)
            request = Put(key.encode(), value.encode())
        return self.begin(now_us, request, "kv")

    def done(self, now_us: int, output: object, rng: random.Random) -> None:
        inp = self.inp
        assert inp is not None
        if inp.kind == "get":
            self.last_seen[inp.key] = output  # type: ignore[assignment]
        elif inp.kind == "cas":
            if not isinstance(output, TxnResult):
                raise self.unexpected(output)
            output = output.succeeded
            if output:
                self.last_seen[inp.key] = inp.value
        else:
            if isinstance(output, FsmError):
                raise self.unexpected(output)
            output = None
            self.last_seen[inp.key] = inp.value
        self.hist.kv.append(lin.Operation(self.id, inp, self.call_us, now_us, output))
        self.inp = None

    def unknown(self) -> lin.Operation[KvInput, object] | None:
        """The outstanding write at the end of the run: it may or may not have happened."""
        if self.request is None or self.inp is None or self.inp.kind == "get":
            return None
        return lin.Operation(self.id, self.inp, self.call_us, None, lin.UNKNOWN)


class SequenceClient(SimClient):
    name = "seq0"

    def __init__(self, client_id: int, hist: Histories) -> None:
        super().__init__(client_id, hist)
        self.created = False

    def next(self, now_us: int, rng: random.Random) -> Request | int:
        if not self.created:
            return self.begin(now_us, SequenceCreate(self.name), SEQUENCE)
        return self.begin(now_us, SequenceNext(self.name, rng.randint(1, 4)), SEQUENCE)

    def done(self, now_us: int, output: object, rng: random.Random) -> None:
        request = self.request
        if isinstance(request, SequenceCreate):
            exists = isinstance(output, FsmError) and output.code is ErrorCode.ALREADY_EXISTS
            if isinstance(output, FsmError) and not exists:
                raise self.unexpected(output)
            self.created = True
            return
        if not isinstance(output, SequenceBlock) or not isinstance(request, SequenceNext):
            raise self.unexpected(output)
        self.hist.blocks.append(
            Block(
                self.id,
                self.call_us,
                now_us,
                request.count,
                output.first,
                output.count,
                output.increment,
            )
        )


class HoldClient(SimClient):
    """Holds lock `name` (kind LOCK) or leads election `name` (kind ELECTION) now and then."""

    def __init__(
        self, client_id: int, hist: Histories, kind: str, name: str, *, ttl_ms: int, stall_p: float
    ) -> None:
        super().__init__(client_id, hist)
        self.hold_kind, self.name, self.ttl_ms, self.stall_p = kind, name, ttl_ms, stall_p
        self.lease = 0
        self.zombie = False
        """The lease was seen gone, and this client goes on with it once anyway."""
        self.keepalive_due_us = 0
        self.holding: Hold | None = None
        self.release_due_us = 0
        self.poll_due_us = 0

    def next(self, now_us: int, rng: random.Random) -> Request | int:
        if self.lease == 0:
            return self.begin(now_us, LeaseGrant(self.ttl_ms), "lease")
        if now_us >= self.keepalive_due_us and not self.zombie:
            if rng.random() < self.stall_p:
                # A pause (GC, SIGSTOP, a swapped-out VM) past the lease's TTL. The process
                # resumes where it was (acquiring, or releasing) before its keep-alive runs.
                stall_us = self.ttl_ms * MS * rng.randint(15, 30) // 10
                self.keepalive_due_us = now_us + stall_us + MS
                self.poll_due_us = min(self.poll_due_us, now_us + stall_us)
                self.release_due_us = min(self.release_due_us, now_us + stall_us)
                return stall_us
            return self.begin(now_us, LeaseKeepAlive(self.lease), "lease")
        if self.holding is not None:
            if now_us < self.release_due_us:
                return min(self.keepalive_due_us, self.release_due_us) - now_us
            self.holding.end_call_us = now_us
            return self.begin(now_us, self._give_up(), self.hold_kind)
        if now_us < self.poll_due_us and not self.zombie:
            return min(self.keepalive_due_us, self.poll_due_us) - now_us
        return self.begin(now_us, self._take(), self.hold_kind)

    def _take(self) -> Command:
        if self.hold_kind == LOCK:
            return LockAcquire(self.name, self.lease, lock_delay_ms=self.id % 2 * 200)
        return Campaign(self.name, self.lease, str(self.id).encode())

    def _give_up(self) -> Command:
        if self.hold_kind == LOCK:
            return LockRelease(self.name, self.lease)
        return Resign(self.name, self.lease)

    def _lease_gone(self, now_us: int, rng: random.Random | None) -> None:
        self.hist.gone_seen_us.setdefault(self.lease, now_us)
        self.holding = None
        self.zombie = rng is not None and rng.random() < 0.7
        if not self.zombie:
            self.lease = 0

    def done(self, now_us: int, output: object, rng: random.Random) -> None:
        request = self.request
        gone = isinstance(output, FsmError) and output.code is ErrorCode.NOT_FOUND
        if isinstance(output, FsmError) and not gone:
            raise self.unexpected(output)
        safe_until = self.call_us + self.ttl_ms * MS - MS
        match request:
            case LeaseGrant():
                if not isinstance(output, LeaseResult):
                    raise self.unexpected(output)
                self.lease = output.id
                self.hist.safe_until_us[self.lease] = safe_until
                self.keepalive_due_us = now_us + self.ttl_ms * MS // 3
            case LeaseKeepAlive():
                if gone:
                    self._lease_gone(now_us, rng)
                    return
                prior = self.hist.safe_until_us.get(self.lease, 0)
                self.hist.safe_until_us[self.lease] = max(prior, safe_until)
                self.keepalive_due_us = now_us + self.ttl_ms * MS // 3
            case LockAcquire() | Campaign():
                zombie, self.zombie = self.zombie, False
                if gone:
                    self._lease_gone(now_us, None)
                    return
                if not isinstance(output, AcquireResult):
                    raise self.unexpected(output)
                if output.granted:
                    self.holding = Hold(
                        self.hold_kind,
                        self.name,
                        self.id,
                        self.lease,
                        output.token,
                        self.call_us,
                        now_us,
                    )
                    self.hist.holds.append(self.holding)
                    self.release_due_us = now_us + rng.randint(20, 400) * MS
                else:
                    self.poll_due_us = now_us + rng.randint(10, 60) * MS
                if zombie:
                    self.lease, self.holding = 0, None
            case LockRelease() | Resign():
                if gone:
                    self._lease_gone(now_us, None)
                    return
                if not isinstance(output, ReleaseResult):
                    raise self.unexpected(output)
                self.holding = None
                self.poll_due_us = now_us + rng.randint(0, 100) * MS
            case _:
                raise self.unexpected(output)
