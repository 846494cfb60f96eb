"""Conversion between the core's messages and their protobuf form on the peer wire.

The core's `Message` is a frozen dataclass; the wire form is `concord.v1.RaftMessage` with
explicit field numbers. The mapping is total and lossless for every message type a member
sends (local-only types never leave a member and are refused here).
"""

from __future__ import annotations

from coordinator.api.v1 import raft_pb2 as pb
from coordinator.raft import ConfState, Entry, EntryKind, Message, MessageType, SnapshotMeta

_TO_WIRE: dict[MessageType, pb.MessageType] = {
    MessageType.PRE_VOTE: pb.PRE_VOTE,
    MessageType.PRE_VOTE_RESP: pb.PRE_VOTE_RESP,
    MessageType.VOTE: pb.VOTE,
    MessageType.VOTE_RESP: pb.VOTE_RESP,
    MessageType.TIMEOUT_NOW: pb.TIMEOUT_NOW,
    MessageType.APP: pb.APP,
    MessageType.APP_RESP: pb.APP_RESP,
    MessageType.HEARTBEAT: pb.HEARTBEAT,
    MessageType.HEARTBEAT_RESP: pb.HEARTBEAT_RESP,
    MessageType.SNAP: pb.SNAP,
    MessageType.SNAP_RESP: pb.SNAP_RESP,
    MessageType.READ_INDEX: pb.READ_INDEX,
    MessageType.READ_INDEX_RESP: pb.READ_INDEX_RESP,
}
_FROM_WIRE = {v: k for k, v in _TO_WIRE.items()}


class WireError(ValueError):
    """A peer sent something that is not a valid Raft message."""


def to_wire(m: Message) -> pb.RaftMessage:
    wire_type = _TO_WIRE.get(m.type)
    if wire_type is None:
        raise WireError(f"{m.type.value} is local to a member and never sent")
    out = pb.RaftMessage(
        type=wire_type,
        to=m.to,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        commit=m.commit,
        reject=m.reject,
        hint_index=m.hint_index,
        context=m.context,
        force=m.force,
        offset=m.offset,
        data=m.data,
        done=m.done,
    )
    setattr(out, "from", m.frm)  # `from` is a Python keyword
    if m.entries:
        out.entries.extend(
            pb.Entry(index=e.index, term=e.term, kind=int(e.kind), data=e.data) for e in m.entries
        )
    meta = m.snapshot_meta
    if meta is not None:
        out.snapshot_meta.index = meta.index
        out.snapshot_meta.term = meta.term
        out.snapshot_meta.conf.voters.extend(sorted(meta.conf.voters))
        out.snapshot_meta.conf.learners.extend(sorted(meta.conf.learners))
    return out


def from_wire(w: pb.RaftMessage) -> Message:
    kind = _FROM_WIRE.get(w.type)
    if kind is None:
        raise WireError(f"unknown message type {w.type}")
    frm = getattr(w, "from")
    if frm == 0 or w.to == 0 or w.term == 0:
        raise WireError("a peer message needs a sender, a recipient and a term")
    try:
        entries = tuple(Entry(e.index, e.term, EntryKind(e.kind), e.data) for e in w.entries)
    except ValueError as err:
        raise WireError(f"bad entry kind: {err}") from err
    meta: SnapshotMeta | None = None
    if w.HasField("snapshot_meta"):
        c = w.snapshot_meta.conf
        voters, learners = frozenset(c.voters), frozenset(c.learners)
        if voters & learners or 0 in voters or 0 in learners:
            raise WireError("snapshot configuration lists a node twice or node 0")
        meta = SnapshotMeta(
            w.snapshot_meta.index, w.snapshot_meta.term, ConfState(voters, learners)
        )
    return Message(
        type=kind,
        to=w.to,
        frm=frm,
        term=w.term,
        log_term=w.log_term,
        index=w.index,
        entries=entries,
        commit=w.commit,
        reject=w.reject,
        hint_index=w.hint_index,
        context=w.context,
        force=w.force,
        snapshot_meta=meta,
        offset=w.offset,
        data=w.data,
        done=w.done,
    )
