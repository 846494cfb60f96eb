"""The peer wire format round-trips every message a member sends, and refuses garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.api.v1 import raft_pb2 as pb
from coordinator.raft import (
    ConfState,
    Entry,
    EntryKind,
    Message,
    MessageType,
    SnapshotMeta,
)
from coordinator.raft.messages import LOCAL_MESSAGES
from coordinator.runtime.wire import WireError, from_wire, to_wire

u64 = st.integers(min_value=0, max_value=2**64 - 1)
pos = st.integers(min_value=1, max_value=2**64 - 1)
wire_types = st.sampled_from(sorted(set(MessageType) - LOCAL_MESSAGES, key=lambda t: t.value))
entries = st.lists(
    st.builds(Entry, u64, u64, st.sampled_from(list(EntryKind)), st.binary(max_size=64)),
    max_size=4,
).map(tuple)
confs = st.sets(pos, max_size=5).flatmap(
    lambda voters: st.builds(
        ConfState,
        st.just(frozenset(voters)),
        st.sets(pos, max_size=3).map(lambda s: frozenset(s - voters)),
    )
)
metas = st.none() | st.builds(SnapshotMeta, u64, u64, confs)
messages = st.builds(
    Message,
    type=wire_types,
    to=pos,
    frm=pos,
    term=pos,
    log_term=u64,
    index=u64,
    entries=entries,
    commit=u64,
    reject=st.booleans(),
    hint_index=u64,
    context=u64,
    force=st.booleans(),
    snapshot_meta=metas,
    offset=u64,
    data=st.binary(max_size=64),
    done=st.booleans(),
)


@settings(derandomize=True, deadline=None, max_examples=300, database=None)
@given(messages)
def test_every_message_round_trips_through_bytes(m: Message) -> None:
    raw = to_wire(m).SerializeToString()
    assert from_wire(pb.RaftMessage.FromString(raw)) == m


@pytest.mark.parametrize("local", sorted(LOCAL_MESSAGES, key=lambda t: t.value))
def test_local_messages_never_go_on_the_wire(local: MessageType) -> None:
    with pytest.raises(WireError, match="local"):
        to_wire(Message(local, to=1, frm=1))


def test_garbage_from_a_peer_is_refused() -> None:
    with pytest.raises(WireError, match="unknown message type"):
        from_wire(pb.RaftMessage(type=pb.MESSAGE_TYPE_UNSPECIFIED, to=1, term=1))
    with pytest.raises(WireError, match="sender"):
        from_wire(pb.RaftMessage(type=pb.APP, to=1, term=1))
    bad = pb.RaftMessage(type=pb.APP, to=1, term=1)
    setattr(bad, "from", 2)
    bad.entries.add(index=1, term=1, kind=7)
    with pytest.raises(WireError, match="entry kind"):
        from_wire(bad)
    snap = pb.RaftMessage(type=pb.SNAP, to=1, term=1)
    setattr(snap, "from", 2)
    snap.snapshot_meta.conf.voters.extend([1, 2])
    snap.snapshot_meta.conf.learners.extend([2])
    with pytest.raises(WireError, match="twice"):
        from_wire(snap)
