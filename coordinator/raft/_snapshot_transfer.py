"""Sending a snapshot to a follower whose entries the leader has compacted away, in chunks.

The leader sends one chunk at a time and the follower answers each with the offset it holds
(SNAP_RESP), so a lost or repeated chunk costs that chunk again, never the whole snapshot.
The follower assembles the chunks, adopts the snapshot once the last one arrives, and then
answers as if it had appended everything up to the snapshot (APP_RESP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._progress import Progress, ProgressState
from .messages import Message, MessageType, Snapshot, SnapshotMeta

if TYPE_CHECKING:
    from ._raft import Raft

MT = MessageType


@dataclass(slots=True)
class IncomingSnapshot:
    """A follower's snapshot in the making: the chunks received so far, in order."""

    meta: SnapshotMeta
    buf: bytearray


def _send_snapshot_chunk(self: Raft, to: int, pr: Progress) -> None:
    snap = pr.snapshot
    if snap is None or pr.snapshot_sent:
        return
    size = self.cfg.snapshot_chunk_bytes
    off = pr.snapshot_offset
    chunk = bytes(snap.data[off : off + size])
    self._send(
        Message(
            MT.SNAP,
            to=to,
            frm=self.id,
            term=self.term,
            snapshot_meta=snap.meta,
            offset=off,
            data=chunk,
            done=off + len(chunk) >= len(snap.data),
        )
    )
    pr.snapshot_sent = True


def _handle_snapshot_response(self: Raft, m: Message, pr: Progress) -> None:
    snap = pr.snapshot
    if pr.state is not ProgressState.SNAPSHOT or snap is None:
        return
    if m.snapshot_meta != snap.meta:
        return  # about an older snapshot
    if m.offset == pr.snapshot_offset and pr.snapshot_sent:
        return  # the chunk it asks for is already on its way (we resent a slow one)
    if not m.reject and m.offset < pr.snapshot_offset:
        return  # a late acknowledgement of a chunk we have moved past
    pr.snapshot_offset = min(m.offset, len(snap.data))
    pr.snapshot_sent = False
    self._send_snapshot_chunk(m.frm, pr)


def _handle_snapshot_chunk(self: Raft, m: Message) -> None:
    meta = m.snapshot_meta
    if meta is None:
        return
    if meta.index <= self.log.committed:
        self.incoming_snapshot = None
        self._send(
            Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=self.log.committed)
        )
        return
    inc = self.incoming_snapshot
    if inc is None or inc.meta != meta:
        inc = self.incoming_snapshot = IncomingSnapshot(meta, bytearray())
    if m.offset != len(inc.buf):
        self._ask_for_chunk(m.frm, meta, len(inc.buf), reject=True)
        return
    inc.buf += m.data
    if not m.done:
        self._ask_for_chunk(m.frm, meta, len(inc.buf))
        return
    self.incoming_snapshot = None
    self.restore(Snapshot(meta, bytes(inc.buf)))
    # Vouch only for what the snapshot proves: entries after it were never checked
    # against the leader's log (restore may have kept them).
    self._send(
        Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=self.log.committed)
    )


def _ask_for_chunk(
    self: Raft, to: int, meta: SnapshotMeta, offset: int, reject: bool = False
) -> None:
    """SNAP_RESP: we hold `offset` bytes of the snapshot; send the chunk from there."""
    self._send(
        Message(
            MT.SNAP_RESP,
            to=to,
            frm=self.id,
            term=self.term,
            snapshot_meta=meta,
            offset=offset,
            reject=reject,
        )
    )


def restore(self: Raft, snap: Snapshot) -> bool:
    """Adopt a snapshot from the leader; False if our log already covers it."""
    if snap.meta.index <= self.log.committed:
        return False
    if self.log.match_term(snap.meta.index, snap.meta.term):
        # Our log agrees up to the snapshot: just learn that it is committed.
        self.log.commit_to(snap.meta.index)
        return False
    self.log.restore(snap)
    self.base_conf = snap.meta.conf
    self.conf_history = []
    self.conf = snap.meta.conf
    self._sync_progress()
    return True
