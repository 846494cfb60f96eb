"""The server's view of its member: wake-ups for blocked requests, watch streams and quorum.

The `Hub` is the `RaftLoop`'s observer (`LoopObserver`): the loop calls it from inside its own
task, between applies, so it reads the state machine at a consistent point and must never
block. It turns what the loop reports into futures that handlers await:

- Applies. A generation counter moves on every applied batch (and on a snapshot restore);
  `applied_since(generation)` returns once it has moved (a renewal waiting for an expiry to
  apply waits so). Watch and Observe streams do not wait here: the `WatchHub`
  (`_watchers.py`) wakes only the streams a change concerns.
- Blocked acquisitions (`Wait`). A Lock with wait or a Campaign that was queued registers
  (kind, name, lease) *before* it proposes, so no grant can slip between its proposal and its
  wait. The state machine's effects (see `coordinator.fsm.machine`) settle it: `LockGranted` /
  `LeaderElected` with the fencing token; `LeaseExpired` / `LeaseRevoked` fail it (NOT_FOUND:
  the lease ended); a `LockRelease` / `Resign` that withdrew a waiter (held=False) fails it
  (ABORTED). Matching is by (name, lease), not by waiter id: a retry through another member
  or with the same session carries another member's waiter id, and a grant to that lease is
  what every request waiting for it wants. After a snapshot restore (whose effects were never
  reported) each wait is re-checked against the state.
- Quorum. When no leader has been known for `no_quorum_after_s`, the hub declares the quorum
  lost: `quorum_lost()` resolves, and every write or linearizable read waiting on this member
  fails fast with UNAVAILABLE until a leader is known again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.fsm import (
    Applied,
    LeaderElected,
    LeaseExpired,
    LeaseRevoked,
    LockGranted,
    LockRelease,
    ReleaseResult,
    Resign,
)
from coordinator.runtime.view import RaftView

from ._errors import Code, ServiceError, unavailable


class WaitKind(enum.Enum):
    LOCK = "lock"
    ELECTION = "election"


@dataclass(eq=False, slots=True)
class Wait:
    """A request blocked until `lease` is granted lock (or leads election) `name`."""

    kind: WaitKind
    name: str
    lease: int
    future: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    """Resolves with the fencing token, or fails with a ServiceError."""


async def first_done(*futures: asyncio.Future[Any], timeout_s: float | None = None) -> None:
    """Wait until one of `futures` is done (or `timeout_s` passed); cancels none of them, so
    shared futures may be passed."""
    await asyncio.wait(futures, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)


async def done_unless(fut: asyncio.Future[Any], *stoppers: asyncio.Future[Any]) -> bool:
    """Wait until `fut` is done (True: its result or exception is ready), unless one of
    `stoppers` resolves first (False: `fut` is cancelled). Awaits `fut` itself rather than
    `asyncio.wait`, so that its outcome wakes the caller in one turn of the event loop: every
    write and linearizable read waits here."""
    if fut.done():
        return True
    for s in stoppers:  # not any(genexpr): this runs once per write and read
        if s.done():
            fut.cancel()
            return False
    stopped = False

    def stop(_: object) -> None:
        nonlocal stopped
        if not fut.done():
            stopped = True
            fut.cancel()

    for s in stoppers:
        s.add_done_callback(stop)
    try:
        await fut
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if stopped and (task is None or not task.cancelling()):
            return False
        raise
    except Exception:
        pass  # the caller reads it from `fut`
    finally:
        for s in stoppers:
            s.remove_done_callback(stop)
    return True


def stopping_error() -> ServiceError:
    return unavailable(
        "this member is shutting down; retry on another member (with the same session, if "
        "the request carried one)"
    )


class Hub:
    def __init__(self, view: RaftView, no_quorum_after_s: float) -> None:
        self._view = view
        self.no_quorum_after_s = no_quorum_after_s
        self._generation = 0
        self._applied: asyncio.Future[None] | None = None
        self._leader: asyncio.Future[int] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._quorum_lost = False
        self._timer: asyncio.TimerHandle | None = None
        self._waits: dict[tuple[WaitKind, str, int], list[Wait]] = {}
        self.stopped = view.stopped
        if view.leader == 0 and not self.stopped:
            self._arm()

    # --- what handlers await -----------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Moves whenever the state machine changed (applies, a restore)."""
        return self._generation

    async def applied_since(self, generation: int) -> None:
        """Return once the state machine changed after `generation` (or the member stops)."""
        if self._generation != generation or self.stopped:
            return
        if self._applied is None:
            self._applied = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._applied)

    def leader_change(self) -> asyncio.Future[int]:
        """Resolves with the new leader at the next leader change (0: none; also on stop).
        Shared: await it through `asyncio.wait` or `asyncio.shield`, never cancel it."""
        if self._leader is None:
            self._leader = asyncio.get_running_loop().create_future()
            if self.stopped:
                self._leader.set_result(0)
        return self._leader

    @property
    def lost(self) -> bool:
        """True while the quorum is declared lost (no leader for `no_quorum_after_s`)."""
        return self._quorum_lost or self.stopped

    def quorum_lost(self) -> asyncio.Future[None]:
        """Resolves when the quorum is declared lost, or the member stops (at once if it is).
        Shared, like `leader_change`."""
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
        if self.lost and not self._lost.done():
            self._lost.set_result(None)
        return self._lost

    def register(self, kind: WaitKind, name: str, lease: int) -> Wait:
        wait = Wait(kind, name, lease)
        if self.stopped:
            wait.future.set_exception(stopping_error())
        self._waits.setdefault((kind, name, lease), []).append(wait)
        return wait

    def unregister(self, wait: Wait) -> None:
        key = (wait.kind, wait.name, wait.lease)
        waits = self._waits.get(key, [])
        with contextlib.suppress(ValueError):
            waits.remove(wait)
        if not waits:
            self._waits.pop(key, None)
        if wait.future.done() and not wait.future.cancelled():
            wait.future.exception()  # retrieved: no "never retrieved" warning
        else:
            wait.future.cancel()

    # --- LoopObserver ------------------------------------------------------------------------

    def on_applied(self, batch: Sequence[Applied]) -> None:
        for applied in batch:
            for effect in applied.effects:
                match effect:
                    case LockGranted(name=name, lease=lease, token=token):
                        self._settle(WaitKind.LOCK, name, lease, token)
                    case LeaderElected(election=name, lease=lease, token=token):
                        self._settle(WaitKind.ELECTION, name, lease, token)
                    case LeaseExpired(id=lease):
                        self._lease_ended(lease, "expired")
                    case LeaseRevoked(id=lease):
                        self._lease_ended(lease, "was revoked")
            self._withdrawn(applied)
        self._bump()

    def on_restored(self) -> None:
        fsm = self._view.fsm
        for (kind, name, lease), waits in list(self._waits.items()):
            if kind is WaitKind.LOCK:
                token = next((h.token for h in fsm.lock_holders(name) if h.lease == lease), 0)
                queued = any(w.lease == lease for w in fsm.lock_waiters(name))
            else:
                leader = fsm.election_leader(name)
                token = leader.token if leader is not None and leader.lease == lease else 0
                queued = any(w.lease == lease for w in fsm.election_candidates(name))
            if token:
                self._settle(kind, name, lease, token)
            elif not queued:
                self._fail(
                    (kind, name, lease),
                    ServiceError(
                        Code.ABORTED,
                        f"lease {lease} no longer waits for {kind.value} {name!r} (its lease "
                        "ended or the wait was withdrawn while this member caught up from a "
                        f"snapshot); acquire again: {len(waits)} request(s) affected",
                    ),
                )
        self._bump()

    def on_leader(self, leader: int) -> None:
        fut, self._leader = self._leader, None
        if fut is not None and not fut.done():
            fut.set_result(leader)
        if leader:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._quorum_lost = False
            if self._lost is not None and self._lost.done():
                self._lost = None
        else:
            self._arm()

    def on_stop(self) -> None:
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for key in list(self._waits):
            self._fail(key, stopping_error())
        self.on_leader(0)
        self.quorum_lost()
        self._bump()

    # --- internals ---------------------------------------------------------------------------

    def _bump(self) -> None:
        self._generation += 1
        fut, self._applied = self._applied, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _arm(self) -> None:
        """No leader now: declare the quorum lost once that has lasted `no_quorum_after_s`."""
        if self._timer is not None or self.stopped:
            return
        remaining = self.no_quorum_after_s - self._view.leaderless_for_s()
        if remaining <= 0.001:
            self._declare_lost()
        else:
            self._timer = asyncio.get_running_loop().call_later(remaining, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._view.leader == 0:
            self._arm()

    def _declare_lost(self) -> None:
        self._quorum_lost = True
        self.quorum_lost()

    def _settle(self, kind: WaitKind, name: str, lease: int, token: int) -> None:
        for wait in self._waits.get((kind, name, lease), []):
            if not wait.future.done():
                wait.future.set_result(token)

    def _fail(self, key: tuple[WaitKind, str, int], err: ServiceError) -> None:
        for wait in self._waits.get(key, []):
            if not wait.future.done():
                wait.future.set_exception(err)

    def _lease_ended(self, lease: int, how: str) -> None:
        for key in [k for k in self._waits if k[2] == lease]:
            kind, name, _ = key
            self._fail(
                key,
                ServiceError(
                    Code.NOT_FOUND,
                    f"lease {lease} {how} while waiting for {kind.value} {name!r}, so the wait "
                    "ended; grant a new lease (and keep it alive) and try again",
                ),
            )

    def _withdrawn(self, applied: Applied) -> None:
        result, command = applied.result, applied.command
        if applied.duplicate or not isinstance(result, ReleaseResult) or result.held:
            return
        if isinstance(command, LockRelease):
            key, how = (WaitKind.LOCK, command.name, command.lease), "Unlock"
        elif isinstance(command, Resign):
            key, how = (WaitKind.ELECTION, command.election, command.lease), "Resign"
        else:
            return
        self._fail(
            key,
            ServiceError(
                Code.ABORTED,
                f"the wait of lease {key[2]} for {key[0].value} {key[1]!r} was withdrawn by "
                f"{how} before it was granted",
            ),
        )
