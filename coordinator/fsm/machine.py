"""The replicated state machine: committed entries in, results and wake-ups out.

Determinism is the whole contract. Every replica applies the same log, so every replica must
end in the same state with the same results, and so must a replica that restored a snapshot
halfway and applied the rest. Hence:

- no clock, no randomness, no I/O: time comes only from the entries (below); ids are counters;
- no iteration over hash order: sets are sorted before anything observable depends on them
  (Python randomizes str/bytes hashes per process, so two replicas' sets iterate differently);
- every rejection is a value (`FsmError` in `Applied.result`), validated before any write, so
  a rejected command changes nothing on any replica;
- an entry that does not decode is answered with INVALID_ARGUMENT rather than raising: raising
  would stop every replica at the same entry forever (a poison pill). A bug that raises
  anything else mid-apply does stop the member: carrying on after a half-applied command would
  diverge.

Time. Each client command's envelope carries `leader_time_ms`, the proposing leader's clock.
The machine turns those stamps into one replicated clock, `now_ms`:
- within a term, all entries come from one leader (Raft: one leader per term), so its stamps
  are comparable: now = max(now, stamp + offset);
- at the first stamped entry of a new term, the offset is re-pinned so that `now` continues
  from where it stopped (offset = now - stamp). Two leaders' clocks need not agree at all
  (monotonic clocks have arbitrary epochs; wall clocks skew), so a new leader's stamp is only
  trusted for the time that passes *during its term*. The outage itself is not counted, which
  only ever makes leases and lock-delays last longer, never shorter; and every lease gets a
  full TTL at a leader change anyway (below).
The very first term's offset is 0, so before any leader change `now_ms` is the leader's clock.
The runtime must stamp on the leader, once per proposal, from one monotonic source.

Leader change. When an entry of a higher term than any applied before arrives (usually the new
leader's empty no-op), the machine notes it; at the next stamped command, before running it,
every lease deadline becomes max(deadline, now + TTL) (see `leases.py` for why). Expiry comes
only from the leader's `ExpireLeaseIds` (or, in older logs, `ExpireLeases`) commands, so the
refresh always precedes the first expiry decided in the new term.

Sessions. Every command with client_id != 0 goes through `SessionTable`: a duplicate (same
client, same seq) returns the saved result and changes nothing, a stale one (older seq) is
refused and changes nothing. The saved result is the encoded `Result | FsmError`.

Wake-ups (`Applied.effects`). A request that waits (LockAcquire, Campaign) is answered at once
with `granted=False`; the grant may come later, from someone else's command. The server keeps
its own table of blocked requests and settles them from effects, on *every* member that has
clients waiting (effects are computed identically everywhere):
- `LockGranted(name, lease, waiter_id, token)`: complete the waiting acquire (by waiter_id, or by
  (name, lease)) with the token;
- `LeaderElected(election, lease, token)`: complete the waiting campaign of (election, lease);
- `LeaseExpired(id)` / `LeaseRevoked(id)`: fail every request still waiting under that lease
  (NOT_FOUND: the lease ended) and tell its holders they lost what they held;
- a `LockRelease`/`Resign` whose result has held=False withdrew a waiter: fail the request
  waiting for (name, lease) (`Applied.command` says which).
A grant made by the request's own command is its result, not an effect. Effects are not
produced again for a duplicate, and after a restart the server has no waiters to wake: clients
re-issue their acquire (idempotent: a holder gets its grant back, a waiter keeps its place).
`Applied` and the effects are defined in `applied.py`.

Concurrency contract (hashicorp/raft's FSM): `apply`, `snapshot` and `restore` are called from
one thread, the one that owns the Raft node, in log order; entries are applied exactly once
each, in index order (index = applied_index + 1, else ValueError). Queries read the same
objects and must run on that thread too (or between applies). `snapshot()` returns bytes that
no later apply changes. `restore` replaces everything or, if the image is bad, nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence

from coordinator.raft import Entry, EntryKind, SessionTable, SessionVerdict

from ._wire import DecodeError, Reader, Writer, invariant
from .applied import Applied, Effect, LeaseExpired, LeaseRevoked, _leader_elected, _lock_granted
from .commands import (
    Campaign,
    Command,
    CommandDecodeError,
    Delete,
    Envelope,
    ExpireLeaseIds,
    ExpireLeases,
    JoinTokenAdd,
    JoinTokenRevoke,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    MemberReadmit,
    MemberRemove,
    MemberUpsert,
    Noop,
    OwnedLeaseGrant,
    Proclaim,
    Put,
    Resign,
    SealingKeyAdd,
    SequenceCreate,
    SequenceNext,
    Txn,
)
from .elections import ElectionTable, LeaderInfo
from .errors import FsmError, failed_precondition, invalid
from .join_tokens import JoinTokenInfo, JoinTokenTable
from .kv import (
    DEFAULT_HISTORY_BYTES_MAX,
    DEFAULT_HISTORY_EVENTS_MAX,
    Event,
    History,
    KvStore,
)
from .leases import LeaseInfo, LeaseTable
from .locks import Holder, LockTable, Waiter
from .members import Member, MemberTable
from .results import (
    AcquireResult,
    ExpireResult,
    KeyValue,
    LeaseResult,
    RangeResult,
    ReleaseResult,
    Result,
    RevisionResult,
    SealingKeyResult,
    SequenceInfo,
    decode_outcome,
    encode_outcome,
)
from .sealing_keys import SealingKey, SealingKeyTable
from .sequences import SequenceTable

# fsm/lessor.py imports these from here, where they were defined before applied.py.
__all__ = ["Applied", "LeaseExpired", "LeaseRevoked", "SnapshotDecodeError", "StateMachine"]

SNAPSHOT_MAGIC = b"CFSM"
SNAPSHOT_VERSION = 6
"""The image `snapshot` writes. Versions 1 (no join-token table), 2 (no removed member ids),
3 (no sealing keys), 4 (no lease owners) and 5 (the KV as one record per key, not columns) are
still read; 4 adds the sealing key table after the removed member ids, 5 the owners of
workload leases after that, 6 writes the KV as columns (`kv_image.py`)."""
_READABLE_SNAPSHOT_VERSIONS = (1, 2, 3, 4, 5, 6)
DEFAULT_MAX_SESSIONS = 100_000


class SnapshotDecodeError(DecodeError):
    """A snapshot image this version cannot read; the machine is left as it was."""


# --- the machine -----------------------------------------------------------------------------


class StateMachine:
    """KV + leases + locks + elections + sequences + members, with sessions and a replicated
    clock. The history bounds and session limit are part of the replicated behaviour: every
    member must be built with the same values."""

    def __init__(
        self,
        *,
        history_events_max: int = DEFAULT_HISTORY_EVENTS_MAX,
        history_bytes_max: int = DEFAULT_HISTORY_BYTES_MAX,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self._history_events_max = history_events_max
        self._history_bytes_max = history_bytes_max
        self._max_sessions = max_sessions
        self._applied_index = 0
        """Index of the last applied entry; apply takes exactly applied_index + 1."""
        self._applied_term = 0
        self._max_term = 0
        """The highest term of any applied entry (never decreases)."""
        self._refresh_pending = False
        """A higher term was seen and leases have not yet had their full TTL restored."""
        self._now_ms = 0
        """The replicated clock (module docstring). Never decreases."""
        self._clock_term = 0
        """The term whose leader's stamps `_clock_offset_ms` maps; 0 before the first stamp."""
        self._clock_offset_ms = 0
        """now_ms = stamp + offset for stamps of `_clock_term`."""
        self._history = History(history_events_max, history_bytes_max)
        self._leases = LeaseTable()
        self._locks = LockTable(self._history, self._leases.__contains__)
        self._elections = ElectionTable(self._history, self._leases.__contains__)
        self._kv = KvStore(self._history, self._leases.__contains__, self._locks.tokens)
        self._sequences = SequenceTable(self._history)
        self._members = MemberTable(self._history)
        self._join_tokens = JoinTokenTable()
        self._sealing_keys = SealingKeyTable()
        self._sessions = SessionTable(max_sessions)

    # --- apply -------------------------------------------------------------------------------

    def apply(self, entry: Entry) -> Applied:
        if entry.index != self._applied_index + 1:
            raise ValueError(
                f"entry {entry.index} applied out of order: the machine has applied up to "
                f"{self._applied_index}, so it takes {self._applied_index + 1} next"
            )
        self._applied_index, self._applied_term = entry.index, entry.term
        if entry.term > self._max_term:
            self._max_term = entry.term
            self._refresh_pending = True
        if entry.kind is not EntryKind.NORMAL or not entry.data:
            return Applied(entry.index, entry.term)
        try:
            env = Envelope.decode(entry.data)
        except CommandDecodeError as exc:
            return Applied(
                entry.index,
                entry.term,
                result=invalid(f"entry {entry.index} holds no valid command ({exc})"),
            )
        self._advance_clock(env.leader_time_ms, entry.term)
        head = (entry.index, entry.term, env.client_id, env.seq, env.command)
        if env.client_id:
            seen = self._sessions.check(env.client_id, env.seq)
            if seen.verdict is SessionVerdict.DUPLICATE:
                return Applied(*head, result=decode_outcome(seen.response), duplicate=True)
            if seen.verdict is SessionVerdict.STALE:
                stale = failed_precondition(
                    f"request {env.seq} of client {env.client_id} is older than the newest one "
                    "applied for that client; a client sends one request at a time with "
                    "increasing sequence numbers, so this is a late duplicate: drop it"
                )
                return Applied(*head, result=stale, duplicate=True)
        effects: list[Effect] = []
        result: Result | FsmError
        try:
            result = self._execute(env.command, effects)
        except FsmError as err:
            result = err
            effects.clear()
        if env.client_id:
            self._sessions.record(env.client_id, env.seq, encode_outcome(result), entry.index)
        return Applied(*head, result=result, effects=tuple(effects))

    def _advance_clock(self, stamp_ms: int, term: int) -> None:
        if term != self._clock_term:
            self._clock_offset_ms = 0 if self._clock_term == 0 else self._now_ms - stamp_ms
            self._clock_term = term
        self._now_ms = max(self._now_ms, stamp_ms + self._clock_offset_ms)
        if self._refresh_pending:
            self._leases.refresh(self._now_ms)
            self._refresh_pending = False

    def _execute(self, cmd: Command, effects: list[Effect]) -> Result:
        now = self._now_ms
        match cmd:
            case Put():
                return self._kv.put(cmd)
            case Delete():
                return self._kv.delete(cmd)
            case Txn():
                return self._kv.txn(cmd)
            case LeaseGrant():
                lease = self._leases.grant(cmd.ttl_ms, cmd.id, now)
                return LeaseResult(lease.id, lease.ttl_ms)
            case OwnedLeaseGrant():
                invariant(bool(cmd.owner), "an owned lease names its owner")
                lease = self._leases.grant(cmd.ttl_ms, cmd.id, now, cmd.owner)
                return LeaseResult(lease.id, lease.ttl_ms)
            case LeaseKeepAlive():
                lease = self._leases.keep_alive(cmd.id, now)
                return LeaseResult(lease.id, lease.ttl_ms)
            case LeaseRevoke():
                self._leases.get(cmd.id)  # NOT_FOUND before any change
                effects.append(LeaseRevoked(cmd.id))
                self._end_lease(cmd.id, expired=False, effects=effects)
                return RevisionResult(self._history.revision)
            case ExpireLeases():
                return self._expire(self._leases.due(now), effects)
            case ExpireLeaseIds():
                # The leader named them (its lessor's deadlines passed); one that ended
                # meanwhile (revoked, or a duplicate expiry) is skipped.
                return self._expire([i for i in cmd.ids if i in self._leases], effects)
            case LockAcquire():
                acq = self._locks.acquire(
                    cmd.name,
                    cmd.lease,
                    now,
                    waiter_id=cmd.waiter_id,
                    max_holders=cmd.max_holders,
                    lock_delay_ms=cmd.lock_delay_ms,
                )
                effects += [_lock_granted(g) for g in acq.others]
                return AcquireResult(
                    self._history.revision, acq.granted, acq.token, acq.waiting_ahead
                )
            case LockRelease():
                held, grants = self._locks.release(cmd.name, cmd.lease, now)
                effects += [_lock_granted(g) for g in grants]
                return ReleaseResult(self._history.revision, held)
            case Campaign():
                acq = self._elections.campaign(cmd.election, cmd.lease, cmd.value, now)
                effects += [_leader_elected(g) for g in acq.others]
                return AcquireResult(
                    self._history.revision, acq.granted, acq.token, acq.waiting_ahead
                )
            case Proclaim():
                return RevisionResult(self._elections.proclaim(cmd.election, cmd.lease, cmd.value))
            case Resign():
                held, grants = self._elections.resign(cmd.election, cmd.lease, now)
                effects += [_leader_elected(g) for g in grants]
                return ReleaseResult(self._history.revision, held)
            case SequenceCreate():
                return self._sequences.create(cmd.name, cmd.start, cmd.increment)
            case SequenceNext():
                return self._sequences.next(cmd.name, cmd.count)
            case MemberUpsert():
                member = Member(cmd.id, cmd.name, cmd.peer_url, cmd.client_url)
                return RevisionResult(self._members.upsert(member))
            case MemberRemove():
                return RevisionResult(self._members.remove(cmd.id))
            case MemberReadmit():
                return RevisionResult(self._members.readmit(cmd.id))
            case JoinTokenAdd():
                self._join_tokens.add(cmd.id, cmd.secret_sha256, cmd.created_ms)
                return RevisionResult(self._history.revision)
            case JoinTokenRevoke():
                self._join_tokens.revoke(cmd.id, cmd.revoked_ms)
                return RevisionResult(self._history.revision)
            case SealingKeyAdd():
                key = SealingKey(cmd.id, cmd.created_ms, cmd.private_key_der, cmd.certificate_pem)
                added, newest = self._sealing_keys.add(key, cmd.after)
                return SealingKeyResult(added, newest.id, newest.created_ms)
            case Noop():
                return RevisionResult(self._history.revision)

    def _expire(self, due: list[int], effects: list[Effect]) -> ExpireResult:
        """End the `due` leases as expired (lock-delay applies), then grant what lock-delays
        that are over now allow."""
        now = self._now_ms
        for lease_id in due:
            self._locks.leave_queues(lease_id, now)
            self._elections.leave_queues(lease_id, now)
        for lease_id in due:
            effects.append(LeaseExpired(lease_id))
            self._end_lease(lease_id, expired=True, effects=effects)
        effects += [_lock_granted(g) for g in self._locks.tick(now)]
        effects += [_leader_elected(g) for g in self._elections.tick(now)]
        return ExpireResult(self._history.revision, tuple(due))

    def _end_lease(self, lease_id: int, *, expired: bool, effects: list[Effect]) -> None:
        """Delete the lease's keys (one revision), release its locks (lock-delay if it
        expired) and elections, then forget it."""
        now = self._now_ms
        self._kv.delete_keys(self._kv.keys_of_lease(lease_id))
        effects += [_lock_granted(g) for g in self._locks.end_lease(lease_id, now, expired=expired)]
        effects += [
            _leader_elected(g) for g in self._elections.end_lease(lease_id, now, expired=False)
        ]
        self._leases.remove(lease_id)

    # --- state -------------------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def applied_term(self) -> int:
        return self._applied_term

    @property
    def revision(self) -> int:
        """The global revision: the newest change's; 0 before any."""
        return self._history.revision

    @property
    def now_ms(self) -> int:
        """The replicated clock as of the last applied command (module docstring)."""
        return self._now_ms

    @property
    def history_horizon(self) -> int:
        """The oldest revision `events_since` can still start from."""
        return self._history.horizon

    # --- queries (read side; never through the log) ------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        return self._kv.get(key)

    def range(self, key: bytes, range_end: bytes | None = None, limit: int = 0) -> RangeResult:
        return self._kv.range(key, range_end, limit)

    def events_since(self, revision: int) -> list[Event]:
        """Every event at `revision` or later; OUT_OF_RANGE if the history no longer has them."""
        return self._history.events_since(revision)

    def leases(self) -> tuple[int, ...]:
        return tuple(self._leases.ids())

    def lease_ttls(self) -> list[tuple[int, int]]:
        """(id, ttl_ms) of every lease, by id (what the leader's lessor starts from)."""
        return self._leases.ttls()

    def lock_delays_pending(self) -> bool:
        """Whether a lock waits for a lock-delay to end: the leader's next expiry entry (even
        one naming no lease) is what grants it."""
        return self._locks.delays_pending()

    def lease_owner(self, lease_id: int) -> str | None:
        """The namespace owning the lease ("" for a cluster client's), None if unknown here."""
        return self._leases.owner(lease_id)

    def lease_ttl(self, lease_id: int) -> LeaseInfo:
        lease = self._leases.get(lease_id)
        return LeaseInfo(
            lease.id,
            lease.ttl_ms,
            max(0, lease.deadline_ms - self._now_ms),
            tuple(self._kv.keys_of_lease(lease_id)),
        )

    def lock_holders(self, name: str) -> tuple[Holder, ...]:
        """Current holders, oldest grant first (one for a mutex)."""
        return self._locks.holders(name)

    def lock_waiters(self, name: str) -> tuple[Waiter, ...]:
        """Queued acquirers, first in line first."""
        return self._locks.waiters(name)

    def check_fence(self, name: str, token: int) -> bool:
        """Is `token` a current holder's fencing token for lock `name`? (CheckSequencer)"""
        return self._locks.check_fence(name, token)

    def election_leader(self, election: str) -> LeaderInfo | None:
        return self._elections.leader(election)

    def election_candidates(self, election: str) -> tuple[Waiter, ...]:
        """Candidates waiting to lead, next in line first."""
        return self._elections.waiters(election)

    def sequence_current(self, name: str) -> SequenceInfo:
        return self._sequences.current(name)

    def members(self) -> tuple[Member, ...]:
        return self._members.list()

    def removed_member_ids(self) -> frozenset[int]:
        """Every id removed from the cluster: never given to a member again."""
        return self._members.removed_ids()

    def join_tokens(self) -> tuple[JoinTokenInfo, ...]:
        """Every join token (hashes only), revoked ones included, oldest first. For the
        members' own checks and listings; no client API returns the hashes."""
        return self._join_tokens.list()

    def sealing_keys(self) -> tuple[SealingKey, ...]:
        """The sealing key pairs, oldest first; the last one seals. Private keys included:
        for the member's own Secrets service only, never for a client."""
        return self._sealing_keys.list()

    def sealing_key(self, key_id: bytes) -> SealingKey | None:
        return self._sealing_keys.get(key_id)

    # --- disaster recovery ---------------------------------------------------------------------

    def census(self) -> dict[str, int]:
        """How many of each kind of thing the state holds, for people (`concordctl rafttool
        dump` summarizes a snapshot with it instead of printing the image)."""
        return {
            "keys": len(self._kv),
            "leases": len(self._leases),
            "locks": len(self._locks.names()),
            "elections": len(self._elections.names()),
            "sequences": len(self._sequences.names()),
            "members": len(self._members.list()),
            "removed_member_ids": len(self._members.removed_ids()),
            "join_tokens": len(self._join_tokens.list()),
            "sessions": len(self._sessions),
            "history_events": len(self._history),
        }

    def rewrite_for_recovery(self, members: Sequence[Member], removed: Iterable[int] = ()) -> None:
        """Prepare a restored or forced image for a new cluster: `members` becomes the member
        directory, the ids in `removed` (those the new cluster drops) are remembered as removed
        and never given to a member again, and every lease gets a full TTL again at the next
        stamped command.

        Never through the log: a stopped member's offline tooling calls this on an image it
        then installs as a snapshot (`concordctl snapshot restore`, `--force-new-cluster`).
        It records no event and changes no revision. Every member built from one image must
        get the same `members`, or their states diverge. Raises FsmError (INVALID_ARGUMENT)
        for duplicate ids or names, changing nothing."""
        self._members.replace(members, removed)
        self._refresh_pending = True

    def revoke_join_tokens_for_recovery(self) -> int:
        """Revoke every join token still valid in a restored image, for the new cluster:
        a backup may predate a revocation, and restoring it must not bring that token back.
        Stamped with the image's own clock, so every member restored from one image gets the
        same table. Offline tooling only, like `rewrite_for_recovery`. Returns how many were
        revoked."""
        valid = [t.id for t in self._join_tokens.list() if not t.revoked_ms]
        for token_id in valid:
            self._join_tokens.revoke(token_id, self._now_ms)
        return len(valid)

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """A versioned binary image of everything: clock, KV, history (with its horizon),
        leases, locks, elections, sequences, members, join tokens and the session table.
        Canonical: two machines in the same state produce the same bytes (a copy of the
        buffer they were encoded into; `snapshot_later()()` is that buffer, read-only)."""
        return self.snapshot_later()().tobytes()

    def snapshot_later(self) -> Callable[[], memoryview]:
        """`snapshot()` of the state as it is now, produced later (as a read-only view, not
        bytes): the returned function may run on another thread while this machine goes on
        applying. Everything but the KV is encoded now; the KV, the one part that grows
        large, is captured as copies of its containers (its keys and values are immutable),
        which is fast, and encoded by the returned function."""
        head = Writer()
        head.raw(SNAPSHOT_MAGIC)
        head.u8(SNAPSHOT_VERSION)
        head.u64(self._applied_index)
        head.u64(self._applied_term)
        head.u64(self._max_term)
        head.boolean(self._refresh_pending)
        head.i64(self._now_ms)
        head.u64(self._clock_term)
        head.i64(self._clock_offset_ms)
        self._history.write(head)
        write_kv = self._kv.capture()
        tail = Writer()
        self._leases.write(tail)
        self._locks.write(tail)
        self._elections.write(tail)
        self._sequences.write(tail)
        self._members.write(tail)
        self._join_tokens.write(tail)
        self._members.write_removed(tail)
        self._sealing_keys.write(tail)
        self._leases.write_owners(tail)
        tail.blob(self._sessions.encode())
        before, after = head.getvalue(), tail.getvalue()

        def image() -> memoryview:
            w = Writer()
            w.raw(before)
            write_kv(w)
            w.raw(after)
            return w.view()

        return image

    def restore(self, data: bytes | memoryview) -> None:
        """Replace the whole state with a `snapshot()` image; on a bad image raise
        SnapshotDecodeError and keep the current state. A view is read in place, unchanged."""
        fresh = StateMachine(
            history_events_max=self._history_events_max,
            history_bytes_max=self._history_bytes_max,
            max_sessions=self._max_sessions,
        )
        r = Reader(data, "state machine snapshot", SnapshotDecodeError)
        try:
            fresh._read_image(r)
        except DecodeError as exc:
            if isinstance(exc, SnapshotDecodeError):
                raise
            raise SnapshotDecodeError(str(exc)) from exc
        except (ValueError, struct.error) as exc:  # the session table's own decoder
            raise SnapshotDecodeError(f"cannot decode state machine snapshot: {exc}") from exc
        self.__dict__.update(fresh.__dict__)

    def _read_image(self, r: Reader) -> None:
        magic = r.raw(len(SNAPSHOT_MAGIC))
        if magic != SNAPSHOT_MAGIC:
            raise r.fail(f"not a Concord state machine snapshot (magic {magic!r})")
        version = r.u8()
        if version not in _READABLE_SNAPSHOT_VERSIONS:
            raise r.fail(
                f"unknown snapshot version {version} (this build reads versions "
                f"{', '.join(map(str, _READABLE_SNAPSHOT_VERSIONS))})"
            )
        self._applied_index = r.u64()
        self._applied_term = r.u64()
        self._max_term = r.u64()
        self._refresh_pending = r.boolean()
        self._now_ms = r.i64()
        self._clock_term = r.u64()
        self._clock_offset_ms = r.i64()
        self._history.read_into(r)
        self._kv.read_into(r, columns=version >= 6)
        self._leases.read_into(r)
        self._locks.read_into(r)
        self._elections.read_into(r)
        self._sequences.read_into(r)
        self._members.read_into(r)
        if version >= 2:
            self._join_tokens.read_into(r)
        if version >= 3:
            self._members.read_removed_into(r)
        if version >= 4:
            self._sealing_keys.read_into(r)
        if version >= 5:
            self._leases.read_owners_into(r)
        self._sessions = SessionTable.decode(r.blob(), self._max_sessions)
        r.finish()
