"""The Raft core's vocabulary: entries, hard state, configurations, snapshots and messages.

Everything here is a frozen, slotted dataclass so that a value handed across the core's
boundary (into a Ready, onto the wire, into the simulator's trace) can never be mutated
behind the core's back. Node ids are positive ints; 0 means "nobody" (no vote, no leader).

Messages are one flat type with a `MessageType` tag rather than a class per kind: the
transport then needs exactly one method, the simulator can drop/duplicate/reorder any of
them uniformly, and new kinds never widen an interface. Fields that a kind does not use keep
their zero defaults; each kind's meaning is documented on `MessageType`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

NONE = 0
"""The node id that means "no node": no vote cast, no leader known."""


class EntryKind(enum.IntEnum):
    NORMAL = 0
    """Application data; an empty NORMAL entry is the no-op a new leader appends."""
    CONF = 1
    """A new cluster configuration (encoded `ConfState`); in force as soon as it is appended."""


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before the node speaks: term, vote and commit (Raft Figure 2)."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration: voters decide; learners only receive the log.

    Invariant: voters and learners are disjoint.
    """

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()

    def encode(self) -> bytes:
        """Tagged, versioned encoding: version byte, counts, then sorted ids (uint64 BE)."""
        voters = sorted(self.voters)
        learners = sorted(self.learners)
        return struct.pack(
            f">BII{len(voters)}Q{len(learners)}Q", 1, len(voters), len(learners), *voters, *learners
        )

    @staticmethod
    def decode(data: bytes) -> ConfState:
        if not data or data[0] != 1:
            raise ValueError(f"unknown ConfState encoding version {data[:1]!r}")
        if len(data) < 9:
            raise ValueError(f"ConfState encoding truncated: {len(data)} bytes")
        nv, nl = struct.unpack_from(">II", data, 1)
        want = 9 + 8 * (nv + nl)
        if want > len(data):
            raise ValueError(f"ConfState encoding truncated: {nv}+{nl} ids need {want} bytes")
        if want < len(data):
            raise ValueError(f"ConfState encoding has {len(data) - want} trailing bytes")
        ids = struct.unpack_from(f">{nv + nl}Q", data, 9)
        voters, learners = frozenset(ids[:nv]), frozenset(ids[nv:])
        if 0 in ids:
            raise ValueError("ConfState encoding names node 0, which means 'nobody'")
        if len(voters) != nv or len(learners) != nl:
            raise ValueError("ConfState encoding lists a node twice")
        if voters & learners:
            raise ValueError(
                f"ConfState encoding has {sorted(voters & learners)} as both voter and learner"
            )
        return ConfState(voters, learners)

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


SnapshotData = bytes | memoryview
"""A snapshot's image: bytes, or a read-only view of the buffer it was built or read into
(the image is the one large thing a member holds; a view saves copying it whole)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image at `meta.index`; its log prefix is discarded."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: SnapshotData = b""

    @property
    def empty(self) -> bool:
        return self.meta.index == 0


class MessageType(enum.Enum):
    # Local inputs: never sent over the wire (term 0, to == from == self).
    HUP = "hup"
    """Start an election (a PreVote round first, when enabled)."""
    BEAT = "beat"
    """Leader: broadcast heartbeats."""
    CHECK_QUORUM = "check_quorum"
    """Leader: step down unless a quorum was heard from in the last election timeout."""

    # Elections.
    PRE_VOTE = "pre_vote"
    """term = the term the sender would campaign in; index/log_term = its last entry."""
    PRE_VOTE_RESP = "pre_vote_resp"
    VOTE = "vote"
    """As PRE_VOTE; `force` = sent after TIMEOUT_NOW, so leader stickiness does not apply."""
    VOTE_RESP = "vote_resp"
    TIMEOUT_NOW = "timeout_now"
    """Leadership transfer: campaign now, skipping PreVote."""

    # Replication.
    APP = "app"
    """index/log_term = the entry before `entries`; commit = leader's commit index."""
    APP_RESP = "app_resp"
    """Accept: index = last index now known to match. Reject: reject=True, index = the
    rejected APP's index, hint_index/log_term point at where the leader should probe next."""
    HEARTBEAT = "heartbeat"
    """commit = min(leader commit, follower match); context = newest ReadIndex sequence."""
    HEARTBEAT_RESP = "heartbeat_resp"
    """context echoes the heartbeat's, confirming leadership for every read up to it."""
    SNAP = "snap"
    """One chunk of an InstallSnapshot: snapshot meta, offset, data, done."""
    SNAP_RESP = "snap_resp"
    """offset = bytes received so far (the next chunk wanted); reject if out of order."""

    # Linearizable reads through a follower.
    READ_INDEX = "read_index"
    """Follower -> leader: context identifies the request on the follower."""
    READ_INDEX_RESP = "read_index_resp"
    """Leader -> follower: index = the read index; reject = leader could not serve it."""


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    hint_index: int = 0
    context: int = 0
    force: bool = False
    snapshot_meta: SnapshotMeta | None = None
    offset: int = 0
    data: bytes = b""
    done: bool = False


LOCAL_MESSAGES = frozenset({MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM})

RESPONSES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.SNAP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.READ_INDEX_RESP,
    }
)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting when it changes: who leads and what we are."""

    leader: int
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied `index`."""

    index: int
    context: int
