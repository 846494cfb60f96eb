"""The one place that orders what a Ready demands: persist, then send, then apply, then advance.

Raft's safety rests on a node never saying anything (a vote, an APP acknowledgement) that
its disk does not back: a vote granted and then forgotten in a crash lets two leaders win
one term; an entry acknowledged and then lost lets a "committed" entry vanish. So:

0. send the Ready's `early_messages` (a leader's appends, which may overlap its own fsync with
   its followers': see `Ready.early_messages` for why that is safe);
1. persist the incoming snapshot, the new entries and the hard state, and fsync;
2. only then send the Ready's other messages;
3. then restore/apply the state machine and serve read states;
4. then tell the core it is done (`advance`).

The member core (`core.member.MemberCore.handle_ready`), and through it the asyncio runtime,
and the deterministic simulator all go through these functions, so the
simulator's crash model (a crash in the middle of step 1 loses the unsynced part) attacks
exactly the sequencing production uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from coordinator.raft import Entry, HardState, Message, RawNode, ReadState, Ready, Snapshot


class Wal(Protocol):
    """Durable log. Both methods return only once the data is on stable storage (fsync),
    and afterwards the data is readable through the `LogStorage` the node reads from. One
    exception is allowed: a save of a hard state that changes only the commit index (no
    entries, same term and vote) may skip the fsync, since a commit index lost in a crash is
    re-learnt from the leader.
    Entries may overwrite a stored suffix (truncate, then append). Errors propagate: a
    node that cannot persist must stop, never carry on as if it had."""

    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None: ...

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Persist an incoming snapshot; the log it covers may then be dropped."""
        ...


class Transport(Protocol):
    """Fire-and-forget delivery to peers: may drop, delay, duplicate or reorder (Raft
    tolerates all four); must never block the caller or raise for an unreachable peer."""

    def send(self, msg: Message) -> None: ...


class Applier(Protocol):
    """The replicated state machine's side of the loop.

    Concurrency contract: called only from the loop that owns the node, in log order;
    `apply` sees each committed entry exactly once per process lifetime (after a restart,
    entries after the last snapshot are applied again from the log, so apply must be
    deterministic and derive everything, time included, from the entries themselves).
    """

    def restore(self, snapshot: Snapshot) -> None: ...

    def apply(self, entries: Sequence[Entry]) -> None: ...

    def read_states(self, states: Sequence[ReadState]) -> None:
        """Reads confirmed linearizable once the applied index reaches each state's index."""
        ...


def handle_ready(node: RawNode, wal: Wal, transport: Transport, app: Applier) -> Ready | None:
    """Process one Ready, if there is one. Returns it (for observers), or None."""
    if not node.has_ready():
        return None
    rd = node.ready()
    send_early(transport, rd)
    persist(wal, rd)
    finish(node, transport, app, rd)
    return rd


def send_early(transport: Transport, rd: Ready) -> None:
    """Step 0: what may go before the disk write."""
    for msg in rd.early_messages:
        transport.send(msg)


def persist(wal: Wal, rd: Ready) -> None:
    """Step 1: make the Ready's snapshot, entries and hard state durable. Touches only the
    WAL, so a runtime may run it off its event loop (the asyncio loop does, so that requests
    keep arriving and batch up while the disk syncs), provided nothing else reads or writes
    the WAL or steps the node until it returns."""
    if rd.snapshot is not None:
        wal.save_snapshot(rd.snapshot)
    if rd.entries or rd.hard_state is not None:
        wal.save(rd.entries, rd.hard_state)


def finish(
    node: RawNode,
    transport: Transport,
    app: Applier,
    rd: Ready,
    sent: Callable[[], None] | None = None,
) -> None:
    """Steps 2-4, once `persist(rd)` has returned: send, apply, advance. `sent`, if given,
    runs once the messages are handed to `transport` and before the apply: a runtime whose
    transport writes at the end of its turn flushes there, so that a follower's
    acknowledgement of an append does not wait for the follower's own apply."""
    for msg in rd.late_messages:
        transport.send(msg)
    if sent is not None and rd.late_messages:
        sent()
    if rd.snapshot is not None:
        app.restore(rd.snapshot)
    if rd.committed_entries:
        app.apply(rd.committed_entries)
    if rd.read_states:
        app.read_states(rd.read_states)
    node.advance(rd)
