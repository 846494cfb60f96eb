"""Blocking acquisition, shared by Lock (wait=true) and Campaign.

The state machine answers an acquire at once: granted (with a fencing token) or queued (FIFO).
A queued request is granted later by someone else's command (a release, a resignation, an
expiry, the end of a lock-delay), which reaches the server as an effect (`_hub.py`). So:

1. register a `Wait` for (name, lease), *then* propose the acquire, so no grant can fall
   between the answer and the wait;
2. granted by the command itself: answer;
3. queued: wait for the `Wait` to settle: the grant's token, or NOT_FOUND (the lease ended),
   ABORTED (an Unlock/Resign withdrew it), UNAVAILABLE (this member lost its quorum: nothing
   more can be granted through it; the place in the queue is kept, so re-issuing the request
   on a member with a quorum picks it up). Only the client's deadline bounds the wait: just
   before it passes, the member answers UNAVAILABLE "still queued" (trailing
   `concord-queued`), and the client re-issues the same request (same session), which finds
   the lease still in the queue and waits on. So a wait may outlast any one call's deadline.

Cancellation. If the client cancels (or its deadline passes) while the request is queued, the
server proposes the withdrawal (LockRelease / Resign, without a session) in the background, so
an abandoned request does not later hold the lock with nobody knowing. That covers a grant
that raced with the cancellation too: once the acquire was answered "queued", any hold the
lease gets afterwards came from this queue entry. A cancellation before the acquire's own
answer waits for that answer (bounded) and withdraws only if it was "queued": a "granted"
answer cannot tell a fresh grant from a lease that already held the lock, and releasing the
latter would take a lock away from a client that knows it holds it. So a client that cancels
a Lock should Unlock (or revoke its lease) if it cannot be sure.

Lock with wait=false that is queued is withdrawn at once (a try-lock): the answer is
granted=false with waiters_ahead, and the lease is not left in the queue.

One request per (name, lease) at a time: two concurrent acquires of one lease share one queue
entry, and a cancelled one withdraws it for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass

from coordinator.fsm import AcquireResult, Applied, Command

from ._core import Core, Session
from ._errors import QUEUED_METADATA_KEY, Code, ServiceError
from ._hub import Wait, WaitKind, done_unless
from ._rpc import Call


@dataclass(frozen=True, slots=True)
class AcquireSpec:
    kind: WaitKind
    name: str
    lease: int
    command: Command
    """LockAcquire or Campaign."""
    withdraw: Command
    """LockRelease or Resign of the same (name, lease)."""


@dataclass(frozen=True, slots=True)
class Acquired:
    result: AcquireResult
    """The acquire command's own answer."""
    token: int
    """The fencing token if granted (by the command or later), else 0."""
    applied: Applied


def new_waiter_id() -> int:
    """A handle for the state machine's waiter record (informational: wake-ups match on
    (name, lease)); random so that no two members' handles are likely to collide."""
    return secrets.randbits(63) or 1


class Acquirer:
    def __init__(self, core: Core) -> None:
        self.core = core

    def state(self, spec: AcquireSpec) -> tuple[int, bool]:
        """(token if `spec.lease` holds `spec.name` now else 0, whether it is queued)."""
        fsm = self.core.fsm
        if spec.kind is WaitKind.LOCK:
            token = next((h.token for h in fsm.lock_holders(spec.name) if h.lease == spec.lease), 0)
            return token, any(w.lease == spec.lease for w in fsm.lock_waiters(spec.name))
        leader = fsm.election_leader(spec.name)
        token = leader.token if leader is not None and leader.lease == spec.lease else 0
        return token, any(w.lease == spec.lease for w in fsm.election_candidates(spec.name))

    async def acquire(
        self, spec: AcquireSpec, session: Session, call: Call, *, wait: bool
    ) -> Acquired:
        core = self.core
        pending = core.hub.register(spec.kind, spec.name, spec.lease) if wait else None
        proposal = asyncio.ensure_future(core.propose(spec.command, session))
        proposal.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(call.bound_s()):
                applied = await asyncio.shield(proposal)
            result = core.expect(applied, AcquireResult)
            if result.granted:
                return Acquired(result, result.token, applied)
            if pending is None:
                await self._try_lock_withdraw(spec)
                return Acquired(result, 0, applied)
            return Acquired(result, await self._wait(spec, pending, call), applied)
        except (asyncio.CancelledError, TimeoutError):
            core.spawn(self._withdraw_abandoned(spec, proposal))
            raise
        finally:
            if pending is not None:
                core.hub.unregister(pending)

    async def _wait(self, spec: AcquireSpec, pending: Wait, call: Call) -> int:
        if pending.future.done():
            return pending.future.result()
        token, queued = self.state(spec)
        if token:
            return token
        if not queued:
            raise ServiceError(
                Code.ABORTED,
                f"lease {spec.lease} is no longer queued for {spec.kind.value} {spec.name!r} "
                "(the wait was withdrawn or the lease ended); acquire again",
            )
        lost = self.core.hub.quorum_lost()
        # done_unless wakes this task in the turn after the grant, as a write's answer is
        # woken: a grant that trailed the release's answer would reach the client after it,
        # and the next release would then queue behind the releasing client's next acquire.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(answer_within_s(call)):
                await done_unless(pending.future, lost)
        if pending.future.done() and not pending.future.cancelled():
            return pending.future.result()
        if lost.done():
            err = self.core.no_quorum(write=False)
            raise ServiceError(
                err.code,
                f"{err.message}. Lease {spec.lease} keeps its place in the queue for "
                f"{spec.kind.value} {spec.name!r}: re-issue the request on a member with a "
                "quorum (with a new session seq) to keep waiting",
            )
        raise ServiceError(
            Code.UNAVAILABLE,
            f"lease {spec.lease} is still queued for {spec.kind.value} {spec.name!r} and the "
            "call's deadline is near: re-issue the same request (same session) on this member "
            "to keep its place",
            ((QUEUED_METADATA_KEY, "1"),),
        )

    async def _try_lock_withdraw(self, spec: AcquireSpec) -> None:
        _, queued = self.state(spec)
        if queued:
            await self.core.propose(spec.withdraw)

    async def _withdraw_abandoned(self, spec: AcquireSpec, proposal: asyncio.Task[Applied]) -> None:
        await asyncio.wait({proposal}, timeout=self.core.cfg.deadline_s)
        if proposal.done():
            if proposal.cancelled() or proposal.exception() is not None:
                return  # not executed, or its outcome is the client's to retry
            result = proposal.result().result
            if not isinstance(result, AcquireResult) or result.granted:
                return  # rejected, or granted by the command itself (see the module doc)
        token, queued = self.state(spec)
        if token or queued:
            async with asyncio.timeout(self.core.cfg.deadline_s):
                await self.core.propose(spec.withdraw)


def answer_within_s(call: Call) -> float | None:
    """How long a queued request may wait before it answers "still queued": shortly before
    the client's deadline, so the client hears it and re-issues the request. Letting the
    deadline pass instead would cancel the call, and a cancelled call withdraws its place in
    the queue (see the module doc). The margin covers the answer's trip back; at least half
    of what is left is spent waiting, so tiny deadlines do not turn into a busy loop."""
    remaining = call.client_remaining_s()
    if remaining is None:
        return None
    margin = min(1.0, max(0.25, remaining * 0.1))
    return max(remaining / 2, remaining - margin)


def _retrieve(task: asyncio.Task[Applied]) -> None:
    """Mark the outcome as seen: a proposal whose RPC went away may end in an error nobody
    awaits."""
    if not task.cancelled():
        task.exception()
